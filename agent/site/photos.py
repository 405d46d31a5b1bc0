"""Labelled photo folders (`mask-agent adapt --labels DIR`) turned into what the agent sees.

Only what the agent would see is learnt from: each photo goes through the agent's own
detector at its own settings, and its subject's face is cut as the pipeline cuts it. A
photo with no face found, or with several where none is clearly the subject, is left out
and reported by name: the agent would see no face there (or not this one), so the whole
image must never stand in for a face.

Each photo is known to hold a face, which also teaches the detector: the photos are
searched at the thresholds of `threshold.threshold_grid`, and `threshold.fit_threshold`
decides whether a lower one is honestly better here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MaskwatchError, UsageError
from ..vision.classify import Classifier
from ..vision.decision import MASK, NO_MASK, canonical_label
from ..vision.detect import Detector, Face, Thresholded, subject_faces
from ..vision.predict import images_in, is_folder, read_image_file
from ..vision.preprocess import area, face_input
from .samples import INDEX
from .threshold import ThresholdReport, fit_threshold, threshold_grid

log = logging.getLogger("maskwatch.site")
AMBIGUOUS_SHARE = 0.5  # a second face at least this large (by area) hides the subject
NO_FACE, SEVERAL_FACES, UNREADABLE = "no_face", "several_faces", "unreadable"


@dataclass
class LabelledPhotos:
    x: np.ndarray  # features of the faces used, (N, F)
    y: np.ndarray  # 1 = without_mask
    left_out: dict[str, list[str]]  # reason -> file names
    detector: ThresholdReport | None = None

    def to_json(self) -> dict:
        return {"used": int(len(self.y)),
                "left_out": {reason: {"count": len(names), "files": names}
                             for reason, names in self.left_out.items()},
                "detector": self.detector.to_json() if self.detector else None}


def labelled_paths(folder: Path) -> list[tuple[Path, int]]:
    """(photo, 1 = without_mask) of `folder/with_mask/*` and `folder/without_mask/*`
    (or folders named as other data sets name them: `mask/`, `no_mask/`, ...)."""
    if not is_folder(folder):
        raise UsageError(f"--labels {folder}: not a folder")
    if (folder / INDEX).is_file():
        raise UsageError(
            f"--labels {folder} is an export of the sample store: `mask-agent samples import "
            f"{folder}` puts its labels on the stored faces, as the agent saw them (as photos "
            f"its crops would be searched again and cut anew), then run `mask-agent adapt`; "
            f"to take them as photos all the same, remove its {INDEX}")
    values = {MASK: 0, NO_MASK: 1}
    found = []
    images_in(folder)  # a folder this user may not open: one line (an internal error before)
    for sub in sorted(folder.iterdir()):
        value = values.get(canonical_label(sub.name))
        if value is not None and sub.is_dir():
            found += [(path, value) for path in images_in(sub)]
    if not found:
        raise UsageError(f"--labels {folder}: no images in {folder}/{MASK} or "
                         f"{folder}/{NO_MASK}")
    return found


def subject_or_reason(faces: list[Face]) -> Face | str:
    """The photo's subject face, or why there is none to learn from."""
    if not faces:
        return NO_FACE
    if len(faces) > 1 and area(faces[1].box) >= AMBIGUOUS_SHARE * area(faces[0].box):
        return SEVERAL_FACES
    return faces[0]


def search(paths: list[tuple[Path, int]], detector: Detector, thresholds: list[float | None]
           ) -> tuple[list[tuple[Path, int, list[list[Face]]]], list[str]]:
    """Each readable photo's subject-sized faces at each threshold (None: as configured)."""
    searched, unreadable = [], []
    for path, value in paths:
        try:
            image = read_image_file(str(path))
        except MaskwatchError as exc:
            log.warning("skipped: %s", exc)
            unreadable.append(path.name)
            continue
        per_threshold = []
        for t in thresholds:
            if t is not None:
                detector.set_score_threshold(t)  # type: ignore[attr-defined]
            per_threshold.append(subject_faces(image, detector))
        searched.append((path, value, per_threshold))
    return searched, unreadable


def label_folder_features(folder: Path, classifier: Classifier, detector: Detector,
                          in_use: float, tune: bool = True) -> LabelledPhotos:
    """Features and labels of the photos' subject faces, as the agent would cut them at the
    detector threshold in use (`in_use`), or at the fitted one when `tune` finds one
    honestly better; `detector` is left at the threshold used."""
    paths = labelled_paths(folder)
    tunable = isinstance(detector, Thresholded)
    fit_grid = threshold_grid(detector.score_threshold) if tunable and tune else []
    grid: list[float | None] = list(fit_grid)
    if tunable and in_use not in grid:
        grid.append(in_use)
    searched, unreadable = search(paths, detector, grid or [None])
    use = grid.index(in_use) if tunable else 0
    report = None
    if fit_grid and searched:
        counts = np.array([[len(per[j]) for j in range(len(fit_grid))]
                           for _, _, per in searched])
        report = fit_threshold(counts, fit_grid)
        if report.accepted:
            use = grid.index(report.threshold)
    if tunable:
        detector.set_score_threshold(grid[use])  # type: ignore[attr-defined]
    return crops_of(searched, use, classifier, unreadable, report)


def crops_of(searched: list[tuple[Path, int, list[list[Face]]]], use: int,
             classifier: Classifier, unreadable: list[str],
             report: ThresholdReport | None) -> LabelledPhotos:
    left_out: dict[str, list[str]] = {NO_FACE: [], SEVERAL_FACES: [], UNREADABLE: unreadable}
    rows, labels = [], []
    for path, value, per_threshold in searched:
        subject = subject_or_reason(per_threshold[use])
        if isinstance(subject, str):
            left_out[subject].append(path.name)
            continue
        image = read_image_file(str(path))  # again: hundreds of photos are not held
        crop = face_input(image, subject.box, classifier.crop)
        rows.append(classifier.infer(crop[None])[1][0])
        labels.append(value)
    empty = np.zeros((0, classifier.feature_size), np.float32)
    return LabelledPhotos(np.stack(rows) if rows else empty, np.array(labels, int),
                          left_out, report)
