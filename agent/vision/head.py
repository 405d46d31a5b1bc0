"""The site head: a logistic layer on the classifier's pooled features, fitted at this site.

A site head replaces the bundle's final layer for the no-mask decision: P(without_mask) =
sigmoid(w . features + b), `without_mask` at or above its own threshold. It is a small
JSON file in the state dir (`site_head.json`), written atomically by `mask-agent adapt`,
tied to the bundle it was fitted on (by sha256: another model's features mean something
else), and picked up by a running agent without a restart. Applying it is one dot product
per face in numpy.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .statefile import Stamp, read_state_json, write_json_atomic

HEAD_FORMAT = "maskwatch-site-head"
HEAD_FILE = "site_head.json"
MAX_HEAD_BYTES = 1 << 20  # 1,280 weights are ~30 KB of JSON
BUNDLE_HEAD = "bundle"  # what events name when no site head is in use

log = logging.getLogger("maskwatch.head")


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, clipped so that large logits cannot overflow exp()."""
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


@dataclass(frozen=True)
class Head:
    weights: np.ndarray  # (F,) float32
    bias: float
    threshold: float  # P(without_mask) at or above: without_mask
    bundle_sha256: str
    id: str = BUNDLE_HEAD
    provenance: dict = field(default_factory=dict)

    def no_mask_probability(self, features: np.ndarray) -> np.ndarray:
        """P(without_mask) per row of (N, F) features."""
        return sigmoid(features @ self.weights + self.bias)

    def to_json(self) -> dict:
        return {"format": HEAD_FORMAT, "id": self.id, "bundle_sha256": self.bundle_sha256,
                "threshold": float(self.threshold), "bias": float(self.bias),
                "weights": [round(float(v), 7) for v in self.weights],
                "provenance": self.provenance}


def head_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / HEAD_FILE


def read_head(path: Path, bundle_sha256: str, feature_size: int) -> Head:
    """The head in `path`; ModelError when it is unreadable or fitted on another model."""
    data = read_state_json(path, MAX_HEAD_BYTES, HEAD_FORMAT, "site head")
    try:
        weights = np.asarray(data["weights"], np.float32)
        head = Head(weights, float(data["bias"]), float(data["threshold"]),
                    str(data["bundle_sha256"]), str(data["id"]), dict(data.get("provenance", {})))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"site head {path} is not valid: {exc}") from None
    if head.bundle_sha256 != bundle_sha256:
        raise ModelError(f"site head {path} was fitted on another model "
                         f"({head.bundle_sha256[:12]}…); run mask-agent adapt again")
    if weights.shape != (feature_size,) or not np.all(np.isfinite(weights)):
        raise ModelError(f"site head {path} has {weights.size} weights; the model has "
                         f"{feature_size} features")
    if not math.isfinite(head.bias) or not 0.0 < head.threshold < 1.0:
        raise ModelError(f"site head {path} is not valid: bias {head.bias} must be finite "
                         f"and threshold {head.threshold} between 0 and 1 (else every face "
                         "gets one label)")
    return head


def write_head(path: Path, head: Head) -> None:
    """Atomic: a reader sees the old head or the new one, never half a file."""
    write_json_atomic(path, head.to_json())


class HeadFile:
    """Watches the site head file: the classifier asks `current()` and gets the head that
    is on disk now (checked at most every `check_s`), or None for the bundle's own."""

    def __init__(self, path: Path | None, bundle_sha256: str, feature_size: int,
                 check_s: float = 2.0) -> None:
        self.path, self.bundle_sha256, self.feature_size = path, bundle_sha256, feature_size
        self._head: Head | None = None
        self._stamp = Stamp(check_s)
        self.refresh(force=True)

    def current(self) -> Head | None:
        if self._stamp.due():
            self.refresh()
        return self._head

    def pin(self, head: Head | None) -> None:
        """Use `head` from now on and stop watching the file (benchmarks)."""
        self._head, self.path = head, None

    def refresh(self, force: bool = False) -> None:
        if self.path is None or self.feature_size == 0:
            return
        if not self._stamp.changed(self.path, force):
            return
        if not self._stamp.exists:
            if self._head is not None:
                log.info("site head removed: back to the bundle's own head")
            self._head = None
            return
        try:
            self._head = read_head(self.path, self.bundle_sha256, self.feature_size)
            log.info("site head %s in use (%s)", self._head.id, self.path)
        except ModelError as exc:
            log.warning("%s; using the bundle's own head", exc)
            self._head = None
