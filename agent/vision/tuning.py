"""The site detector threshold: the detector's score threshold fitted at this site.

Some doorways hide faces from the detector at its default threshold (black masks, a
window behind the person): the labelled photos of `mask-agent adapt --labels` each hold a
face, so where the detector finds them at a lower threshold without finding more faces in
the photos it already handled, `adapt` writes that threshold to `site_detector.json` in the
state dir. Like the site head it is written atomically, carries its provenance, is picked
up by a running agent without a restart, and `adapt --revert` sets it aside.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelError
from .statefile import Stamp, read_state_json, write_json_atomic

TUNING_FORMAT = "maskwatch-site-detector"
TUNING_FILE = "site_detector.json"
MAX_TUNING_BYTES = 64 << 10
# never fitted lower: the labelled photos show a person, not the frame's background, and
# on the dev scenes YuNet's boxes on no annotated face grow 242 -> 566 from 0.5 to 0.3
# (768 at 0.25) while masked faces found go 92.7 -> 95.5 % (mask-agent bench-detect)
LOWEST_THRESHOLD = 0.3

log = logging.getLogger("maskwatch.tuning")


@dataclass(frozen=True)
class DetectorTuning:
    score_threshold: float
    detector: str  # the detector it was fitted for ("yunet"): another one scores otherwise
    id: str = "site-detector"
    provenance: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"format": TUNING_FORMAT, "id": self.id, "detector": self.detector,
                "score_threshold": float(self.score_threshold), "provenance": self.provenance}


def tuning_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / TUNING_FILE


def read_tuning(path: Path, detector: str) -> DetectorTuning:
    """The tuning in `path`; ModelError when it is unreadable, malformed or for another
    detector."""
    data = read_state_json(path, MAX_TUNING_BYTES, TUNING_FORMAT, "site detector file")
    try:
        tuning = DetectorTuning(float(data["score_threshold"]), str(data["detector"]),
                                str(data.get("id", "site-detector")),
                                dict(data.get("provenance", {})))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"site detector file {path} is not valid: {exc}") from None
    if tuning.detector != detector:
        raise ModelError(f"site detector file {path} was fitted for {tuning.detector}, the "
                         f"agent runs {detector}")
    if not math.isfinite(tuning.score_threshold) or not (
            LOWEST_THRESHOLD <= tuning.score_threshold < 1.0):
        raise ModelError(f"site detector file {path}: score_threshold "
                         f"{tuning.score_threshold} must be from {LOWEST_THRESHOLD} to below 1")
    return tuning


def write_tuning(path: Path, tuning: DetectorTuning) -> None:
    write_json_atomic(path, tuning.to_json())


class TuningFile:
    """Watches the site detector file: `threshold()` is the fitted threshold on disk now
    (checked at most every `check_s`), or `default` (the configured one) without a file or
    with a bad one."""

    def __init__(self, path: Path, detector: str, default: float, check_s: float = 2.0) -> None:
        self.path, self.detector, self.default = path, detector, default
        self._threshold = default
        self._stamp = Stamp(check_s)
        self.refresh(force=True)

    def threshold(self) -> float:
        if self._stamp.due():
            self.refresh()
        return self._threshold

    def refresh(self, force: bool = False) -> None:
        if not self._stamp.changed(self.path, force):
            return
        if not self._stamp.exists:
            if self._threshold != self.default:
                log.info("site detector threshold removed: back to %.2f", self.default)
            self._threshold = self.default
            return
        try:
            self._threshold = read_tuning(self.path, self.detector).score_threshold
            log.info("site detector threshold %.2f in use (%s)", self._threshold, self.path)
        except ModelError as exc:
            log.warning("%s; using detect.score_threshold %.2f", exc, self.default)
            self._threshold = self.default
