"""`mask-agent bench-fleet`: many simulated devices, a real broker, one fault, every event
accounted for.

Each device is the agent's own delivery stack (a `Publisher` over a `ResilientOutbox`,
MQTT 5 with the 3.1.1 fallback, `mqtt.hosts` rotation and jittered backoff) publishing
numbered events (`seq`, as `run` does) at a fixed rate. A consumer with a persistent
session (QoS 1) counts what arrives. Two scenarios:

- `node-kill` (a 3-node NATS cluster, JetStream, MQTT on each node): every device starts
  on node 0, which is SIGKILLed and restarted after `--outage` seconds. Reported: how long
  each device took to be connected again (to another node), and what was lost.
- `consumer-outage` (Mosquitto with deploy/mosquitto/fleet.conf's queue depth): the
  consumer goes away for `--outage` seconds while the devices keep publishing.
- `tls-storm` (Mosquitto with a TLS listener): the broker is stopped and restarted after
  `--outage` seconds, so every device reconnects, with a TLS handshake, at once. Reported:
  how long each took to be connected again, and what was lost.

Printed and written as JSON: produced, delivered (distinct), duplicates, missing seqs per
device (gaps), reconnect time percentiles, end-to-end latency percentiles.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ..config import load
from ..delivery.outbox import ResilientOutbox
from ..delivery.publish import Publisher
from ..factory import topics_from
from .brokers import Mosquitto, NatsCluster
from .measure import machine, write_json

SCENARIOS = ("node-kill", "consumer-outage", "tls-storm")
RESTARTS = ("node-kill", "tls-storm")  # the devices' broker goes away and comes back


@dataclass
class Device:
    name: str
    publisher: Publisher
    produced: int = 0
    down_at: float | None = None  # when its broker went away
    reconnect_s: float | None = None


class Consumer:
    """Counts each device's events by seq, and their latency, over a persistent session."""

    def __init__(self, port: int, client_id: str = "fleet-consumer") -> None:
        self.seqs: dict[str, list[int]] = defaultdict(list)
        self.latency_s: list[float] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False)
        self.client.max_inflight_messages_set(1000)
        self.client.on_connect = lambda c, *a: c.subscribe("maskwatch/+/events", qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.port = port

    def start(self) -> Consumer:
        self._subscribed.clear()
        self.client.connect_async("127.0.0.1", self.port, 30)
        self.client.loop_start()
        if not self._subscribed.wait(120):
            raise RuntimeError("the fleet consumer could not subscribe")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client, userdata, message) -> None:
        event = json.loads(message.payload)
        with self._lock:
            self.seqs[event["device_id"]].append(int(event["seq"]))
            self.latency_s.append(time.time() - event["t"])

    def distinct(self) -> int:
        with self._lock:
            return sum(len(set(s)) for s in self.seqs.values())


@dataclass
class FleetReport:
    scenario: str
    broker: str
    devices: int
    rate_per_device: float
    seconds: float
    outage_s: float
    produced: int = 0
    delivered: int = 0  # distinct (device, seq)
    duplicates: int = 0
    missing: int = 0  # seqs never delivered, over all devices
    devices_with_gaps: int = 0
    reconnect_s: dict = field(default_factory=dict)
    latency_ms: dict = field(default_factory=dict)
    machine: dict = field(default_factory=dict)


def percentiles(values: list[float], scale: float = 1.0) -> dict:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * scale, 1)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(ordered[-1] * scale, 1),
            "mean": round(statistics.fmean(ordered) * scale, 1), "n": len(ordered)}


def make_devices(count: int, hosts: list[str], workdir: Path,
                 ca_file: Path | None = None) -> list[Device]:
    tls = ["mqtt.tls.enabled=true", f"mqtt.tls.ca_file={ca_file}"] if ca_file else []
    devices = []
    for i in range(count):
        name = f"fleet-{i:04d}"
        cfg = load(None, [f"mqtt.hosts={json.dumps(hosts)}", f"device_id={name}",
                          f"state_dir={workdir}", "mqtt.reconnect_min_s=0.5",
                          "mqtt.reconnect_max_s=5", "mqtt.keepalive=5",
                          "homeassistant.enabled=false", *tls])
        outbox = ResilientOutbox(workdir / f"{name}.sqlite3")
        devices.append(Device(name, Publisher(cfg.mqtt, topics_from(cfg), outbox, None)))
    return devices


def produce(device: Device) -> None:
    event = {"id": str(uuid.uuid4()), "device_id": device.name, "type": "new", "t": 0.0}

    def numbered(seq: int) -> bytes:
        return json.dumps({**event, "seq": seq, "t": time.time()}).encode()

    device.publisher.queue_numbered(device.publisher.topics.events, numbered)
    device.produced += 1


def watch_reconnects(devices: list[Device], stop: threading.Event) -> None:
    """Each device's time from its broker going away to being connected again."""
    while not stop.is_set():
        now = time.monotonic()
        for d in devices:
            connected = d.publisher.is_connected()
            if not connected and d.down_at is None and d.reconnect_s is None:
                d.down_at = now
            elif connected and d.down_at is not None and d.reconnect_s is None:
                d.reconnect_s = now - d.down_at
        time.sleep(0.02)


