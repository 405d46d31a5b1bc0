"""Optional HTTP endpoint (off by default, bound to localhost unless configured).

- GET  /healthz       200 when the camera delivers and the broker is connected, else 503
- GET  /metrics       Prometheus text format
- GET  /snapshot.jpg  latest frame with boxes; 404 unless `http.snapshot` is enabled,
                      because then an image leaves the device
- POST /v1/predict    an encoded image as the request body -> the JSON of `mask-agent detect`
                      (400 for an undecodable image, 413 over `http.max_upload_bytes`)
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from .errors import InputError
from .predict import decode_image, detect_result

log = logging.getLogger("maskwatch.http")


class AgentView(Protocol):
    """What the endpoint needs from the running agent."""

    def stats(self) -> dict: ...

    def health_report(self) -> tuple[bool, dict]: ...

    def snapshot_jpeg(self) -> bytes | None: ...

    def make_predictor(self) -> Any: ...


def prometheus(stats: dict) -> str:
    """Prometheus text exposition of the agent's stats."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP maskwatch_{name} {help_text}")
        lines.append(f"# TYPE maskwatch_{name} {kind}")
        lines.extend(f"maskwatch_{name}{labels} {value}" for labels, value in samples)

    metric("fps", "gauge", "Frames processed per second.", [("", stats["fps"])])
    metric("frames_total", "counter", "Frames processed.", [("", stats["frames"])])
    metric("faces_total", "counter", "Faces detected.", [("", stats["faces"])])
    metric("people_total", "counter", "People decided, by label.",
           [(f'{{label="{k}"}}', v) for k, v in sorted(stats["people"].items())])
    metric("events_total", "counter", "Events produced, by type.",
           [(f'{{type="{k}"}}', v) for k, v in sorted(stats["events"].items())])
    metric("outbox_depth", "gauge", "Events waiting for the broker.",
           [("", stats["outbox_depth"])])
    metric("outbox_dropped_total", "counter", "Events dropped because the outbox was full.",
           [("", stats["outbox_dropped"])])
    metric("broker_connected", "gauge", "1 when connected to the MQTT broker.",
           [("", int(stats["broker_connected"]))])
    metric("source_up", "gauge", "1 when the camera delivers frames.",
           [("", int(stats["source"] == "ok"))])
    metric("uptime_seconds", "gauge", "Seconds since the agent started.",
           [("", stats["uptime_s"])])
    return "\n".join(lines) + "\n"


class HttpEndpoint:
    def __init__(self, cfg: dict, agent: AgentView) -> None:
        self.cfg = cfg["http"]
        self.agent = agent
        self._predictor = None
        self._predict_lock = threading.Lock()
        self.server = ThreadingHTTPServer((self.cfg["host"], self.cfg["port"]),
                                          self._handler_class())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="http",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("HTTP endpoint on http://%s:%s", self.cfg["host"], self.port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def predict(self, body: bytes) -> dict:
        image = decode_image(body)
        with self._predict_lock:  # TFLite interpreters are not thread-safe
            if self._predictor is None:
                self._predictor = self.agent.make_predictor()
            detector, classifier = self._predictor
            return detect_result(image, detector, classifier)

    def _handler_class(self):
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "maskwatch"

            def log_message(self, fmt: str, *args) -> None:
                log.debug("%s %s", self.address_string(), fmt % args)

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, data: dict) -> None:
                self._send(status, json.dumps(data).encode(), "application/json")

            def _error(self, status: int, message: str) -> None:
                self._json(status, {"error": message})

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    ok, report = endpoint.agent.health_report()
                    self._json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, report)
                elif path == "/metrics":
                    self._send(HTTPStatus.OK, prometheus(endpoint.agent.stats()).encode(),
                               "text/plain; version=0.0.4")
                elif path == "/snapshot.jpg":
                    if not endpoint.cfg["snapshot"]:
                        self._error(HTTPStatus.NOT_FOUND,
                                    "snapshots are disabled (set http.snapshot: true)")
                        return
                    jpeg = endpoint.agent.snapshot_jpeg()
                    if jpeg is None:
                        self._error(HTTPStatus.SERVICE_UNAVAILABLE, "no frame yet")
                    else:
                        self._send(HTTPStatus.OK, jpeg, "image/jpeg")
                else:
                    self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: {path}")

            def do_POST(self) -> None:  # noqa: N802
                if self.path.split("?", 1)[0] != "/v1/predict":
                    self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: {self.path}")
                    return
                try:
                    length = int(self.headers.get("Content-Length", ""))
                except ValueError:
                    self._error(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
                    return
                if length > endpoint.cfg["max_upload_bytes"]:
                    self.close_connection = True
                    self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                f"upload of {length} bytes exceeds http.max_upload_bytes "
                                f"({endpoint.cfg['max_upload_bytes']})")
                    return
                body = self.rfile.read(length)
                try:
                    result = endpoint.predict(body)
                except InputError as exc:
                    self._error(HTTPStatus.BAD_REQUEST, str(exc))
                    return
                self._json(HTTPStatus.OK, result)

        return Handler
