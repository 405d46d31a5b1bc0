"""Class-folder datasets: scan several roots, drop exact duplicates, split by class.

A root holds one folder per class (`with_mask`, `without_mask`, any extra such as
`mask_weared_incorrect`); several roots merge by class name. Other data sets' names for
the same classes (`WithMask`, `mask`, `no_mask`, ...) are read as ours: a model whose no-mask
class had another name would run, and never raise an alert. Photos in folders inside a
class folder count (one folder a person, as Keras reads class folders). Exact duplicates (same
bytes) are found by SHA-256 and kept once, so a photo can never sit on both sides of
the train/validation split (prajnasb alone has ~90 such files).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from maskwatch.agent.vision.decision import (
    INCORRECT,
    LABEL_ALIASES,
    MASK,
    NO_MASK,
    canonical_label,
)
from maskwatch.agent.vision.predict import hidden, images_in

from .errors import ConvertError

CLASS_ORDER = (MASK, NO_MASK, INCORRECT)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    source: str  # name of the root folder it came from
    sha256: str


@dataclass
class Dataset:
    samples: list[Sample]
    labels: list[str]
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (dropped, kept)
    read_as: dict[str, str] = field(default_factory=dict)  # folder name -> our class name

    def counts(self) -> dict[str, int]:
        found = Counter(s.label for s in self.samples)
        return {label: found.get(label, 0) for label in self.labels}

    def summary(self) -> dict:
        by_source: dict[str, dict[str, int]] = {}
        for s in self.samples:
            by_source.setdefault(s.source, Counter())[s.label] += 1
        digest = hashlib.sha256("".join(sorted(s.sha256 for s in self.samples)).encode())
        summary = {
            "images": len(self.samples),
            "classes": self.counts(),
            "sources": {k: dict(v) for k, v in sorted(by_source.items())},
            "exact_duplicates_dropped": len(self.duplicates),
            "content_sha256": digest.hexdigest(),
        }
        if self.read_as:  # folders named as another data set names them
            summary["class_folders_read_as"] = dict(sorted(self.read_as.items()))
        return summary


def order_labels(names: set[str]) -> list[str]:
    """Known classes first in a fixed order (stable output indices), then the rest sorted."""
    known = [c for c in CLASS_ORDER if c in names]
    return known + sorted(names - set(known))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def class_folders(root: Path) -> list[Path]:
    """The folders in `root` that may be classes (not hidden, not `__MACOSX`)."""
    return [d for d in sorted(root.iterdir()) if d.is_dir() and not hidden(d.name)]


def missing_classes_message(roots: list[str | Path], labels: list[str],
                            missing: list[str]) -> str:
    """What a data set without a mask or a no-mask class lacks, the names read as them,
    and where a folder given was one level too high (Kaggle's archives hold
    Train/WithMask/...), the folder to give instead."""
    also = "; ".join(f"{label}: {', '.join(LABEL_ALIASES[label][:3])}"
                     for label in (MASK, NO_MASK))
    message = (f"{', '.join(map(str, roots))}: no {' and no '.join(missing)} class folder "
               f"(found {', '.join(labels)}): a mask classifier needs with_mask and "
               f"without_mask (also read as them, ignoring case, spaces, - and _: {also})")
    for folder in (d for root in map(Path, roots) for d in class_folders(root)):
        if any(canonical_label(inner.name) in missing for inner in class_folders(folder)):
            return f"{message}; {folder} holds class folders: give it instead"
    return message


def scan(roots: list[str | Path], classes: list[str] | None = None) -> Dataset:
    """Merge class folders from `roots`; raise ConvertError on empty or one-class data."""
    found: dict[str, list[tuple[Path, str]]] = {}
    empty: list[Path] = []
    read_as: dict[str, str] = {}
    wanted = None if classes is None else {canonical_label(name) for name in classes}
    for root in map(Path, roots):
        if not root.is_dir():
            raise ConvertError(f"data folder not found: {root}")
        class_dirs = class_folders(root)
        if not class_dirs:
            raise ConvertError(f"data folder {root} has no class folders")
        for class_dir in class_dirs:
            label = canonical_label(class_dir.name)
            if wanted is not None and label not in wanted:
                continue
            files = images_in(class_dir)
            if label != class_dir.name:
                read_as[class_dir.name] = label
            if not files:
                empty.append(class_dir)
            found.setdefault(label, []).extend((p, root.name) for p in files)
    empty = [d for d in empty if not found[canonical_label(d.name)]]  # none in any root
    if empty:
        raise ConvertError(f"class folder(s) with no images: {', '.join(map(str, empty))}")
    labels = order_labels({k for k, v in found.items() if v})
    if len(labels) < 2:
        raise ConvertError(f"need at least two classes with images, found: {labels or 'none'}")
    missing = [label for label in (MASK, NO_MASK) if label not in labels]
    if missing:
        raise ConvertError(missing_classes_message(roots, labels, missing))
    seen: dict[str, Path] = {}
    samples: list[Sample] = []
    duplicates: list[tuple[str, str]] = []
    for label in labels:
        for path, source in found[label]:
            digest = file_sha256(path)
            if digest in seen:
                duplicates.append((str(path), str(seen[digest])))
                continue
            seen[digest] = path
            samples.append(Sample(path, label, source, digest))
    return Dataset(samples, labels, duplicates, read_as)


def stratified_split(samples: list[Sample], val_fraction: float,
                     seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split each class separately with a seeded shuffle (same seed, same split)."""
    if not 0.0 < val_fraction < 1.0:
        raise ConvertError(f"validation fraction must be between 0 and 1, got {val_fraction}")
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    by_label: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: s.sha256):
        by_label.setdefault(s.label, []).append(s)
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        n_val = max(1, int(round(len(group) * val_fraction))) if len(group) > 1 else 0
        val.extend(group[:n_val])
        train.extend(group[n_val:])
    return train, val
