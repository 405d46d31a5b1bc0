"""Learn this doorway: gather labelled site faces, fit a site head, install or revert it.

The steps shared by `mask-agent adapt`, `mask-agent samples` and the web console: where
the sample store, the head and the site detector threshold live (the state dir), the
accept/write/revert rules of `adapt.fit_head`, and the status and report they print.
Labelled faces come as features: collected samples carry theirs (crops the agent saw);
`--labels DIR` photos go through `photos.label_folder_features`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..people.track import Track
from ..throttle import Throttle
from ..vision.classify import Classifier, Prediction
from ..vision.config import DetectConfig
from ..vision.decision import NO_MASK
from ..vision.head import BUNDLE_HEAD, head_path, read_head, write_head
from ..vision.tuning import DetectorTuning, read_tuning, tuning_path, write_tuning
from .adapt import AdaptReport, FitOptions, fit_head
from .config import AdaptConfig
from .photos import LabelledPhotos
from .samples import Collector, SampleStore, open_or_renew
from .threshold import ThresholdReport

log = logging.getLogger("maskwatch.site")
throttle = Throttle(log)
REVERTED_SUFFIX = ".reverted"


def open_store(a: AdaptConfig, state_dir: str | None) -> SampleStore:
    """The store, with crops past retention already gone (StateError when unusable); a
    damaged one is set aside, said in one line, and a new one opened."""
    store, aside = open_or_renew(Path(state_dir or ".") / "samples", a.max_samples,
                                 int(a.max_mb * (1 << 20)), a.retention_days)
    if aside is not None:
        log.error("the sample store in %s was damaged (SQLite cannot read its index): set "
                  "aside as %s, its faces deleted after adapt.retention_days or by "
                  "`mask-agent samples clear`; new samples go to a new store",
                  store.folder, aside)
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


def install_threshold(state_dir: str | None, detector_name: str,
                      report: ThresholdReport) -> None:
    """Write the accepted detector threshold where the agent reads it (atomically)."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    write_tuning(tuning_path(state_dir or "."),
                 DetectorTuning(report.threshold, detector_name, "site-detector-" + stamp,
                                {"created": stamp, **report.to_json()}))


def threshold_in_use(settings: DetectConfig, state_dir: str | None) -> float:
    """The detector threshold the agent runs with: the site's, else the configured one."""
    return detector_status(state_dir, settings)["score_threshold"]


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
    """Back to the bundle's head and the configured detector threshold: the site files are
    renamed `*.reverted` (kept for reference, never read). False when there were none."""
    reverted = False
    for path in (head_path(state_dir or "."), tuning_path(state_dir or ".")):
        if path.exists():
            os.replace(path, path.with_name(path.name + REVERTED_SUFFIX))
            reverted = True
    return reverted


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


def detector_status(state_dir: str | None, settings: DetectConfig) -> dict:
    """`adapt --status`: the detector threshold in use and where it comes from."""
    path = tuning_path(state_dir or ".")
    status = {"detector": settings.detector, "score_threshold": settings.score_threshold,
              "from": "config"}
    if not settings.site_tuning or not path.exists():
        return status
    try:
        tuning = read_tuning(path, settings.detector)
    except ModelError as exc:
        return {**status, "problem": str(exc)}
    return {**status, "score_threshold": tuning.score_threshold, "from": tuning.id,
            "provenance": tuning.provenance}


def print_report(report: AdaptReport, photos: LabelledPhotos | None, as_json: bool) -> None:
    """The head's verdict, and for labelled photos the detector's and the photos left out
    (by name: the operator can look at what the agent could not see)."""
    if as_json:
        print(json.dumps({**report.to_json(),
                          "photos": photos.to_json() if photos else None}))
        return
    if photos is not None:
        if photos.detector is not None:
            print(photos.detector.reason)
        for reason, names in photos.left_out.items():
            if names:
                shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
                print(f"left out, {reason.replace('_', ' ')}: {len(names)} photos ({shown})")
    verdict = "accepted" if report.accepted else "not accepted"
    print(f"site head {verdict}: {report.reason} "
          f"({report.site_counts['with_mask']} with mask, "
          f"{report.site_counts['without_mask']} without; {report.seconds:.2f} s)")
