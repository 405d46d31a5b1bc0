"""Declaring settings: the field type that carries a setting's default, rules and doc.

The lowest layer of the agent's configuration, beside `errors`: every part's own
`config.py` (vision, people, delivery, site, web) declares its section with `setting()`
and `section()`, and the top-level `config.py` loads, validates and documents them all
from these declarations. Also the few helpers a section needs to read its own secrets and
the state dir's default, so that no part imports the loader above it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError


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


def fail(key: str, message: str) -> ConfigError:
    """The one-line error that names the key: `config: mqtt.port: ...` (exit 78)."""
    return ConfigError(f"config: {key}: {message}")


def default_state_dir() -> Path:
    env = os.environ.get("STATE_DIRECTORY")  # set by systemd's StateDirectory=
    if env:
        return Path(env.split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "maskwatch"


def read_secret_file(key: str, path: str) -> str:
    """A password or token from a file, verbatim but for the final line break."""
    try:
        with open(path, "rb") as f:
            data = f.read(4097)
    except OSError as exc:
        raise fail(key, f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > 4096:
        raise fail(key, f"{path} is larger than 4 KB")
    try:
        text = data.decode().rstrip("\r\n")
    except UnicodeDecodeError:
        raise fail(key, f"{path} is not UTF-8 text") from None
    if not text:
        raise fail(key, f"{path} is empty")
    return text
