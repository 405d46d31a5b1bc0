"""Site samples: face crops kept (opt-in) for labelling and site adaptation.

PRIVACY: a sample is a picture of a face. Samples are kept only when `adapt.collect` is
on, only in `<state_dir>/samples/` (crops as JPEG files, an SQLite index with their
features, predicted label, confidence and time), bounded by `adapt.max_samples` and
`adapt.max_mb`, and deleted after `adapt.retention_days`. They never go to MQTT.
`mask-agent samples clear` erases them all. A store whose index SQLite can no longer read
(a card that lost writes) is set aside whole, crops and index, as
`samples.damaged-<UTC time>` (`open_or_renew`), and a new one takes the new samples: the
set-aside faces are deleted once `adapt.retention_days` have passed since, or by `clear`.

What is kept teaches the site head something (`Collector`): faces near the no-mask
threshold, faces of people whose votes were split, and a thin random sample of confident
ones, at most one per person every `adapt.min_interval_s`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import random
import shutil
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..damaged import aside_path, asides, beyond_newest, is_damaged_database
from ..errors import StateError, UsageError, running_as
from ..vision.decision import MASK, NO_MASK, canonical_label
from ..vision.predict import is_folder, unreadable

SKIP = "skip"
HUMAN_LABELS = (MASK, NO_MASK, SKIP)
SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    track_id INTEGER NOT NULL,
    predicted TEXT NOT NULL,
    confidence REAL NOT NULL,
    p_no_mask REAL NOT NULL,
    reason TEXT NOT NULL,
    features BLOB NOT NULL,
    bytes INTEGER NOT NULL,
    label TEXT
)"""
KEEP_DAMAGED = 3  # set-aside stores kept at most (each until its retention passes)
INDEX = "index.csv"  # an export's list of its samples; `import_labels` checks it
UNLABELLED = "unlabelled"  # an export's folder of samples with no label yet
COLUMNS = {"id", "ts", "track_id", "predicted", "confidence", "p_no_mask", "reason",
           "features", "bytes", "label"}


@dataclass(frozen=True)
class Imported:
    """What `import_labels` did: labels set per label, and files it left alone."""

    labelled: dict[str, int]
    strangers: int  # files whose sample is gone (pruned, cleared) or another store's, or
    # that lie in two class folders


@dataclass(frozen=True)
class Sample:
    id: int
    ts: float
    track_id: int
    predicted: str
    confidence: float
    p_no_mask: float
    reason: str
    label: str | None

    def to_json(self) -> dict:
        return {"id": self.id, "ts": round(self.ts, 3), "track_id": self.track_id,
                "predicted": self.predicted, "confidence": round(self.confidence, 4),
                "p_no_mask": round(self.p_no_mask, 4), "reason": self.reason,
                "label": self.label}


def write_private(path: Path, data: bytes) -> None:
    """A file only its owner can read (0600 whatever the umask, and whatever the mode of
    a file it replaces: a face crop)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def private_folder(folder: Path) -> None:
    """The folder, made 0700 (with its parents) where it does not exist yet."""
    if not folder.is_dir():
        folder.mkdir(parents=True, mode=0o700)
        folder.chmod(0o700)  # mkdir's mode is cut by the umask


class DamagedStore(StateError):
    """The store's index is no SQLite database any more: no retry makes it one."""


