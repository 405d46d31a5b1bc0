"""Home Assistant discovery and the HTTP endpoint, against a real broker and server."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request

import paho.mqtt.publish as mqtt_publish
import pytest

from maskwatch.agent.config import load
from maskwatch.agent.delivery.discovery import discovery_messages, is_birth
from maskwatch.agent.factory import topics_from
from maskwatch.agent.vision.classify import read_bundle

from .conftest import agent_command, free_port
from .mqtt_helpers import Collector

# Keys Home Assistant's MQTT integration requires per platform (plus a unique_id for a
# device-bound entity, and identifiers or connections in the device block).
REQUIRED = {"binary_sensor": {"state_topic"}, "sensor": {"state_topic"},
            "event": {"state_topic", "event_types"}}


def check_discovery_payload(topic: str, payload: dict) -> None:
    component = topic.split("/")[1]
    assert REQUIRED[component] <= set(payload), topic
    assert payload["unique_id"] and payload["name"]
    assert payload["device"]["identifiers"]
    assert payload["availability_topic"].endswith("/status")
    if component == "binary_sensor":
        assert payload["off_delay"] > 0
    if component == "event":
        assert set(payload["event_types"]) == {"new", "update", "end"}
    assert payload["qos"] == 1  # Home Assistant subscribes at QoS 1: at least once reaches it
    # the entity id for Home Assistant 2025.10+ and, the same, for older releases
    assert payload["default_entity_id"] == f"{component}.{payload['object_id']}"


def test_discovery_payloads_unit():
    cfg = load(None, ["device_id=front-door"])
    messages = discovery_messages(cfg.homeassistant, "front-door", topics_from(cfg),
                                  ["with_mask", "without_mask", "mask_weared_incorrect"], "m")
    topics = [t for t, _ in messages]
    assert "homeassistant/binary_sensor/maskwatch_front-door/unmasked/config" in topics
    assert len(topics) == len(set(topics)) == 8  # binary sensor, event, 2 counters per label
    assert "homeassistant/sensor/maskwatch_front-door/left_with_mask/config" in topics
    for topic, payload in messages:
        check_discovery_payload(topic, json.loads(payload))


@pytest.mark.parametrize("payload,expected", [(b"online", True), (b"offline", False)])
def test_birth_payload(payload, expected):
    assert is_birth(payload) is expected


@pytest.mark.parametrize("payload", [b"", b"restart", b"x" * 100, b'{"state": "online"}'])
def test_birth_payload_rejects_anything_else(payload):
    with pytest.raises(ValueError):
        is_birth(payload)


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), r.headers.get("Content-Type")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("Content-Type")


def post(url: str, body: bytes):
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    return get(request)


@pytest.fixture
def running_agent(broker, state_dir, street_video, tmp_path):
    port = free_port()
    collector = Collector(broker.port, "#", client_id="ha-test")
    proc = subprocess.Popen(agent_command(
        "run", "--source", str(street_video), "--set", "source.loop=true",
        "--set", "source.realtime=true", "--set", f"state_dir={state_dir}",
        "--set", f"outbox.path={tmp_path}/o.sqlite3", "--set", f"mqtt.port={broker.port}",
        "--set", "mqtt.host=127.0.0.1", "--set", "device_id=hall", "--set", "http.enabled=true",
        "--set", f"http.port={port}", "--set", "http.max_upload_bytes=200000",
        "--set", "mqtt.stats_interval_s=1"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if get(base + "/healthz")[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.1)
    yield base, collector, broker
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    collector.close()
    assert proc.returncode == 0, err


def test_discovery_announced_and_reannounced(running_agent):
    _, collector, broker = running_agent
    prefix = "homeassistant/"
    # binary sensor, event, two counters per label (first decision, label when leaving)
    entities = 2 + 2 * len(read_bundle(None).labels)
    assert collector.wait_for(lambda: len([t for t, _, _ in collector.messages
                                           if t.startswith(prefix) and
                                           t.endswith("/config")]) >= entities, 20)
    configs = [(t, p) for t, p, _ in collector.messages if t.startswith(prefix)]
    for topic, payload in configs:
        check_discovery_payload(topic, json.loads(payload))
    before = len(configs)
    mqtt_publish.single("homeassistant/status", "online", hostname="127.0.0.1", port=broker.port)
    assert collector.wait_for(lambda: len([t for t, _, _ in collector.messages
                                           if t.startswith(prefix)]) >= before + entities, 20)
    # a malformed birth message is ignored, the agent keeps running
    mqtt_publish.single("homeassistant/status", "x" * 5000, hostname="127.0.0.1",
                        port=broker.port)
    assert collector.wait_for(lambda: collector.on("/counts"), 20)
    assert collector.wait_for(lambda: collector.on("hall/stats"), 20)
    stats = json.loads(collector.on("hall/stats")[-1])
    assert isinstance(stats["outbox_depth"], int) and stats["outbox_dropped"] == 0
    assert stats["broker_connected"] is True and stats["status"] == "online"


def test_http_endpoint(running_agent, dev_set):
    base, _, _ = running_agent
    status, body, _ = get(base + "/healthz")
    assert status == 200 and json.loads(body)["status"] == "online"
    status, body, ctype = get(base + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert "maskwatch_frames_total" in body.decode() and "maskwatch_outbox_depth" in body.decode()
    status, body, _ = get(base + "/snapshot.jpg")
    assert status == 404 and b"disabled" in body  # privacy by default
    image = sorted((dev_set / "images").iterdir())[0].read_bytes()
    status, body, _ = post(base + "/v1/predict", image)
    result = json.loads(body)
    assert status == 200 and result["faces"] and {"box", "label", "confidence"} <= set(
        result["faces"][0])
    status, body, _ = post(base + "/v1/predict", b"definitely not an image")
    assert status == 400 and "cannot decode image" in json.loads(body)["error"]
    status, body, _ = post(base + "/v1/predict", b"\0" * 300_000)
    assert status == 413 and "max_upload_bytes" in json.loads(body)["error"]
    assert get(base + "/nope")[0] == 404


class Recorder:
    """Stands in for the publisher: what the announcer sent, in order."""

    def __init__(self):
        self.sent = []

    def publish_now(self, topic, payload, qos=0, retain=False):
        self.sent.append(topic)
        return True

    def configs(self):
        return [t for t in self.sent if t.endswith("/config")]


def storm_announcer(window_s: float):
    from maskwatch.agent.delivery.discovery import Announcer

    cfg = load(None, ["device_id=storm"])
    recorder = Recorder()
    announcer = Announcer(cfg.homeassistant, "storm", topics_from(cfg), ["with_mask"], "m",
                          recorder, reannounce_min_s=window_s)
    return announcer, recorder


@pytest.mark.faults
def test_home_assistant_birth_storm_is_one_reannouncement_and_one_at_its_end():
    announcer, recorder = storm_announcer(window_s=0.5)
    announcer.on_connect()  # the connect announcement
    for _ in range(52):
        announcer.on_ha_status(b"online")
    assert announcer.announcements == 2  # connect + one re-announcement, not 53
    deadline = time.monotonic() + 30
    while announcer.announcements < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # the trailing one comes at the window's end (a timer thread)
    assert announcer.announcements == 3  # ... and the storm's last online is answered once
    assert len(recorder.configs()) == 3 * 4  # four entities, three times
    assert recorder.sent[-1].endswith("/final_counts")  # counts follow the trailing announce
    time.sleep(0.6)  # a window with no online in it: nothing more is owed
    assert announcer.announcements == 3


@pytest.mark.faults
def test_second_online_inside_the_window_is_answered_at_its_end():
    """Two Home Assistant reloads 9 s apart (here 0.3 s inside a 1 s window): on RabbitMQ,
    which hands no retained message to HA's wildcard subscription, the second one used to
    go unanswered and every entity stayed unavailable."""
    announcer, recorder = storm_announcer(window_s=1.0)
    announcer.on_ha_status(b"online")
    first = len(recorder.configs())
    announcer.on_ha_status(b"online")
    assert len(recorder.configs()) == first  # not at once ...
    deadline = time.monotonic() + 30
    while len(recorder.configs()) == first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(recorder.configs()) == 2 * first  # ... but at the end of the window


def test_announcer_close_cancels_a_pending_announcement():
    announcer, recorder = storm_announcer(window_s=0.3)
    announcer.on_ha_status(b"online")
    announcer.on_ha_status(b"online")
    announcer.close()
    time.sleep(0.5)
    assert announcer.announcements == 1
