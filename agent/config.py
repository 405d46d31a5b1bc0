"""Configuration: typed, frozen sections; YAML loading; `--set` overrides; strict validation.

Every setting is declared once, as a field of a frozen dataclass below with its default,
kind, range and one-line doc; the top-level config.yaml is the documented copy of these
defaults (a test keeps them equal). Code reads `cfg.mqtt.port`, so a typo is a lint error,
not a KeyError at run time. Unknown keys, wrong types, non-finite or out-of-range values
are errors that name the key, e.g. `config: mqtt.port: expected an integer from 1 to
65535, got 'abc'`, and exit 78. Secrets (the MQTT password) are strings taken verbatim,
may come from an environment variable or a file, and are never logged or printed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import yaml

from .errors import ConfigError

MAX_CONFIG_BYTES = 1_000_000  # a config is a few KB; /dev/zero must not exhaust memory


@dataclass(frozen=True)
class Setting:
    default: Any
    kind: str  # str, int, float, bool, enum, path, host, source, roi, secret
    doc: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    nullable: bool = False
    pattern: str | None = None


def setting(default: Any, kind: str, doc: str, **rules: Any) -> Any:
    """A dataclass field that carries its validation rules and documentation."""
    return field(default=default, metadata={"setting": Setting(default, kind, doc, **rules)})


def section(cls: type) -> Any:
    """A nested section (its own frozen dataclass)."""
    return field(default_factory=cls, metadata={"section": cls})


@dataclass(frozen=True)
class SourceConfig:
    uri: str = setting("0", "source", "camera index, /dev/videoN, video file, rtsp:// or "
                       "http(s):// URL, or 'picamera2'")
    realtime: bool = setting(False, "bool", "pace video files at their frame rate (live "
                             "sources always are)")
    loop: bool = setting(False, "bool", "restart a video file at its end")
    width: int | None = setting(None, "int", "capture width hint for cameras", low=16,
                                high=8192, nullable=True)
    height: int | None = setting(None, "int", "capture height hint for cameras", low=16,
                                 high=8192, nullable=True)
    wait: bool = setting(False, "bool", "keep retrying a camera or stream that is not there "
                         "at start (the systemd unit turns this on); off: exit 66 at once")
    retry_initial_s: float = setting(1.0, "float", "first wait before reopening a lost source",
                                     low=0.01, high=3600)
    retry_max_s: float = setting(30.0, "float", "longest wait between reopen attempts",
                                 low=0.01, high=3600)


@dataclass(frozen=True)
class DetectConfig:
    detector: str = setting("yunet", "enum", "face detector",
                            choices=("yunet", "blazeface", "haar"))
    model: str | None = setting(None, "path", "detector model file; null: the bundled YuNet "
                                "(blazeface: the fetched file in <state_dir>/models)",
                                nullable=True)
    fps: float = setting(10.0, "float", "detection rate cap (frames per second of video time)",
                         low=0.1, high=120)
    max_side: int = setting(480, "int", "frames are scaled to this long side for detection "
                            "(with the motion gate only the parts that move or hold people "
                            "are searched, at this scale)", low=64, high=4096)
    min_face: int = setting(20, "int", "ignore faces smaller than this (pixels)", low=4,
                            high=4096)
    score_threshold: float = setting(0.5, "float", "minimum detector confidence", low=0.0,
                                     high=1.0)
    roi: tuple[float, float, float, float] | None = setting(
        None, "roi", "region of interest [x, y, w, h] as fractions of the frame", nullable=True)
    motion_gate: bool = setting(True, "bool", "skip detection while nothing moves and nobody "
                                "is tracked (a cheap low-resolution frame difference)")
    idle_check_s: float = setting(2.0, "float", "with the motion gate: a full detection at "
                                  "least this often anyway", low=0.1, high=3600)
    max_image_pixels: int = setting(40_000_000, "int", "largest image (width x height) that "
                                    "`detect` and /v1/predict decode; larger is refused",
                                    low=1024, high=1_000_000_000)

    def using(self, detector: str) -> DetectConfig:
        """The same settings with another detector; the configured model file belongs to
        the configured detector only (the other gets its bundled or fetched file)."""
        if detector == self.detector:
            return self
        return dataclasses.replace(self, detector=detector, model=None)


@dataclass(frozen=True)
class ClassifyConfig:
    model: str | None = setting(None, "path", "model bundle folder; null: the bundled default",
                                nullable=True)
    no_mask_threshold: float | None = setting(None, "float", "override the bundle's no-mask "
                                              "threshold", low=0.0, high=1.0, nullable=True)
    threads: int = setting(1, "int", "TFLite interpreter threads", low=1, high=16)
    site_head: bool = setting(True, "bool", "use the head fitted here by `mask-agent adapt` "
                              "(<state_dir>/site_head.json) when there is one")


@dataclass(frozen=True)
class TrackConfig:
    iou_threshold: float = setting(0.3, "float", "minimum box overlap to continue a track",
                                   low=0.01, high=1.0)
    max_missed_s: float = setting(1.5, "float", "a person is gone after this long unseen",
                                  low=0.05, high=600)
    min_votes: int = setting(3, "int", "classifications before a label is decided", low=1,
                             high=100)
    min_seen_s: float = setting(0.5, "float", "a person counts once seen this long (by time, "
                                "so counts do not depend on the detection rate)", low=0.0,
                                high=60)
    min_hit_ratio: float = setting(0.5, "float", "and found in at least this share of the "
                                   "detector runs meanwhile (a steady face, not a flicker)",
                                   low=0.0, high=1.0)
    agreement: float = setting(0.6, "float", "share of votes the decided label needs",
                               low=0.5, high=1.0)
    window: int = setting(9, "int", "most recent votes kept per person", low=1, high=1000)
    update_votes: int = setting(5, "int", "consecutive votes for another label before an "
                                "update", low=1, high=1000)
    update_min_s: float = setting(1.0, "float", "those votes must span at least this long",
                                  low=0.0, high=600)
    update_confidence: float = setting(0.7, "float", "and have at least this mean confidence",
                                       low=0.0, high=1.0)
    hold_off_s: float = setting(10.0, "float", "changing back within this long needs twice "
                                "the votes", low=0.0, high=3600)
    max_distance: float = setting(1.0, "float", "a detection this close to a track's "
                                  "predicted face (centre distance in face sizes) continues it",
                                  low=0.0, high=10)
    static_check: bool = setting(True, "bool", "a face that never moves (poster, photo) "
                                 "produces no events; a person sitting still still moves a little")
    reid_s: float = setting(3.0, "float", "a decided person lost for up to this long after "
                            "max_missed_s is recognised by appearance when a face reappears "
                            "nearby (their `end` waits as long); 0: off", low=0.0, high=60)
    reid_distance: float = setting(0.12, "float", "largest cosine distance between appearance "
                                   "embeddings (classifier features) for the same person",
                                   low=0.0, high=1.0)
    reid_max_distance: float = setting(4.0, "float", "and at most this far from where they "
                                       "were lost (face sizes)", low=0.0, high=100)


@dataclass(frozen=True)
class TlsConfig:
    enabled: bool = setting(False, "bool", "connect with TLS")
    ca_file: str | None = setting(None, "path", "CA certificate (PEM); null: system CAs",
                                  nullable=True)
    cert_file: str | None = setting(None, "path", "client certificate (PEM)", nullable=True)
    key_file: str | None = setting(None, "path", "client key (PEM)", nullable=True)
    insecure: bool = setting(False, "bool", "skip host name verification (testing only)")


@dataclass(frozen=True)
class MqttConfig:
    host: str = setting("localhost", "host", "broker host name or address")
    port: int = setting(1883, "int", "broker port", low=1, high=65535)
    client_id: str | None = setting(None, "str", "MQTT client id; null: maskwatch-<device_id>",
                                    nullable=True)
    topic_prefix: str = setting("maskwatch", "str", "topics are <prefix>/<device_id>/...",
                                pattern=r"^[^#+\s]+$")
    keepalive: int = setting(30, "int", "keepalive seconds", low=5, high=3600)
    username: str | None = setting(None, "str", "user name", nullable=True)
    password: str | None = setting(None, "secret", "password, taken verbatim (prefer "
                                   "password_env or password_file)", nullable=True)
    password_env: str | None = setting(None, "str", "environment variable holding the "
                                       "password", nullable=True)
    password_file: str | None = setting(None, "path", "file holding the password (mode 0600)",
                                        nullable=True)
    require_tls: bool = setting(False, "bool", "refuse to connect without TLS")
    tls: TlsConfig = section(TlsConfig)
    stats_interval_s: float = setting(30.0, "float", "seconds between stats messages", low=1,
                                      high=86400)
    reconnect_min_s: float = setting(1.0, "float", "first reconnect delay", low=0.1, high=600)
    reconnect_max_s: float = setting(60.0, "float", "longest reconnect delay", low=0.1,
                                     high=3600)


@dataclass(frozen=True)
class OutboxConfig:
    path: str | None = setting(None, "path", "SQLite outbox file; null: "
                               "<state_dir>/outbox.sqlite3", nullable=True)
    max_events: int = setting(10000, "int", "events kept while the broker is away", low=1,
                              high=10_000_000)
    max_bytes: int = setting(20_000_000, "int", "bytes of events kept", low=1024, high=10**11)


@dataclass(frozen=True)
class HomeAssistantConfig:
    enabled: bool = setting(True, "bool", "publish Home Assistant MQTT discovery")
    discovery_prefix: str = setting("homeassistant", "str", "Home Assistant discovery prefix",
                                    pattern=r"^[^#+\s]+$")
    off_delay_s: int = setting(30, "int", "unmasked-person sensor turns off after this long",
                               low=1, high=86400)


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = setting(False, "bool", "serve /healthz, /metrics, /v1/predict")
    host: str = setting("127.0.0.1", "host", "bind address (localhost unless you need more)")
    port: int = setting(8080, "int", "port", low=1, high=65535)
    snapshot: bool = setting(False, "bool", "serve /snapshot.jpg (an image leaves the device)")
    console: bool = setting(False, "bool", "serve the web console at / (status, people, "
                            "labelling collected crops, adapt and revert)")
    max_upload_bytes: int = setting(5_000_000, "int", "largest /v1/predict upload", low=1024,
                                    high=100_000_000)
    token_env: str | None = setting(None, "str", "environment variable holding a bearer token "
                                    "required for everything but /healthz", nullable=True)
    token_file: str | None = setting(None, "path", "file holding that token (mode 0600); a "
                                     "token is required when host is not a loopback address",
                                     nullable=True)
    max_connections: int = setting(16, "int", "open connections served at once; more wait "
                                   "in the backlog or are refused", low=1, high=1024)
    timeout_s: float = setting(10.0, "float", "a connection idle this long is closed",
                               low=0.5, high=600)


@dataclass(frozen=True)
class AdaptConfig:
    collect: bool = setting(False, "bool", "keep face crops for labelling and site adaptation "
                            "(STORES PICTURES OF FACES in <state_dir>/samples; see README, "
                            "Privacy)")
    max_samples: int = setting(2000, "int", "most crops kept (oldest unlabelled go first)",
                               low=10, high=100_000)
    max_mb: float = setting(50.0, "float", "most megabytes of crops kept", low=1, high=10_000)
    retention_days: float = setting(30.0, "float", "crops older than this are deleted",
                                    low=0.01, high=3650)
    min_interval_s: float = setting(3.0, "float", "at most one crop per person this often",
                                    low=0.0, high=3600)
    near_margin: float = setting(0.2, "float", "keep faces whose no-mask score is this close "
                                 "to the threshold", low=0.0, high=1.0)
    random_share: float = setting(0.03, "float", "and this share of confident ones", low=0.0,
                                  high=1.0)


@dataclass(frozen=True)
class Config:
    device_id: str | None = setting(None, "str", "topic-safe device name; null: the host name",
                                    nullable=True, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    state_dir: str | None = setting(None, "path", "outbox and models; null: $STATE_DIRECTORY "
                                    "or ~/.local/state/maskwatch", nullable=True)
    log_level: str = setting("INFO", "enum", "log verbosity",
                             choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    source: SourceConfig = section(SourceConfig)
    detect: DetectConfig = section(DetectConfig)
    classify: ClassifyConfig = section(ClassifyConfig)
    track: TrackConfig = section(TrackConfig)
    mqtt: MqttConfig = section(MqttConfig)
    outbox: OutboxConfig = section(OutboxConfig)
    homeassistant: HomeAssistantConfig = section(HomeAssistantConfig)
    http: HttpConfig = section(HttpConfig)
    adapt: AdaptConfig = section(AdaptConfig)

    def replace(self, **changes: Any) -> Config:
        """A copy with some top-level fields or whole sections changed."""
        return dataclasses.replace(self, **changes)


SECRET_KEYS = ("mqtt.password",)


# --- helpers -----------------------------------------------------------------------------
def defaults() -> Config:
    """The default configuration (before host-dependent values are resolved)."""
    return Config()


def as_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict (tuples as lists), for JSON, YAML and child processes."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = as_dict(value)
        else:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


# --- validation ------------------------------------------------------------------------------
def _fail(key: str, message: str) -> ConfigError:
    return ConfigError(f"config: {key}: {message}")


def _range(s: Setting) -> str:
    if s.low is None and s.high is None:
        return ""
    return f" from {s.low:g} to {s.high:g}"


def _check_number(key: str, s: Setting, value: Any, integer: bool) -> Any:
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            integer and not isinstance(value, int)):
        raise _fail(key, f"expected {kind}{_range(s)}, got {value!r}")
    if not math.isfinite(value):
        raise _fail(key, f"expected a finite number{_range(s)}, got {value!r}")
    if (s.low is not None and value < s.low) or (s.high is not None and value > s.high):
        raise _fail(key, f"expected {kind}{_range(s)}, got {value!r}")
    return value if integer else float(value)


def hide_credentials(uri: str) -> str:
    """The URI with any user:password replaced, safe for logs, errors and --print."""
    if "://" in uri and "@" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return uri


def _check_source(key: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise _fail(key, f"expected a camera index, device, file or URL, got {value!r}")
    if "://" in value:
        try:
            url = urlparse(value)
            hostname = url.hostname
        except ValueError:
            hostname, url = None, None
        if url is None or url.scheme not in ("rtsp", "rtsps", "http", "https", "file") or (
                url.scheme != "file" and not hostname):
            raise _fail(key, f"unsupported or malformed stream URL {hide_credentials(value)!r} "
                        "(use rtsp://host/..., http(s)://host/...)")
    return value


def _check_roi(key: str, value: Any) -> tuple[float, float, float, float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value)):
        raise _fail(key, f"expected [x, y, w, h] fractions of the frame, got {value!r}")
    x, y, w, h = (float(v) for v in value)
    if not (0 <= x < 1 and 0 <= y < 1 and 0 < w <= 1 - x + 1e-9 and 0 < h <= 1 - y + 1e-9):
        raise _fail(key, f"region {list(value)!r} must lie inside the frame (fractions 0..1)")
    return x, y, w, h


def _check_host(key: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9.:\-_\[\]]{1,253}", value):
        raise _fail(key, f"expected a host name or IP address, got {value!r}")
    return value


def _check_text(key: str, s: Setting, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(key, f"expected a non-empty string, got {value!r}")
    if s.pattern and not re.fullmatch(s.pattern, value):
        raise _fail(key, f"{value!r} has characters not allowed here (pattern {s.pattern})")
    return value


def _check_secret(key: str, value: Any) -> str:
    """Never echo a secret, not even a wrong one."""
    if not isinstance(value, str) or not value:
        raise _fail(key, f"expected a non-empty string (got a {type(value).__name__}; value "
                    "hidden); quote it in YAML")
    return value


def _check_choice(key: str, s: Setting, value: Any) -> str:
    if value not in s.choices:
        raise _fail(key, f"expected one of {', '.join(s.choices)}, got {value!r}")
    return value


def _check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(key, f"expected true or false, got {value!r}")
    return value


CHECKS: dict[str, Callable[[str, Setting, Any], Any]] = {
    "int": lambda k, s, v: _check_number(k, s, v, integer=True),
    "float": lambda k, s, v: _check_number(k, s, v, integer=False),
    "str": _check_text,
    "path": _check_text,
    "secret": lambda k, s, v: _check_secret(k, v),
    "host": lambda k, s, v: _check_host(k, v),
    "source": lambda k, s, v: _check_source(k, v),
    "roi": lambda k, s, v: _check_roi(k, v),
    "bool": lambda k, s, v: _check_bool(k, v),
    "enum": _check_choice,
}


def _check_value(key: str, s: Setting, value: Any) -> Any:
    if value is None:
        if s.nullable:
            return None
        raise _fail(key, "must be set (null is not allowed)")
    return CHECKS[s.kind](key, s, value)


def _suggest(key: str, names: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(names)})"


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _fail(prefix.rstrip(".") or "(top level)",
                    f"expected a mapping of settings, got {type(raw).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(map(str, raw)) - set(names))
    if unknown:
        raise _fail(prefix + unknown[0], "unknown setting" + _suggest(unknown[0], names))
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if "section" in f.metadata:
            values[f.name] = _build(f.metadata["section"], raw.get(f.name), prefix + f.name + ".")
        elif f.name in raw:
            values[f.name] = _check_value(prefix + f.name, f.metadata["setting"], raw[f.name])
    return cls(**values)


def validate(raw: Any) -> Config:
    """Build a Config from a nested dict, checking every key; raises ConfigError."""
    cfg = _build(Config, raw, "")
    _check_cross_fields(cfg)
    return cfg


def _check_pem(key: str, load: Callable[[ssl.SSLContext], None]) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        load(context)
    except ssl.SSLError as exc:
        raise _fail(key, f"not a valid PEM file ({exc.reason or exc})") from None
    except OSError as exc:
        raise _fail(key, f"cannot read: {exc.strerror or exc}") from None


def _check_tls_files(tls: TlsConfig) -> None:
    if bool(tls.cert_file) != bool(tls.key_file):
        raise _fail("mqtt.tls.cert_file", "client certificate and key_file go together")
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, key)
        if path and not Path(path).is_file():
            raise _fail(f"mqtt.tls.{key}", f"file not found: {path}")
    if tls.ca_file:
        _check_pem("mqtt.tls.ca_file", lambda c: c.load_verify_locations(cafile=tls.ca_file))
    if tls.cert_file:
        _check_pem("mqtt.tls.cert_file",
                   lambda c: c.load_cert_chain(tls.cert_file, tls.key_file))


def _check_cross_fields(cfg: Config) -> None:
    mqtt = cfg.mqtt
    if mqtt.require_tls and not mqtt.tls.enabled:
        raise _fail("mqtt.require_tls", "is true but mqtt.tls.enabled is false")
    _check_tls_files(mqtt.tls)
    if mqtt.password_file:
        read_password_file(mqtt.password_file)
    if mqtt.password_env and mqtt.password_env not in os.environ:
        raise _fail("mqtt.password_env", f"environment variable {mqtt.password_env} "
                    "is not set")
    if mqtt.reconnect_max_s < mqtt.reconnect_min_s:
        raise _fail("mqtt.reconnect_max_s", "must be at least mqtt.reconnect_min_s")
    if cfg.source.retry_max_s < cfg.source.retry_initial_s:
        raise _fail("source.retry_max_s", "must be at least source.retry_initial_s")
    if cfg.track.min_votes > cfg.track.window:
        raise _fail("track.min_votes", "cannot exceed track.window")
    _check_http(cfg.http)
    for key, path in (("detect.model", cfg.detect.model), ("classify.model", cfg.classify.model)):
        if path and not Path(path).exists():
            raise _fail(key, f"file not found: {path}")


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _check_http(http: HttpConfig) -> None:
    if http.token_env and http.token_env not in os.environ:
        raise _fail("http.token_env", f"environment variable {http.token_env} is not set")
    if http.token_file:
        read_secret_file("http.token_file", http.token_file)
    if http.enabled and not is_loopback(http.host) and not (http.token_env or http.token_file):
        raise _fail("http.host", f"{http.host} is not a loopback address: set http.token_file "
                    "or http.token_env so that the endpoint requires a token")


def http_token(cfg: Config) -> str | None:
    """The HTTP bearer token, if one is configured."""
    if cfg.http.token_env:
        return os.environ.get(cfg.http.token_env) or None
    if cfg.http.token_file:
        return read_secret_file("http.token_file", cfg.http.token_file)
    return None


# --- reading ---------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """`mqtt.port=1884` -> (['mqtt', 'port'], 1884); values are parsed as YAML scalars,
    except secrets, which are taken verbatim (`0123` stays '0123', `ab #cd` stays whole)."""
    if "=" not in text:
        raise ConfigError(f"config: --set {text.split('=')[0]!r}: expected key.path=value")
    key, value = (part.strip() if i == 0 else part for i, part in enumerate(text.split("=", 1)))
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise ConfigError(f"config: --set {key!r}: bad key path")
    if key in SECRET_KEYS:
        return key.split("."), value
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = _copy_tree(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"config: {'.'.join(path)}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def _copy_tree(raw: dict) -> dict:
    return {k: _copy_tree(v) if isinstance(v, dict) else v for k, v in raw.items()}


def _read_bounded(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config: file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config: {path}: larger than {MAX_CONFIG_BYTES} bytes; not a config")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"config: {path}: not UTF-8 text") from None


def _verbatim_secrets(data: dict, text: str) -> None:
    """Replace YAML-typed secrets (0123 -> 83, yes -> True) with the text as written."""
    strings = yaml.load(text, Loader=yaml.BaseLoader)  # every scalar as the string written
    for key in SECRET_KEYS:
        typed, written = data, strings
        *sections, name = key.split(".")
        for part in sections:
            typed = typed.get(part) if isinstance(typed, dict) else None
            written = written.get(part) if isinstance(written, dict) else None
        if isinstance(typed, dict) and isinstance(written, dict) and \
                isinstance(written.get(name), str) and typed.get(name) is not None:
            typed[name] = written[name]


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config: {path} is a directory, not a config file")
    text = _read_bounded(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config: {path}{where}: {problem}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config: {path}: expected a mapping of settings at the top level")
    data = data or {}
    _verbatim_secrets(data, text)
    return data


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read, override, validate and resolve the configuration."""
    raw = read_yaml(path) if path else {}
    return resolve(validate(apply_overrides(raw, overrides or [])))