class SampleStore:
    """Crops on disk + an SQLite index; safe to use from the agent and the console threads."""

    def __init__(self, folder: str | Path, max_samples: int = 2000, max_bytes: int = 50 << 20,
                 retention_days: float = 30.0) -> None:
        self.folder = Path(folder)
        self.crops = self.folder / "crops"
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.retention_s = retention_days * 86400
        self._lock = threading.Lock()
        db = None
        try:
            self.crops.mkdir(parents=True, exist_ok=True)
            for private in (self.folder, self.crops):  # faces: the service user's alone
                private.chmod(0o700)
            db_path = self.folder / "samples.sqlite3"
            os.close(os.open(db_path, os.O_CREAT | os.O_WRONLY, 0o600))
            db_path.chmod(0o600)
            db = sqlite3.connect(str(db_path), check_same_thread=False, timeout=5)
            db.execute(SCHEMA)
            db.commit()
            columns = {row[1] for row in db.execute("PRAGMA table_info(samples)")}
            # a damaged page inside a readable file shows only when it is read: look at
            # every page now (a few MB), not at the first sample kept or listed
            problem = db.execute("PRAGMA quick_check(1)").fetchone()[0]
            if problem != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed ({problem})")
        except (OSError, sqlite3.Error) as exc:
            error = DamagedStore if is_damaged_database(exc) else StateError
            if db is not None:
                db.close()  # a damaged store is moved aside next: nothing may hold it
            raise error(f"cannot open the sample store in {self.folder}: {exc}") from None
        self._db = db
        if columns != COLUMNS:
            raise StateError(f"cannot open the sample store in {self.folder}: "
                             "samples.sqlite3 holds another program's table (move it away)")

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._db:
            yield self._db

    def crop_path(self, sample_id: int) -> Path:
        return self.crops / f"{int(sample_id)}.jpg"

    def add(self, crop_rgb: np.ndarray, features: np.ndarray, predicted: str,
            confidence: float, p_no_mask: float, track_id: int, reason: str,
            ts: float | None = None) -> int:
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise ValueError("crop could not be encoded")
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO samples (ts, track_id, predicted, confidence, p_no_mask, reason,"
                " features, bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time() if ts is None else ts, track_id, predicted, confidence,
                 p_no_mask, reason, features.astype(np.float16).tobytes(), len(jpeg)))
            sample_id = int(cursor.lastrowid)
            write_private(self.crop_path(sample_id), jpeg.tobytes())
        self._prune_samples(time.time())
        return sample_id

    def prune(self, now: float | None = None) -> int:
        """Drop samples past retention, then the oldest unlabelled (then oldest labelled)
        ones until count and bytes fit, and the set-aside stores whose retention passed
        (the periodic sweep; `add` prunes samples only). Returns how many samples went."""
        now = time.time() if now is None else now
        for aside, when in asides(self.folder):
            if when < now - self.retention_s:
                shutil.rmtree(aside, ignore_errors=True)
        return self._prune_samples(now)

    def _prune_samples(self, now: float) -> int:
        """Samples past retention, then the oldest beyond the bounds, deleted; how many."""
        with self._tx() as db:
            doomed = [r[0] for r in db.execute("SELECT id FROM samples WHERE ts < ?",
                                               (now - self.retention_s,))]
            rows = db.execute("SELECT id, bytes FROM samples WHERE ts >= ? ORDER BY "
                              "label IS NOT NULL, ts", (now - self.retention_s,)).fetchall()
            count, total = len(rows), sum(r[1] for r in rows)
            for sample_id, size in rows:
                if count <= self.max_samples and total <= self.max_bytes:
                    break
                doomed.append(sample_id)
                count, total = count - 1, total - size
            self._delete(db, doomed)
        return len(doomed)

    def _delete(self, db: sqlite3.Connection, ids: list[int]) -> None:
        for sample_id in ids:
            db.execute("DELETE FROM samples WHERE id = ?", (sample_id,))
            self.crop_path(sample_id).unlink(missing_ok=True)

    def list(self, labelled: bool | None = None, limit: int = 10_000) -> list[Sample]:
        where = {None: "", True: "WHERE label IS NOT NULL", False: "WHERE label IS NULL"}
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, ts, track_id, predicted, confidence, p_no_mask, reason, label "
                f"FROM samples {where[labelled]} ORDER BY ts DESC LIMIT ?", (limit,)).fetchall()
        return [Sample(*row) for row in rows]

    def counts(self) -> dict[str, int]:
        with self._tx() as db:
            rows = db.execute("SELECT COALESCE(label, 'unlabelled'), COUNT(*) FROM samples "
                              "GROUP BY 1").fetchall()
        found = dict(rows)
        return {k: int(found.get(k, 0)) for k in (*HUMAN_LABELS, "unlabelled")}

    def set_label(self, ids: list[int], label: str | None) -> int:
        if label is not None and label not in HUMAN_LABELS:
            raise UsageError(f"unknown label {label!r} (choose one of {', '.join(HUMAN_LABELS)})")
        with self._tx() as db:
            changed = sum(db.execute("UPDATE samples SET label = ? WHERE id = ?",
                                     (label, int(i))).rowcount for i in ids)
        return changed

    def labelled_features(self) -> tuple[np.ndarray, np.ndarray]:
        """(features (N, F), labels (N,) 1 = without_mask) of the mask/no-mask labels."""
        with self._tx() as db:
            rows = db.execute("SELECT features, label FROM samples WHERE label IN (?, ?)",
                              (MASK, NO_MASK)).fetchall()
        if not rows:
            return np.zeros((0, 0), np.float32), np.zeros(0, int)
        x = np.stack([np.frombuffer(f, np.float16) for f, _ in rows]).astype(np.float32)
        return x, np.array([label == NO_MASK for _, label in rows], int)

    def export(self, out: Path) -> int:
        """Class folders of labelled crops (`adapt --labels` reads them) + index.csv. The
        copies are faces too, so they are as private as the store's: the folders it makes
        0700, the files 0600, whatever the umask (before, 0755 and 0644: any local user
        could see them). A folder that exists keeps its mode (`export /tmp` must not
        close /tmp)."""
        try:
            return self._export(out)
        except OSError as exc:  # a folder this user may not write (a 0700 home, as another)
            raise UsageError(f"cannot export to {out}: {exc.strerror} ({exc.filename}; "
                             f"running as {running_as()})") from None

    def _export(self, out: Path) -> int:
        samples = self.list()
        private_folder(out)
        rows = [["id", "time", "track_id", "predicted", "confidence", "label"]]
        for s in samples:
            folder = out / (s.label or UNLABELLED)
            private_folder(folder)
            if self.crop_path(s.id).is_file():
                write_private(folder / f"{s.id}.jpg", self.crop_path(s.id).read_bytes())
            rows.append([s.id, s.ts, s.track_id, s.predicted, s.confidence, s.label])
        index = io.StringIO(newline="")
        csv.writer(index).writerows(rows)
        write_private(out / INDEX, index.getvalue().encode())
        return len(samples)

    def import_labels(self, export: Path) -> Imported:
        """The labels given to an export by sorting its crops into class folders
        (`with_mask/`, `without_mask/`, `skip/`, or names other data sets use), put back
        on the stored samples by id, whose features are the agent's own view of each face.
        (Given to `adapt --labels` as photos, the crops were searched again and cut anew:
        a tenth had no face found, and a fifth of the rest classified otherwise than the
        agent had, in a trial.) A file counts only where the export's index.csv and the
        store agree on its sample's time and track: another device's export would label
        other faces."""
        listed = self._export_index(export)
        found: list[tuple[int, str]] = []
        for sub in sorted(export.iterdir()):
            label = SKIP if sub.name == SKIP else canonical_label(sub.name)
            if label in HUMAN_LABELS and is_folder(sub):
                found += [(int(f.stem), label) for f in sub.glob("*.jpg") if f.stem.isdigit()]
        twice = {i for i, n in Counter(i for i, _ in found).items() if n > 1}  # which is it?
        chosen = {i: label for i, label in found if i not in twice}
        with self._tx() as db:
            stored = {row[0]: (row[1], row[2]) for row in db.execute(
                "SELECT id, ts, track_id FROM samples")}
        ours = {i: label for i, label in chosen.items()
                if i in stored and i in listed and abs(stored[i][0] - listed[i][0]) < 1e-3
                and stored[i][1] == listed[i][1]}
        for label in HUMAN_LABELS:
            self.set_label([i for i, given in ours.items() if given == label], label)
        counts = {label: sum(given == label for given in ours.values()) for label in HUMAN_LABELS}
        return Imported(counts, len(found) - len(ours))

    @staticmethod
    def _export_index(export: Path) -> dict[int, tuple[float, int]]:
        """id -> (time, track) of each sample an export lists in its index.csv."""
        if not is_folder(export):
            raise UsageError(f"{export}: not a folder")
        try:
            with open(export / INDEX, newline="") as f:
                rows = list(csv.DictReader(f))
        except FileNotFoundError:
            raise UsageError(f"{export} has no {INDEX}: not a folder `mask-agent samples "
                             "export` wrote (labelled photos from anywhere: `mask-agent "
                             "adapt --labels DIR`)") from None
        except OSError as exc:
            raise unreadable(export / INDEX, exc.strerror) from None
        try:
            return {int(r["id"]): (float(r["time"]), int(r["track_id"])) for r in rows}
        except (KeyError, TypeError, ValueError):
            raise UsageError(f"{export / INDEX}: not an index `mask-agent samples export` "
                             "wrote (its columns: id, time, track_id, ...)") from None

    def clear(self) -> tuple[int, int]:
        """Every sample deleted, and every store set aside (their faces too): (samples,
        set-aside stores)."""
        with self._tx() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM samples")]
            self._delete(db, ids)
        old_stores = asides(self.folder)
        try:
            for aside, _ in old_stores:
                shutil.rmtree(aside)
        except OSError as exc:
            raise StateError(f"cannot delete the damaged sample store set aside at "
                             f"{exc.filename}: {exc.strerror}") from None
        return len(ids), len(old_stores)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def set_aside(folder: Path) -> Path:
    """Move a damaged store (its index and crops) to `<folder>.damaged-<UTC time>`, out of
    the way of a new one; only the newest KEEP_DAMAGED are kept."""
    aside = aside_path(folder)
    try:
        if aside.exists():  # set aside twice within a second: one is enough to keep
            shutil.rmtree(aside)
        folder.replace(aside)
        for old in beyond_newest(folder, KEEP_DAMAGED):
            shutil.rmtree(old)
    except OSError as exc:
        raise StateError(f"cannot move the damaged sample store {folder} aside: "
                         f"{exc.strerror}") from None
    return aside


