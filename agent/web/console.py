"""The web console: status, people over time, and labelling collected crops to adapt.

Served by the agent's HTTP server when `http.console` is on, as plain HTML + a little
JavaScript from the package (no build step, no CDN: the device may be offline).

Security, because the console shows faces and changes state (labels, the head in use):
- It always asks for a token once and keeps a session cookie (HttpOnly, SameSite=Strict);
  API calls also take the bearer token. The token is `http.token_file`/`token_env`, or,
  when none is configured, one generated on first use into `<state_dir>/console_token`
  (mode 0600, readable by the service user alone). Failed logins are rate-limited and
  logged; a token is never read from a query string.
- Responses carry a Content-Security-Policy that allows the console's own files only: no
  inline script, nothing from elsewhere, no framing. Data is put into the page as text.
- Every state-changing request is a POST carrying the session's CSRF token in the
  `X-CSRF-Token` header (a page from another site can neither read the token nor send
  that header without a CORS preflight, which is never granted); a foreign `Origin` is
  refused as well.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import parse_qs

from ..errors import MaskwatchError, StateError
from ..site.adapt import ADVISED_PER_CLASS
from ..site.samples import HUMAN_LABELS, SampleStore
from ..throttle import Throttle

if TYPE_CHECKING:
    from ..vision.classify import Classifier

log = logging.getLogger("maskwatch.console")
throttle = Throttle(log)
STATIC = Path(__file__).parent / "console_static"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}
SESSION_COOKIE = "maskwatch_session"
SESSION_S = 12 * 3600
MAX_SESSIONS = 32
PEOPLE_KEPT = 5000
PEOPLE_BIN_S = 600
CONSOLE_TOKEN_FILE = "console_token"
LOGIN_FAILURES_PER_MINUTE = 10  # then 429 until the minute is over: ~14,000 tries a day
MAX_LABEL_IDS = 1000  # one request holds the store's lock (and the collector) this long


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = HTTPStatus.OK) -> Reply:
        return cls(status, json.dumps(data).encode())

    @classmethod
    def error(cls, status: int, message: str) -> Reply:
        return cls.json({"error": message}, status)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Any  # an email.message.Message (http.server's headers)
    body: bytes
    bearer_ok: bool  # the Authorization header carried the configured token
    client: str = "?"  # the peer's address, for log lines


class PeopleLog:
    """Decided people (new/update events), in memory, for the chart and the recent list."""

    def __init__(self, kept: int = PEOPLE_KEPT) -> None:
        self._events: deque[dict] = deque(maxlen=kept)
        self._lock = threading.Lock()

    def add(self, event: dict) -> None:
        if event.get("type") in ("new", "update"):
            with self._lock:
                self._events.append({k: event[k] for k in ("type", "track_id", "label",
                                                           "confidence", "ts")})

    def chart(self, hours: float, now: float) -> dict:
        """People per label in PEOPLE_BIN_S bins over the last `hours`."""
        bins = max(1, int(hours * 3600 / PEOPLE_BIN_S))
        start = now - bins * PEOPLE_BIN_S
        series: dict[str, list[int]] = {}
        with self._lock:
            events = [e for e in self._events if e["type"] == "new"]
        for e in events:
            ts = iso_seconds(e["ts"])
            if ts >= start:
                row = series.setdefault(e["label"], [0] * bins)
                row[min(bins - 1, int((ts - start) // PEOPLE_BIN_S))] += 1
        return {"bin_s": PEOPLE_BIN_S, "start": start, "series": series}

    def recent(self, count: int = 20) -> list[dict]:
        with self._lock:
            return list(self._events)[-count:][::-1]


def iso_seconds(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def console_token(state_dir: str | Path) -> tuple[str, Path, bool]:
    """(token, its file, whether it was made now): the console's token when none is
    configured, generated once into the state dir with mode 0600."""
    path = Path(state_dir) / CONSOLE_TOKEN_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text(errors="replace").strip()
        if len(token) >= 16:
            return token, path, False
        os.replace(path, path.with_name(path.name + ".bad"))  # too short to be ours
        return console_token(state_dir)
    except OSError as exc:
        raise StateError(f"cannot write the console token {path}: {exc.strerror}") from None
    token = secrets.token_urlsafe(24)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, path, True


class LoginLimiter:
    """At most LOGIN_FAILURES_PER_MINUTE wrong tokens a minute, whoever sends them (the
    token is the only secret, and many addresses can share one attacker)."""

    def __init__(self, per_minute: int = LOGIN_FAILURES_PER_MINUTE) -> None:
        self.per_minute = per_minute
        self._failures: deque[float] = deque()
        self._lock = threading.Lock()

    def blocked(self) -> bool:
        now = time.monotonic()
        with self._lock:
            while self._failures and now - self._failures[0] > 60:
                self._failures.popleft()
            return len(self._failures) >= self.per_minute

    def failed(self) -> None:
        with self._lock:
            self._failures.append(time.monotonic())


class Sessions:
    """Session id -> (CSRF token, expiry); bounded, in memory (a restart logs out)."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def create(self) -> tuple[str, str]:
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._items = {k: v for k, v in self._items.items() if v[1] > now}
            while len(self._items) >= MAX_SESSIONS:
                self._items.pop(min(self._items, key=lambda k: self._items[k][1]))
            self._items[sid] = (csrf, now + SESSION_S)
        return sid, csrf

    def csrf(self, sid: str | None) -> str | None:
        if not sid:
            return None
        with self._lock:
            item = self._items.get(sid)
        return item[0] if item and item[1] > time.monotonic() else None


