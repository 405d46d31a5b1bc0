"""TLS with CA verification, passwords and ACLs against a real Mosquitto."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from .conftest import (
    ROOT,
    agent_command,
    free_port,
    mosquitto_binary,
    need_tool,
    wait_for_port,
)
from .mqtt_helpers import Collector
from .nats_cluster import PASSWORDS, SecuredNats, log_says, provision, secured_nats


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The bench's CA and server certificate (ca.crt, server.crt, server.key), and a second,
    rogue CA (rogue.crt) that the broker's certificate does not chain to."""
    from maskwatch.agent.bench.brokers import make_test_pki

    need_tool("openssl", "apt-get install openssl")
    d = tmp_path_factory.mktemp("pki")
    make_test_pki(d)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", "rogue.key", "-out", "rogue.crt", "-subj", "/CN=maskwatch rogue"],
                   cwd=d, check=True, capture_output=True)
    return d


def started_with_tls(broker, tls: int):
    """The broker, its `extra` settings holding a TLS listener on port `tls` and the rule
    for anonymous clients, started without the plain listener's `allow_anonymous true`
    (it would open the broker to all); `broker.tls_port` once that listener answers."""
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true\n", ""))
    broker.start()
    broker.tls_port = tls
    wait_for_port(tls, broker.proc)
    return broker


