"""Configuration: defaults, YAML loading, `--set` overrides, strict validation, secrets.

Every setting is declared once in SCHEMA (default, type, range, one-line doc); the
top-level config.yaml is the documented copy of these defaults (a test keeps them equal).
Unknown keys, wrong types and out-of-range values are errors that name the key, e.g.
`config: mqtt.port: expected an integer from 1 to 65535, got 'abc'`, and exit 78.
Secrets (the MQTT password) may come from an environment variable or a file and are
never logged or printed (`redacted`).
"""

from __future__ import annotations

import copy
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import yaml

from .errors import ConfigError


@dataclass(frozen=True)
class Setting:
    default: Any
    kind: str  # str, int, float, bool, enum, path, roi
    doc: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    nullable: bool = False
    pattern: str | None = None


S = Setting
SCHEMA: dict[str, Any] = {
    "device_id": S(None, "str", "topic-safe device name; null: the host name", nullable=True,
                   pattern=r"^[A-Za-z0-9_-]{1,64}$"),
    "state_dir": S(None, "path", "outbox and models; null: $STATE_DIRECTORY or "
                   "~/.local/state/maskwatch", nullable=True),
    "log_level": S("INFO", "enum", "log verbosity",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    "source": {
        "uri": S("0", "source", "camera index, /dev/videoN, video file, rtsp:// or http(s):// "
                 "URL, or 'picamera2'"),
        "realtime": S(False, "bool", "pace video files at their frame rate (live sources "
                      "always are)"),
        "loop": S(False, "bool", "restart a video file at its end"),
        "width": S(None, "int", "capture width hint for cameras", low=16, high=8192,
                   nullable=True),
        "height": S(None, "int", "capture height hint for cameras", low=16, high=8192,
                    nullable=True),
        "retry_initial_s": S(1.0, "float", "first wait before reopening a lost source",
                             low=0.01, high=3600),
        "retry_max_s": S(30.0, "float", "longest wait between reopen attempts", low=0.01,
                         high=3600),
    },
    "detect": {
        "detector": S("yunet", "enum", "face detector", choices=("yunet", "blazeface", "haar")),
        "model": S(None, "path", "detector model file; null: the fetched default in "
                   "<state_dir>/models", nullable=True),
        "fps": S(10.0, "float", "detection rate cap (frames per second of video time)",
                 low=0.1, high=120),
        "max_side": S(320, "int", "frames are scaled to this long side for detection",
                      low=64, high=4096),
        "min_face": S(20, "int", "ignore faces smaller than this (pixels)", low=4, high=4096),
        "score_threshold": S(0.5, "float", "minimum detector confidence", low=0.0, high=1.0),
        "roi": S(None, "roi", "region of interest [x, y, w, h] as fractions of the frame",
                 nullable=True),
    },
    "classify": {
        "model": S(None, "path", "model bundle folder; null: the bundled default",
                   nullable=True),
        "no_mask_threshold": S(None, "float", "override the bundle's no-mask threshold",
                               low=0.0, high=1.0, nullable=True),
        "threads": S(1, "int", "TFLite interpreter threads", low=1, high=16),
    },
    "track": {
        "iou_threshold": S(0.3, "float", "minimum box overlap to continue a track", low=0.01,
                           high=1.0),
        "max_missed_s": S(1.5, "float", "a person is gone after this long unseen", low=0.05,
                          high=600),
        "min_votes": S(3, "int", "classifications before a label is decided", low=1, high=100),
        "agreement": S(0.6, "float", "share of votes the decided label needs", low=0.5,
                       high=1.0),
        "window": S(9, "int", "most recent votes kept per person", low=1, high=1000),
        "update_votes": S(5, "int", "consecutive votes for another label before an update",
                          low=1, high=1000),
    },
    "mqtt": {
        "host": S("localhost", "host", "broker host name or address"),
        "port": S(1883, "int", "broker port", low=1, high=65535),
        "client_id": S(None, "str", "MQTT client id; null: maskwatch-<device_id>",
                       nullable=True),
        "topic_prefix": S("maskwatch", "str", "topics are <prefix>/<device_id>/...",
                          pattern=r"^[^#+\s]+$"),
        "keepalive": S(30, "int", "keepalive seconds", low=5, high=3600),
        "username": S(None, "str", "user name", nullable=True),
        "password": S(None, "secret", "password (prefer password_env or password_file)",
                      nullable=True),
        "password_env": S(None, "str", "environment variable holding the password",
                          nullable=True),
        "password_file": S(None, "path", "file holding the password (mode 0600)",
                           nullable=True),
        "require_tls": S(False, "bool", "refuse to connect without TLS"),
        "tls": {
            "enabled": S(False, "bool", "connect with TLS"),
            "ca_file": S(None, "path", "CA certificate (PEM); null: system CAs",
                         nullable=True),
            "cert_file": S(None, "path", "client certificate (PEM)", nullable=True),
            "key_file": S(None, "path", "client key (PEM)", nullable=True),
            "insecure": S(False, "bool", "skip host name verification (testing only)"),
        },
        "stats_interval_s": S(30.0, "float", "seconds between stats messages", low=1,
                              high=86400),
        "reconnect_min_s": S(1.0, "float", "first reconnect delay", low=0.1, high=600),
        "reconnect_max_s": S(60.0, "float", "longest reconnect delay", low=0.1, high=3600),
    },
    "outbox": {
        "path": S(None, "path", "SQLite outbox file; null: <state_dir>/outbox.sqlite3",
                  nullable=True),
        "max_events": S(10000, "int", "events kept while the broker is away", low=1,
                        high=10_000_000),
        "max_bytes": S(20_000_000, "int", "bytes of events kept", low=1024, high=10**11),
    },
    "homeassistant": {
        "enabled": S(True, "bool", "publish Home Assistant MQTT discovery"),
        "discovery_prefix": S("homeassistant", "str", "Home Assistant discovery prefix",
                              pattern=r"^[^#+\s]+$"),
        "off_delay_s": S(30, "int", "unmasked-person sensor turns off after this long",
                         low=1, high=86400),
    },
    "http": {
        "enabled": S(False, "bool", "serve /healthz, /metrics, /v1/predict"),
        "host": S("127.0.0.1", "host", "bind address (localhost unless you need more)"),
        "port": S(8080, "int", "port", low=1, high=65535),
        "snapshot": S(False, "bool", "serve /snapshot.jpg (an image leaves the device)"),
        "max_upload_bytes": S(5_000_000, "int", "largest /v1/predict upload", low=1024,
                              high=100_000_000),
    },
}

SECRET_KEYS = {"mqtt.password"}


def defaults(schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """The default configuration as a plain nested dict."""
    schema = SCHEMA if schema is None else schema
    return {k: defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default)
            for k, v in schema.items()}


def _fail(key: str, message: str) -> ConfigError:
    return ConfigError(f"config: {key}: {message}")


def _check_number(key: str, s: Setting, value: Any, integer: bool) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise _fail(key, f"expected {kind}{_range(s)}, got {value!r}")
    if (s.low is not None and value < s.low) or (s.high is not None and value > s.high):
        raise _fail(key, f"expected {'an integer' if integer else 'a number'}{_range(s)}, "
                    f"got {value!r}")
    return float(value) if not integer else value


def _range(s: Setting) -> str:
    if s.low is None and s.high is None:
        return ""
    return f" from {s.low:g} to {s.high:g}"


def _check_source(key: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise _fail(key, f"expected a camera index, device, file or URL, got {value!r}")
    if "://" in value:
        url = urlparse(value)
        if url.scheme not in ("rtsp", "rtsps", "http", "https", "file") or (
                url.scheme != "file" and not url.hostname):
            raise _fail(key, f"unsupported or malformed stream URL {value!r} "
                        "(use rtsp://host/..., http(s)://host/...)")
    return value


def _check_roi(key: str, value: Any) -> list[float]:
    if (not isinstance(value, list) or len(value) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise _fail(key, f"expected [x, y, w, h] fractions of the frame, got {value!r}")
    x, y, w, h = (float(v) for v in value)
    if not (0 <= x < 1 and 0 <= y < 1 and 0 < w <= 1 - x + 1e-9 and 0 < h <= 1 - y + 1e-9):
        raise _fail(key, f"region {value!r} must lie inside the frame (fractions 0..1)")
    return [x, y, w, h]


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


CHECKS: dict[str, Callable[[str, Setting, Any], Any]] = {
    "int": lambda k, s, v: _check_number(k, s, v, integer=True),
    "float": lambda k, s, v: _check_number(k, s, v, integer=False),
    "str": _check_text,
    "secret": lambda k, s, v: _check_text(k, s, str(v) if isinstance(v, (int, float)) else v),
    "path": lambda k, s, v: _check_text(k, s, v),
    "host": lambda k, s, v: _check_host(k, v),
    "source": lambda k, s, v: _check_source(k, v),
    "roi": lambda k, s, v: _check_roi(k, v),
}


def _check_value(key: str, s: Setting, value: Any) -> Any:
    if value is None:
        if s.nullable:
            return None
        raise _fail(key, "must be set (null is not allowed)")
    if s.kind == "bool":
        if not isinstance(value, bool):
            raise _fail(key, f"expected true or false, got {value!r}")
        return value
    if s.kind == "enum":
        if value not in s.choices:
            raise _fail(key, f"expected one of {', '.join(s.choices)}, got {value!r}")
        return value
    return CHECKS[s.kind](key, s, value)


def validate(raw: Any, schema: dict[str, Any] | None = None, prefix: str = "") -> dict:
    """Merge `raw` over the defaults, checking every key; raises ConfigError."""
    schema = SCHEMA if schema is None else schema
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _fail(prefix.rstrip(".") or "(top level)",
                    f"expected a mapping of settings, got {type(raw).__name__}")
    unknown = sorted(set(map(str, raw)) - set(schema))
    if unknown:
        raise _fail(prefix + unknown[0], "unknown setting"
                    + _suggest(unknown[0], schema))
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        full = prefix + key
        if isinstance(spec, dict):
            out[key] = validate(raw.get(key), spec, full + ".")
        else:
            out[key] = _check_value(full, spec, raw[key]) if key in raw else copy.deepcopy(
                spec.default)
    if not prefix:
        _check_cross_fields(out)
    return out


def _suggest(key: str, schema: dict[str, Any]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(schema), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(schema)})"


def _check_cross_fields(cfg: dict) -> None:
    mqtt = cfg["mqtt"]
    if mqtt["require_tls"] and not mqtt["tls"]["enabled"]:
        raise _fail("mqtt.require_tls", "is true but mqtt.tls.enabled is false")
    if bool(mqtt["tls"]["cert_file"]) != bool(mqtt["tls"]["key_file"]):
        raise _fail("mqtt.tls.cert_file", "client certificate and key_file go together")
    for key in ("ca_file", "cert_file", "key_file"):
        path = mqtt["tls"][key]
        if path and not Path(path).is_file():
            raise _fail(f"mqtt.tls.{key}", f"file not found: {path}")
    if mqtt["password_file"] and not Path(mqtt["password_file"]).is_file():
        raise _fail("mqtt.password_file", f"file not found: {mqtt['password_file']}")
    if mqtt["password_env"] and mqtt["password_env"] not in os.environ:
        raise _fail("mqtt.password_env", f"environment variable {mqtt['password_env']} "
                    "is not set")
    if cfg["source"]["retry_max_s"] < cfg["source"]["retry_initial_s"]:
        raise _fail("source.retry_max_s", "must be at least source.retry_initial_s")
    if cfg["track"]["min_votes"] > cfg["track"]["window"]:
        raise _fail("track.min_votes", "cannot exceed track.window")
    for key in ("detect.model", "classify.model"):
        section, name = key.split(".")
        if cfg[section][name] and not Path(cfg[section][name]).exists():
            raise _fail(key, f"file not found: {cfg[section][name]}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`mqtt.port=1884` -> (['mqtt', 'port'], 1884); values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"config: --set {text!r}: expected key.path=value")
    key, value = text.split("=", 1)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key.strip()):
        raise ConfigError(f"config: --set {text!r}: bad key path")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = copy.deepcopy(raw)
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


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config: cannot read {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config: {path}{where}: {problem}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config: {path}: expected a mapping of settings at the top level")
    return data or {}


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """Read, override, validate and resolve the configuration."""
    raw = read_yaml(path) if path else {}
    cfg = validate(apply_overrides(raw, overrides or []))
    return resolve(cfg)


def default_state_dir() -> Path:
    env = os.environ.get("STATE_DIRECTORY")  # set by systemd's StateDirectory=
    if env:
        return Path(env.split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "maskwatch"


def resolve(cfg: dict) -> dict:
    """Fill the null settings that have computed defaults."""
    if not cfg["device_id"]:
        host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64] or "maskwatch"
        cfg["device_id"] = host
    if not cfg["state_dir"]:
        cfg["state_dir"] = str(default_state_dir())
    if not cfg["outbox"]["path"]:
        cfg["outbox"]["path"] = str(Path(cfg["state_dir"]) / "outbox.sqlite3")
    if not cfg["mqtt"]["client_id"]:
        cfg["mqtt"]["client_id"] = f"maskwatch-{cfg['device_id']}"
    return cfg


def mqtt_password(cfg: dict) -> str | None:
    """The MQTT password from the config, an environment variable or a file."""
    mqtt = cfg["mqtt"]
    if mqtt["password_env"]:
        return os.environ.get(mqtt["password_env"])
    if mqtt["password_file"]:
        try:
            return Path(mqtt["password_file"]).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"config: mqtt.password_file: cannot read: {exc.strerror}") \
                from None
    return mqtt["password"]


def redacted(cfg: dict) -> dict:
    """A copy safe to print or log: secret values replaced."""
    out = copy.deepcopy(cfg)
    for key in SECRET_KEYS:
        section, name = key.split(".")
        if out[section].get(name) is not None:
            out[section][name] = "***"
    return out


def documented_defaults() -> list[tuple[str, Any, str]]:
    """(key path, default, doc) for every setting, for docs and the config.yaml test."""
    rows: list[tuple[str, Any, str]] = []

    def walk(schema: dict, prefix: str) -> None:
        for key, spec in schema.items():
            if isinstance(spec, dict):
                walk(spec, prefix + key + ".")
            else:
                rows.append((prefix + key, spec.default, spec.doc))

    walk(SCHEMA, "")
    return rows


HEADER = """\
# maskwatch agent configuration.
# Every setting is shown with its default value. Override any of them here, or on the
# command line with --set key.path=value (e.g. --set mqtt.port=1884).
# Check a file with: mask-agent check-config /etc/maskwatch/config.yaml
# (this file is generated from agent/config.py: python -m agent.config > config.yaml)
"""


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def documented_yaml() -> str:
    """config.yaml text: every setting, its default and its doc as a comment."""
    lines = [HEADER]

    def walk(schema: dict, indent: int) -> None:
        for key, spec in schema.items():
            pad = "  " * indent
            if isinstance(spec, dict):
                if indent == 0:
                    lines.append("")
                lines.append(f"{pad}{key}:")
                walk(spec, indent + 1)
                continue
            extra = f" [{', '.join(spec.choices)}]" if spec.choices else ""
            lines.append(f"{pad}# {spec.doc}{extra}")
            lines.append(f"{pad}{key}: {_yaml_value(spec.default)}")

    walk(SCHEMA, 0)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(documented_yaml(), end="")
