"""The agent end to end on real video, a real broker and the bundled int8 model."""

from __future__ import annotations

import json
import subprocess
import time

import jsonschema

from maskwatch.agent.demo import DEMO_CLIP
from maskwatch.agent.people.events import load_schema

from .conftest import agent_command
from .mqtt_helpers import Collector


def run_agent(state_dir, port, video, *extra, device="door1", timeout=120):
    return subprocess.run(
        agent_command("run", "--source", str(video), "--until-eof",
                      "--set", f"state_dir={state_dir}", "--set", f"mqtt.port={port}",
                      "--set", f"device_id={device}", "--set", "mqtt.host=127.0.0.1",
                      *extra),
        capture_output=True, text=True, timeout=timeout)


def test_street_video_delivers_schema_valid_events(broker, state_dir, street_video, tmp_path):
    collector = Collector(broker.port, "maskwatch/door1/#")
    try:
        result = run_agent(tmp_path, broker.port, street_video,
                           "--set", f"detect.model={state_dir}/models/"
                           "face_detection_yunet_2023mar.onnx")
        assert result.returncode == 0, result.stderr
        assert collector.wait_for(lambda: collector.on("/status")[-1:] == [b"offline"], 10)
        events = [json.loads(p) for p in collector.on("/events")]
        final_counts = json.loads(collector.on("/final_counts")[-1])
    finally:
        collector.close()
    validator = jsonschema.Draft202012Validator(load_schema())
    for event in events:
        validator.validate(event)
    news = [e for e in events if e["type"] == "new"]
    ends = [e for e in events if e["type"] == "end"]
    assert len(news) >= 10, "the street video shows many people"
    # every person gets exactly one `new` and one `end`
    assert sorted(e["track_id"] for e in news) == sorted(e["track_id"] for e in ends)
    assert len({e["id"] for e in events}) == len(events)
    assert sorted(e["seq"] for e in events) == list(range(1, len(events) + 1))  # no gap
    labels = {e["label"] for e in news}
    for label, people in final_counts.items():  # who left with which label
        assert people == sum(e["label"] == label for e in ends)
    assert all(e["label"] in e["label_seconds"] for e in ends)
    assert {"with_mask", "without_mask"} <= labels
    assert all(e["frame_size"] == [538, 372] for e in events)


def test_watch_prints_events_and_skips_garbage(broker, state_dir, street_video, tmp_path):
    """Two watches at once (two terminals): each its own session, each sees every event."""
    import paho.mqtt.publish as mqtt_publish

    watchers = [subprocess.Popen(agent_command(
        "watch", "--count", "3", "--json", "--timeout", "90", "--set", f"mqtt.port={broker.port}",
        "--set", "mqtt.host=127.0.0.1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for _ in range(2)]
    for watcher in watchers:
        assert "watch: subscribed" in watcher.stderr.readline()  # a readiness line, not a sleep
    mqtt_publish.single("maskwatch/door2/events", "{not json", hostname="127.0.0.1",
                        port=broker.port)
    result = run_agent(tmp_path, broker.port, street_video, "--set",
                       f"detect.model={state_dir}/models/face_detection_yunet_2023mar.onnx",
                       device="door2")
    assert result.returncode == 0, result.stderr
    for watcher in watchers:
        out, err = watcher.communicate(timeout=90)
        assert watcher.returncode == 0, err
        events = [json.loads(line) for line in out.splitlines()]
        assert len(events) == 3 and all(e["device_id"] == "door2" for e in events)
        assert err.count("skipping message") == 1, err  # once: before, logged and printed
        assert "watch: door2: 3 events up to seq 3, 0 missing, 0 duplicates" in err
    assert "already connected" not in broker.log.read_text()  # no session took another's


def test_a_video_file_run_without_until_eof_ends_with_the_file(broker, tmp_path):
    """Before, its end was a lost camera: the file was reopened again and again, its video
    time began at 0 each time, and the pipeline, scheduled past it, searched none of it."""
    collector = Collector(broker.port, "maskwatch/door8/events")
    try:
        result = subprocess.run(
            agent_command("run", "--source", str(DEMO_CLIP), "--set", f"state_dir={tmp_path}",
                          "--set", f"mqtt.port={broker.port}", "--set", "mqtt.host=127.0.0.1",
                          "--set", "device_id=door8"),
            capture_output=True, text=True, timeout=120)
        produced = result.stderr.count("person #")
        assert collector.wait_for(lambda: len(collector.on("/events")) >= produced, 10)
    finally:
        collector.close()
    assert result.returncode == 0, result.stderr[-1000:]
    assert f"{DEMO_CLIP} ended" in result.stderr and "source lost" not in result.stderr
    assert produced > 20 and len(collector.on("/events")) == produced


def test_a_watch_whose_session_another_client_takes_says_so(broker):
    """As on a broker that makes the user name the client id, where a watch run with a
    device's config and the device take each other's session: here a client takes the
    watch's own id, three times, and the watch says so in one line."""
    import paho.mqtt.client as mqtt

    watcher = subprocess.Popen(agent_command(
        "watch", "--timeout", "90", "--set", f"mqtt.port={broker.port}", "--set",
        "mqtt.host=127.0.0.1", "--set", "mqtt.client_id=door-w"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert "watch: subscribed" in watcher.stderr.readline()
        taken = f"door-w-watch-{watcher.pid}"

        def sessions() -> int:  # the watch's and the thief's, as the broker saw them
            return broker.log.read_text().count(f" as {taken} (")

        for thefts in range(1, 4):
            thief = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=taken)
            thief.connect("127.0.0.1", broker.port)
            thief.loop_start()
            deadline = time.monotonic() + 30  # the watch reconnects, taking it back
            while sessions() < 2 * thefts + 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            thief.disconnect()
            thief.loop_stop()
            assert sessions() >= 2 * thefts + 1, broker.log.read_text()[-2000:]
        said = watcher.stderr.readline()
    finally:
        watcher.terminate()
        watcher.wait(timeout=30)
    assert said.startswith("watch: the broker ended this watch's session 3 times in a minute")
    assert f"another client uses the client id {taken}" in said
