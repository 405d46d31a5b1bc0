"""Configuration: one schema of typed, frozen sections; YAML loading; `--set` overrides;
strict validation; the generated config.yaml.

Every setting is declared once, as a field of a frozen dataclass with its default, kind,
range and one-line doc, in the `config.py` of the part it configures (`vision/config.py`
holds `source`, `detect` and `classify`; `people/`, `delivery/`, `site/` and `web/` hold
theirs). `Config` below composes them; this module is the one loader, validator and
generator of the top-level config.yaml (a test keeps the file equal to the defaults).
Code reads `cfg.mqtt.port`, so a typo is a lint error, not a KeyError at run time.
Unknown keys, wrong types, non-finite or out-of-range values are errors that name the
key, e.g. `config: mqtt.port: expected an integer from 1 to 65535, got 'abc'`, and exit
78. Secrets (the MQTT password) are strings taken verbatim, may come from an environment
variable or a file, and are never logged or printed. The parts never import this module:
each receives its own section.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import reprlib
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import yaml

from .delivery.config import (
    HomeAssistantConfig,
    MqttConfig,
    OutboxConfig,
    TlsConfig,
    broker_addresses,
    mqtt_password,
    read_password_file,
)
from .errors import ConfigError, cannot_read
from .people.config import TrackConfig
from .settings import Setting, default_state_dir, fail, read_secret_file, section, setting
from .site.config import AdaptConfig
from .vision.config import ClassifyConfig, DetectConfig, SourceConfig, hide_credentials
from .web.config import HttpConfig, http_token, is_loopback

# The sections and helpers above are re-exported: `from maskwatch.agent.config import
# DetectConfig` keeps working for tools (convert/, tests) that see the whole config.
__all__ = ["AdaptConfig", "ClassifyConfig", "Config", "DetectConfig", "HomeAssistantConfig",
           "HttpConfig", "MqttConfig", "OutboxConfig", "SourceConfig", "TlsConfig",
           "TrackConfig", "as_dict", "default_state_dir", "defaults", "hide_credentials",
           "http_token", "is_loopback", "load", "mqtt_password", "read_secret_file",
           "redacted", "validate"]

MAX_CONFIG_BYTES = 1_000_000  # a config is a few KB; /dev/zero must not exhaust memory
MAX_HOSTS = 64
MIN_TOKEN_CHARS = 16  # a bearer token a login page can be brute-forced against
MAX_INT = 10**18  # far above any setting's range, far below what float() cannot hold
MAX_ALIASES = 50  # a config has a few anchors at most; a billion laughs has millions
MAX_DEPTH = 20  # sections nest two deep; [[[[...]]]] must not exhaust the stack
SHOWN = reprlib.Repr()
SHOWN.maxstring, SHOWN.maxother, SHOWN.maxlist, SHOWN.maxlevel = 60, 60, 4, 2


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


def _range(s: Setting) -> str:
    if s.low is None and s.high is None:
        return ""
    return f" from {s.low:g} to {s.high:g}"


def shown(value: Any) -> str:
    """A value as an error message may show it: short, whatever its size or shape."""
    return SHOWN.repr(value)


def _check_number(key: str, s: Setting, value: Any, integer: bool) -> Any:
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            integer and not isinstance(value, int)):
        raise fail(key, f"expected {kind}{_range(s)}, got {shown(value)}")
    if isinstance(value, int) and abs(value) > MAX_INT:  # 9**400 is an int to YAML
        raise fail(key, f"expected {kind}{_range(s)}, got a {len(str(abs(value)))}-digit "
                   "number")
    if not math.isfinite(value):
        raise fail(key, f"expected a finite number{_range(s)}, got {shown(value)}")
    if (s.low is not None and value < s.low) or (s.high is not None and value > s.high):
        raise fail(key, f"expected {kind}{_range(s)}, got {shown(value)}")
    return value if integer else float(value)


def _check_source(key: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise fail(key, f"expected a camera index, device, file or URL, got {shown(value)}")
    if "://" in value:
        try:
            url = urlparse(value)
            hostname = url.hostname
        except ValueError:
            hostname, url = None, None
        if url is None or url.scheme not in ("rtsp", "rtsps", "http", "https", "file") or (
                url.scheme != "file" and not hostname):
            raise fail(key, f"unsupported or malformed stream URL {hide_credentials(value)!r} "
                        "(use rtsp://host/..., http(s)://host/...)")
    return value


def _check_hosts(key: str, value: Any) -> tuple[str, ...]:
    """A list of host names or addresses, optionally with `:port` (`broker-1:8883`)."""
    if not isinstance(value, (list, tuple)) or len(value) > MAX_HOSTS:
        raise fail(key, f"expected a list of at most {MAX_HOSTS} host names, got "
                   f"{shown(value)}")
    return tuple(_check_host(f"{key}[{i}]", v, with_port=True) for i, v in enumerate(value))


def _check_roi(key: str, value: Any) -> tuple[float, float, float, float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value)):
        raise fail(key, f"expected [x, y, w, h] fractions of the frame, got {shown(value)}")
    x, y, w, h = (float(v) for v in value)
    if not (0 <= x < 1 and 0 <= y < 1 and 0 < w <= 1 - x + 1e-9 and 0 < h <= 1 - y + 1e-9):
        raise fail(key, f"region {shown(list(value))} must lie inside the frame "
                   "(fractions 0..1)")
    return x, y, w, h


def _check_host(key: str, value: Any, with_port: bool = False) -> str:
    """A host name or an IP address (IPv6 with two colons or more); `with_port`: optionally
    followed by :port. `localhost:1884` as mqtt.host would be looked up as a name and
    never found, every few seconds, for as long as the agent runs."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9.:\-_\[\]]{1,253}", value):
        raise fail(key, f"expected a host name or IP address, got {shown(value)}")
    if not with_port and value.count(":") == 1:
        raise fail(key, f"{shown(value)} holds a port: give the host alone and the port in "
                   "mqtt.port")
    return value


