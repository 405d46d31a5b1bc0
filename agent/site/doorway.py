"""Learn this doorway: gather labelled site faces, fit a site head, install or revert it.

The steps shared by `mask-agent adapt`, `mask-agent samples` and the web console: where
the sample store and the head live (the state dir), how labelled faces become features
(collected samples carry theirs; `--labels DIR` folders of crops or photos go through the
agent's own detector and crop), and the accept/write/revert rules of `adapt.fit_head`.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import MaskwatchError, ModelError, UsageError
from ..people.track import Track
from ..throttle import Throttle
from ..vision.classify import Classifier, Prediction
from ..vision.decision import MASK, NO_MASK
from ..vision.detect import Detector, find_subject_face
from ..vision.head import BUNDLE_HEAD, head_path, read_head, write_head
from ..vision.predict import IMAGE_SUFFIXES, read_image_file
from ..vision.preprocess import face_input, whole_image_box
from .adapt import AdaptReport, FitOptions, fit_head
from .config import AdaptConfig
from .samples import Collector, SampleStore

log = logging.getLogger("maskwatch.site")
throttle = Throttle(log)
REVERTED_SUFFIX = ".reverted"


def open_store(a: AdaptConfig, state_dir: str | None) -> SampleStore:
    """The store, with crops past retention already gone (StateError when unusable)."""
    store = SampleStore(Path(state_dir or ".") / "samples", a.max_samples,
                        int(a.max_mb * (1 << 20)), a.retention_days)
    prune_quietly(store)
    return store


def prune_quietly(store: SampleStore) -> None:
    """Retention holds even when nothing new is collected: the service calls this every
    few minutes. A store that fails here is said once a minute, never fatal."""
    try:
        store.prune()
    except (OSError, sqlite3.Error) as exc:
        throttle.log(logging.WARNING, "prune", "old samples not pruned: %s", exc)


def collector_listener(a: AdaptConfig, store: SampleStore, classifier: Classifier
                       ) -> Callable[[Track, np.ndarray, Prediction, float], None]:
    """The pipeline listener that offers each classified face to the collector."""
    collector = Collector(store, a.min_interval_s, a.near_margin, a.random_share)

    def offer(track: Track, crop: np.ndarray, prediction: Prediction, ts: float) -> None:
        threshold = classifier.threshold()
        try:
            collector.offer(track.id, track.tally(), crop, prediction.features,
                            prediction.label, prediction.confidence,
                            prediction.scores.get(NO_MASK, 0.0),
                            0.5 if threshold is None else threshold, ts)
        except (OSError, ValueError, sqlite3.Error) as exc:
            # a full disk or a broken store must not stop the agent; said once a minute
            throttle.log(logging.WARNING, "sample", "sample not kept: %s", exc)

    return offer


def label_folder_features(folder: Path, classifier: Classifier, detector: Detector
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels (1 = without_mask) of `folder/with_mask/*` and
    `folder/without_mask/*`: face crops or photos of one person (its main face is found
    as in training; a crop with no detectable face is used whole)."""
    if not folder.is_dir():
        raise UsageError(f"--labels {folder}: not a folder")
    rows, labels = [], []
    for value, name in ((0, MASK), (1, NO_MASK)):
        for path in sorted((folder / name).glob("*")) if (folder / name).is_dir() else []:
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                image = read_image_file(str(path))
            except MaskwatchError as exc:
                log.warning("skipped: %s", exc)
                continue
            box = find_subject_face(image, detector) or whole_image_box(image, classifier.crop)
            rows.append(classifier.infer(face_input(image, box, classifier.crop)[None])[1][0])
            labels.append(value)
    if not rows:
        raise UsageError(f"--labels {folder}: no images in {folder}/{MASK} or "
                         f"{folder}/{NO_MASK}")
    return np.stack(rows), np.array(labels, int)


def current_head_p(classifier: Classifier, x: np.ndarray):
    """(head in use or None, its P(no mask) on features x)."""
    head = classifier.heads.current()
    return head, (head or classifier.bundle_head()).no_mask_probability(x)


def adapt_site(state_dir: str | None, classifier: Classifier, site_x: np.ndarray,
               site_y: np.ndarray, write: bool = True,
               options: FitOptions | None = None) -> AdaptReport:
    """Fit on the site's labelled faces + the bundle's anchors; install the head when it
    is accepted (and `write`)."""
    if not classifier.feature_size:
        raise ModelError(f"model {classifier.info.name} has no features output: site "
                         "adaptation needs a bundle exported with it (mask-convert features)")
    anchor_x, anchor_y = classifier.anchors()
    if not len(anchor_y):
        raise ModelError(f"model {classifier.info.name} carries no anchor set "
                         "(mask-convert anchors)")
    current, p_now = current_head_p(classifier, site_x)
    report = fit_head(site_x, site_y, anchor_x, anchor_y, classifier.bundle_head(), current,
                      p_now, options or FitOptions())
    if report.accepted and write and report.head is not None:
        write_head(head_path(state_dir or "."), report.head)
        classifier.heads.refresh(force=True)
    return report


def revert(state_dir: str | None) -> bool:
    """Back to the bundle's head: the site head is renamed `site_head.json.reverted` (kept
    for reference, never read). False when there was none."""
    path = head_path(state_dir or ".")
    if not path.exists():
        return False
    os.replace(path, path.with_name(path.name + REVERTED_SUFFIX))
    return True


def head_status(state_dir: str | None, classifier: Classifier) -> dict:
    """What the console and `adapt --status` show: the head in use and its provenance."""
    path = head_path(state_dir or ".")
    if not path.exists():
        return {"head": BUNDLE_HEAD, "model": classifier.info.name}
    try:
        head = read_head(path, classifier.info.sha256, classifier.feature_size)
    except ModelError as exc:
        return {"head": BUNDLE_HEAD, "model": classifier.info.name,
                "problem": str(exc)}
    return {"head": head.id, "model": classifier.info.name, "threshold": head.threshold,
            "provenance": head.provenance}


def print_report(report: AdaptReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.to_json()))
        return
    verdict = "accepted" if report.accepted else "not accepted"
    print(f"site head {verdict}: {report.reason} "
          f"({report.site_counts['with_mask']} with mask, "
          f"{report.site_counts['without_mask']} without; {report.seconds:.2f} s)")
