"""Fit the detector's score threshold on labelled photos, each known to hold one face.

A labelled photo the detector finds no face in is a face the agent misses at this doorway
(a black mask, a window behind the person). Lowering the score threshold finds some of
them, and may find faces that are not there. So each photo is searched at a grid of
thresholds from the configured one down, and the lowest threshold is wanted that finds
more subjects while adding no face to any photo (a photo of one person with two faces
found has a false one, and a photo already handled must not get more).

Honesty as for the head: the choice is cross-validated (chosen on four fifths of the
photos, judged on the fifth it never saw, three fold splits), and it is accepted only when
out of fold it found at least `MIN_NEW_FOUND` more subjects and added no face at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..vision.tuning import LOWEST_THRESHOLD

STEP = 0.05
MIN_NEW_FOUND = 2  # out-of-fold subjects found that the configured threshold missed
FOLDS, REPEATS = 5, 3


def threshold_grid(configured: float) -> list[float]:
    """The configured threshold first, then lower ones down to LOWEST_THRESHOLD."""
    grid = [round(configured, 2)]
    while grid[-1] - STEP >= LOWEST_THRESHOLD - 1e-9:
        grid.append(round(grid[-1] - STEP, 2))
    return grid


@dataclass
class ThresholdReport:
    accepted: bool
    reason: str
    configured: float
    threshold: float  # the one to use: the fitted one when accepted, else the configured
    photos: int
    found_before: float  # share of photos with a subject face at the configured threshold
    found_after: float  # at `threshold`, all photos (the chosen one is fitted on them)
    cross_validated: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"accepted": self.accepted, "reason": self.reason,
                "configured": self.configured, "threshold": self.threshold,
                "photos": self.photos, "found_before": round(self.found_before, 4),
                "found_after": round(self.found_after, 4),
                "cross_validated": self.cross_validated}


def added_faces(counts: np.ndarray) -> np.ndarray:
    """Per photo and threshold: faces beyond those at the configured threshold (column 0),
    or beyond one where it found none (a photo holds one person)."""
    return np.maximum(0, counts - np.maximum(counts[:, :1], 1))


def choose(counts: np.ndarray) -> int:
    """Index of the grid threshold that finds the most subjects with no added face (the
    highest such threshold on ties); 0 (configured) when none finds more."""
    found = (counts >= 1).sum(axis=0)
    clean = added_faces(counts).sum(axis=0) == 0
    best = 0
    for j in range(1, counts.shape[1]):
        if clean[j] and found[j] > found[best]:
            best = j
    return best


def fit_threshold(counts: np.ndarray, grid: list[float], seed: int = 0) -> ThresholdReport:
    """counts (photos, len(grid)): subject-sized faces found in each labelled photo at
    each grid threshold (grid[0] the configured one)."""
    photos = len(counts)
    found = counts >= 1
    added = added_faces(counts)
    rng = np.random.default_rng(seed)
    new_found, new_added, folds = 0.0, 0.0, min(FOLDS, photos)
    for _ in range(REPEATS):
        fold = rng.permutation(photos) % folds
        for k in range(folds):
            j = choose(counts[fold != k])
            test = fold == k
            new_found += float(found[test, j].sum() - found[test, 0].sum())
            new_added += float(added[test, j].sum())
    new_found, new_added = new_found / REPEATS, new_added / REPEATS
    j = choose(counts)
    cv = {"new_found": round(new_found, 2), "added_faces": round(new_added, 2),
          "folds": folds, "repeats": REPEATS}
    before = float(found[:, 0].mean()) if photos else 0.0
    summary = (f"faces found in {before:.0%} of the labelled photos at {grid[0]:.2f}, "
               f"{float(found[:, j].mean()):.0%} at {grid[j]:.2f}; out of fold "
               f"{new_found:g} more found, {new_added:g} faces added")
    if j == 0 or new_found < MIN_NEW_FOUND or new_added > 0:
        why = ("no lower threshold finds more without adding faces" if j == 0 else
               f"not clearly better ({MIN_NEW_FOUND} more found and no face added needed)")
        return ThresholdReport(False, f"detector threshold stays: {why}: {summary}",
                               grid[0], grid[0], photos, before, before, cv)
    return ThresholdReport(True, f"detector threshold {grid[0]:.2f} -> {grid[j]:.2f}: {summary}",
                           grid[0], grid[j], photos, before, float(found[:, j].mean()), cv)
