"""Fault injection (`pytest -m faults`): a full disk, a locked database, a frozen broker,
queued alerts, broken sources and hostile config. Each asserts that every event produced
is delivered (by id), or the documented exit code and a one-line error.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from maskwatch.agent.bench.brokers import wait_until
from maskwatch.agent.config import load
from maskwatch.agent.delivery.mqtt_client import V5
from maskwatch.agent.delivery.outbox import ResilientOutbox
from maskwatch.agent.delivery.publish import Publisher
from maskwatch.agent.demo import DEMO_CLIP
from maskwatch.agent.factory import topics_from

from .conftest import agent_command, free_port, missing, mosquitto_persistent
from .mqtt_helpers import Collector

pytestmark = pytest.mark.faults


def publisher_for(port: int, outbox: ResilientOutbox, device: str = "faulty",
                  *settings: str) -> Publisher:
    cfg = load(None, [f"mqtt.port={port}", "mqtt.host=127.0.0.1", f"device_id={device}",
                      "mqtt.reconnect_min_s=0.2", "mqtt.reconnect_max_s=0.5",
                      "homeassistant.enabled=false", *settings])
    return Publisher(cfg.mqtt, topics_from(cfg), outbox, None)


@contextlib.contextmanager
def publishing_to(port: int, outbox: ResilientOutbox, topic: str = "maskwatch/faulty/events"):
    """A started publisher of device `faulty` (publisher_for) and a watcher of `topic`
    on the broker at `port`: (publisher, collector). At the end the publisher gets 2 s to
    drain and both stop; what the collector got stays readable."""
    publisher = publisher_for(port, outbox)
    collector = Collector(port, topic)
    publisher.start()
    try:
        yield publisher, collector
    finally:
        publisher.stop(drain_timeout_s=2)
        collector.close()


def produce(publisher: Publisher, n: int, size: int = 200) -> list[str]:
    ids = []
    for i in range(n):
        event_id = str(uuid.uuid4())
        payload = json.dumps({"id": event_id, "n": i, "pad": "x" * size}).encode()
        publisher.queue(publisher.topics.events, payload)
        ids.append(event_id)
    return ids


def delivered_ids(collector: Collector) -> list[str]:
    return [json.loads(p)["id"] for p in collector.on("/events")]


def first_seen(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


@contextlib.contextmanager
def small_filesystem(path: Path, kib: int):
    """A real tmpfs of `kib` KiB, owned by this user: mounted as root, or by a user with sudo
    through `sudo -n` (never a password prompt), else skip (fail in CI)."""
    path.mkdir()
    as_root = [] if os.geteuid() == 0 or not shutil.which("sudo") else ["sudo", "-n"]
    options = f"size={kib}k,uid={os.getuid()},gid={os.getgid()},mode=0700"
    mounted = subprocess.run([*as_root, "mount", "-t", "tmpfs", "-o", options, "tmpfs",
                              str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        missing(f"cannot mount a small tmpfs (needs root or sudo): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run([*as_root, "umount", "-l", str(path)], capture_output=True)


def fill(path: Path, leave: int = 0) -> Path:
    """Fill the filesystem holding `path` (leaving about `leave` bytes)."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    if leave:
        with open(filler, "r+b") as f:
            f.truncate(max(0, filler.stat().st_size - leave))
    return filler