def _check_text(key: str, s: Setting, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise fail(key, f"expected a non-empty string, got {shown(value)}")
    if s.pattern and not re.fullmatch(s.pattern, value):
        raise fail(key, f"{shown(value)} has characters not allowed here "
                   f"(pattern {s.pattern})")
    return value


def _check_secret(key: str, value: Any) -> str:
    """Never echo a secret, not even a wrong one."""
    if not isinstance(value, str) or not value:
        raise fail(key, f"expected a non-empty string (got a {type(value).__name__}; value "
                    "hidden); quote it in YAML")
    return value


def _check_choice(key: str, s: Setting, value: Any) -> str:
    if value not in s.choices:
        raise fail(key, f"expected one of {', '.join(s.choices)}, got {shown(value)}")
    return value


def _check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail(key, f"expected true or false, got {shown(value)}")
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
    "hosts": lambda k, s, v: _check_hosts(k, v),
    "bool": lambda k, s, v: _check_bool(k, v),
    "enum": _check_choice,
}


def _check_value(key: str, s: Setting, value: Any) -> Any:
    if value is None:
        if s.nullable:
            return None
        raise fail(key, "must be set (null is not allowed)")
    return CHECKS[s.kind](key, s, value)


def _suggest(key: str, names: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(names)})"


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise fail(prefix.rstrip(".") or "(top level)",
                    f"expected a mapping of settings, got {type(raw).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(map(str, raw)) - set(names))
    if unknown:
        raise fail(prefix + unknown[0], "unknown setting" + _suggest(unknown[0], names))
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
        raise fail(key, f"not a valid PEM file ({exc.reason or exc})") from None
    except OSError as exc:
        raise fail(key, f"cannot read: {exc.strerror or exc}") from None


def _check_tls_files(tls: TlsConfig) -> None:
    if bool(tls.cert_file) != bool(tls.key_file):
        raise fail("mqtt.tls.cert_file", "client certificate and key_file go together")
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, key)
        if path and not _present(f"mqtt.tls.{key}", path, stat.S_IFREG):
            raise fail(f"mqtt.tls.{key}", f"file not found: {path}")
    if tls.ca_file:
        _check_pem("mqtt.tls.ca_file", lambda c: c.load_verify_locations(cafile=tls.ca_file))
    if tls.cert_file:
        _check_pem("mqtt.tls.cert_file",
                   lambda c: c.load_cert_chain(tls.cert_file, tls.key_file))


