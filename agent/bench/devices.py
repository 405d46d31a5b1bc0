"""A group of simulated devices in a process of its own, for `mask-agent bench-fleet`.

Each device is the agent's own delivery stack (a `Publisher` over a `ResilientOutbox`,
MQTT 5 with the 3.1.1 fallback, `mqtt.hosts` rotation and jittered backoff) publishing
numbered events (`seq`, as `run` does) at a fixed rate.

Why groups of processes rather than one process: paho's network loop waits in
`select()`, which cannot watch a file descriptor numbered 1024 or above (FD_SETSIZE). A
device holds six (its outbox's database, WAL and shared memory, its socket and paho's wake
pair), so in one process only the first ~40 of 300 devices ever connected: the rest had
their sockets closed by paho before sending CONNECT (Mosquitto logged hundreds of
"Protocol error" a second) and no error reached the publisher. A real agent is one device
per process and never comes near the limit. Groups of at most `MAX_PER_PROCESS` devices
stay well under it, and spread the devices' threads over the machine's cores.

The coordinator (`fleet.py`) talks to a group over a pipe, in this order:
  group -> ("ready", connected, seconds)      every device connected, or READY_S passed
  coordinator -> ("go", start, seconds, rate, watch_from)   wall-clock times
  group -> ("done", [DeviceResult], left)     published, then drained (or drain_s passed)
  coordinator -> ("stop",)                    disconnect and exit
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..config import load
from ..delivery.outbox import ResilientOutbox
from ..delivery.publish import Publisher
from ..factory import topics_from

MAX_PER_PROCESS = 100  # 600 descriptors: far below select()'s 1024
READY_S = 120.0


@dataclass
class GroupPlan:
    """What one process simulates: these devices, on these brokers."""

    names: list[str]
    hosts: list[str]
    workdir: str
    ca_file: str | None = None
    drain_s: float = 120.0


@dataclass
class DeviceResult:
    name: str
    produced: int = 0
    down_at: float | None = None  # monotonic: when its broker went away
    reconnect_s: float | None = None  # from down_at to connected again


@dataclass
class Device:
    publisher: Publisher
    result: DeviceResult


def make_devices(plan: GroupPlan) -> list[Device]:
    tls = ["mqtt.tls.enabled=true", f"mqtt.tls.ca_file={plan.ca_file}"] if plan.ca_file \
        else []
    workdir = Path(plan.workdir)
    devices = []
    for name in plan.names:
        cfg = load(None, [f"mqtt.hosts={json.dumps(plan.hosts)}", f"device_id={name}",
                          f"state_dir={workdir}", "mqtt.reconnect_min_s=0.5",
                          "mqtt.reconnect_max_s=5", "mqtt.keepalive=5",
                          "homeassistant.enabled=false", *tls])
        outbox = ResilientOutbox(workdir / f"{name}.sqlite3")
        publisher = Publisher(cfg.mqtt, topics_from(cfg), outbox, None)
        devices.append(Device(publisher, DeviceResult(name)))
    return devices


def produce(device: Device) -> None:
    event = {"id": str(uuid.uuid4()), "device_id": device.result.name, "type": "new",
             "t": 0.0}

    def numbered(seq: int) -> bytes:
        return json.dumps({**event, "seq": seq, "t": time.time()}).encode()

    device.publisher.queue_numbered(device.publisher.topics.events, numbered)
    device.result.produced += 1


def watch_reconnects(devices: list[Device], stop: threading.Event, since: float) -> None:
    """From wall time `since` (the fault), each device's time from its broker going away
    to its next accepted connection. A device whose loss was too short to be seen between
    two looks (a loaded machine starves this thread) but that has connected again since
    the fault counts from the fault."""
    stop.wait(max(0.0, since - time.time()))
    fault = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        for d in devices:
            r, publisher = d.result, d.publisher
            if r.reconnect_s is not None:
                continue
            if not publisher.is_connected():
                r.down_at = now if r.down_at is None else r.down_at
            elif publisher.connected_since > fault:
                r.down_at = fault if r.down_at is None else r.down_at
                r.reconnect_s = max(0.0, publisher.connected_since - r.down_at)
        time.sleep(0.02)


def connect_all(devices: list[Device], limit_s: float = READY_S) -> tuple[int, float]:
    """Start every device; (how many connected, seconds) once all are or limit_s passed."""
    began = time.monotonic()
    for d in devices:
        d.publisher.start()
    while not all(d.publisher.is_connected() for d in devices) and \
            time.monotonic() - began < limit_s:
        time.sleep(0.05)
    return sum(d.publisher.is_connected() for d in devices), time.monotonic() - began


def publish_for(devices: list[Device], start: float, seconds: float, rate: float,
                watch_from: float, stop_watch: threading.Event) -> None:
    """Each device queues `rate` events a second from wall time `start` for `seconds`;
    reconnects are watched from wall time `watch_from` (when the fault begins)."""
    threading.Thread(target=watch_reconnects, args=(devices, stop_watch, watch_from),
                     daemon=True).start()
    ticks = 0
    while (due := start + ticks / rate) < start + seconds:
        time.sleep(max(0.0, due - time.time()))
        for d in devices:
            produce(d)
        ticks += 1


def drain(devices: list[Device], limit_s: float) -> int:
    """Wait until every outbox is empty (all acknowledged) or limit_s passed; what is left."""
    deadline = time.monotonic() + limit_s
    left = sum(d.publisher.outbox.depth() for d in devices)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = sum(d.publisher.outbox.depth() for d in devices)
    return left


def run_group(conn, plan: GroupPlan) -> None:
    """A process's whole life: connect, publish on the coordinator's clock, drain, report."""
    logging.getLogger("maskwatch").setLevel(logging.ERROR)  # the coordinator reports
    devices = make_devices(plan)
    stop_watch = threading.Event()
    try:
        connected, took = connect_all(devices)
        conn.send(("ready", connected, took))
        _, start, seconds, rate, watch_from = conn.recv()
        publish_for(devices, start, seconds, rate, watch_from, stop_watch)
        left = drain(devices, plan.drain_s)
        conn.send(("done", [d.result for d in devices], left))
        conn.recv()  # ("stop",)
    finally:
        stop_watch.set()
        for d in devices:
            d.publisher.stop(drain_timeout_s=0.2)
        conn.close()