def test_disk_full_falls_back_to_memory_delivers_all_and_goes_back(make_broker, tmp_path):
    broker = make_broker()  # not started: the broker is down while the disk fills up
    with small_filesystem(tmp_path / "small", 512) as disk:
        outbox = ResilientOutbox(disk / "outbox.sqlite3", retry_s=0.1)
        filler = fill(disk, leave=40_000)
        publisher = publisher_for(broker.port, outbox)
        ids = produce(publisher, 125, size=600)
        assert outbox.degraded and outbox.in_memory() > 0, "the disk should have filled up"
        assert outbox.depth() == 125  # nothing lost: part on disk, the rest in memory
        in_memory = outbox.in_memory()
        broker.start()
        collector = Collector(broker.port, "maskwatch/faulty/events")
        publisher.start()
        try:
            assert collector.wait_for(lambda: len(set(delivered_ids(collector))) >= 125, 30)
        finally:
            publisher.stop(drain_timeout_s=2)
            collector.close()
        assert first_seen(delivered_ids(collector)) == ids  # all, in order
        filler.unlink()
        time.sleep(0.2)
        more = produce(publisher, 5)
        assert not outbox.degraded and outbox.in_memory() == 0  # back on disk
        assert outbox.depth() == len(more)
        print(f"\ndisk full: produced 125, {in_memory} kept in memory, delivered "
              f"{len(set(delivered_ids(collector)))}, lost 0; back on disk after space freed")


LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def test_database_locked_by_another_process_loses_nothing_and_never_stalls(broker, tmp_path):
    outbox = ResilientOutbox(tmp_path / "outbox.sqlite3", retry_s=0.2)
    with publishing_to(broker.port, outbox) as (publisher, collector):
        locker = subprocess.Popen([sys.executable, "-c", LOCKER,
                                   str(tmp_path / "outbox.sqlite3"), "3"],
                                  stdout=subprocess.PIPE, text=True)
        assert locker.stdout.readline().strip() == "locked"
        ids, slowest = [], 0.0
        for _ in range(20):
            t0 = time.monotonic()
            ids += produce(publisher, 1)
            slowest = max(slowest, time.monotonic() - t0)
        # all 20 written while the other process still holds its 3 s lock: no write waited
        # for the lock to go (a behaviour, not a timer; the slowest write is printed)
        assert locker.poll() is None
        assert outbox.degraded  # the lock pushed events to memory ...
        locker.wait(timeout=30)
        time.sleep(0.3)
        ids += produce(publisher, 105)  # ... and the outbox went back to disk afterwards
        assert not outbox.degraded
        assert collector.wait_for(lambda: len(set(delivered_ids(collector))) >= 125, 30)
    assert first_seen(delivered_ids(collector)) == ids
    print(f"\ndatabase locked 3 s: produced 125, delivered {len(set(delivered_ids(collector)))}"
          f", lost 0; slowest write {slowest * 1000:.0f} ms")


def test_frozen_broker_then_back(make_broker, tmp_path):
    broker = make_broker().start()
    outbox = ResilientOutbox(tmp_path / "outbox.sqlite3")
    with publishing_to(broker.port, outbox) as (publisher, collector):
        ids = produce(publisher, 40)
        broker.proc.send_signal(signal.SIGSTOP)  # hangs: no RST, no answers
        ids += produce(publisher, 60)
        time.sleep(4)
        broker.proc.send_signal(signal.SIGCONT)
        ids += produce(publisher, 25)
        assert collector.wait_for(lambda: len(set(delivered_ids(collector))) >= 125, 60)
    assert first_seen(delivered_ids(collector)) == ids
    assert outbox.depth() == 0


@contextlib.contextmanager
def closing_every_connection(port: int, levels: list[int] | None = None,
                             at_most: int = 0):
    """What a TCP load balancer in front of a broker that is down does: it takes each
    connection and closes it, with no MQTT answer (HAProxy, a cloud balancer, a
    Kubernetes service with no ready pod). Each CONNECT's protocol level (5: MQTT 5,
    4: 3.1.1) goes to `levels`; after `at_most` connections (0: no limit) it stops
    listening, so the next attempt is refused."""
    server = socket.create_server(("127.0.0.1", port))
    server.settimeout(0.1)
    closed = threading.Event()

    def serve() -> None:
        served = 0
        while not closed.is_set() and (not at_most or served < at_most):
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with contextlib.suppress(OSError):
                conn.settimeout(1)
                level = protocol_level(conn.recv(1024))
                if levels is not None and level is not None:
                    levels.append(level)
            conn.close()
            served += 1
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        closed.set()
        thread.join(5)
        server.close()


