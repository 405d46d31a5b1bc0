"""A durable, bounded event outbox in SQLite (WAL mode).

Every event is committed to disk before it is handed to MQTT and deleted only when the
broker acknowledges it (QoS 1 PUBACK), so broker outages, Wi-Fi drops, SIGTERM, SIGKILL
and power cuts lose nothing: what is not acknowledged is published again, oldest first,
on reconnect or on the next start. When the outbox is full (events or bytes) the oldest
are dropped and counted; the count survives restarts and is reported in `stats`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import StateError

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


@dataclass(frozen=True)
class Message:
    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    def __init__(self, path: str | Path, max_events: int = 10000,
                 max_bytes: int = 20_000_000) -> None:
        self.path = Path(path)
        self.max_events, self.max_bytes = max_events, max_bytes
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False,
                                       isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged put survives power loss
            self._db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"cannot open event outbox {self.path}: {exc}") from None
        self._bytes = self._query_bytes()

    def _query_bytes(self) -> int:
        row = self._db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
        return int(row[0])

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Store a message durably; drops the oldest when over the bounds. Returns its seq."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                cur = self._db.execute(
                    "INSERT INTO outbox (topic, payload, qos, retain) VALUES (?, ?, ?, ?)",
                    (topic, payload, qos, int(retain)))
                self._bytes += len(payload)
                dropped = self._enforce_bounds()
                if dropped:
                    self._db.execute(
                        "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                        (dropped,))
                self._db.execute("COMMIT")
                return int(cur.lastrowid)
            except sqlite3.Error as exc:
                self._rollback()
                raise StateError(f"cannot write event outbox {self.path}: {exc}") from None

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")
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
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, payload, qos, retain FROM outbox WHERE seq > ? "
                "ORDER BY seq LIMIT ?", (after, limit)).fetchall()
        return [Message(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows]

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
                raise StateError(f"cannot update event outbox {self.path}: {exc}") from None

    def depth(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def dropped(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            self._db.close()


class MemoryOutbox(Outbox):
    """The same bounded queue in memory: used when the state directory cannot be written,
    so the agent keeps working (events survive outages, not restarts) and says so."""

    def __init__(self, max_events: int = 10000, max_bytes: int = 20_000_000) -> None:
        self.path = Path(":memory:")
        self.max_events, self.max_bytes = max_events, max_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self._db.executescript(SCHEMA)
        self._bytes = 0
