"""Never lose an event: broker outages, restarts, SIGKILL, full outbox, bad state dir.

Real Mosquitto brokers on loopback (with persistence, so the test subscriber's own queued
messages survive a broker restart), the agent's real outbox and publisher, bounded in time.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from maskwatch.agent.config import load
from maskwatch.agent.delivery.outbox import KEEP_DAMAGED, Outbox, ResilientOutbox, set_aside
from maskwatch.agent.delivery.publish import Publisher
from maskwatch.agent.errors import StateError
from maskwatch.agent.factory import topics_from

from .conftest import ROOT, agent_command, mosquitto_persistent
from .mqtt_helpers import Collector

pytestmark = pytest.mark.faults  # broker down, restarted, SIGKILL, full outbox, lost source


def numbers(collector) -> list[int]:
    return [json.loads(p)["n"] for p in collector.on("/events")]


def first_seen_order(values: list[int]) -> list[int]:
    seen, out = set(), []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def finish_and_collect(proc, collector, n: int) -> str:
    """Wait for the emitter to exit and the subscriber to hold all n events; its stdout."""
    try:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert collector.wait_for(lambda: len(set(numbers(collector))) >= n, 30), (
            sorted(set(range(1, n + 1)) - set(numbers(collector)))[:40], out[-300:])
    finally:
        collector.close()
    return out


def emitter(tmp_path, port, *args):
    return subprocess.Popen([sys.executable, "-m", "tests.emit_events", "--outbox",
                             str(tmp_path / "outbox.sqlite3"), "--port", str(port), *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_broker_down_while_events_are_produced(matrix_broker, tmp_path):
    n = 250
    broker = matrix_broker.start()
    collector = Collector(broker.port, "maskwatch/emitter/events")
    broker.stop()  # the broker goes away before the burst
    proc = emitter(tmp_path, broker.port, "--count", str(n))
    time.sleep(3)  # outage while all events are produced
    broker.start()
    out = finish_and_collect(proc, collector, n)
    got = numbers(collector)
    assert first_seen_order(got) == list(range(1, n + 1))  # all, in order, none missing
    assert out.strip().endswith("left 0")
    print(f"\n{broker.kind} outage: produced {n}, delivered {len(set(got))}, "
          f"duplicates {len(got) - len(set(got))}, lost 0")


def test_broker_restarted_mid_burst(matrix_broker, tmp_path):
    n = 400
    broker = matrix_broker.start()
    collector = Collector(broker.port, "maskwatch/emitter/events")
    proc = emitter(tmp_path, broker.port, "--count", str(n), "--delay", "0.005")
    time.sleep(0.8)
    broker.stop()
    time.sleep(1.0)
    broker.start()
    finish_and_collect(proc, collector, n)
    got = [json.loads(p) for p in collector.on("/events")]
    ids_by_n: dict[int, set[str]] = {}
    for event in got:
        ids_by_n.setdefault(event["n"], set()).add(event["id"])
    assert sorted(ids_by_n) == list(range(1, n + 1))
    assert all(len(ids) == 1 for ids in ids_by_n.values())  # duplicates carry the same id
    assert first_seen_order([e["n"] for e in got]) == list(range(1, n + 1))


def test_agent_killed_while_broker_down_delivers_after_restart(make_broker, tmp_path,
                                                                state_dir, street_video):
    """SIGKILL the real agent mid-video with no broker; the next start delivers it all."""
    broker = make_broker(mosquitto_persistent(tmp_path))
    port = broker.port
    common = ["--set", f"state_dir={tmp_path / 'state'}", "--set", f"mqtt.port={port}",
              "--set", "mqtt.host=127.0.0.1", "--set", "device_id=door9",
              "--set", f"detect.model={state_dir}/models/face_detection_yunet_2023mar.onnx"]
    first = subprocess.Popen(agent_command("run", "--source", str(street_video),
                                           "--set", "source.realtime=true", *common),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    outbox = tmp_path / "state" / "outbox.sqlite3"
    deadline = time.monotonic() + 60
    queued = 0
    while time.monotonic() < deadline and queued < 10:
        time.sleep(0.5)
        if outbox.exists():
            with sqlite3.connect(outbox) as db:
                queued = db.execute(
                    "SELECT COUNT(*) FROM outbox WHERE topic LIKE '%/events'").fetchone()[0]
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    with sqlite3.connect(outbox) as db:
        before_kill = {json.loads(p)["id"] for (p,) in db.execute(
            "SELECT payload FROM outbox WHERE topic LIKE '%/events'")}
    assert len(before_kill) >= 10
    broker.start()
    collector = Collector(port, "maskwatch/door9/events")
    try:
        second = subprocess.run(agent_command("run", "--source", str(street_video),
                                              "--until-eof", "--set", "detect.fps=0.5",
                                              *common), capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 0, second.stderr
        delivered = {json.loads(p)["id"] for p in collector.on("/events")}
    finally:
        collector.close()
    assert before_kill <= delivered
    print(f"\nSIGKILL: {len(before_kill)} queued before the kill, all delivered after restart")


def test_outbox_full_drops_oldest_and_counts(tmp_path):
    box = Outbox(tmp_path / "o.sqlite3", max_events=50, max_bytes=10**6)
    for i in range(80):
        box.put("t", json.dumps({"n": i}).encode())
    assert box.depth() == 50 and box.dropped() == 30
    assert [json.loads(m.payload)["n"] for m in box.pending(limit=100)] == list(range(30, 80))
    box.close()
    reopened = Outbox(tmp_path / "o.sqlite3", max_events=50)
    assert reopened.dropped() == 30  # the count survives restarts


def test_outbox_bounded_by_bytes(tmp_path):
    box = Outbox(tmp_path / "o.sqlite3", max_events=1000, max_bytes=2048)
    for _ in range(40):
        box.put("t", b"x" * 100)
    assert box.depth() == 20 and box.dropped() == 20


def test_outbox_disk_full_is_a_state_error(tmp_path):
    box = Outbox(tmp_path / "o.sqlite3")
    box._db.execute("PRAGMA max_page_count = 8")  # what a full disk looks like to SQLite
    with pytest.raises(StateError, match="cannot write event outbox"):
        for _ in range(500):
            box.put("t", b"y" * 2000)


def test_outbox_full_while_broker_down_reports_drops(tmp_path):
    cfg = load(None, ["mqtt.port=1", "mqtt.host=127.0.0.1", "device_id=x"])
    outbox = ResilientOutbox(tmp_path / "o.sqlite3", max_events=10)
    publisher = Publisher(cfg.mqtt, topics_from(cfg), outbox, None)
    for i in range(25):
        publisher.queue(publisher.topics.events, json.dumps({"n": i}).encode())
    assert publisher.outbox.depth() == 10 and publisher.outbox.dropped() == 15


def test_unwritable_state_dir_degrades_without_crash(broker, tmp_path, state_dir, street_video):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    collector = Collector(broker.port, "maskwatch/door3/#")
    try:
        result = subprocess.run(agent_command(
            "run", "--source", str(street_video), "--until-eof",
            "--set", f"state_dir={state_dir}", "--set", f"outbox.path={blocker}/outbox.sqlite3",
            "--set", f"mqtt.port={broker.port}", "--set", "mqtt.host=127.0.0.1",
            "--set", "device_id=door3"), capture_output=True, text=True, timeout=120)
        assert collector.wait_for(lambda: b"offline" in collector.on("/status"), 10)
    finally:
        collector.close()
    assert result.returncode == 74, result.stderr  # documented: ran degraded
    assert "cannot open event outbox" in result.stderr
    assert b"degraded" in collector.on("/status")
    assert len(collector.on("/events")) > 10  # events still flow (kept in memory)


def test_source_lost_and_back(broker, tmp_path, state_dir, street_video):
    video = tmp_path / "door.mp4"
    video.write_bytes(street_video.read_bytes())
    collector = Collector(broker.port, "maskwatch/door4/status")
    agent = subprocess.Popen(agent_command(
        "run", "--source", str(video), "--set", "source.loop=true",
        "--set", "source.retry_initial_s=0.2", "--set", "source.retry_max_s=0.5",
        "--set", f"state_dir={state_dir}", "--set", f"outbox.path={tmp_path}/o.sqlite3",
        "--set", f"mqtt.port={broker.port}", "--set", "mqtt.host=127.0.0.1",
        "--set", "device_id=door4"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    try:
        assert collector.wait_for(lambda: b"online" in collector.on("/status"), 30)
        hidden = tmp_path / "hidden.mp4"
        video.rename(hidden)  # the camera goes away (the file vanishes mid-run)
        assert collector.wait_for(lambda: b"source_lost" in collector.on("/status"), 30)
        hidden.rename(video)  # and comes back
        assert collector.wait_for(lambda: collector.on("/status")[-1] == b"online", 30)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30)
        collector.wait_for(lambda: collector.on("/status")[-1] == b"offline", 10)
        collector.close()
    assert agent.returncode == 0, err
    assert "source lost" in err
    statuses = collector.on("/status")
    assert statuses[-1] == b"offline"



def test_the_agent_delivers_every_event_on_each_broker(matrix_broker, tmp_path):
    """The real agent on the bundled clip: every event arrives, numbered without a gap, on
    Mosquitto (MQTT 5) and on the brokers that speak only 3.1.1 (NATS answers MQTT 5 with
    code 132; RabbitMQ 3.10 closes the connection without a word): both fall back."""
    from maskwatch.agent.demo import DEMO_CLIP

    broker = matrix_broker.start()
    collector = Collector(broker.port, "maskwatch/matrix/events")
    try:
        result = subprocess.run(agent_command(
            "run", "--source", str(DEMO_CLIP), "--until-eof",
            "--set", f"state_dir={tmp_path / 'state'}", "--set", f"mqtt.port={broker.port}",
            "--set", "mqtt.host=127.0.0.1", "--set", "device_id=matrix"),
            capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr[-2000:]
        produced = result.stderr.count("person #")
        assert collector.wait_for(lambda: len(set(
            json.loads(p)["seq"] for p in collector.on("/events"))) >= produced, 30)
        seqs = sorted({json.loads(p)["seq"] for p in collector.on("/events")})
    finally:
        collector.close()
    assert produced >= 20 and seqs == list(range(1, produced + 1))
    speaks_5 = matrix_broker.kind == "mosquitto"
    assert ("(MQTT 5)" in result.stderr) is speaks_5, result.stderr[-1500:]
    print(f"\n{matrix_broker.kind}: {produced} events, {len(seqs)} delivered")


def test_a_broker_stopping_is_said_in_words_not_unspecified_error(broker, tmp_path, caplog):
    import logging

    from maskwatch.agent.delivery.outbox import ResilientOutbox

    from .test_faults import publisher_for

    publisher = publisher_for(broker.port, ResilientOutbox(tmp_path / "o.db"), "words")
    with caplog.at_level(logging.INFO, logger="maskwatch"):
        publisher.start()
        try:
            assert publisher.connected.wait(20)
            broker.stop()  # a clean stop (SIGTERM)
            deadline = time.monotonic() + 20
            while publisher.connected.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            publisher.stop(drain_timeout_s=0.5)
    lines = [r.getMessage() for r in caplog.records if "disconnected from MQTT" in r.getMessage()]
    assert lines and "Unspecified error" not in lines[0]
    assert "the broker stopped or restarted" in lines[0] and str(broker.port) in lines[0]


def test_only_the_newest_damaged_outboxes_are_kept(tmp_path):
    """A failing card may damage the outbox again and again: each is set aside, but only
    the newest three (with their -wal files) stay, so they cannot fill the card."""
    path = tmp_path / "outbox.sqlite3"
    older = [f"2025010{day}T000000Z" for day in range(1, 5)]
    for stamp in older:
        for suffix in ("", "-wal"):
            (tmp_path / f"outbox.sqlite3.damaged-{stamp}{suffix}").write_bytes(b"old")
    stranger = tmp_path / "outbox.sqlite3.damaged-notes.txt"  # not one of ours: stays
    stranger.write_bytes(b"someone's notes")
    path.write_bytes(b"damaged")
    (tmp_path / "outbox.sqlite3-wal").write_bytes(b"its wal")
    aside = set_aside(path)
    assert not path.exists() and aside.read_bytes() == b"damaged"
    assert (tmp_path / f"{aside.name}-wal").read_bytes() == b"its wal"
    left = sorted(p.name for p in tmp_path.iterdir())
    newest = older[-(KEEP_DAMAGED - 1):]
    kept = [f"outbox.sqlite3.damaged-{stamp}{x}" for stamp in newest for x in ("", "-wal")]
    assert left == sorted([aside.name, f"{aside.name}-wal", *kept, stranger.name])


def test_the_watchers_check_tells_a_device_numbering_anew_from_duplicates():
    from maskwatch.agent.delivery.watch import StreamCheck

    check = StreamCheck()
    for seq, new_id in ((1, True), (2, True), (3, True), (3, False), (5, True)):
        check.add(seq, new_id)  # a redelivery of 3, then 4 missing
    assert (check.duplicates, check.gaps) == (1, 1)
    for seq in (1, 2):  # a new outbox (a damaged one set aside): new ids from 1 again
        check.add(seq, new_id=True)
    check.add(2, new_id=False)  # and a redelivery of the new 2
    assert check.renumbered == 1 and (check.duplicates, check.gaps) == (2, 1)
    assert check.summary().endswith("numbered anew 1 times")


def test_the_watcher_remembers_recent_event_ids_only():
    from maskwatch.agent.delivery.watch import RecentIds

    seen = RecentIds(limit=1000)
    for i in range(1010):  # a watch left running: more events than it remembers
        seen.add(f"id-{i}")
    seen.add("id-1009")  # a redelivery is no new id
    assert len(seen) == 1000  # it kept every id before: memory without end
    assert "id-9" not in seen and "id-10" in seen and "id-1009" in seen
