"""Real brokers on loopback for the fleet bench and tests: Mosquitto, a NATS cluster, and
RabbitMQ with its MQTT plugin.

Started as child processes on free ports with their state in a work folder; `kill(i)`
SIGKILLs a node (a crash, not a shutdown) and `start_node(i)` brings it back with its
JetStream state. Readiness is a broker's answer, never a sleep: a NATS node is ready when
its MQTT listener accepts a CONNECT (it refuses until JetStream has a leader).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ..errors import MaskwatchError

READY_S = 60.0
# NATS resends a QoS 1 message a subscriber never acknowledged (its connection died with the
# server) only after ack_wait, 30 s by default: deploy/nats/cluster.conf sets 5 s too
ACK_WAIT = "5s"


class BrokerMissing(MaskwatchError):
    """The broker's program is not installed."""

    exit_code = 69


_given_ports: set[int] = set()
_given_lock = threading.Lock()


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range (32768 and up), so that a
    broker restarted on it cannot find it taken by one of its own clients' outgoing
    connections (1,000 reconnecting devices hold 1,000 ephemeral ports). Never one this
    process was given before: ports asked for together (a NATS node's four, three nodes'
    twelve) are all free before any is bound, and drawn at random two of them could be
    the same (it happened: a node's monitoring port was another node's, and the third
    node never started)."""
    rng = random.SystemRandom()
    with _given_lock:
        for _ in range(200):
            port = rng.randrange(20000, 32768)
            if port in _given_ports:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _given_ports.add(port)
            return port
    raise OSError("no free loopback port in 20000-32767")


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
    monitor_port: int = 0  # NATS: its HTTP monitoring endpoint (/jsz)
    proc: subprocess.Popen | None = None


# deploy/mosquitto/fleet.conf's settings that decide what is kept and for how long
# (tests/test_fleet.py checks that they stay the same there and here); the bench leaves
# out its users, ACL and certificates, which decide who, not what
FLEET_DELIVERY = {"persistence": "true", "autosave_interval": "60",
                  "persistent_client_expiration": "7d", "max_queued_messages": "100000",
                  "max_queued_bytes": "0", "max_inflight_messages": "20"}


class Mosquitto:
    """One Mosquitto with the shipped fleet config's delivery settings (FLEET_DELIVERY):
    persistence and a queue deep enough for a consumer outage."""

    def __init__(self, workdir: Path, tls: bool = False) -> None:
        self.workdir = workdir
        self.nodes = [Node("mosquitto", free_port())]
        user = "user root\n" if _is_root() else ""
        self.conf = workdir / "mosquitto.conf"
        self.ca_file: Path | None = None
        listeners = f"listener {self.nodes[0].port} 127.0.0.1\n"
        if tls:  # devices on TLS (node 0), a plain listener for the consumer (node 1)
            self.ca_file = make_test_pki(workdir)
            self.nodes.append(Node("mosquitto-plain", free_port()))
            listeners += (f"cafile {self.ca_file}\ncertfile {workdir / 'server.crt'}\n"
                          f"keyfile {workdir / 'server.key'}\n"
                          f"listener {self.nodes[1].port} 127.0.0.1\n")
        delivery = "".join(f"{k} {v}\n" for k, v in FLEET_DELIVERY.items())
        self.conf.write_text(f"{user}{listeners}allow_anonymous true\n{delivery}"
                             f"persistence_location {workdir}/\nmax_connections -1\n")
        self.binary = binary("mosquitto", "mosquitto")

    def start_node(self, i: int = 0) -> None:
        node = self.nodes[0]  # one process serves every listener
        with open(self.workdir / "mosquitto.log", "ab") as log:
            node.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log,
                                         stderr=subprocess.STDOUT)
        wait_until(lambda: mqtt_answers(self.nodes[-1].port), "mosquitto")

    def start(self) -> Mosquitto:
        self.start_node(0)
        return self

    def kill(self, i: int = 0) -> None:
        _kill(self.nodes[i])

    def stop(self) -> None:
        for node in self.nodes:
            _kill(node, signal.SIGTERM)


def make_test_pki(workdir: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost (openssl); the CA's
    file, for the devices to verify the broker with."""
    def openssl(*args: str) -> None:
        subprocess.run([binary("openssl", "openssl"), *args], cwd=workdir, check=True,
                       capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout",
            "ca.key", "-out", "ca.crt", "-subj", "/CN=maskwatch bench CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=localhost")
    (workdir / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    return workdir / "ca.crt"


class NatsCluster:
    """`size` nats-server nodes routed into one cluster, each with JetStream and an MQTT
    listener (MQTT 3.1.1): the deploy/nats/cluster.conf layout, on loopback ports,
    without its users and TLS (tests/test_tls.py runs the file itself), and with each
    node's monitoring endpoint (`leaders`)."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.workdir, self.binary = workdir, binary("nats-server", "nats-server")
        self.nodes = [Node(f"n{i}", free_port(), free_port(), free_port(), free_port())
                      for i in range(size)]
        routes = ", ".join(f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nodes)
        replicas = min(3, size)
        for node in self.nodes:
            cluster = (f"cluster {{ name: mw, listen: 127.0.0.1:{node.cluster_port}, "
                       f"routes: [{routes}] }}\n") if size > 1 else ""
            (workdir / f"{node.name}.conf").write_text(
                f"server_name: {node.name}\nlisten: 127.0.0.1:{node.client_port}\n"
                f"http: 127.0.0.1:{node.monitor_port}\n"
                "lame_duck_duration: \"30s\"\nlame_duck_grace_period: \"1s\"\n"
                f"jetstream {{ store_dir: {workdir / node.name} }}\n{cluster}"
                f"mqtt {{ listen: 127.0.0.1:{node.port}, stream_replicas: {replicas}, "
                f"consumer_replicas: {replicas}, ack_wait: \"{ACK_WAIT}\" }}\n")

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
            wait_until(lambda: answers_or_died(node, self.workdir / f"{node.name}.log"),
                       f"nats node {node.name}")

    def start(self) -> NatsCluster:
        for i in range(len(self.nodes)):  # all up first: JetStream needs a quorum
            self.start_node(i, wait=False)
        for node in self.nodes:
            wait_until(lambda node=node: answers_or_died(node, self.workdir / f"{node.name}.log"),
                       f"nats node {node.name}")
        return self

    def kill(self, i: int) -> None:
        _kill(self.nodes[i])

    def leaders(self, i: int = 0) -> dict[str, str]:
        """Which node leads each Raft group the MQTT layer needs, as node `i` sees it:
        JetStream's meta group ("meta") and each `$MQTT_` stream (its sessions, messages,
        retained messages). A node killed while it leads one holds that stream up until
        the others elect a new leader, which nats-server does after 4-9 s of silence
        (its raft.go: minElectionTimeoutDefault, maxElectionTimeoutDefault); {} when the
        node does not answer."""
        url = (f"http://127.0.0.1:{self.nodes[i].monitor_port}/jsz?accounts=true"
               "&streams=true")
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                state = json.load(answer)
        except (OSError, ValueError):
            return {}
        led = {"meta": (state.get("meta_cluster") or {}).get("leader", "")}
        for account in state.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                if stream.get("name", "").startswith("$MQTT_"):
                    led[stream["name"]] = (stream.get("cluster") or {}).get("leader", "")
        return led

    def stop(self, lame_duck: bool = True) -> None:
        """Stop every node. Lame duck mode (SIGUSR2, `nats-server --signal ldm`) first
        closes the clients, then stops JetStream: with SIGTERM, nats-server 2.9.10 stops
        JetStream first and acknowledged two QoS 1 publishes of a burst that no
        subscriber ever got (tests/test_fleet.py measures both)."""
        for node in self.nodes:
            _kill(node, signal.SIGUSR2 if lame_duck else signal.SIGTERM)


class RabbitMQ:
    """One RabbitMQ node with the MQTT plugin (MQTT 3.1.1; retained messages are not handed
    to wildcard subscriptions), its node name, ports, cookie and data in the work folder so
    that it never meets another RabbitMQ on the machine."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        wrapper = binary("rabbitmq-server", "rabbitmq-server")
        # Debian's /usr/sbin wrapper runs the server as the rabbitmq user, who cannot enter a
        # root-only work folder; the script behind it runs as whoever calls it
        own = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
        self.binary = str(own) if own.exists() else wrapper
        self.nodes = [Node("rabbitmq", free_port())]
        (workdir / "rabbitmq.conf").write_text(
            "listeners.tcp = none\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.nodes[0].port}\n"
            "mqtt.allow_anonymous = true\nloopback_users = none\n")
        (workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        name = f"mw{self.nodes[0].port}@localhost"
        self.env = {"HOME": str(workdir), "RABBITMQ_NODENAME": name,
                    "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
                    "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
                    "RABBITMQ_LOG_BASE": str(workdir / "log"),
                    "RABBITMQ_PID_FILE": str(workdir / "rabbitmq.pid"),
                    "RABBITMQ_DIST_PORT": str(free_port()),
                    "ERL_CRASH_DUMP": str(workdir / "erl_crash.dump")}
        for folder in ("mnesia", "log"):
            (workdir / folder).mkdir(exist_ok=True)

    def start_node(self, i: int = 0) -> None:
        node = self.nodes[i]
        with open(self.workdir / "rabbitmq.log", "ab") as log:
            node.proc = subprocess.Popen([self.binary], stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, **self.env}, cwd=self.workdir,
                                         start_new_session=True)  # its Erlang VM and epmd
        wait_until(lambda: answers_or_died(node, self.workdir / "rabbitmq.log"), "rabbitmq")

    def start(self) -> RabbitMQ:
        self.start_node(0)
        return self

    def kill(self, i: int = 0) -> None:
        _kill(self.nodes[i], group=True)

    def stop(self) -> None:
        for node in self.nodes:  # SIGTERM lets RabbitMQ stop cleanly
            _kill(node, signal.SIGTERM, group=True)


def answers_or_died(node: Node, log: Path) -> bool:
    """Readiness of a node that may also fail to start: its log's tail when it exited."""
    if node.proc is not None and node.proc.poll() is not None:
        raise RuntimeError(f"{node.name} exited: {log.read_text(errors='replace')[-600:]}")
    return mqtt_answers(node.port)


def _kill(node: Node, sig: int = signal.SIGKILL, group: bool = False) -> None:
    """Signal the node (with `group`, its whole process group: RabbitMQ's script, its
    Erlang VM, epmd if it began one) and wait; SIGKILL if it is still there after 150 s
    (NATS's lame duck mode may take its full duration)."""
    if node.proc is not None and node.proc.poll() is None:
        send = (lambda s: os.killpg(node.proc.pid, s)) if group else node.proc.send_signal
        with contextlib.suppress(ProcessLookupError):
            send(sig)
        try:
            node.proc.wait(timeout=150)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            node.proc.wait(timeout=10)
    node.proc = None


def _is_root() -> bool:
    return os.geteuid() == 0
