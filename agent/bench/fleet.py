"""`mask-agent bench-fleet`: many simulated devices, a real broker, one fault, every event
accounted for.

Each device is the agent's own delivery stack (a `Publisher` over a `ResilientOutbox`,
MQTT 5 with the 3.1.1 fallback, `mqtt.hosts` rotation and jittered backoff) publishing
numbered events (`seq`, as `run` does) at a fixed rate, in groups of at most 100 a
process (`devices.py`; one process cannot hold more than ~40 paho clients beside their
outboxes). This process runs the broker, the fault and a consumer with a persistent
session (QoS 1) that counts what arrives. Three scenarios:

- `node-kill` (a 3-node NATS cluster, JetStream, MQTT on each node): every device starts
  on node 0, which is SIGKILLed and restarted after `--outage` seconds. Reported: how long
  each device took to be connected again (to another node), what was lost, and which of
  JetStream's Raft groups the killed node led (a lost leader costs an election: 4-9 s).
- `consumer-outage` (Mosquitto with deploy/mosquitto/fleet.conf's queue depth): the
  consumer goes away for `--outage` seconds while the devices keep publishing.
- `tls-storm` (Mosquitto with a TLS listener): the broker is stopped and restarted after
  `--outage` seconds, so every device reconnects, with a TLS handshake, at once. Reported:
  how long each took to be connected again, and what was lost.

Printed and written as JSON: produced, delivered (distinct), duplicates, missing seqs per
device (gaps), reconnect time percentiles, end-to-end latency percentiles.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .brokers import Mosquitto, NatsCluster
from .devices import MAX_PER_PROCESS, READY_S, DeviceResult, GroupPlan, run_group
from .measure import machine, write_json

SCENARIOS = ("node-kill", "consumer-outage", "tls-storm")
RESTARTS = ("node-kill", "tls-storm")  # the devices' broker goes away and comes back


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
    processes: int = 0  # device groups, each a process of its own (devices.py says why)
    connected_first: int = 0  # devices connected before the run began
    connect_s: float = 0.0  # how long the first connection of all devices took
    left_in_outboxes: int = 0  # events never acknowledged when the run ended
    produced: int = 0
    delivered: int = 0  # distinct (device, seq)
    duplicates: int = 0
    missing: int = 0  # seqs never delivered, over all devices
    devices_with_gaps: int = 0
    reconnect_s: dict = field(default_factory=dict)
    killed_node_led: list = field(default_factory=list)  # node-kill: its Raft groups
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


def groups_of(count: int, per_process: int, hosts: list[str], workdir: Path,
              ca_file: Path | None, drain_s: float) -> list[GroupPlan]:
    names = [f"fleet-{i:04d}" for i in range(count)]
    size = max(1, min(per_process, MAX_PER_PROCESS))
    return [GroupPlan(names[i:i + size], hosts, str(workdir),
                      str(ca_file) if ca_file else None, drain_s)
            for i in range(0, count, size)]


class Groups:
    """The device groups' processes (spawned: the coordinator already runs threads),
    each behind a pipe; see devices.py for the conversation."""

    def __init__(self, plans: list[GroupPlan]) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes, self.procs = [], []
        for plan in plans:
            mine, theirs = context.Pipe()
            proc = context.Process(target=run_group, args=(theirs, plan), daemon=True)
            proc.start()
            theirs.close()
            self.pipes.append(mine)
            self.procs.append(proc)

    def gather(self, expect: str, timeout_s: float) -> list[tuple]:
        """Every group's next message, which must be `expect`."""
        deadline = time.monotonic() + timeout_s
        answers = []
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"a device group sent no '{expect}' in {timeout_s:g} s")
            try:
                message = pipe.recv()
            except EOFError:
                raise RuntimeError("a device group's process died") from None
            if message[0] != expect:
                raise RuntimeError(f"a device group said {message[0]!r}, not {expect!r}")
            answers.append(message)
        return answers

    def send(self, *message) -> None:
        for pipe in self.pipes:
            pipe.send(message)

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()


