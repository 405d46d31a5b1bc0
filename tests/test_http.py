"""The HTTP endpoint in-process, against hostile input: bombs, bad lengths, floods, tokens.

The agent is built in-process (no broker needed: it is not started) with its real HTTP
server on a free loopback port, the bundled detector and the bundled int8 classifier.
"""

from __future__ import annotations

import json
import resource
import socket
import struct
import threading
import time
import zlib

import cv2
import numpy as np
import pytest

from maskwatch.agent.config import load
from maskwatch.agent.pipeline import FaceView
from maskwatch.agent.service import Agent
from maskwatch.agent.vision.camera import Frame

from .conftest import free_port
from .conftest import http_request as request


def make_agent(tmp_path, *settings: str) -> Agent:
    cfg = load(None, [f"state_dir={tmp_path}", "http.enabled=true", f"http.port={free_port()}",
                      "mqtt.port=1", "device_id=http-test", *settings])
    agent = Agent(cfg, publish=False)
    agent.http.start()
    return agent


@pytest.fixture
def agent(tmp_path):
    a = make_agent(tmp_path, "http.snapshot=true", "http.timeout_s=1",
                   "http.max_connections=4", "http.max_upload_bytes=200000")
    yield a
    a.http.stop()


def url(agent: Agent, path: str) -> str:
    return f"http://127.0.0.1:{agent.http.port}{path}"


def raw(agent: Agent, text: bytes) -> bytes:
    """Send raw bytes, return the whole answer (the server closes the connection)."""
    with socket.create_connection(("127.0.0.1", agent.http.port), timeout=10) as sock:
        sock.sendall(text)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body +
                struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
            chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_snapshot_when_enabled_shows_the_frame_with_boxes(agent):
    assert request(url(agent, "/snapshot.jpg"))[0] == 503  # no frame yet
    image = np.full((120, 160, 3), 90, np.uint8)
    agent.latest_frame = Frame(image, 0.0, 0)
    agent.pipeline.latest = [FaceView((20, 20, 40, 40), 1, "without_mask")]
    status, body = request(url(agent, "/snapshot.jpg"))
    assert status == 200
    jpeg = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert jpeg.shape == (120, 160, 3)
    assert jpeg[20, 40, 2] > 200 and jpeg[20, 40, 0] < 60  # the red no-mask box is drawn
    assert image[20, 40, 2] == 90  # on a copy: the pipeline's frame is untouched


def test_get_on_predict_is_405_with_allow(agent):
    answer = raw(agent, b"GET /v1/predict HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head = answer.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.0 405") and b"Allow: POST" in head


@pytest.mark.faults
def test_negative_and_missing_content_length_are_refused(agent):
    for header in (b"Content-Length: -1\r\n", b"", b"Content-Length: 12abc\r\n"):
        answer = raw(agent, b"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\n" + header + b"\r\n" +
                     b"x" * 1000)
        assert answer.startswith(b"HTTP/1.0 411"), answer[:80]


@pytest.mark.faults
def test_oversized_upload_is_refused_without_reading_it(agent):
    answer = raw(agent, b"POST /v1/predict HTTP/1.1\r\nContent-Length: 400000000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 413") and b"max_upload_bytes" in answer


@pytest.mark.faults
def test_decompression_bomb_is_refused_from_its_header(agent):
    before = rss_mb()
    bomb = png_claiming(60000, 60000)
    assert len(bomb) < 80
    status, body = request(url(agent, "/v1/predict"), bomb)
    assert status == 413 and "60000x60000" in json.loads(body)["error"]
    status, body = request(url(agent, "/v1/predict"), b"GIF89a not supported")
    assert status == 400
    grew = rss_mb() - before
    print(f"\nbomb: 413, peak RSS grew {grew:.1f} MB")
    assert grew < 50


@pytest.mark.faults
def test_a_second_prediction_while_one_runs_gets_503(agent):
    ok, buf = cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))
    assert request(url(agent, "/v1/predict"), buf.tobytes())[0] == 200
    agent.http._predict_slot.acquire()  # a prediction is running
    try:
        assert request(url(agent, "/v1/predict"), buf.tobytes())[0] == 503
    finally:
        agent.http._predict_slot.release()


@pytest.mark.faults
def test_idle_connection_flood_is_bounded_and_recovers(agent):
    threads_before = threading.active_count()
    socks = []
    for _ in range(300):
        s = socket.create_connection(("127.0.0.1", agent.http.port), timeout=5)
        socks.append(s)
    time.sleep(0.5)
    served = threading.active_count() - threads_before
    assert served <= 4 + 1, served  # http.max_connections, not one thread per connection
    deadline, status = time.monotonic() + 10, None
    while time.monotonic() < deadline:  # idle ones time out after http.timeout_s = 1 s
        try:
            status = request(url(agent, "/healthz"))[0]
            if status in (200, 503) and agent.http.server.rejected:
                break
        except OSError:
            pass
        time.sleep(0.2)
    for s in socks:
        s.close()
    assert status == 503  # answers: the health report (no source, no broker), not a hang
    assert agent.http.server.rejected >= 250
    print(f"\nflood: 300 idle connections, {agent.http.server.rejected} refused at once, "
          f"{served} threads")


@pytest.mark.faults
def test_token_required_for_all_but_healthz(tmp_path, monkeypatch):
    monkeypatch.setenv("MW_HTTP_TOKEN", "s3cret token, long enough")
    agent = make_agent(tmp_path, "http.token_env=MW_HTTP_TOKEN")
    try:
        assert request(url(agent, "/healthz"))[0] == 503  # open: no source, no broker
        assert request(url(agent, "/metrics"))[0] == 401
        assert request(url(agent, "/metrics"), headers={"Authorization": "Bearer wrong"})[0] \
            == 401
        assert request(url(agent, "/v1/predict"), b"x")[0] == 401
        status, body = request(url(agent, "/metrics"),
                               headers={"Authorization": "Bearer s3cret token, long enough"})
        assert status == 200 and b"maskwatch_frames_total" in body
    finally:
        agent.http.stop()


def test_token_required_off_loopback(tmp_path):
    from maskwatch.agent.errors import ConfigError

    with pytest.raises(ConfigError, match="http.host: 0.0.0.0 is not a loopback address"):
        load(None, ["http.enabled=true", "http.host=0.0.0.0"])
