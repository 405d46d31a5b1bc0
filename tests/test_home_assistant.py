"""A real Home Assistant (Core 2024.3.3, its MQTT integration) against the real agent.

Home Assistant is installed once into .cache/ (about 40 s from PyPI, with the constraints
file inside its own wheel), given an MQTT config entry for the test broker, and made to
report its entities' states back over MQTT (`mqtt_statestream`), so the test reads what
Home Assistant shows without its web API. An automation reloads the MQTT integration when
told to over MQTT, as a user does from the UI. Fails in CI when it cannot be installed,
skips elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import paho.mqtt.publish as mqtt_publish
import pytest

from maskwatch.agent.demo import DEMO_CLIP

from .conftest import ROOT, Broker, agent_command, free_port, missing, need_tool
from .mqtt_helpers import Collector
from .nats_cluster import PASSWORDS, secured_nats

pytestmark = pytest.mark.faults

HA_VERSION = "2024.3.3"
HA_VENV = ROOT / ".cache" / f"home-assistant-{HA_VERSION}"
DEVICE = "ha"
ENTITIES = [f"binary_sensor/maskwatch_{DEVICE}_unmasked", f"event/maskwatch_{DEVICE}_person"] + [
    f"sensor/maskwatch_{DEVICE}_{kind}_{label}" for kind in ("people", "left")
    for label in ("with_mask", "without_mask")]
RELOAD_TOPIC = "test/reload_mqtt"
ENTRY_ID = "maskwatchtestmqtt"


def install_home_assistant() -> Path:
    """The `hass` program, installed into .cache/ once (Home Assistant's own pins)."""
    hass = HA_VENV / "bin" / "hass"
    if hass.exists():
        return hass
    if sys.version_info[:2] not in ((3, 11), (3, 12)):
        missing(f"Home Assistant {HA_VERSION} runs on Python 3.11 or 3.12")
    wheels = HA_VENV.parent / f"ha-{HA_VERSION}-wheel"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(HA_VENV)], check=True)
        pip = [str(HA_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run(pip[:-2] + ["download", "-q", "--no-deps", "-d", str(wheels),
                                   f"homeassistant=={HA_VERSION}"], check=True, timeout=600)
        wheel = next(wheels.glob("homeassistant-*.whl"))
        constraints = HA_VENV / "constraints.txt"
        with zipfile.ZipFile(wheel) as archive:
            constraints.write_bytes(archive.read("homeassistant/package_constraints.txt"))
        # paho-mqtt 1.6.1: what HA 2024.3's MQTT integration pins in its manifest
        subprocess.run(pip + ["-c", str(constraints), str(wheel), "paho-mqtt==1.6.1"],
                       check=True, timeout=900)
    except (subprocess.SubprocessError, OSError, StopIteration) as exc:
        missing(f"Home Assistant {HA_VERSION} could not be installed: {exc}")
    return hass


class HomeAssistant:
    """One Home Assistant with only MQTT, statestream and a reload automation."""

    def __init__(self, hass: Path, workdir: Path, broker_port: int,
                 connection: dict | None = None) -> None:
        """`connection`: more of the MQTT entry's data (username, password, certificate)."""
        self.hass, self.config = hass, workdir / "ha-config"
        (self.config / ".storage").mkdir(parents=True)
        (self.config / "configuration.yaml").write_text(f"""
homeassistant:
  name: ci
  unit_system: metric
  time_zone: UTC
  latitude: 0
  longitude: 0
  elevation: 0
logger:
  default: warning
mqtt_statestream:
  base_topic: hastate
automation:
  - alias: reload the MQTT integration
    trigger:
      - platform: mqtt
        topic: {RELOAD_TOPIC}
    action:
      - service: homeassistant.reload_config_entry
        data:
          entry_id: {ENTRY_ID}
""")
        entry = {"entry_id": ENTRY_ID, "version": 1, "minor_version": 1, "domain": "mqtt",
                 "title": "test broker", "source": "user", "options": {},
                 "data": {"broker": "127.0.0.1", "port": broker_port, "discovery": True,
                          **(connection or {})},
                 "pref_disable_new_entities": False, "pref_disable_polling": False,
                 "unique_id": None, "disabled_by": None}
        (self.config / ".storage" / "core.config_entries").write_text(json.dumps(
            {"version": 1, "minor_version": 1, "key": "core.config_entries",
             "data": {"entries": [entry]}}))
        self.log = workdir / "home-assistant.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> HomeAssistant:
        # a temporary folder of its own: Home Assistant keeps the MQTT certificate in
        # <tmp>/home-assistant-mqtt (0700, and looks into it at every start), so the one
        # root's run of the suite left in /tmp failed the sudo user's run (PermissionError)
        tmp = self.config.parent / "ha-tmp"
        tmp.mkdir(exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(self.hass), "-c", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "TMPDIR": str(tmp)})
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class States:
    """What Home Assistant shows, as mqtt_statestream reports it: hastate/<domain>/<id>/state."""

    def __init__(self, port: int, **connection) -> None:
        self.collector = Collector(port, "hastate/#", client_id="ha-states", **connection)

    def count(self) -> int:
        return len(self.collector.messages)

    def latest(self, since: int = 0) -> dict[str, str]:
        out: dict[str, str] = {}
        for topic, payload, _ in self.collector.messages[since:]:
            if topic.endswith("/state"):
                out[topic[len("hastate/"):-len("/state")]] = payload.decode()
        return out

    def all_available(self, since: int = 0) -> bool:
        """Every maskwatch entity has reported a state after `since`, and it is not
        'unavailable' (a counter shows a number, a binary sensor 'off' or 'unknown')."""
        latest = self.latest(since)
        return all(latest.get(e, "unavailable") != "unavailable" for e in ENTITIES)

    def wait(self, predicate, seconds: float, what: str) -> None:
        if not self.collector.wait_for(predicate, seconds):
            raise AssertionError(f"Home Assistant: {what} within {seconds:.0f} s; it shows "
                                 f"{ {e: self.latest().get(e) for e in ENTITIES} }")

    def close(self) -> None:
        self.collector.close()


def start_agent(port: int, tmp_path: Path, *settings: str) -> subprocess.Popen:
    """The agent on the bundled clip, looped in real time: people keep coming."""
    log = open(tmp_path / "agent.log", "ab")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(agent_command(
        "run", "--source", str(DEMO_CLIP), "--set", "source.realtime=true", "--set",
        "source.loop=true", "--set", f"mqtt.port={port}", "--set", "mqtt.host=127.0.0.1",
        "--set", f"device_id={DEVICE}", "--set", f"state_dir={tmp_path / 'state'}",
        *(arg for setting in settings for arg in ("--set", setting))),
        stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="session")
def hass() -> Path:
    return install_home_assistant()


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=60)


