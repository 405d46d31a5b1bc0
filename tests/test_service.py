"""The service under systemd's protocols: readiness, watchdog, status, clean stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from .conftest import agent_command, free_port


@pytest.fixture
def notify_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    yield path, sock
    sock.close()


def read_all(sock, seconds: float) -> list[str]:
    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(socket.timeout):
            out.append(sock.recv(4096).decode())
    return out


def test_ready_watchdog_status_and_stop(notify_socket, broker, demo_clip, tmp_path):
    path, sock = notify_socket
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    proc = subprocess.Popen(agent_command(
        "run", "--source", str(demo_clip), "--set", "source.realtime=true",
        "--set", "source.loop=true", "--set", f"state_dir={tmp_path}",
        "--set", f"mqtt.port={broker.port}", "--set", "mqtt.host=127.0.0.1"),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    messages = read_all(sock, 3.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    messages += read_all(sock, 0.5)
    assert proc.returncode == 0, err
    ready = [m for m in messages if "READY=1" in m]
    assert ready and "STATUS=online" in ready[0]
    assert sum("WATCHDOG=1" in m for m in messages) >= 5  # pinged from the frame loop
    assert any(m.startswith("STATUS=") for m in messages)
    assert any("STOPPING=1" in m for m in messages)


def status_until(sock, wanted: str, seconds: float = 60) -> str:
    """The first STATUS= line holding `wanted` (systemd's `systemctl status` line)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(socket.timeout):
            for line in sock.recv(4096).decode().splitlines():
                if line.startswith("STATUS=") and wanted in line:
                    return line[len("STATUS="):]
    raise AssertionError(f"no status line with {wanted!r} in {seconds} s")


def test_the_systemd_status_line_says_whether_events_are_delivered(
        notify_socket, broker, demo_clip, tmp_path):
    """`systemctl status maskwatch` is where an operator looks first. Through a broker
    outage it said `online` and nothing more (seen under systemd as PID 1): now it names
    the broker, why it is not delivering, what waits in the outbox, and whom it counted."""
    path, sock = notify_socket
    env = {**os.environ, "NOTIFY_SOCKET": path}
    proc = subprocess.Popen(agent_command(
        "run", "--source", str(demo_clip), "--set", "source.realtime=true",
        "--set", "source.loop=true", "--set", f"state_dir={tmp_path}",
        "--set", f"mqtt.port={broker.port}", "--set", "mqtt.host=127.0.0.1"),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = status_until(sock, "with_mask")  # the demo's people, once decided
        assert line.startswith("online; ") and \
            f" fps; delivering to 127.0.0.1:{broker.port}; " in line, line
        broker.stop()
        line = status_until(sock, "waiting in the outbox")
        assert f"MQTT broker 127.0.0.1:{broker.port}" in line, line
        assert "delivering" not in line
        broker.start()
        line = status_until(sock, f"delivering to 127.0.0.1:{broker.port}")
        assert "outbox" in line
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]


def test_run_with_bad_config_exits_78(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("detect:\n  fps: -1\n")
    result = subprocess.run(agent_command("run", "--config", str(bad)), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 78
    assert result.stderr.strip() == ("mask-agent: error: config: detect.fps: expected a number "
                                     "from 0.1 to 120, got -1")


def test_source_that_never_opens_exits_66_with_a_hint(tmp_path):
    result = subprocess.run(agent_command(
        "run", "--source", str(tmp_path / "nope.mp4"), "--set", f"state_dir={tmp_path}",
        "--set", "mqtt.port=1"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 66
    assert result.stderr.strip().splitlines() == [
        f"mask-agent: error: video file not found: {tmp_path / 'nope.mp4'}"]


def test_missing_source_is_waited_for_with_source_wait(broker, tmp_path):
    """The systemd unit sets source.wait: a camera that is not there yet is retried."""
    proc = subprocess.Popen(agent_command(
        "run", "--source", "/dev/video97", "--set", f"state_dir={tmp_path}",
        "--set", f"mqtt.port={broker.port}", "--set", "mqtt.host=127.0.0.1",
        "--set", "source.wait=true", "--set", "source.retry_initial_s=0.1"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    assert proc.poll() is None  # still running, retrying
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "camera /dev/video97 does not exist" in err and "waiting for it" in err


@pytest.mark.slow
def test_long_run_memory_is_flat(state_dir, street_video, tmp_path):
    """>= 20,000 frames of looping video: RSS growth after warm-up stays under 10 MB.

    Slow (about 2 minutes): run with `pytest -m slow`. Prints the figures.
    """
    script = f"""
import resource, json
from maskwatch.agent import config
from maskwatch.agent.vision.camera import FileSource
from maskwatch.agent.factory import pipeline_from
cfg = config.load(None, ["state_dir={state_dir}"])
pipeline = pipeline_from(cfg)
source = FileSource({str(street_video)!r}, loop=True)
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
warm = None
for i in range(21000):
    transitions = pipeline.process(source.read())
    if i == 1000:
        warm = rss()
print(json.dumps({{"frames": i + 1, "rss_after_warmup_mb": round(warm, 1),
                  "rss_end_mb": round(rss(), 1)}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=900, cwd=os.getcwd())
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"\nlong run: {figures}")
    assert figures["frames"] >= 20000
    assert figures["rss_end_mb"] - figures["rss_after_warmup_mb"] < 10


def test_service_runs_in_process_on_the_bundled_clip(tmp_path, caplog):
    """The loop without a subprocess or a broker: events reach listeners, counts add up."""
    import logging

    from maskwatch.agent.config import load
    from maskwatch.agent.demo import DEMO_CLIP
    from maskwatch.agent.service import Agent

    cfg = load(None, [f"state_dir={tmp_path}", "mqtt.port=1", "device_id=inproc"])
    agent = Agent(cfg, publish=False)
    seen: list[dict] = []
    agent.on_event.append(seen.append)
    with caplog.at_level(logging.INFO, logger="maskwatch"):
        code = agent.run(str(DEMO_CLIP), until_eof=True)
    assert code == 0
    news = [e for e in seen if e["type"] == "new"]
    ends = [e for e in seen if e["type"] == "end"]
    assert len(news) >= 8 and sorted(e["track_id"] for e in news) == sorted(
        e["track_id"] for e in ends)  # one new and one end per person
    assert sum(agent.health.people.values()) == len(news)
    assert sum(agent.health.people_left.values()) == len(ends)  # counted by final label
    assert all(e["label"] in e["label_seconds"] for e in ends)
    assert all("label_seconds" not in e for e in seen if e["type"] != "end")
    assert {"with_mask", "without_mask"} <= set(agent.health.people)
    assert agent.outbox.depth() == len(seen) + sum(  # queued: events + unmasked alerts
        e["label"] == "without_mask" for e in seen if e["type"] in ("new", "update"))
    lines = [r.getMessage() for r in caplog.records]
    assert sum(line.startswith("person #") for line in lines) == len(seen)
    assert any(line.startswith("stopped after 250 frames") for line in lines)


def test_demo_prints_events_and_a_summary_without_broker_or_shared(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path)}  # an empty home: nothing fetched, nothing kept
    result = subprocess.run(agent_command("demo", "--set", f"mqtt.port={free_port()}"),
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0].startswith("no MQTT broker answers at localhost:")
    events = [line for line in out if " person #" in line]
    assert len(events) >= 20 and any("without_mask" in line for line in events)
    assert any(line.startswith("people: with_mask") for line in out)
    assert "INFO: Created TensorFlow Lite" not in result.stderr  # the banner is silenced
    assert not any(tmp_path.iterdir())  # no state left behind


def test_a_camera_is_asked_for_the_size_the_detector_needs():
    """Left at its own default a camera often sends 1080p: decoded only to be shrunk."""
    from maskwatch.agent.vision.camera import capture_size
    from maskwatch.agent.vision.config import SourceConfig

    def asked(max_side: int) -> tuple:
        settings = capture_size(SourceConfig(), max_side)
        return settings.width, settings.height

    assert asked(480) == (640, 480) and asked(960) == (1280, 720)
    assert asked(4000) == (1920, 1080)  # the largest common mode
    mine = SourceConfig(width=800, height=600)
    assert capture_size(mine, 480) == mine  # configured: asked as it is
