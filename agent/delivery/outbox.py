"""A durable, bounded event outbox in SQLite (WAL mode), with a memory fallback.

Every event is committed to disk before it is handed to MQTT and deleted only when the
broker acknowledges it (QoS 1 PUBACK), so broker outages, Wi-Fi drops, SIGTERM, SIGKILL
and power cuts lose nothing: what is not acknowledged is published again, oldest first,
on reconnect or on the next start. When the outbox is full (events or bytes) the oldest
are dropped and counted; the count survives restarts and is reported in `stats`.

`ResilientOutbox` is what the service uses. When the disk cannot take a write (disk full,
database locked by another process, state dir unwritable) it keeps going in memory
instead of stalling the camera loop: a write waits at most `WRITE_WAIT_S`, sequence
numbers keep rising across disk and memory (the publisher sends in seq order and must
never see a number go back), what the disk still holds is still sent, and every few
seconds it tries the disk again and moves the memory events into it. A file that is no
database any more (a power cut on a card that lies about its writes, a file-system repair
that truncated it) no retry can mend: it is set aside, kept for inspection, and a new
outbox started, so the agent goes back to disk at once instead of living in memory until
someone comes.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from ..damaged import aside_path, beyond_newest, is_damaged_database
from ..errors import StateError
from ..throttle import Throttle

log = logging.getLogger("maskwatch.outbox")
throttle = Throttle(log)

T = TypeVar("T")
MEMORY = ":memory:"
NUMBERED = "events"  # the counter behind each event's `seq`
WRITE_WAIT_S = 0.2  # longest a locked database may hold up the frame loop
RETRY_DISK_S = 5.0  # how often a degraded outbox tries the disk again
KEEP_DAMAGED = 3  # damaged outbox files kept, newest first

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class DamagedOutbox(StateError):
    """The outbox file is no SQLite database any more: no retry will make it one."""


def failed(exc: sqlite3.Error | OSError, what: str) -> StateError:
    """The StateError for a failed outbox operation: DamagedOutbox when SQLite says the
    file is damaged, a plain StateError (a full disk, a lock: may pass) otherwise."""
    return (DamagedOutbox if is_damaged_database(exc) else StateError)(f"{what}: {exc}")


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Reads of the outbox: a damaged file says so as DamagedOutbox."""
    try:
        yield
    except sqlite3.Error as exc:
        raise failed(exc, f"cannot read event outbox {path}") from None


def set_aside(path: Path) -> Path:
    """Move a damaged outbox (and its -wal and -shm files) to `<name>.damaged-<UTC time>`,
    out of the way of a new one and kept for whoever looks; returns the new name. Only the
    newest KEEP_DAMAGED are kept: a failing card must not fill itself with them."""
    aside = aside_path(path)
    try:
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{path}{suffix}")
            if part.exists():
                part.replace(f"{aside}{suffix}")
        for old in beyond_newest(path, KEEP_DAMAGED):
            old.unlink()
    except OSError as exc:
        raise StateError(f"cannot move the damaged event outbox {path} aside: "
                         f"{exc.strerror}") from None
    return aside