def test_home_assistant_subscribes_at_qos_1_and_shows_people(hass, tmp_path):
    broker = Broker(tmp_path, free_port(), "persistence false\nlog_type subscribe\n"
                    "log_type error\nlog_type warning\nlog_type notice").start()
    states = States(broker.port)
    agent = start_agent(broker.port, tmp_path)
    home = HomeAssistant(hass, tmp_path, broker.port).start()
    try:
        states.wait(states.all_available, 240, "every maskwatch entity available")
        states.wait(lambda: states.latest().get(ENTITIES[2], "").isdigit() and
                    int(states.latest()[ENTITIES[2]]) >= 1, 120, "a person with a mask counted")
    finally:
        home.stop()
        stop(agent)
        states.close()
        broker.stop()
    subscriptions = {}  # topic -> QoS, from the broker's log: "<time>: <client> <qos> <topic>"
    for line in broker.log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[3].startswith(f"maskwatch/{DEVICE}/"):
            subscriptions[parts[3].rsplit("/", 1)[1]] = int(parts[2])
    assert subscriptions == {"events": 1, "unmasked": 1, "status": 1, "counts": 1,
                             "final_counts": 1}, subscriptions


def test_two_reloads_9_s_apart_on_rabbitmq_leave_every_entity_available(hass, tmp_path):
    """RabbitMQ's MQTT plugin hands no retained message to Home Assistant's wildcard
    discovery subscription, so after a reload only the agent's answer to Home Assistant's
    `online` brings the entities back; the second of two reloads falls inside the agent's
    30 s window and is answered at its end."""
    need_tool("rabbitmq-server", "Debian: rabbitmq-server, plugin rabbitmq_mqtt")
    from maskwatch.agent.bench.brokers import RabbitMQ

    (tmp_path / "rabbitmq").mkdir()
    broker = RabbitMQ(tmp_path / "rabbitmq").start()
    port = broker.nodes[0].port
    states = States(port)
    agent = start_agent(port, tmp_path)
    home = HomeAssistant(hass, tmp_path, port).start()
    try:
        states.wait(states.all_available, 240, "every maskwatch entity available")
        mqtt_publish.single(RELOAD_TOPIC, "1", hostname="127.0.0.1", port=port)
        time.sleep(9)  # the scenario: a second reload 9 s after the first
        mqtt_publish.single(RELOAD_TOPIC, "1", hostname="127.0.0.1", port=port)
        since = states.count()
        states.wait(lambda: states.all_available(since), 90,
                    "every maskwatch entity available again after the second reload")
    finally:
        home.stop()
        stop(agent)
        states.close()
        broker.stop()
    assert "announced discovery at the end of that window" in \
        (tmp_path / "agent.log").read_text()