def default_state_dir() -> Path:
    env = os.environ.get("STATE_DIRECTORY")  # set by systemd's StateDirectory=
    if env:
        return Path(env.split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "maskwatch"


def resolve(cfg: Config) -> Config:
    """Fill the null settings that have computed defaults."""
    device_id = cfg.device_id or (
        re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64] or "maskwatch")
    state_dir = cfg.state_dir or str(default_state_dir())
    outbox = dataclasses.replace(
        cfg.outbox, path=cfg.outbox.path or str(Path(state_dir) / "outbox.sqlite3"))
    mqtt = dataclasses.replace(cfg.mqtt, client_id=cfg.mqtt.client_id or f"maskwatch-{device_id}")
    return cfg.replace(device_id=device_id, state_dir=state_dir, outbox=outbox, mqtt=mqtt)


def read_secret_file(key: str, path: str) -> str:
    """A password or token from a file, verbatim but for the final line break."""
    try:
        with open(path, "rb") as f:
            data = f.read(4097)
    except OSError as exc:
        raise _fail(key, f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > 4096:
        raise _fail(key, f"{path} is larger than 4 KB")
    try:
        text = data.decode().rstrip("\r\n")
    except UnicodeDecodeError:
        raise _fail(key, f"{path} is not UTF-8 text") from None
    if not text:
        raise _fail(key, f"{path} is empty")
    return text


def read_password_file(path: str) -> str:
    return read_secret_file("mqtt.password_file", path)


def mqtt_password(cfg: Config) -> str | None:
    """The MQTT password from the config, an environment variable or a file."""
    mqtt = cfg.mqtt
    if mqtt.password_env:
        return os.environ.get(mqtt.password_env)
    if mqtt.password_file:
        return read_password_file(mqtt.password_file)
    return mqtt.password


def redacted(cfg: Config) -> dict:
    """A dict safe to print or log: secrets and credentials inside source.uri hidden."""
    out = as_dict(cfg)
    for key in SECRET_KEYS:
        *sections, name = key.split(".")
        node = out
        for part in sections:
            node = node[part]
        if node.get(name) is not None:
            node[name] = "***"
    out["source"]["uri"] = hide_credentials(str(out["source"]["uri"]))
    return out


# --- the documented config.yaml -----------------------------------------------------------
HEADER = """\
# maskwatch agent configuration.
# Every setting is shown with its default value. Override any of them here, or on the
# command line with --set key.path=value (e.g. --set mqtt.port=1884).
# Check a file with: mask-agent check-config /etc/maskwatch/config.yaml
# (this file is generated from agent/config.py: python -m maskwatch.agent.config > config.yaml)
"""


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def documented_yaml() -> str:
    """config.yaml text: every setting, its default and its doc as a comment."""
    lines = [HEADER]

    def emit(cls: type, indent: int) -> None:
        pad = "  " * indent
        for f in dataclasses.fields(cls):
            if "section" in f.metadata:
                if indent == 0:
                    lines.append("")
                lines.append(f"{pad}{f.name}:")
                emit(f.metadata["section"], indent + 1)
                continue
            spec: Setting = f.metadata["setting"]
            extra = f" [{', '.join(spec.choices)}]" if spec.choices else ""
            lines.append(f"{pad}# {spec.doc}{extra}")
            lines.append(f"{pad}{f.name}: {_yaml_value(spec.default)}")

    emit(Config, 0)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(documented_yaml(), end="")