@dataclass(frozen=True)
class Message:
    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    """One SQLite outbox: a file, or `:memory:`."""

    def __init__(self, path: str | Path, max_events: int = 10000,
                 max_bytes: int = 20_000_000, wait_s: float = WRITE_WAIT_S) -> None:
        self.path = Path(path)
        self.max_events, self.max_bytes = max_events, max_bytes
        self._lock = threading.Lock()
        in_memory = str(path) == MEMORY
        db = None
        try:
            if not in_memory:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(path), check_same_thread=False,
                                 isolation_level=None, timeout=wait_s)
            if not in_memory:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")  # a put survives power loss
            db.executescript(SCHEMA)
            self._db = db
            self._bytes = self._query_bytes()
        except (sqlite3.Error, OSError) as exc:
            if db is not None:
                db.close()  # a damaged file is moved aside next: nothing may hold it open
            raise failed(exc, f"cannot open event outbox {self.path}") from None

    def _query_bytes(self) -> int:
        row = self._db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
        return int(row[0])

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
            seq: int | None = None) -> int:
        """Store a message durably (with `seq`, under that number); drops the oldest when
        over the bounds. Returns its seq; StateError when it cannot be written."""
        return self.put_many([(seq, topic, payload, qos, retain)])[-1]

    def put_many(self, rows: list[tuple[int | None, str, bytes, int, bool]],
                 counters: dict[str, int] | None = None) -> list[int]:
        """Store several messages in one transaction (all or none)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                seqs = []
                for seq, topic, payload, qos, retain in rows:
                    cur = self._db.execute(
                        "INSERT INTO outbox (seq, topic, payload, qos, retain) "
                        "VALUES (?, ?, ?, ?, ?)", (seq, topic, payload, qos, int(retain)))
                    seqs.append(int(cur.lastrowid))
                    self._bytes += len(payload)
                for name, value in (counters or {}).items():  # in the same transaction
                    self._db.execute(
                        "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) "
                        "DO UPDATE SET value = MAX(value, excluded.value)", (name, value))
                dropped = self._enforce_bounds()
                if dropped:
                    self._db.execute(
                        "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                        (dropped,))
                self._db.execute("COMMIT")
                if dropped:
                    throttle.log(logging.WARNING, "dropped", "event outbox full (%d events or "
                                 "%d bytes): dropped the %d oldest", self.max_events,
                                 self.max_bytes, dropped)
                return seqs
            except sqlite3.Error as exc:
                self._rollback()
                raise failed(exc, f"cannot write event outbox {self.path}") from None

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")
        with contextlib.suppress(sqlite3.Error):
            self._bytes = self._query_bytes()

    def _enforce_bounds(self) -> int:
        dropped = 0
        count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        while count > 1 and (count > self.max_events or self._bytes > self.max_bytes):
            seq, size = self._db.execute(
                "SELECT seq, LENGTH(payload) FROM outbox ORDER BY seq LIMIT 1").fetchone()
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            self._bytes -= size
            count -= 1
            dropped += 1
        return dropped

    def pending(self, after: int = 0, limit: int = 100) -> list[Message]:
        """Unacknowledged messages with seq > after, oldest first."""
        with self._lock, reading(self.path):
            rows = self._db.execute(
                "SELECT seq, topic, payload, qos, retain FROM outbox WHERE seq > ? "
                "ORDER BY seq LIMIT ?", (after, limit)).fetchall()
        return [Message(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows]

    def holds(self, seq: int) -> bool:
        with self._lock, reading(self.path):
            return self._db.execute("SELECT 1 FROM outbox WHERE seq = ?", (seq,)).fetchone() \
                is not None

    def ack(self, seq: int) -> None:
        """The broker has the message: forget it."""
        with self._lock:
            try:
                row = self._db.execute("SELECT LENGTH(payload) FROM outbox WHERE seq = ?",
                                       (seq,)).fetchone()
                if row:
                    self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
                    self._bytes -= int(row[0])
            except sqlite3.Error as exc:
                raise failed(exc, f"cannot update event outbox {self.path}") from None

    def last_seq(self) -> int:
        """The highest seq ever given out (AUTOINCREMENT never reuses one)."""
        with self._lock, reading(self.path):
            row = self._db.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return int(row[0]) if row else 0

    def depth(self) -> int:
        with self._lock, reading(self.path):
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def counter(self, name: str) -> int:
        """A number kept with the messages (e.g. the last event number given out)."""
        with self._lock, reading(self.path):
            row = self._db.execute("SELECT value FROM counters WHERE name = ?",
                                   (name,)).fetchone()
        return int(row[0]) if row else 0

    def dropped(self) -> int:
        with self._lock, reading(self.path):
            row = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        return int(row[0]) if row else 0

    def clear(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox")
            self._bytes = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()


class ResilientOutbox:
    """The disk outbox, falling back to memory (and back again) without losing an event."""

    def __init__(self, path: str | Path, max_events: int = 10000,
                 max_bytes: int = 20_000_000, retry_s: float = RETRY_DISK_S) -> None:
        self.path = Path(path)
        self.max_events, self.max_bytes = max_events, max_bytes
        self.retry_s = retry_s
        self.error: str | None = None  # why events are (also) in memory
        self._lock = threading.RLock()
        self._disk: Outbox | None = None
        self._memory: Outbox | None = None
        self._seq = 0
        self._numbers: dict[str, int] = {}  # e.g. "events": the last event number given out
        self._next_retry = 0.0
        self._delete_later: set[int] = set()  # acknowledged, but the disk refused the delete
        try:
            self._disk = self._open_disk()
            self._seq = self._disk.last_seq()
            self._numbers = {NUMBERED: self._disk.counter(NUMBERED)}
        except StateError as exc:
            self._lose_disk(exc)

    @property
    def degraded(self) -> bool:
        return self._memory is not None

    def _open_disk(self) -> Outbox:
        """The disk outbox; a damaged file is set aside and a new one opened in its place."""
        try:
            return Outbox(self.path, self.max_events, self.max_bytes)
        except DamagedOutbox as exc:
            aside = set_aside(self.path)
            log.error("%s: moved to %s (kept; the events still in it are not sent) and a new "
                      "event outbox started", exc, aside)
            return Outbox(self.path, self.max_events, self.max_bytes)

    def _lose_disk(self, exc: StateError) -> None:
        """Go on in memory; a damaged disk outbox is closed, to be set aside and opened
        anew at the next retry (`maintain`)."""
        if isinstance(exc, DamagedOutbox) and self._disk is not None:
            with contextlib.suppress(sqlite3.Error):
                self._disk.close()
            self._disk = None
            self._delete_later.clear()  # they were in the file set aside
        self._degrade(str(exc))

    def _read(self, read: Callable[[Outbox], T]) -> list[T]:
        """`read` of the disk and the memory outbox, those there are; a disk that cannot
        be read is lost (`_lose_disk`) and gives nothing this time."""
        results = []
        for box in (self._disk, self._memory):
            if box is not None:
                try:
                    results.append(read(box))
                except StateError as exc:
                    self._lose_disk(exc)
        return results

    def _degrade(self, reason: str) -> None:
        if self._memory is None:
            log.error("%s; keeping events in memory and retrying the disk every %.0f s",
                      reason, self.retry_s)
            self._memory = Outbox(MEMORY, self.max_events, self.max_bytes)
        self.error = reason
        self._next_retry = time.monotonic() + self.retry_s

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Queue a message: on disk when possible, else in memory. Never raises for disk
        trouble; the seq is always higher than any given out before."""
        with self._lock:
            return self._put(topic, payload, qos, retain, None)

    def put_numbered(self, topic: str, build: Callable[[int], bytes], qos: int = 1) -> int:
        """Queue the message `build(n)`, n the next event number: 1, 2, 3, ... across
        restarts and disk faults, stored with the message in one transaction, so a
        consumer that sees a number missing knows an event is missing (the outbox seq
        also counts alerts and cannot tell). Returns n."""
        with self._lock:
            number = self._numbers.get(NUMBERED, 0) + 1
            self._put(topic, build(number), qos, False, {NUMBERED: number})
            self._numbers[NUMBERED] = number
            return number

    def _put(self, topic: str, payload: bytes, qos: int, retain: bool,
             counters: dict[str, int] | None) -> int:
        self.maintain()
        seq = self._seq + 1
        row = [(seq, topic, payload, qos, retain)]
        if self._memory is None:
            assert self._disk is not None
            try:
                self._seq = self._disk.put_many(row, counters)[-1]
                return self._seq
            except StateError as exc:
                self._lose_disk(exc)
        assert self._memory is not None
        self._seq = self._memory.put_many(row, counters)[-1]
        return self._seq

    def maintain(self) -> bool:
        """Now and then (every `retry_s`) retry the deletes the disk refused and, while
        degraded, try the disk again and move the memory events into it (one transaction,
        same seqs). True when the outbox is on disk."""
        with self._lock:
            if self._memory is None and not self._delete_later:
                return True
            if time.monotonic() < self._next_retry:  # a locked disk would stall every put
                return self._memory is None
            self._next_retry = time.monotonic() + self.retry_s
            self._retry_deletes()
            if self._memory is None:
                return True
            try:
                if self._disk is None:
                    self._disk = self._open_disk()
                    self._seq = max(self._seq, self._disk.last_seq())
                    self._numbers[NUMBERED] = max(self._numbers.get(NUMBERED, 0),
                                                  self._disk.counter(NUMBERED))
                moving = self._memory.pending(after=0, limit=self.max_events)
                if moving:
                    self._disk.put_many([(m.seq, m.topic, m.payload, m.qos, m.retain)
                                         for m in moving], dict(self._numbers))
            except StateError as exc:
                self._lose_disk(exc)
                return False
            log.warning("event outbox %s is writable again: moved %d events from memory",
                        self.path, len(moving))
            self._memory.close()
            self._memory, self.error = None, None
            return True

    def pending(self, after: int = 0, limit: int = 100) -> list[Message]:
        with self._lock:
            extra = len(self._delete_later)
            parts = self._read(lambda box: box.pending(after, limit + extra))
            skip = set(self._delete_later)
        merged = sorted((m for part in parts for m in part if m.seq not in skip),
                        key=lambda m: m.seq)
        return merged[:limit]

    def ack(self, seq: int) -> None:
        """Forget an acknowledged message. A full disk may refuse even the delete: then it
        is remembered (never sent again) and deleted when the disk lets us."""
        with self._lock:
            if self._memory is not None and self._memory.holds(seq):
                self._memory.ack(seq)
            elif self._disk is not None:
                try:
                    self._disk.ack(seq)
                except DamagedOutbox as exc:
                    self._lose_disk(exc)
                except StateError:
                    self._delete_later.add(seq)

    def _retry_deletes(self) -> None:
        for seq in sorted(self._delete_later):
            try:
                assert self._disk is not None  # _lose_disk empties _delete_later
                self._disk.ack(seq)
            except StateError:
                return
            self._delete_later.discard(seq)

    def depth(self) -> int:
        with self._lock:
            held = sum(self._read(Outbox.depth))
            return held - len(self._delete_later)

    def in_memory(self) -> int:
        """Events that exist only in memory (lost if the process ends now)."""
        with self._lock:
            return self._memory.depth() if self._memory else 0

    def dropped(self) -> int:
        with self._lock:
            return sum(self._read(Outbox.dropped))

    def close(self) -> None:
        with self._lock:
            for box in (self._disk, self._memory):
                if box is not None:
                    box.close()
