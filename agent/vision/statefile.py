"""Small JSON files in the state dir that `adapt` writes and a running agent re-reads.

The site head (`head.py`) and the site detector threshold (`tuning.py`) share the two
rules that make that safe: a writer replaces the file atomically (a reader sees the old
file or the new one, never half of one), and a reader looks at the file's stamp at most
every few seconds and re-reads it only when the stamp changed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..errors import ModelError


def read_state_json(path: Path, max_bytes: int, file_format: str, what: str) -> dict:
    """The JSON object in `path` whose "format" is `file_format`; ModelError (one line,
    naming `what`) when it is too large, unreadable, not JSON or of another format."""
    try:
        if path.stat().st_size > max_bytes:
            raise ModelError(f"{what} {path} is larger than {max_bytes} bytes")
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ModelError(f"cannot read {what} {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelError(f"{what} {path} is not valid: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != file_format:
        raise ModelError(f"{path} is not a {what} (format != {file_format})")
    return data


def write_json_atomic(path: Path, data: dict) -> None:
    write_bytes_atomic(path, (json.dumps(data) + "\n").encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a whole new file and rename it over the old one: a reader has the old file or
    the new, never a file being written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Stamp:
    """Whether a file changed (mtime, size; gone counts as a change) since it was last
    looked at, looked at no more often than every `check_s`."""

    def __init__(self, check_s: float) -> None:
        self.check_s = check_s
        self._stamp: tuple[int, int] | None = None
        self._next_check = 0.0

    @property
    def exists(self) -> bool:
        """Whether the file was there when last looked at."""
        return self._stamp is not None

    def due(self) -> bool:
        return time.monotonic() >= self._next_check

    def changed(self, path: Path, force: bool = False) -> bool:
        self._next_check = time.monotonic() + self.check_s
        try:
            st = path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp == self._stamp and not force:
            return False
        self._stamp = stamp
        return True