def protocol_level(connect: bytes) -> int | None:
    """The protocol level of an MQTT CONNECT packet (5: MQTT 5, 4: 3.1.1): after the
    fixed header (type, then a variable-length remaining length) comes the protocol name
    ("MQTT", length-prefixed), then the level."""
    if not connect or connect[0] != 0x10:
        return None
    i = 1
    while i < len(connect) and connect[i] & 0x80:
        i += 1
    at = i + 1 + 2 + 4
    return connect[at] if at < len(connect) else None


def test_mqtt5_stays_when_a_load_balancer_closes_connections_while_the_broker_is_down(
        make_broker, tmp_path):
    """A broker that has answered MQTT 5 keeps MQTT 5. A connection closed before any
    answer means 'no MQTT 5' only from a broker that never answered it (RabbitMQ 3.10);
    from one that did, it is the broker down behind a load balancer (or restarting). The
    agent used to fall back to 3.1.1 there for good, and stop seeing the broker's
    refusals, after one outage."""
    broker = make_broker(mosquitto_persistent(tmp_path)).start()  # the watcher's session
    outbox = ResilientOutbox(tmp_path / "outbox.sqlite3")
    with publishing_to(broker.port, outbox) as (publisher, collector):
        ids = produce(publisher, 5)
        assert collector.wait_for(lambda: len(set(delivered_ids(collector))) >= 5, 30)
        broker.stop()
        with closing_every_connection(broker.port):
            ids += produce(publisher, 5)
            wait_until(lambda: "without answering the CONNECT" in (publisher.last_error or ""),
                       "the device saying the connection was closed unanswered", timeout=30)
        broker.start()
        ids += produce(publisher, 5)
        assert collector.wait_for(lambda: len(set(delivered_ids(collector))) >= 15, 60)
        assert publisher.protocol == V5
    assert set(delivered_ids(collector)) == set(ids)
    assert outbox.depth() == 0


def test_mqtt5_comes_back_when_the_first_broker_was_down_behind_a_load_balancer(
        make_broker, tmp_path):
    """A device that first starts while its broker is down behind a load balancer sees
    its MQTT 5 CONNECT closed unanswered, as RabbitMQ 3.10 closes it, and tries MQTT
    3.1.1. Closed unanswered too, that was no answer about MQTT 5: the next attempt
    speaks MQTT 5 again, and once the broker is up the device uses it. It used to keep
    3.1.1 until restarted, where a publish the broker's ACL refuses looks delivered."""
    broker = make_broker(mosquitto_persistent(tmp_path)).start()
    collector = Collector(broker.port, "maskwatch/faulty/events")  # its session is kept
    broker.stop()
    outbox = ResilientOutbox(tmp_path / "outbox.sqlite3")
    publisher = publisher_for(broker.port, outbox)
    levels: list[int] = []
    try:
        with closing_every_connection(broker.port, levels, at_most=4):
            publisher.start()
            ids = produce(publisher, 5)
            wait_until(lambda: len(levels) >= 4, "four attempts at the load balancer", 30)
        assert levels == [5, 4, 5, 4], "after an unanswered MQTT 3.1.1 attempt, MQTT 5 again"
        broker.start()
        assert collector.wait_for(lambda: len(set(delivered_ids(collector))) >= 5, 60)
        assert publisher.protocol == V5
    finally:
        publisher.stop(drain_timeout_s=2)
        collector.close()
    assert set(delivered_ids(collector)) == set(ids)
    assert outbox.depth() == 0


def test_unmasked_alerts_are_queued_through_an_outage(make_broker, tmp_path):
    broker = make_broker(mosquitto_persistent(tmp_path)).start()  # the subscriber's queue survives
    outbox = ResilientOutbox(tmp_path / "o.sqlite3")
    with publishing_to(broker.port, outbox, "maskwatch/faulty/unmasked") as (publisher,
                                                                            collector):
        for i in range(20):
            if i == 5:
                broker.stop()
            if i == 15:
                broker.start()
            publisher.queue(publisher.topics.unmasked, "ON")
            time.sleep(0.2)
        assert collector.wait_for(lambda: len(collector.on("/unmasked")) >= 20, 30)
    assert collector.on("/unmasked")[:20] == [b"ON"] * 20