# the test's own additions to users.conf: its device is called DEVICE, and Home
# Assistant's state mirror (mqtt_statestream, hastate/...) needs its topics
NATS_USERS_EDIT = {"front-door": DEVICE,
                   'publish: ["homeassistant.>"]': 'publish: ["homeassistant.>", "hastate.>"]',
                   '"homeassistant", "homeassistant.>",': '"homeassistant", "homeassistant.>", '
                                                          '"hastate", "hastate.>", '
                                                          f'"{RELOAD_TOPIC.replace("/", ".")}",'}


def test_home_assistant_on_the_secured_nats_cluster_shows_the_device(hass, tmp_path):
    """deploy/nats/cluster.conf and users.conf as shipped (three nodes, TLS): the device on
    one node as its own user, Home Assistant on another as `homeassistant`, with the fleet
    CA as its certificate, as an integrator sets it up. NATS speaks MQTT 3.1.1 only and
    keeps retained messages in JetStream: discovery must reach Home Assistant all the
    same, and each entity show a value."""
    with secured_nats(tmp_path, NATS_USERS_EDIT) as cluster:
        port_agent, port_home, port_states = cluster.mqtt_ports
        (tmp_path / "pw").write_text(PASSWORDS["front-door"] + "\n")
        (tmp_path / "pw").chmod(0o600)
        states = States(port_states, username="homeassistant",
                        password=PASSWORDS["homeassistant"], tls={"ca_certs": str(cluster.ca)})
        agent = start_agent(port_agent, tmp_path, f"mqtt.username={DEVICE}",
                            f"mqtt.password_file={tmp_path / 'pw'}", "mqtt.tls.enabled=true",
                            f"mqtt.tls.ca_file={cluster.ca}", "mqtt.require_tls=true")
        home = HomeAssistant(hass, tmp_path, port_home, {
            "username": "homeassistant", "password": PASSWORDS["homeassistant"],
            "certificate": cluster.ca.read_text()}).start()
        try:
            states.wait(states.all_available, 240, "every maskwatch entity available")
            states.wait(lambda: states.latest().get(ENTITIES[2], "").isdigit() and
                        int(states.latest()[ENTITIES[2]]) >= 1, 120,
                        "a person with a mask counted")
        finally:
            home.stop()
            stop(agent)
            states.close()
        refused = {re.search(r'Subject "([^"]+)"', line).group(1)
               for log in cluster.logs.values() for line in log.read_text().splitlines()
               if "Violation" in line}
    # nothing of maskwatch's was refused; Home Assistant also subscribes to other makers'
    # discovery topics (tasmota/discovery/#, dsmr/#, ...), which users.conf leaves out
    assert not {s for s in refused if s.split(".")[0] in ("maskwatch", "homeassistant")}, refused