def _check_cross_fields(cfg: Config) -> None:
    mqtt = cfg.mqtt
    if mqtt.require_tls and not mqtt.tls.enabled:
        raise fail("mqtt.require_tls", "is true but mqtt.tls.enabled is false")
    _check_tls_files(mqtt.tls)
    if mqtt.password_file:
        read_password_file(mqtt.password_file)
    if mqtt.password_env and mqtt.password_env not in os.environ:
        raise fail("mqtt.password_env", f"environment variable {mqtt.password_env} "
                    "is not set")
    entries = mqtt.hosts or (f"{mqtt.host}:{mqtt.port}",)
    for entry, (host, port) in zip(entries, broker_addresses(mqtt)):
        if not 1 <= port <= 65535 or not host or host.count(":") == 1:  # "a:b": b no port
            raise fail("mqtt.hosts", f"{shown(entry)} is not a host, or a host and a port "
                       "from 1 to 65535")
    if mqtt.reconnect_max_s < mqtt.reconnect_min_s:
        raise fail("mqtt.reconnect_max_s", "must be at least mqtt.reconnect_min_s")
    if cfg.source.retry_max_s < cfg.source.retry_initial_s:
        raise fail("source.retry_max_s", "must be at least source.retry_initial_s")
    if cfg.track.min_votes > cfg.track.window:
        raise fail("track.min_votes", "cannot exceed track.window")
    _check_http(cfg.http)
    for key, path in (("detect.model", cfg.detect.model), ("classify.model", cfg.classify.model)):
        if path and not _present(key, path):
            raise fail(key, f"file not found: {path}")


