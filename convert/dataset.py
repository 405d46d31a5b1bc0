"""Class-folder datasets: scan several roots, drop exact duplicates, split by class.

A root holds one folder per class (`with_mask`, `without_mask`, any extra such as
`mask_weared_incorrect`); several roots merge by class name. Exact duplicates (same
bytes) are found by SHA-256 and kept once, so a photo can never sit on both sides of
the train/validation split (prajnasb alone has ~90 such files).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from maskwatch.agent.vision.decision import INCORRECT, MASK, NO_MASK
from maskwatch.agent.vision.predict import IMAGE_SUFFIXES

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

    def counts(self) -> dict[str, int]:
        found = Counter(s.label for s in self.samples)
        return {label: found.get(label, 0) for label in self.labels}

    def summary(self) -> dict:
        by_source: dict[str, dict[str, int]] = {}
        for s in self.samples:
            by_source.setdefault(s.source, Counter())[s.label] += 1
        digest = hashlib.sha256("".join(sorted(s.sha256 for s in self.samples)).encode())
        return {
            "images": len(self.samples),
            "classes": self.counts(),
            "sources": {k: dict(v) for k, v in sorted(by_source.items())},
            "exact_duplicates_dropped": len(self.duplicates),
            "content_sha256": digest.hexdigest(),
        }


def order_labels(names: set[str]) -> list[str]:
    """Known classes first in a fixed order (stable output indices), then the rest sorted."""
    known = [c for c in CLASS_ORDER if c in names]
    return known + sorted(names - set(known))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def scan(roots: list[str | Path], classes: list[str] | None = None) -> Dataset:
    """Merge class folders from `roots`; raise ConvertError on empty or one-class data."""
    found: dict[str, list[tuple[Path, str]]] = {}
    for root in map(Path, roots):
        if not root.is_dir():
            raise ConvertError(f"data folder not found: {root}")
        class_dirs = [d for d in sorted(root.iterdir()) if d.is_dir()]
        if not class_dirs:
            raise ConvertError(f"data folder {root} has no class folders")
        for class_dir in class_dirs:
            if classes is not None and class_dir.name not in classes:
                continue
            files = [p for p in sorted(class_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
            found.setdefault(class_dir.name, []).extend((p, root.name) for p in files)
    labels = order_labels({k for k, v in found.items() if v})
    empty = sorted(k for k, v in found.items() if not v)
    if empty:
        raise ConvertError(f"class folder(s) with no images: {', '.join(empty)}")
    if len(labels) < 2:
        raise ConvertError(f"need at least two classes with images, found: {labels or 'none'}")
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
    return Dataset(samples, labels, duplicates)


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
