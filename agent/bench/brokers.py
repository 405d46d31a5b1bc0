"""Real brokers on loopback for the fleet bench and tests: Mosquitto, and a NATS cluster.

Started as child processes on free ports with their state in a work folder; `kill(i)`
SIGKILLs a node (a crash, not a shutdown) and `start_node(i)` brings it back with its
JetStream state. Readiness is a broker's answer, never a sleep: a NATS node is ready when
its MQTT listener accepts a CONNECT (it refuses until JetStream has a leader).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ..errors import MaskwatchError

READY_S = 60.0


class BrokerMissing(MaskwatchError):
    """The broker's program is not installed."""

    exit_code = 69


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary(name: str, package: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not found:
        raise BrokerMissing(f"{name} is not installed (Debian: apt-get install {package})")
    return found


def mqtt_answers(port: int, timeout: float = 2.0) -> bool:
    """An MQTT 3.1.1 CONNECT on `port` gets a CONNACK that accepts it."""
    answered: list[bool] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ready-{port}")
    client.on_connect = lambda c, u, f, rc, p: answered.append(not rc.is_failure)
    try:
        client.connect("127.0.0.1", port, keepalive=5)
    except OSError:
        return False
    deadline = time.monotonic() + timeout
    while not answered and time.monotonic() < deadline:
        client.loop(timeout=0.1)
    client.disconnect()
    return bool(answered and answered[0])


def wait_until(check, what: str, timeout: float = READY_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready in {timeout:.0f} s")


@dataclass
class Node:
    name: str
    port: int  # MQTT
    client_port: int = 0
    cluster_port: int = 0
    proc: subprocess.Popen | None = None


class Mosquitto:
    """One Mosquitto with the fleet settings that matter (deploy/mosquitto/fleet.conf):
    persistence and a queue deep enough for a consumer outage."""

    def __init__(self, workdir: Path, max_queued: int = 100_000) -> None:
        self.workdir = workdir
        self.nodes = [Node("mosquitto", free_port())]
        user = "user root\n" if _is_root() else ""
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(f"{user}listener {self.nodes[0].port} 127.0.0.1\n"
                             "allow_anonymous true\npersistence true\n"
                             f"persistence_location {workdir}/\n"
                             f"max_queued_messages {max_queued}\nmax_connections -1\n")
        self.binary = binary("mosquitto", "mosquitto")

    def start_node(self, i: int = 0) -> None:
        node = self.nodes[i]
        with open(self.workdir / "mosquitto.log", "ab") as log:
            node.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log,
                                         stderr=subprocess.STDOUT)
        wait_until(lambda: mqtt_answers(node.port), "mosquitto")

    def start(self) -> Mosquitto:
        self.start_node(0)
        return self

    def kill(self, i: int = 0) -> None:
        _kill(self.nodes[i])

    def stop(self) -> None:
        for node in self.nodes:
            _kill(node, signal.SIGTERM)


class NatsCluster:
    """`size` nats-server nodes routed into one cluster, each with JetStream and an MQTT
    listener (MQTT 3.1.1): the deploy/nats/cluster.conf layout, on loopback ports."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.workdir, self.binary = workdir, binary("nats-server", "nats-server")
        self.nodes = [Node(f"n{i}", free_port(), free_port(), free_port()) for i in range(size)]
        routes = ", ".join(f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nodes)
        replicas = min(3, size)
        for node in self.nodes:
            cluster = (f"cluster {{ name: mw, listen: 127.0.0.1:{node.cluster_port}, "
                       f"routes: [{routes}] }}\n") if size > 1 else ""
            (workdir / f"{node.name}.conf").write_text(
                f"server_name: {node.name}\nlisten: 127.0.0.1:{node.client_port}\n"
                f"jetstream {{ store_dir: {workdir / node.name} }}\n{cluster}"
                f"mqtt {{ listen: 127.0.0.1:{node.port}, stream_replicas: {replicas}, "
                f"consumer_replicas: {replicas} }}\n")

    @property
    def hosts(self) -> list[str]:
        return [f"127.0.0.1:{n.port}" for n in self.nodes]

    def start_node(self, i: int, wait: bool = True) -> None:
        node = self.nodes[i]
        with open(self.workdir / f"{node.name}.log", "ab") as log:
            node.proc = subprocess.Popen([self.binary, "-c", str(self.workdir /
                                                                 f"{node.name}.conf")],
                                         stdout=log, stderr=subprocess.STDOUT)
        if wait:
            wait_until(lambda: mqtt_answers(node.port), f"nats node {node.name}")

    def start(self) -> NatsCluster:
        for i in range(len(self.nodes)):  # all up first: JetStream needs a quorum
            self.start_node(i, wait=False)
        for node in self.nodes:
            wait_until(lambda node=node: mqtt_answers(node.port), f"nats node {node.name}")
        return self

    def kill(self, i: int) -> None:
        _kill(self.nodes[i])

    def stop(self) -> None:
        for node in self.nodes:
            _kill(node, signal.SIGTERM)


def _kill(node: Node, sig: int = signal.SIGKILL) -> None:
    if node.proc is not None and node.proc.poll() is None:
        node.proc.send_signal(sig)
        node.proc.wait(timeout=20)
    node.proc = None


def _is_root() -> bool:
    import os

    return os.geteuid() == 0