def _present(key: str, path: str, kind: int | None = None) -> bool:
    """Whether `path` is there (and of `kind`, stat.S_IFREG or S_IFDIR); one line and
    exit 78 where this user may not even look (a path under a folder it cannot enter, as
    /home is to the service): that was an internal error and exit 1, which systemd
    restarts for ever."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ConfigError(f"config: {cannot_read(path, exc.strerror, key)}") from None
    return kind is None or stat.S_IFMT(mode) == kind


def named_files(cfg: Config) -> list[tuple[str, str]]:
    """(key, path) of each file or folder the config names for reading: its settings of
    kind "path" but where it keeps its state (resolved to a default in the user's home
    when not set), and a source that is a file."""
    found = [("source.uri", cfg.source.uri)] if cfg.source.uri.startswith("/") else []

    def walk(section: Any, prefix: str) -> None:
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if "section" in f.metadata:
                walk(value, f"{prefix}{f.name}.")
            elif "setting" in f.metadata and f.metadata["setting"].kind == "path" and value \
                    and prefix + f.name not in ("state_dir", "outbox.path"):
                found.append((prefix + f.name, value))

    walk(cfg, "")
    return found


def _check_http(http: HttpConfig) -> None:
    if http.token_env and http.token_env not in os.environ:
        raise fail("http.token_env", f"environment variable {http.token_env} is not set")
    if http.token_env or http.token_file:
        key = "http.token_env" if http.token_env else "http.token_file"
        token = http_token(http) or ""
        if len(token) < MIN_TOKEN_CHARS:  # an empty token must never mean "no token"
            raise fail(key, f"the token has {len(token)} characters; use at least "
                       f"{MIN_TOKEN_CHARS} (e.g. openssl rand -hex 16)")
    if http.enabled and not is_loopback(http.host) and not (http.token_env or http.token_file):
        raise fail("http.host", f"{http.host} is not a loopback address: set http.token_file "
                    "or http.token_env so that the endpoint requires a token")


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
        parsed = yaml.load(value, Loader=StrictLoader) if value.strip() else None  # noqa: S506
    except RecursionError:
        raise ConfigError(f"config: --set {key}: nested more than {MAX_DEPTH} levels deep"
                          ) from None
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
    except PermissionError as exc:  # the device's config is root's and the service's only
        raise ConfigError(f"config: {cannot_read(path, exc.strerror)}") from None
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


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing what no config needs and what can hurt: a key given
    twice (a second `mqtt:` silently replaced the first), more than MAX_ALIASES aliases (a
    billion laughs), recursive aliases, nesting deeper than MAX_DEPTH."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0
        self.depth = 0

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"more than {MAX_ALIASES} aliases (*name)", mark)
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.constructor.ConstructorError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!s:.60} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _node_is_recursive(data: Any, depth: int = 0) -> bool:
    """True for a structure that contains itself (`a: &a [*a]`) or nests too deep."""
    if depth > MAX_DEPTH:
        return True
    if isinstance(data, dict):
        return any(_node_is_recursive(v, depth + 1) for v in data.values())
    if isinstance(data, list):
        return any(_node_is_recursive(v, depth + 1) for v in data)
    return False


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if _present("--config", str(path), stat.S_IFDIR):
        raise ConfigError(f"config: {path} is a directory, not a config file")
    text = _read_bounded(path)
    try:
        data = yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader)
    except RecursionError:
        raise ConfigError(f"config: {path}: nested more than {MAX_DEPTH} levels deep") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config: {path}{where}: {problem}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config: {path}: expected a mapping of settings at the top level")
    if _node_is_recursive(data):
        raise ConfigError(f"config: {path}: nested more than {MAX_DEPTH} levels deep (or "
                          "an alias that contains itself)")
    data = data or {}
    _verbatim_secrets(data, text)
    return data


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read, override, validate and resolve the configuration."""
    raw = read_yaml(path) if path else {}
    return resolve(validate(apply_overrides(raw, overrides or [])))


def resolve(cfg: Config) -> Config:
    """Fill the null settings that have computed defaults."""
    device_id = cfg.device_id or (
        re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64] or "maskwatch")
    state_dir = cfg.state_dir or str(default_state_dir())
    outbox = dataclasses.replace(
        cfg.outbox, path=cfg.outbox.path or str(Path(state_dir) / "outbox.sqlite3"))
    mqtt = dataclasses.replace(cfg.mqtt, client_id=cfg.mqtt.client_id or default_client_id(
        device_id, machine_fingerprint()))
    return cfg.replace(device_id=device_id, state_dir=state_dir, outbox=outbox, mqtt=mqtt)


MACHINE_FILES = ("/sys/firmware/devicetree/base/serial-number",  # a Pi's board serial
                 "/etc/machine-id", "/var/lib/dbus/machine-id")
DEFAULT_HOSTNAMES = {"raspberrypi", "localhost", "debian", "ubuntu", "maskwatch"}


def machine_fingerprint(files: tuple[str, ...] = MACHINE_FILES) -> str:
    """8 hex digits that tell this machine from any other, stable across reboots: the
    board serial (differs between two Pis booted from one cloned card) and the machine
    id, hashed (neither is shown). "" where neither can be read."""
    parts = []
    for name in files:
        try:
            parts.append(Path(name).read_bytes()[:256].strip(b"\0\n "))
        except OSError:
            continue
    if not any(parts):
        return ""
    return hashlib.sha256(b"|".join(parts)).hexdigest()[:8]


def default_client_id(device_id: str, fingerprint: str) -> str:
    """maskwatch-<device_id>-<fingerprint>: two devices that share a device_id (one SD card
    image, one host name) still have two sessions, so they do not knock each other off the
    broker; the device_id in the topics is what an operator must make unique."""
    return f"maskwatch-{device_id}-{fingerprint}" if fingerprint else f"maskwatch-{device_id}"


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
    if isinstance(value, tuple):
        value = list(value)
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