def run_fleet(scenario: str, count: int, rate: float, seconds: float, outage_s: float,
              workdir: Path, drain_s: float = 120.0,
              per_process: int = MAX_PER_PROCESS) -> FleetReport:
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
    plans = groups_of(count, per_process, hosts, workdir, ca_file, drain_s)
    report.processes = len(plans)
    consumer = Consumer(consumer_node.port)
    groups: Groups | None = None
    results: list[DeviceResult] = []
    try:
        consumer.start()  # before the devices: the cluster sets up its MQTT streams now
        groups = Groups(plans)
        ready = groups.gather("ready", READY_S + 60)
        report.connected_first = sum(r[1] for r in ready)
        report.connect_s = round(max(r[2] for r in ready), 2)
        progress(f"{report.connected_first} of {count} devices connected in "
                 f"{report.connect_s:.1f} s ({len(plans)} processes)")
        start = time.time() + 0.5
        groups.send("go", start, seconds, rate, start + seconds / 3)
        _run_fault(scenario, broker, consumer, start + seconds / 3, outage_s, report)
        done = groups.gather("done", seconds + outage_s + drain_s + 60)
        results = [r for answer in done for r in answer[1]]
        report.left_in_outboxes = sum(answer[2] for answer in done)
        produced = sum(r.produced for r in results)
        deadline = time.monotonic() + drain_s
        while consumer.distinct() < produced and time.monotonic() < deadline:
            time.sleep(0.1)
        progress(f"drained: {consumer.distinct()} of {produced} delivered")
    finally:
        if groups:
            groups.stop()
        consumer.stop()
        broker.stop()
    _account(report, results, consumer)
    return report


def progress(line: str) -> None:
    """A phase of a long run, on stderr (a 1,000-device run takes minutes)."""
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def _run_fault(scenario: str, broker, consumer: Consumer, fault_at: float,
               outage_s: float, report: FleetReport) -> None:
    """At wall time `fault_at`, take the devices' broker (or the consumer) away for
    `outage_s`, then bring it back. The groups publish meanwhile on the same clock."""
    time.sleep(max(0.0, fault_at - time.time()))
    if scenario == "node-kill":
        report.killed_node_led = sorted(
            group for group, node in broker.leaders().items() if node == broker.nodes[0].name)
    progress(f"fault: {scenario}, {outage_s:g} s")
    if scenario in RESTARTS:  # NATS: a crash; Mosquitto: a restart (SIGTERM keeps its
        # sessions on disk; a SIGKILLed Mosquitto forgets what it queued since its last
        # autosave, which would be the broker's loss, not the devices')
        broker.kill(0) if scenario == "node-kill" else broker.stop()
    else:
        consumer.stop()
    time.sleep(max(0.0, fault_at + outage_s - time.time()))
    progress("fault over")
    if scenario in RESTARTS:
        broker.start_node(0)
    else:
        consumer.start()


def _account(report: FleetReport, devices: list[DeviceResult], consumer: Consumer
             ) -> None:
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
                out: str, per_process: int = MAX_PER_PROCESS) -> int:
    logging.getLogger("maskwatch").setLevel(logging.ERROR)  # 1,000 devices' reconnect lines
    with tempfile.TemporaryDirectory(prefix="maskwatch-fleet-") as work:
        report = run_fleet(scenario, count, rate, seconds, outage_s, Path(work),
                           per_process=per_process)
    r = report
    print(f"{r.scenario} on {r.broker}: {r.devices} devices x {r.rate_per_device:g} events/s "
          f"for {r.seconds:g} s, outage {r.outage_s:g} s ({r.processes} device processes)")
    print(f"first connection: {r.connected_first} of {r.devices} devices in "
          f"{r.connect_s:g} s")
    print(f"delivered {r.delivered} of {r.produced} produced ({r.missing} missing, "
          f"{r.devices_with_gaps} devices with a gap), {r.duplicates} duplicates")
    if r.reconnect_s.get("n"):
        print(f"reconnected (s): p50 {r.reconnect_s['p50']}, p90 {r.reconnect_s['p90']}, "
              f"max {r.reconnect_s['max']}; never {r.reconnect_s['never']}")
    if r.scenario == "node-kill":
        print(f"the killed node led: {', '.join(r.killed_node_led) or 'none'} of JetStream's "
              "Raft groups (meta, $MQTT_ streams); a lost leader is replaced after 4-9 s")
    if r.latency_ms:
        print(f"latency (ms): p50 {r.latency_ms['p50']}, p99 {r.latency_ms['p99']}, "
              f"max {r.latency_ms['max']}")
    if r.left_in_outboxes:
        print(f"{r.left_in_outboxes} events still in the devices' outboxes at the end")
    write_json(out, asdict(report))
    return 0 if r.missing == 0 and r.connected_first == r.devices else 1
