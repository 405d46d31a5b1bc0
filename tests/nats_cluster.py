"""deploy/nats/cluster.conf and users.conf as shipped, run as three nodes on loopback.

Only paths, ports, node addresses and the CHANGE-ME secrets are replaced; the one
certificate for every node is made by deploy/provision-device.sh, as the file's header
says. Used by tests/test_tls.py (the users' permissions) and tests/test_home_assistant.py
(Home Assistant on the cluster).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .conftest import ROOT, free_port, need_tool, wait_for_port

NATS_CLUSTER = ROOT / "deploy" / "nats" / "cluster.conf"
NATS_USERS = ROOT / "deploy" / "nats" / "users.conf"
PROVISION = ROOT / "deploy" / "provision-device.sh"
NODES = ("nats-1", "nats-2", "nats-3")
PASSWORDS = {"front-door": "fd-pass", "homeassistant": "ha-pass", "watcher": "w-pass"}


@dataclass
class SecuredNats:
    mqtt_ports: list[int]  # one a node, TLS
    ca: Path  # the fleet CA's certificate
    client_port: int  # NATS's own protocol on the first node
    logs: dict[str, Path]


def provision(*args: str) -> None:
    done = subprocess.run(["bash", str(PROVISION), *args], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def log_says(log: Path, text: str, timeout: float = 30) -> bool:
    """Until `text` is in the log file (a broker's answer, not a sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text():
            return True
        time.sleep(0.05)
    return False


def node_config(shipped: str, name: str, ports: dict[str, dict[str, int]], pki: Path,
                workdir: Path) -> str:
    conf = shipped
    moves = {"/etc/nats/certs/ca.crt": f"{pki}/ca.crt",
             "/etc/nats/certs/server.": f"{pki}/broker/server.",
             "/var/lib/nats/jetstream": f"{workdir}/js-{name}",
             "listen: 127.0.0.1:4222": f"listen: 127.0.0.1:{ports[name]['client']}",
             "listen: 0.0.0.0:6222": f"listen: 127.0.0.1:{ports[name]['route']}",
             "listen: 0.0.0.0:8883": f"listen: 127.0.0.1:{ports[name]['mqtt']}",
             "CHANGE-ME-ROUTE-PASSWORD": "route-pass",
             **{f"@{other}:6222": f"@127.0.0.1:{ports[other]['route']}" for other in NODES}}
    for text, here in moves.items():
        assert text in conf, text
        conf = conf.replace(text, here)
    return conf


def mqtt_subscribes(port: int, ca: Path, timeout: float = 90) -> bool:
    """Until a QoS 1 subscription of the watcher is acknowledged on this node."""
    acknowledged = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="readiness-probe")
    client.username_pw_set("watcher", PASSWORDS["watcher"])
    client.tls_set(ca_certs=str(ca))
    client.on_connect = lambda c, *_: c.subscribe("maskwatch/readiness", qos=1)
    client.on_subscribe = lambda *_: acknowledged.set()
    client.reconnect_delay_set(1, 2)
    client.connect_async("127.0.0.1", port, 30)
    client.loop_start()
    try:
        return acknowledged.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()


@contextlib.contextmanager
def secured_nats(workdir: Path, users_edit: dict[str, str] | None = None
                 ) -> Iterator[SecuredNats]:
    """The three nodes, up with their routes formed; `users_edit` replaces text in
    users.conf (a test's own additions)."""
    nats = need_tool("nats-server", "the NATS broker (Debian: nats-server)")
    need_tool("openssl", "apt-get install openssl")
    pki = workdir / "pki"
    provision("ca", str(pki))
    provision("broker", str(pki), "127.0.0.1", "localhost")
    users = NATS_USERS.read_text()
    for text, here in {**{f"CHANGE-ME-{u}": p for u, p in PASSWORDS.items()},
                       **(users_edit or {})}.items():
        assert text in users, text
        users = users.replace(text, here)
    (workdir / "users.conf").write_text(users)
    ports = {name: {"client": free_port(), "route": free_port(), "mqtt": free_port()}
             for name in NODES}
    procs, logs = [], {}
    for name in NODES:
        (workdir / f"{name}.conf").write_text(
            node_config(NATS_CLUSTER.read_text(), name, ports, pki, workdir))
        logs[name] = workdir / f"{name}.log"
        with open(logs[name], "wb") as out:
            procs.append(subprocess.Popen([nats, "-c", str(workdir / f"{name}.conf")],
                                          stdout=out, stderr=subprocess.STDOUT,
                                          env={**os.environ, "NATS_NAME": name}))
    try:
        for name, proc in zip(NODES, procs):
            wait_for_port(ports[name]["mqtt"], proc)
        # the routes hold (mutual TLS and their password): the nodes elect a leader
        assert log_says(logs["nats-1"], "metadata leader"), logs["nats-1"].read_text()[-2000:]
        # and MQTT works: the first MQTT client makes the account's streams (replicated
        # three times), which a loaded machine may take a while to do
        assert mqtt_subscribes(ports["nats-1"]["mqtt"], pki / "ca.crt"), \
            logs["nats-1"].read_text()[-2000:]
        yield SecuredNats([ports[n]["mqtt"] for n in NODES], pki / "ca.crt",
                          ports["nats-1"]["client"], logs)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