def run_fleet(scenario: str, count: int, rate: float, seconds: float, outage_s: float,
              workdir: Path, drain_s: float = 120.0) -> FleetReport:
    broker = NatsCluster(workdir, 3) if scenario == "node-kill" else \
        Mosquitto(workdir, tls=scenario == "tls-storm")
    broker.start()
    consumer_node = broker.nodes[-1]
    names = {"node-kill": "nats-cluster-3", "tls-storm": "mosquitto-tls"}
    report = FleetReport(scenario, names.get(scenario, "mosquitto"), count, rate, seconds,
                         outage_s, machine=machine())
    ca_file = getattr(broker, "ca_file", None)
    nodes = broker.nodes[:1] if ca_file else broker.nodes  # TLS devices: the TLS listener
    hosts = [f"127.0.0.1:{n.port}" for n in nodes]
    stop_watch = threading.Event()
    devices: list[Device] = []
    consumer = Consumer(consumer_node.port)
    try:
        consumer.start()  # before the devices: the cluster sets up its MQTT streams now
        devices = make_devices(count, hosts, workdir, ca_file)
        for d in devices:
            d.publisher.start()
        began = time.monotonic()
        deadline = began + 120
        while not all(d.publisher.is_connected() for d in devices) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        progress(f"{sum(d.publisher.is_connected() for d in devices)} of {count} devices "
                 f"connected in {time.monotonic() - began:.1f} s")
        _run_phases(scenario, broker, consumer, devices, rate, seconds, outage_s, stop_watch)
        deadline = time.monotonic() + drain_s
        produced = sum(d.produced for d in devices)
        while (consumer.distinct() < produced or any(d.publisher.outbox.depth()
                                                      for d in devices)) and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        progress(f"drained: {consumer.distinct()} of {produced} delivered")
    finally:
        stop_watch.set()
        for d in devices:
            d.publisher.stop(drain_timeout_s=0.2)
        consumer.stop()
        broker.stop()
    _account(report, devices, consumer)
    return report


def progress(line: str) -> None:
    """A phase of a long run, on stderr (a 1,000-device run takes minutes)."""
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def _run_phases(scenario: str, broker, consumer: Consumer, devices: list[Device],
                rate: float, seconds: float, outage_s: float, stop_watch: threading.Event
                ) -> None:
    """Publish for `seconds`; the fault starts a third of the way in, lasts `outage_s`."""
    started = time.monotonic()
    fault_at, fault_over = started + seconds / 3, started + seconds / 3 + outage_s
    faulted = recovered = False
    ticks = 0
    while time.monotonic() < started + seconds or not recovered:
        now = time.monotonic()
        if not faulted and now >= fault_at:
            faulted = True
            progress(f"fault: {scenario}, {outage_s:g} s")
            if scenario in RESTARTS:  # NATS: a crash; Mosquitto: a restart (SIGTERM keeps
                # its sessions on disk; a SIGKILLed Mosquitto forgets what it queued since
                # its last autosave, which would be the broker's loss, not the devices')
                broker.kill(0) if scenario == "node-kill" else broker.stop()
                threading.Thread(target=watch_reconnects, args=(devices, stop_watch),
                                 daemon=True).start()
            else:
                consumer.stop()
        if faulted and not recovered and now >= fault_over:
            recovered = True
            progress("fault over")
            if scenario in RESTARTS:
                broker.start_node(0)
            else:
                consumer.start()
        if now < started + seconds:
            for d in devices:
                produce(d)
        ticks += 1
        time.sleep(max(0.0, started + ticks / rate - time.monotonic()))


def _account(report: FleetReport, devices: list[Device], consumer: Consumer) -> None:
    report.produced = sum(d.produced for d in devices)
    for d in devices:
        got = consumer.seqs.get(d.name, [])
        distinct = set(got)
        missing = set(range(1, d.produced + 1)) - distinct
        report.delivered += len(distinct)
        report.duplicates += len(got) - len(distinct)
        report.missing += len(missing)
        report.devices_with_gaps += bool(missing)
    report.reconnect_s = percentiles([d.reconnect_s for d in devices
                                      if d.reconnect_s is not None])
    report.reconnect_s["never"] = sum(d.down_at is not None and d.reconnect_s is None
                                      for d in devices)
    report.latency_ms = percentiles(consumer.latency_s, 1000.0)


def bench_fleet(scenario: str, count: int, rate: float, seconds: float, outage_s: float,
                out: str) -> int:
    logging.getLogger("maskwatch").setLevel(logging.ERROR)  # 1,000 devices' reconnect lines
    with tempfile.TemporaryDirectory(prefix="maskwatch-fleet-") as work:
        report = run_fleet(scenario, count, rate, seconds, outage_s, Path(work))
    r = report
    print(f"{r.scenario} on {r.broker}: {r.devices} devices x {r.rate_per_device:g} events/s "
          f"for {r.seconds:g} s, outage {r.outage_s:g} s")
    print(f"delivered {r.delivered} of {r.produced} produced ({r.missing} missing, "
          f"{r.devices_with_gaps} devices with a gap), {r.duplicates} duplicates")
    if r.reconnect_s.get("n"):
        print(f"reconnected (s): p50 {r.reconnect_s['p50']}, p90 {r.reconnect_s['p90']}, "
              f"max {r.reconnect_s['max']}; never {r.reconnect_s['never']}")
    if r.latency_ms:
        print(f"latency (ms): p50 {r.latency_ms['p50']}, p99 {r.latency_ms['p99']}, "
              f"max {r.latency_ms['max']}")
    write_json(out, asdict(report))
    return 0 if r.missing == 0 else 1