def open_or_renew(folder: Path, max_samples: int, max_bytes: int,
                  retention_days: float) -> tuple[SampleStore, Path | None]:
    """The store in `folder`, and None; or, where its index is damaged, a new store and
    where the damaged one was set aside (`set_aside`). Before, a damaged index turned
    collection off for good, and `samples clear` could not erase its faces."""
    try:
        return SampleStore(folder, max_samples, max_bytes, retention_days), None
    except DamagedStore:
        aside = set_aside(folder)
    return SampleStore(folder, max_samples, max_bytes, retention_days), aside


class Collector:
    """Decides which classified faces are worth keeping, and keeps them."""

    def __init__(self, store: SampleStore, min_interval_s: float = 3.0,
                 near_margin: float = 0.2, random_share: float = 0.03,
                 seed: int | None = None) -> None:
        self.store = store
        self.min_interval_s, self.near_margin = min_interval_s, near_margin
        self.random_share = random_share
        self._last_kept: dict[int, float] = {}  # track id -> time of its last sample
        self._random = random.Random(seed)

    def reason(self, p_no_mask: float, threshold: float, tally: dict[str, int]) -> str | None:
        if abs(p_no_mask - threshold) < self.near_margin:
            return "near_threshold"
        if len(tally) > 1 and min(tally.values()) / sum(tally.values()) >= 0.25:
            return "split_votes"
        if self._random.random() < self.random_share:
            return "random"
        return None

    def offer(self, track_id: int, tally: dict[str, int], crop_rgb: np.ndarray,
              features: np.ndarray, predicted: str, confidence: float, p_no_mask: float,
              threshold: float, ts: float) -> int | None:
        """Keep this face when it teaches something and its person has not just given one."""
        if not features.size or ts - self._last_kept.get(track_id, -1e18) < self.min_interval_s:
            return None
        reason = self.reason(p_no_mask, threshold, tally)
        if reason is None:
            return None
        self._last_kept[track_id] = ts
        if len(self._last_kept) > 1000:  # forget people long gone
            for key in sorted(self._last_kept, key=self._last_kept.get)[:500]:
                del self._last_kept[key]
        return self.store.add(crop_rgb, features, predicted, confidence, p_no_mask, track_id,
                              reason)
