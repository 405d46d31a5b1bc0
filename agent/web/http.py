"""Optional HTTP endpoint (off by default, bound to localhost unless configured).

- GET  /healthz       200 when the camera delivers and the broker is connected, else 503
- GET  /metrics       Prometheus text format
- GET  /snapshot.jpg  latest frame with boxes; 404 unless `http.snapshot` is enabled,
                      because then an image leaves the device
- POST /v1/predict    an encoded image as the request body -> the JSON of `mask-agent detect`
                      (400 undecodable, 411 no length, 413 too many bytes or pixels,
                      503 while another prediction runs)
- /, /console/...     the web console (agent/web/console.py) when `http.console` is on; it
                      has its own login (the same token) and CSRF checks

Once enabled it is an attack surface on a small device, so it is bounded everywhere:
a bearer token (required off loopback) for everything but /healthz, at most
`http.max_connections` connections served at once, idle connections closed after
`http.timeout_s`, uploads read up to `http.max_upload_bytes` and no further, image
headers checked before decoding, one prediction at a time, one log line per bad request.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import re
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs

from ..errors import ConfigError, InputError
from ..throttle import Throttle
from ..vision.predict import ImageTooLarge, decode_image, detect_result
from .config import HttpConfig, http_token

log = logging.getLogger("maskwatch.http")
throttle = Throttle(log)
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

BACKLOG = 64
REAPER_TICK_S = 0.25
MIN_UPLOAD_BYTES_S = 32 * 1024  # an upload slower than this is cut off
CONSOLE_MAX_BODY = 64 * 1024  # a console POST is a few ids or a login: never megabytes


QUERY = re.compile(r"\?[^\s'\"]*")  # a query string, kept out of log lines


class Deadline:
    """One connection's deadline: shut down by the Reaper when `seconds` pass before
    `cancel()`. A socket timeout only bounds each read; a byte every few seconds never
    trips it, so without this 16 trickling clients held every slot."""

    def __init__(self, reaper: Reaper, connection: socket.socket, seconds: float) -> None:
        self.connection, self.seconds, self.expired = connection, seconds, False
        self.due = time.monotonic() + seconds
        self.reaper = reaper
        reaper.add(self)

    def expire(self) -> None:
        self.expired = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self.reaper.discard(self)


class Reaper:
    """One thread for all deadlines (a timer per connection would double the threads)."""

    def __init__(self) -> None:
        self._deadlines: set[Deadline] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="http-deadlines", daemon=True)
        self._thread.start()

    def add(self, deadline: Deadline) -> None:
        with self._lock:
            self._deadlines.add(deadline)

    def discard(self, deadline: Deadline) -> None:
        with self._lock:
            self._deadlines.discard(deadline)

    def _run(self) -> None:
        while True:
            time.sleep(REAPER_TICK_S)
            now = time.monotonic()
            with self._lock:
                due = [d for d in self._deadlines if d.due <= now]
                self._deadlines.difference_update(due)
            for deadline in due:
                deadline.expire()


class HostNames:
    """The Host headers this device answers to: any IP address (a browser that typed an
    address sends it), localhost, this machine's names and `http.allowed_hosts`. Another
    name means a page of another site whose name was made to resolve here (DNS rebinding):
    it gets 421, and neither the console nor the API."""

    def __init__(self, extra: tuple[str, ...] = ()) -> None:
        hostname = socket.gethostname().lower()
        self.names = {"localhost", hostname, f"{hostname}.local", socket.getfqdn().lower(),
                      *(name.lower() for name in extra)}

    def allows(self, header: str) -> bool:
        host = header.strip().lower()
        if host.startswith("["):  # [::1]:8080
            host = host[1:host.find("]")] if "]" in host else host
        elif host.count(":") == 1:
            host = host.split(":", 1)[0]
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            return host.rstrip(".") in self.names or host in self.names


class AgentView(Protocol):
    """What the endpoint needs from the running agent."""

    def stats(self) -> dict: ...

    def health_report(self) -> tuple[bool, dict]: ...

    def snapshot_jpeg(self) -> bytes | None: ...

    def make_predictor(self) -> Any: ...

    def make_console(self, token: str | None) -> Any: ...


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
    metric("people_total", "counter", "People decided, by their first label.",
           [(f'{{label="{k}"}}', v) for k, v in sorted(stats["people"].items())])
    metric("people_left_total", "counter", "People who left, by the label they had then.",
           [(f'{{label="{k}"}}', v) for k, v in sorted(stats.get("people_left", {}).items())])
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


_BUSY_BODY = b'{"error": "too many connections"}\r\n'
BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_BUSY_BODY) + _BUSY_BODY)


class BoundedServer(ThreadingHTTPServer):
    """A threading server that serves at most `max_connections` at once (each closed after
    `timeout_s` idle); a connection beyond that gets an immediate 503 and is closed, so a
    flood of idle connections costs neither threads nor file descriptors."""

    daemon_threads = True
    request_queue_size = BACKLOG

    def __init__(self, address, handler, max_connections: int, timeout_s: float) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self.connection_timeout = timeout_s
        self.rejected = 0
        self.reaper = Reaper()
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.rejected += 1
            try:
                request.settimeout(0.5)
                request.sendall(BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            request.settimeout(self.connection_timeout)
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        log.info("HTTP connection from %s failed", client_address[0])  # no traceback


class HttpEndpoint:
    def __init__(self, settings: HttpConfig, max_image_pixels: int, agent: AgentView) -> None:
        self.cfg = settings
        self.max_pixels = max_image_pixels  # detect.max_image_pixels
        self.agent = agent
        self.token = http_token(settings)
        self.names = HostNames(settings.allowed_hosts)
        self._predictor = None
        self._predict_slot = threading.Semaphore(1)  # decode + predict: one at a time
        self.console = agent.make_console(self.token) if self.cfg.console else None
        try:
            self.server = BoundedServer((self.cfg.host, self.cfg.port), self._handler_class(),
                                        self.cfg.max_connections, self.cfg.timeout_s)
        except OSError as exc:
            raise ConfigError(f"config: http.port: cannot listen on {self.cfg.host}:"
                              f"{self.cfg.port}: {exc.strerror}") from None
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="http",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("HTTP endpoint on http://%s:%s%s", self.cfg.host, self.port,
                 " (token required)" if self.token else "")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def authorised(self, header: str | None) -> bool:
        if self.token is None:
            return True
        expected = f"Bearer {self.token}".encode()
        return header is not None and hmac.compare_digest(header.encode(), expected)

    def predict(self, body: bytes) -> dict | None:
        """The detect JSON, or None when another prediction is running (503)."""
        if not self._predict_slot.acquire(blocking=False):
            return None
        try:
            image = decode_image(body, max_pixels=self.max_pixels)
            if self._predictor is None:
                self._predictor = self.agent.make_predictor()
            detector, classifier = self._predictor
            return detect_result(image, detector, classifier)
        finally:
            self._predict_slot.release()

    def _handler_class(self):
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "maskwatch"
            protocol_version = "HTTP/1.0"

            def log_message(self, fmt: str, *args) -> None:
                # the status stays, the query goes (it may hold a token)
                log.debug("%s %s", self.address_string(), QUERY.sub("?…", fmt % args))

            def log_error(self, fmt: str, *args) -> None:
                throttle.log(logging.INFO, "bad", "bad HTTP request from %s: %s",
                             self.address_string(), QUERY.sub("?…", fmt % args))

            def _send(self, status: int, body: bytes, content_type: str,
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, data: dict,
                      headers: dict[str, str] | None = None) -> None:
                self._send(status, json.dumps(data).encode(), "application/json", headers)

            def _error(self, status: int, message: str,
                       headers: dict[str, str] | None = None) -> None:
                if status >= 400 and status != HTTPStatus.NOT_FOUND:
                    log.info("HTTP %d for %s %s from %s: %s", status, self.command,
                             self._path(), self.address_string(), message)
                self._json(status, {"error": message}, headers)

            def _allowed(self) -> bool:
                if endpoint.authorised(self.headers.get("Authorization")):
                    return True
                self.close_connection = True
                self.send_response(HTTPStatus.UNAUTHORIZED)
                self.send_header("WWW-Authenticate", 'Bearer realm="maskwatch"')
                body = b'{"error": "a bearer token is required"}'
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                throttle.log(logging.INFO, "401", "HTTP 401 for %s %s from %s", self.command,
                             self._path(), self.address_string())
                return False

            def handle_one_request(self) -> None:
                # http.timeout_s bounds each read; this bounds the whole request line and
                # headers, so that a client trickling a byte at a time cannot hold a slot
                deadline = Deadline(endpoint.server.reaper, self.connection,
                                    endpoint.cfg.timeout_s)
                self.deadline = deadline
                try:
                    super().handle_one_request()
                except (socket.timeout, ConnectionError, OSError) as exc:
                    throttle.log(logging.INFO, "dropped", "HTTP connection from %s dropped: %s",
                                 self.address_string(), type(exc).__name__)
                    self.close_connection = True
                finally:
                    deadline.cancel()
                if deadline.expired:
                    throttle.log(logging.INFO, "slow", "HTTP connection from %s closed: request "
                                 "not complete within %.0f s", self.address_string(),
                                 deadline.seconds)

            def parse_request(self) -> bool:
                parsed = super().parse_request()
                self.deadline.cancel()  # headers are in: the body has its own deadline
                return parsed

            def _console(self, method: str, body: bytes = b"") -> bool:
                """Serve the console's paths (True), or leave the request alone."""
                path, _, query = self.path.partition("?")
                if endpoint.console is None or not (path == "/" or path.startswith("/console")):
                    return False
                from .console import Request

                reply = endpoint.console.handle(Request(
                    method, path, parse_qs(query), self.headers, body,
                    endpoint.console.bearer_ok(self.headers.get("Authorization")),
                    self.address_string()))
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Security-Policy", CSP)
                self.send_header("Referrer-Policy", "no-referrer")
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                self.send_header("X-Content-Type-Options", "nosniff")
                self.send_header("X-Frame-Options", "DENY")
                self.end_headers()
                self.wfile.write(reply.body)
                return True

            def _host_ok(self) -> bool:
                """False after answering 421: the request names a host that is not this
                device (a page on another site whose name now resolves here)."""
                host = self.headers.get("Host")
                if host is None or endpoint.names.allows(host):
                    return True
                self.close_connection = True
                throttle.log(logging.WARNING, "host", "HTTP 421 for %s %s from %s: Host %r "
                             "is not one of this device's names (http.allowed_hosts)",
                             self.command, self._path(), self.address_string(), host[:80])
                self._json(HTTPStatus.MISDIRECTED_REQUEST,
                           {"error": "this device does not answer to that host name"})
                return False

            def _path(self) -> str:
                """The path for log lines: never the query, which may hold a secret."""
                return self.path.split("?", 1)[0][:80]

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    ok, report = endpoint.agent.health_report()
                    self._json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, report)
                    return
                if not self._host_ok() or self._console("GET"):
                    return
                if not self._allowed():
                    return
                if path == "/metrics":
                    self._send(HTTPStatus.OK, prometheus(endpoint.agent.stats()).encode(),
                               "text/plain; version=0.0.4")
                elif path == "/snapshot.jpg":
                    self._snapshot()
                elif path == "/v1/predict":
                    self._error(HTTPStatus.METHOD_NOT_ALLOWED,
                                "POST an encoded image as the request body", {"Allow": "POST"})
                else:
                    self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: {path}")

            def _snapshot(self) -> None:
                if not endpoint.cfg.snapshot:
                    self._error(HTTPStatus.NOT_FOUND,
                                "snapshots are disabled (set http.snapshot: true)")
                    return
                jpeg = endpoint.agent.snapshot_jpeg()
                if jpeg is None:
                    self._error(HTTPStatus.SERVICE_UNAVAILABLE, "no frame yet")
                else:
                    self._send(HTTPStatus.OK, jpeg, "image/jpeg")

            def _body(self, limit: int, name: str) -> bytes | None:
                """The request body, or None after answering 411/413."""
                self.close_connection = True
                text = self.headers.get("Content-Length", "")
                if not text.isdigit() or len(text) > 12:
                    self._error(HTTPStatus.LENGTH_REQUIRED,
                                "a Content-Length of 0 or more bytes is required")
                    return None
                length = int(text)
                if length > limit:
                    self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                f"body of {length} bytes exceeds {name} ({limit})")
                    return None
                body_deadline = Deadline(endpoint.server.reaper, self.connection,
                                         endpoint.cfg.timeout_s + length / MIN_UPLOAD_BYTES_S)
                try:
                    return self.rfile.read(length)
                finally:
                    body_deadline.cancel()

            def do_POST(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                if not self._host_ok():
                    return
                if endpoint.console is not None and path.startswith("/console"):
                    body = self._body(CONSOLE_MAX_BODY, "the console's limit")
                    if body is not None:
                        self._console("POST", body)
                    return
                if not self._allowed():
                    return
                if path != "/v1/predict":
                    self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: {self._path()}")
                    return
                body = self._body(endpoint.cfg.max_upload_bytes, "http.max_upload_bytes")
                if body is None:
                    return
                try:
                    result = endpoint.predict(body)
                except ImageTooLarge as exc:
                    self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(exc))
                    return
                except InputError as exc:
                    self._error(HTTPStatus.BAD_REQUEST, str(exc))
                    return
                if result is None:
                    self._error(HTTPStatus.SERVICE_UNAVAILABLE, "busy: try again")
                else:
                    self._json(HTTPStatus.OK, result)

        return Handler
