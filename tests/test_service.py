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

from .conftest import agent_command


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


def test_ready_watchdog_status_and_stop(notify_socket, broker, state_dir, street_video,
                                        tmp_path):
    path, sock = notify_socket
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    proc = subprocess.Popen(agent_command(
        "run", "--source", str(street_video), "--set", "source.realtime=true",
        "--set", f"state_dir={state_dir}", "--set", f"outbox.path={tmp_path}/o.sqlite3",
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
from maskwatch.agent.camera import FileSource
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