def cookie_value(headers: Any, name: str) -> str | None:
    for part in (headers.get("Cookie") or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


class Console:
    def __init__(self, state_dir: str | None, collecting: bool,
                 make_classifier: Callable[[], Classifier], token: str,
                 stats: Callable[[], dict], store: SampleStore | None, people: PeopleLog,
                 model: Callable[[], dict]) -> None:
        """`collecting`: adapt.collect; `make_classifier`: the agent's classifier settings
        (the console builds its own on the first Adapt, since interpreters aren't shared)."""
        self.state_dir, self.collecting = state_dir, collecting
        self.make_classifier = make_classifier
        self.token, self.stats, self.model = token, stats, model
        self.store, self.people = store, people
        self.sessions = Sessions()
        self.logins = LoginLimiter()
        self._classifier = None  # its own, made on first adapt (interpreters aren't shared)
        # model(): the running classifier's identity {"name", "sha256", "head"}
        self._adapt_lock = threading.Lock()

    def bearer_ok(self, header: str | None) -> bool:
        """The Authorization header carries the console's token."""
        expected = f"Bearer {self.token}".encode()
        return header is not None and hmac.compare_digest(header.encode(), expected)

    # --- dispatch -----------------------------------------------------------------------
    def handle(self, request: Request) -> Reply:
        path = request.path
        if path in ("/", "/console"):
            return Reply(HTTPStatus.SEE_OTHER, headers={"Location": "/console/"})
        if path.startswith("/console/static/"):
            return self.static(path.rsplit("/", 1)[-1])
        if path == "/console/login" and request.method == "POST":
            return self.login(request)
        sid = cookie_value(request.headers, SESSION_COOKIE)
        csrf = self.sessions.csrf(sid)
        if path == "/console/":
            return self.page(csrf, request.bearer_ok)
        if csrf is None and not request.bearer_ok:
            return Reply.error(HTTPStatus.UNAUTHORIZED, "log in first (the console token)")
        if request.method == "POST" and not self.csrf_ok(request, csrf):
            return Reply.error(HTTPStatus.FORBIDDEN, "missing or wrong CSRF token")
        return self.api(request)

    def csrf_ok(self, request: Request, csrf: str | None) -> bool:
        origin = request.headers.get("Origin")
        host = request.headers.get("Host", "")
        if origin and origin.split("://", 1)[-1] != host:
            return False
        sent = request.headers.get("X-CSRF-Token") or ""
        return csrf is not None and hmac.compare_digest(sent.encode(), csrf.encode())

    def api(self, request: Request) -> Reply:
        routes: dict[tuple[str, str], Callable[[Request], Reply]] = {
            ("GET", "/console/api/status"): self.status,
            ("GET", "/console/api/people"): self.people_view,
            ("GET", "/console/api/samples"): self.samples,
            ("POST", "/console/api/label"): self.label,
            ("POST", "/console/api/adapt"): self.adapt,
            ("POST", "/console/api/revert"): self.revert,
        }
        if request.method == "GET" and request.path.startswith("/console/api/crops/"):
            return self.crop(request.path.rsplit("/", 1)[-1])
        route = routes.get((request.method, request.path))
        if route is None:
            return Reply.error(HTTPStatus.NOT_FOUND, f"no such endpoint: {request.path[:80]}")
        try:
            return route(request)
        except sqlite3.Error as exc:  # a corrupt store or a full disk: say so, stay up
            throttle.log(logging.WARNING, "store", "sample store error: %s", exc)
            return Reply.error(HTTPStatus.SERVICE_UNAVAILABLE, f"sample store error: {exc}")
        except (MaskwatchError, ValueError, KeyError, TypeError) as exc:
            return Reply.error(HTTPStatus.BAD_REQUEST, str(exc))

    # --- pages ----------------------------------------------------------------------------
    def static(self, name: str) -> Reply:
        path = STATIC / name
        if name not in {p.name for p in STATIC.iterdir()} or path.suffix not in CONTENT_TYPES:
            return Reply.error(HTTPStatus.NOT_FOUND, f"no such file: {name}")
        return Reply(HTTPStatus.OK, path.read_bytes(), CONTENT_TYPES[path.suffix])

    def page(self, csrf: str | None, bearer_ok: bool) -> Reply:
        headers = {"Cache-Control": "no-store"}
        if csrf is None:
            if not bearer_ok:
                return Reply(HTTPStatus.OK, (STATIC / "login.html").read_bytes(),
                             CONTENT_TYPES[".html"], headers)
            sid, csrf = self.sessions.create()  # the bearer token: a session now
            headers["Set-Cookie"] = self.cookie(sid)
        html = (STATIC / "index.html").read_text().replace("{{csrf}}", csrf)
        return Reply(HTTPStatus.OK, html.encode(), CONTENT_TYPES[".html"], headers)

    def login(self, request: Request) -> Reply:
        if self.logins.blocked():
            throttle.log(logging.WARNING, "login-blocked", "console login refused: more than "
                         "%d wrong tokens in a minute (last from %s)", self.logins.per_minute,
                         request.client)
            return self.login_page(HTTPStatus.TOO_MANY_REQUESTS,
                                   "Too many wrong tokens: wait a minute.")
        sent = parse_qs(request.body.decode("utf-8", "replace")).get("token", [""])[0]
        if not hmac.compare_digest(sent.encode(), self.token.encode()):
            self.logins.failed()
            throttle.log(logging.WARNING, "login-failed", "console login with a wrong token "
                         "from %s", request.client)
            return self.login_page(HTTPStatus.UNAUTHORIZED, "Wrong token.")
        sid, _ = self.sessions.create()
        return Reply(HTTPStatus.SEE_OTHER, headers={"Location": "/console/",
                                                    "Set-Cookie": self.cookie(sid)})

    @staticmethod
    def login_page(status: int, problem: str) -> Reply:
        html = (STATIC / "login.html").read_text().replace(
            "<!--error-->", f'<p class="error">{problem}</p>')  # our own fixed text only
        return Reply(status, html.encode(), CONTENT_TYPES[".html"])

    @staticmethod
    def cookie(sid: str) -> str:
        return (f"{SESSION_COOKIE}={sid}; HttpOnly; SameSite=Strict; Path=/; "
                f"Max-Age={SESSION_S}")

    # --- API ------------------------------------------------------------------------------
    def status(self, _: Request) -> Reply:
        stats = self.stats()
        return Reply.json({
            "source": stats["source"], "broker_connected": stats["broker_connected"],
            "fps": stats["fps"], "outbox_depth": stats["outbox_depth"],
            "people": stats["people"], "uptime_s": stats["uptime_s"],
            "collecting": self.collecting, "model": self.model(),
            "samples": self.store.counts() if self.store else None,
            "advice_per_class": ADVISED_PER_CLASS})

    def people_view(self, request: Request) -> Reply:
        hours = min(48.0, max(0.5, float(request.query.get("hours", ["6"])[0])))
        return Reply.json({"chart": self.people.chart(hours, time.time()),
                           "recent": self.people.recent()})

    def need_store(self) -> SampleStore:
        if self.store is None:
            raise ValueError("no sample store: turn on adapt.collect")
        return self.store

    def samples(self, request: Request) -> Reply:
        which = request.query.get("state", ["unlabelled"])[0]
        labelled = {"unlabelled": False, "labelled": True, "all": None}[which]
        limit = min(1000, int(request.query.get("limit", ["200"])[0]))
        store = self.need_store()
        return Reply.json({"samples": [s.to_json() for s in store.list(labelled, limit)],
                           "counts": store.counts()})

    def crop(self, name: str) -> Reply:
        stem = name.removesuffix(".jpg")
        if not stem.isdigit():
            return Reply.error(HTTPStatus.NOT_FOUND, "no such crop")
        path = self.need_store().crop_path(int(stem))
        if not path.is_file():
            return Reply.error(HTTPStatus.NOT_FOUND, "no such crop")
        return Reply(HTTPStatus.OK, path.read_bytes(), "image/jpeg",
                     {"Cache-Control": "private, max-age=3600"})

    def label(self, request: Request) -> Reply:
        data = json.loads(request.body or b"{}")
        label = data.get("label")
        if label is not None and label not in HUMAN_LABELS:
            raise ValueError(f"label must be one of {', '.join(HUMAN_LABELS)} or null")
        ids = data.get("ids", [])
        if not isinstance(ids, list) or len(ids) > MAX_LABEL_IDS or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ValueError(f"ids must be a list of at most {MAX_LABEL_IDS} sample ids")
        store = self.need_store()
        return Reply.json({"changed": store.set_label(ids, label), "counts": store.counts()})

    def classifier(self):
        if self._classifier is None:
            self._classifier = self.make_classifier()
        return self._classifier

    def adapt(self, request: Request) -> Reply:
        """{"accept": false}: fit and report; {"accept": true}: fit again (deterministic:
        the same head) and install it when it passes."""
        from ..site.doorway import adapt_site

        data = json.loads(request.body or b"{}")
        x, y = self.need_store().labelled_features()
        if not len(y):
            raise ValueError("no labelled samples yet")
        with self._adapt_lock:
            report = adapt_site(self.state_dir, self.classifier(), x, y,
                                write=bool(data.get("accept")))
        return Reply.json({**report.to_json(), "installed": bool(data.get("accept"))
                           and report.accepted})

    def revert(self, _: Request) -> Reply:
        from ..site.doorway import revert

        reverted = revert(self.state_dir)
        self.classifier().heads.refresh(force=True)
        return Reply.json({"reverted": reverted})