def run_agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(agent_command(*args), capture_output=True, text=True,
                          timeout=timeout)


def test_a_second_agent_on_one_state_dir_exits_75_at_once_naming_the_first(broker, tmp_path):
    """The service runs and the README's camera check starts a second agent by hand: one
    outbox, one MQTT client id, two sessions knocking each other off the broker. The
    second stops before any work; once the first is gone, it runs."""
    common = ["--set", f"state_dir={tmp_path}", "--set", f"mqtt.port={broker.port}",
              "--set", "mqtt.host=127.0.0.1"]
    first = subprocess.Popen(agent_command("run", "--source", str(DEMO_CLIP), "--set",
                                           "source.realtime=true", "--set", "source.loop=true",
                                           *common),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = tmp_path / "agent.lock"
    try:
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None and time.monotonic() < deadline, "no lock taken"
            time.sleep(0.05)
        second = run_agent("run", "--source", str(DEMO_CLIP), "--until-eof", *common)
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 75 and len(lines) == 1, second.stderr
        assert f"another mask-agent (pid {first.pid}) runs with the state dir" in lines[0]
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
    again = run_agent("run", "--source", str(DEMO_CLIP), "--until-eof", *common, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]


def test_until_eof_without_broker_exits_75_and_says_how_many(tmp_path):
    result = run_agent("run", "--source", str(DEMO_CLIP), "--until-eof",
                       "--set", f"state_dir={tmp_path}", "--set", f"mqtt.port={free_port()}",
                       "--set", "mqtt.host=127.0.0.1", timeout=120)
    assert result.returncode == 75, result.stderr[-2000:]
    assert "events not yet delivered stay in the outbox" in result.stderr
    with sqlite3.connect(tmp_path / "outbox.sqlite3") as db:
        kept = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    assert kept > 20 and f"{kept} events not yet delivered" in result.stderr
    assert "waiting up to 10 s" in result.stderr  # no broker ever answered: no minute's wait


@pytest.fixture
def bad_sources(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("just some text\n")
    noise = tmp_path / "noise.mp4"
    # fixed noise: a fresh random draw now and then holds something FFmpeg will decode
    noise.write_bytes(random.Random(3).randbytes(200_000))
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(DEMO_CLIP.read_bytes()[:2000])
    folder = tmp_path / "folder"
    folder.mkdir()
    return {"missing file": (str(tmp_path / "nope.mp4"), "video file not found"),
            "text file": (str(text), "not a video"),
            "random bytes": (str(noise), "not a video"),
            "truncated mp4": (str(truncated), "not a video"),
            "directory": (str(folder), "is a directory"),
            "missing camera": ("/dev/video9", "does not exist"),
            "closed RTSP port": (f"rtsp://127.0.0.1:{free_port()}/stream", "cannot open stream")}


def test_sources_that_never_open_exit_66_at_once(bad_sources, tmp_path):
    for what, (uri, message) in bad_sources.items():
        t0 = time.monotonic()
        result = run_agent("run", "--source", uri, "--until-eof", "--set",
                           f"state_dir={tmp_path}", "--set", "mqtt.port=1")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 66, (what, result.stderr)
        assert len(lines) == 1 and message in lines[0], (what, lines)
        print(f"\n{what}: exit 66 in {time.monotonic() - t0:.1f} s: {lines[0]}")


def demo_clip_delivered(broker, state_dir: Path, device: str):
    """`run --until-eof` on the bundled clip with this state dir: its result, the events
    it produced, and a collector that has waited for as many to arrive."""
    collector = Collector(broker.port, f"maskwatch/{device}/events")
    try:
        result = run_agent("run", "--source", str(DEMO_CLIP), "--until-eof",
                           "--set", f"state_dir={state_dir}", "--set", f"mqtt.port={broker.port}",
                           "--set", "mqtt.host=127.0.0.1", "--set", f"device_id={device}",
                           timeout=120)
        produced = result.stderr.count("person #")
        assert collector.wait_for(lambda: len(collector.on("/events")) >= produced, 10)
    finally:
        collector.close()
    return result, produced, collector


def test_unwritable_state_dir_exits_74_after_delivering(broker, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    result, produced, collector = demo_clip_delivered(broker, blocker, "door5")
    assert result.returncode == 74, result.stderr[-1000:]
    assert "could not be written" in result.stderr
    assert produced > 20 and len(set(delivered_ids(collector))) == produced


def damaged_outbox(path: Path, damage: str) -> bytes:
    """An outbox file as a power cut or a file-system repair may leave it: garbage where
    the header was, or a real outbox of 300 events cut to half its pages."""
    path.parent.mkdir(parents=True)
    if damage == "not a database":
        path.write_bytes(random.Random(7).randbytes(8192))
    else:
        outbox = ResilientOutbox(path)
        for n in range(300):
            outbox.put("maskwatch/door8/events", json.dumps({"n": n, "pad": "x" * 400}).encode())
        outbox.close()
        whole = path.read_bytes()
        path.write_bytes(whole[:len(whole) // 2 // 4096 * 4096])
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["not a database", "truncated"])
def test_a_damaged_outbox_is_set_aside_and_events_go_to_a_new_one(broker, tmp_path, damage):
    """No retry mends a damaged file: before, the agent kept every event in memory for as
    long as it ran (and lost them at each restart); now it sets the file aside and goes on
    on disk."""
    state = tmp_path / "state"
    before = damaged_outbox(state / "outbox.sqlite3", damage)
    result, produced, collector = demo_clip_delivered(broker, state, "door8")
    assert result.returncode == 0, result.stderr[-1000:]
    assert produced > 20 and len(set(delivered_ids(collector))) == produced
    said = [line for line in result.stderr.splitlines() if "moved to" in line]
    assert len(said) == 1 and "ERROR" in said[0] and "new event outbox started" in said[0]
    aside = list(state.glob("outbox.sqlite3.damaged-*"))
    assert len(aside) == 1 and str(aside[0]) in said[0]
    assert aside[0].read_bytes() == before  # kept as it was, for whoever looks
    with sqlite3.connect(state / "outbox.sqlite3") as db:  # the new one: a database, empty
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    assert "in memory" not in result.stderr


def test_image_bomb_and_bad_annotate_folder_on_the_cli(tmp_path):
    from .test_http import png_claiming

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(60000, 60000))
    result = run_agent("detect", str(bomb), "--set", f"state_dir={tmp_path}")
    assert result.returncode == 65
    assert result.stderr.strip() == (f"mask-agent: error: image {bomb} is 60000x60000 pixels, "
                                     "more than the 40000000 allowed (detect.max_image_pixels)")
    a_file = tmp_path / "out.jpg"
    a_file.write_text("")
    result = run_agent("detect", str(bomb), "--annotate", str(a_file))
    assert result.returncode == 2
    assert result.stderr.strip() == f"mask-agent: error: --annotate {a_file}: exists and is " \
                                    "not a folder"


EMFILE_PROBE = """
import os, resource, sys
from maskwatch.agent.vision.camera import open_source
from maskwatch.agent.config import SourceConfig
from maskwatch.agent.errors import SourceError
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
try:
    open_source(sys.argv[1], SourceConfig())
except SourceError as exc:
    print(exc)
"""


def test_out_of_file_descriptors_is_said_so(demo_clip):
    result = subprocess.run([sys.executable, "-c", EMFILE_PROBE, str(demo_clip)],
                            capture_output=True, text=True, timeout=60)
    assert "out of file descriptors" in result.stdout, result.stdout + result.stderr
