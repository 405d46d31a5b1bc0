"""A state file SQLite can no longer read, and where it is set aside.

The event outbox and the sample store both live on an SD card that may lose writes in a
power cut. A file SQLite says is damaged (SQLITE_NOTADB, SQLITE_CORRUPT) no retry will
mend, so each moves it aside as `<name>.damaged-<UTC time>` (with whatever belongs to it:
the outbox's -wal and -shm files, the store's crops), kept for whoever looks, and starts
anew. This module holds what the two share: how such an error is told, how an aside is
named, and which asides are old enough to go, so that a card failing again and again
cannot fill itself with them.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from pathlib import Path

# what SQLite says of a file it cannot read as a database (SQLITE_NOTADB, SQLITE_CORRUPT)
SQLITE_DAMAGED = ("file is not a database", "database disk image is malformed")
INFIX = ".damaged-"  # <name>.damaged-<UTC time>[suffix]
STAMP = "%Y%m%dT%H%M%SZ"
STAMP_LEN = 16  # len("20261206T040000Z")


def is_damaged_database(exc: BaseException) -> bool:
    """Does this SQLite error say the file is damaged (not a lock, not a full disk)?"""
    return isinstance(exc, sqlite3.DatabaseError) and any(t in str(exc) for t in SQLITE_DAMAGED)


def aside_path(path: Path) -> Path:
    """Where `path` goes when it is set aside now: `<name>.damaged-<UTC time>`."""
    return path.with_name(path.name + INFIX + time.strftime(STAMP, time.gmtime()))


def asides(path: Path) -> list[tuple[Path, float]]:
    """(entry, when it was set aside, as a UNIX time) of each entry set aside from `path`,
    a companion file (`…Z-wal`) as its own entry, oldest first. A name that only looks like
    one (no UTC time where the stamp goes) is not ours and is left out."""
    prefix = path.name + INFIX
    found = []
    for entry in path.parent.glob(prefix + "*"):
        stamp = entry.name[len(prefix):][:STAMP_LEN]
        try:
            when = dt.datetime.strptime(stamp, STAMP).replace(tzinfo=dt.timezone.utc)
        except ValueError:
            continue
        found.append((entry, when.timestamp()))
    return sorted(found, key=lambda item: (item[1], item[0].name))


def beyond_newest(path: Path, keep: int) -> list[Path]:
    """The entries set aside from `path` that are not among the newest `keep` set asides
    (an aside and its companion files share a time, and go together)."""
    found = asides(path)
    times = sorted({when for _, when in found})
    old = set(times[:-keep]) if keep > 0 else set(times)
    return [entry for entry, when in found if when in old]