@pytest.fixture
def secure_broker(make_broker, pki, tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    for user, password in (("door1", "right-pass"), ("homeassistant", "ha-pass")):
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
    acl = tmp_path / "acl"
    acl.write_text("pattern readwrite maskwatch/%u/#\n"
                   "pattern write homeassistant/+/maskwatch_%u/#\n"
                   "topic read homeassistant/status\n\n"
                   "user homeassistant\ntopic read maskwatch/#\n")
    plain = free_port()
    tls = free_port()
    extra = (f"per_listener_settings false\nallow_anonymous false\npassword_file {passwd}\n"
             f"acl_file {acl}\npersistence false\n"
             f"listener {tls} 127.0.0.1\ncafile {pki}/ca.crt\ncertfile {pki}/server.crt\n"
             f"keyfile {pki}/server.key\n")
    return started_with_tls(make_broker(extra, port=plain), tls)


def agent_args(state_dir, tmp_path, port, *extra):
    pw = tmp_path / "pw"
    if not pw.exists():
        pw.write_text("right-pass\n")
        pw.chmod(0o600)
    return ["--set", f"state_dir={state_dir}", "--set", f"outbox.path={tmp_path}/o.sqlite3",
            "--set", f"mqtt.port={port}", "--set", "mqtt.host=127.0.0.1",
            "--set", "device_id=door1", "--set", "mqtt.username=door1",
            "--set", f"mqtt.password_file={pw}", "--set", "mqtt.reconnect_min_s=1", *extra]


def test_tls_with_ca_and_password_delivers(secure_broker, pki, demo_clip, tmp_path):
    collector = Collector(secure_broker.port, "maskwatch/door1/#", username="homeassistant",
                          password="ha-pass")
    try:
        result = subprocess.run(agent_command(
            "run", "--source", str(demo_clip), "--until-eof", "--set", "detect.fps=2",
            *agent_args(tmp_path, tmp_path, secure_broker.tls_port,
                        "--set", "mqtt.tls.enabled=true", "--set", "mqtt.require_tls=true",
                        "--set", f"mqtt.tls.ca_file={pki}/ca.crt")),
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert collector.wait_for(lambda: len(collector.on("/events")) > 5, 10)
    finally:
        collector.close()
    assert "right-pass" not in result.stderr
    assert all(json.loads(p)["device_id"] == "door1" for p in collector.on("/events"))


def run_for(seconds, cmd):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(seconds)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def test_wrong_ca_is_refused(secure_broker, pki, demo_clip, tmp_path):
    code, err = run_for(5, agent_command(
        "run", "--source", str(demo_clip), "--set", "source.realtime=true", "--set",
        "source.loop=true",
        *agent_args(tmp_path, tmp_path, secure_broker.tls_port, "--set", "mqtt.tls.enabled=true",
                    "--set", f"mqtt.tls.ca_file={pki}/rogue.crt")))
    assert code == 0, err
    assert "CERTIFICATE_VERIFY_FAILED" in err, err[-3000:]
    assert "connected to MQTT broker" not in err


def test_wrong_password_reported_with_backoff(secure_broker, demo_clip, tmp_path):
    (tmp_path / "pw").write_text("wrong-pass\n")
    code, err = run_for(6, agent_command(
        "run", "--source", str(demo_clip), "--set", "source.realtime=true", "--set",
        "source.loop=true",
        *agent_args(tmp_path, tmp_path, secure_broker.port)))
    assert code == 0, err
    refusals = err.count("refused the credentials")
    assert 1 <= refusals <= 4, err  # backoff 1, 2, 4 s: no hot loop
    assert "wrong-pass" not in err


def test_the_demo_refused_by_a_broker_says_its_events_were_not_delivered(secure_broker,
                                                                          tmp_path):
    """The demo's outbox is a temporary folder, deleted at its end: it must not promise
    that the undelivered events wait there for the next start."""
    result = subprocess.run(agent_command("demo", "--set", f"mqtt.port={secure_broker.port}",
                                          "--set", "mqtt.host=127.0.0.1"),
                            capture_output=True, text=True, timeout=180,
                            env={**os.environ, "HOME": str(tmp_path)})
    assert result.returncode == 75, result.stderr[-2000:]
    assert "refused the credentials" in result.stderr
    assert "were not delivered (this run's outbox is not kept)" in result.stderr
    assert "for the next start" not in result.stderr


FLEET_CERTS = ROOT / "deploy" / "mosquitto" / "fleet-certs.conf"
FLEET_ACL = ROOT / "deploy" / "mosquitto" / "maskwatch.acl"


FLEET_CONF = ROOT / "deploy" / "mosquitto" / "fleet.conf"


def test_the_fleet_config_listens_on_tls_alone_and_makes_each_user_its_client_id(pki,
                                                                                  tmp_path):
    """deploy/mosquitto/fleet.conf as shipped (its paths moved here, its listener on a free
    loopback port), run alone. A listener option above every `listener` line made Mosquitto
    open a default listener for it: plain MQTT on port 1883 on every interface, passwords in
    clear; and the TLS listener kept the client's own id, so the device's user did not tie
    its session."""
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "door1", "door1-pass"], check=True)
    tls = free_port()
    conf = FLEET_CONF.read_text()
    for shipped, here in {"/etc/mosquitto/passwd": str(passwd),
                          "/etc/mosquitto/maskwatch.acl": str(FLEET_ACL),
                          "/var/lib/mosquitto/": f"{tmp_path}/",
                          "/etc/mosquitto/certs/": f"{pki}/",
                          "listener 8883\n": f"listener {tls} 127.0.0.1\n"}.items():
        assert shipped in conf, shipped
        conf = conf.replace(shipped, here)
    (tmp_path / "fleet.conf").write_text(("user root\n" if os.geteuid() == 0 else "") + conf)
    log = tmp_path / "fleet.log"
    with open(log, "wb") as out:
        broker = subprocess.Popen([mosquitto_binary(), "-c", str(tmp_path / "fleet.conf")],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(tls, broker)
        Collector(tls, "maskwatch/door1/#", client_id="its-own-id", username="door1",
                  password="door1-pass", tls={"ca_certs": f"{pki}/ca.crt"}).close()
    finally:
        broker.terminate()
        broker.wait(timeout=10)
    said = log.read_text()
    assert set(re.findall(r"Opening ipv\d listen socket on port (\d+)", said)) == {str(tls)}
    assert "as door1 (" in said and "as its-own-id" not in said


@pytest.fixture
def fleet_cert_broker(make_broker, tmp_path):
    """deploy/mosquitto/fleet-certs.conf and maskwatch.acl as shipped (only their paths moved
    here, the listener on a free loopback port), with every certificate made by
    deploy/provision-device.sh: the CA, the broker's, a device's (installed as on its SD
    card) and Home Assistant's. Returns the broker, the CA folder and the SD card's root."""
    need_tool("openssl", "apt-get install openssl")
    pki, card = tmp_path / "pki", tmp_path / "sd"
    provision("ca", str(pki))
    provision("broker", str(pki), "127.0.0.1", "localhost")
    for who in ("front-door", "homeassistant"):
        provision("issue", str(pki), who)
    provision("install", str(pki), "front-door", str(card))
    tls = free_port()
    conf = FLEET_CERTS.read_text()
    for shipped, here in {"/etc/mosquitto/maskwatch.acl": str(FLEET_ACL),
                          "/var/lib/mosquitto/": f"{tmp_path}/",
                          "/etc/mosquitto/certs/ca.crt": f"{pki}/ca.crt",
                          "/etc/mosquitto/certs/server.": f"{pki}/broker/server.",
                          "listener 8884\n": f"listener {tls} 127.0.0.1\n"}.items():
        assert shipped in conf, shipped
        conf = conf.replace(shipped, here)
    return started_with_tls(make_broker(conf), tls), pki, card


def test_fleet_certificates_carry_events_and_hold_each_device_to_its_name(
        fleet_cert_broker, demo_clip, tmp_path):
    """A fleet on per-device certificates, as the README's fleet table sets it up: the
    device runs on the settings provision-device.sh installed, Home Assistant reads with
    its own certificate, and the certificate's name is the only device it may publish as
    (the same certificate under another device_id is refused: exit 77, events kept)."""
    broker, pki, card = fleet_cert_broker
    home_assistant = {"ca_certs": f"{pki}/ca.crt",
                      "certfile": f"{pki}/devices/homeassistant/device.crt",
                      "keyfile": f"{pki}/devices/homeassistant/device.key"}
    installed = card / "etc" / "maskwatch" / "tls"
    config = tmp_path / "config.yaml"  # the merge the installer's note asks for, on the card
    config.write_text((installed / "mqtt-tls.yaml").read_text().replace(
        "/etc/maskwatch/tls/", f"{installed}/"))

    def run(state: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(agent_command(
            "run", "--source", str(demo_clip), "--until-eof", "--config", str(config),
            "--set", f"state_dir={tmp_path / state}", "--set", "mqtt.host=127.0.0.1",
            "--set", f"mqtt.port={broker.tls_port}", "--set", "detect.fps=2", *extra),
            capture_output=True, text=True, timeout=180)

    collector = Collector(broker.tls_port, "maskwatch/#", client_id="homeassistant",
                          tls=home_assistant)
    try:
        delivered = run("front")
        assert delivered.returncode == 0, delivered.stderr[-2000:]
        assert collector.wait_for(lambda: collector.on("/status")[-1:] == [b"offline"], 30)
        events = collector.on("/events")
        topics = {topic for topic, _, _ in collector.messages}
    finally:
        collector.close()
    assert events and all(t.startswith("maskwatch/front-door/") for t in topics), topics
    refused = run("other", "--set", "device_id=back-door")
    assert refused.returncode == 77, refused.stderr[-2000:]


# an MQTT 3.1.1 CONNECT, clean session, keep-alive 60 s, client id "plain", no user
PLAIN_CONNECT = b"\x10\x11\x00\x04MQTT\x04\x02\x00\x3c\x00\x05plain"


def test_the_nats_cluster_config_holds_each_device_to_its_topics_over_tls(demo_clip,
                                                                          tmp_path):
    """Before, deploy/nats/cluster.conf had no users and no TLS: anyone who reached its
    ports read every device's events and could publish as any device. Now a device
    delivers over TLS as its own user, a reader on another node gets every event, and
    neither may publish where it does not belong (NATS acknowledges such a publish over
    MQTT 3.1.1 and drops it: its log is the only witness)."""
    with secured_nats(tmp_path) as cluster:
        tls = {"ca_certs": str(cluster.ca)}
        watcher = Collector(cluster.mqtt_ports[1], "maskwatch/#", client_id="watch-1",
                            username="watcher", password=PASSWORDS["watcher"], tls=tls)
        try:
            produced = deliver_as_front_door(cluster, demo_clip, tmp_path)
            assert produced > 5 and watcher.wait_for(
                lambda: len({json.loads(p)["id"] for p in watcher.on("/events")}) == produced,
                60)
            for user, topic in (("front-door", "maskwatch/back-door/events"),
                                ("watcher", "maskwatch/front-door/events")):
                publish_as(user, topic, cluster)
                assert log_says(cluster.logs["nats-1"], f'Publish Violation - User "{user}", '
                                                        f'Subject "{topic.replace("/", ".")}"')
            assert not any(b"forged" in payload for _, payload, _ in watcher.messages)
        finally:
            watcher.close()
        home_assistant = Collector(cluster.mqtt_ports[2], "homeassistant/#", client_id="ha",
                                   username="homeassistant",
                                   password=PASSWORDS["homeassistant"], tls=tls)
        try:  # the device's discovery, kept (retained) by the cluster; its status announced
            assert home_assistant.wait_for(lambda: any(
                "maskwatch_front-door" in topic for topic, _, _ in home_assistant.messages), 30)
            home_assistant.client.publish("homeassistant/status", b"online", qos=1)
            assert home_assistant.wait_for(lambda: home_assistant.on("homeassistant/status"), 30)
        finally:
            home_assistant.close()
        assert not plain_mqtt_answers(cluster.mqtt_ports[0])
        assert b"-ERR 'Authorization Violation'" in nats_protocol_answer(
            cluster.client_port, "front-door", PASSWORDS["front-door"])


def deliver_as_front_door(cluster: SecuredNats, clip: Path, tmp_path: Path) -> int:
    """The agent on the clip as device and user front-door, over TLS, to the first node;
    the number of events it made."""
    (tmp_path / "fd.pw").write_text(PASSWORDS["front-door"] + "\n")
    (tmp_path / "fd.pw").chmod(0o600)
    run = subprocess.run(agent_command(
        "run", "--source", str(clip), "--until-eof", "--set", "detect.fps=2",
        "--set", f"state_dir={tmp_path / 'state'}", "--set", "device_id=front-door",
        "--set", f"mqtt.hosts=[\"127.0.0.1:{cluster.mqtt_ports[0]}\"]",
        "--set", "mqtt.username=front-door", "--set", f"mqtt.password_file={tmp_path}/fd.pw",
        "--set", "mqtt.tls.enabled=true", "--set", f"mqtt.tls.ca_file={cluster.ca}",
        "--set", "mqtt.require_tls=true"), capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stderr.count("person #")


def publish_as(user: str, topic: str, cluster: SecuredNats) -> None:
    """One forged QoS 1 publish on the first node, acknowledged (whether taken or not)."""
    forger = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"forger-{user}")
    forger.username_pw_set(user, PASSWORDS[user])
    forger.tls_set(ca_certs=str(cluster.ca))
    forger.connect("127.0.0.1", cluster.mqtt_ports[0])
    forger.loop_start()
    try:
        forger.publish(topic, b'{"forged": true}', qos=1).wait_for_publish(30)
    finally:
        forger.disconnect()
        forger.loop_stop()


def plain_mqtt_answers(port: int) -> bool:
    """Does a plain (not TLS) MQTT CONNECT get a CONNACK (0x20) on this port?"""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
        plain.sendall(PLAIN_CONNECT)
        try:
            return plain.recv(4096).startswith(b"\x20")
        except ConnectionResetError:
            return False


def nats_protocol_answer(port: int, user: str, password: str) -> bytes:
    """What a NATS server answers a CONNECT with these credentials and a PING."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as nats_protocol:
        nats_protocol.recv(4096)  # INFO
        nats_protocol.sendall(b"CONNECT " + json.dumps(
            {"user": user, "pass": password, "verbose": False, "pedantic": False}).encode()
            + b"\r\nPING\r\n")
        return nats_protocol.recv(4096)
