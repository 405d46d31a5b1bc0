"""`mask-convert bench-adapt`: does site adaptation help on sites the model never saw?

For each site (a bundle that never saw it + that site's labelled faces): draw k faces per
class as the operator's labels, run the device's own fit (`maskwatch.agent.site.adapt`, the
bundle's anchor set included), and score the site's other faces before and after, as the
agent would decide them (a refused head leaves the current one in place). Repeated over
random draws; prints the curve and writes JSON. Also measures the refit on 2,000 samples
(seconds, peak extra memory) and the per-face cost with a site head in use.

Only what the agent would see: a photo site's faces are cut by the agent's own detector at
its default settings, and a photo with no face found (or several, none clearly the
subject) is left out and counted, never replaced by the whole image. Per site and k the
harm is reported beside the mean: the worst draw's change and the share of draws that end
below the unadapted model.

Photo sites also get the detector's part: each photo holds a face, so k labelled photos
per class fit a detector threshold (`agent.site.threshold`), and the site's other photos
score it: the share with their face found, and faces added per photo, before and after.

Each site also gets a ceiling: the same fit given every label of the site but one fold's
(5-fold cross-validation, the head taken whether or not the device would accept it). It is
the most that refitting the last layer can buy there, so a target above it is out of
reach of any number of labels, and the gap between a k row and it is what more labels buy.
"""

from __future__ import annotations

import dataclasses
import time
import tracemalloc
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from maskwatch.agent.bench.measure import machine, timings, write_json
from maskwatch.agent.config import DetectConfig
from maskwatch.agent.factory import detector_from
from maskwatch.agent.site.adapt import FitOptions, balanced_accuracy, fit_head, fold_ids, metrics
from maskwatch.agent.site.photos import crops_of, search
from maskwatch.agent.site.threshold import added_faces, fit_threshold, threshold_grid
from maskwatch.agent.vision.classify import Classifier
from maskwatch.agent.vision.decision import MASK, NO_MASK
from maskwatch.agent.vision.head import Head
from maskwatch.agent.vision.preprocess import face_input
from maskwatch.agent.vision.voc import is_voc, read_voc

from .dataset import scan
from .errors import ConvertError
from .faces import read_image

KS = (5, 10, 20, 50)


@dataclass
class Site:
    name: str
    bundle: Path
    data: Path


def parse_site(text: str) -> Site:
    """NAME=BUNDLE:DATA"""
    try:
        name, rest = text.split("=", 1)
        bundle, data = rest.split(":", 1)
    except ValueError:
        raise ConvertError(f"--site {text!r}: expected NAME=BUNDLE_DIR:DATA_DIR") from None
    return Site(name, Path(bundle), Path(data))


def site_faces(site: Site, classifier: Classifier, detector_model: str | None, min_face: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(features, labels 1 = without_mask, bundle P(no mask), photos left out by reason)
    of the site's faces, cut as the device cuts them (VOC: the annotated box; photos: the
    subject face the agent's detector finds at its default settings)."""
    if is_voc(site.data):
        crops, labels = [], []
        for face in read_voc(site.data):
            if face.label in (MASK, NO_MASK) and face.size >= min_face:
                image = read_image(face.image)
                if image is not None:
                    crops.append(face_input(image, face.box, classifier.crop))
                    labels.append(int(face.label == NO_MASK))
        if not crops:
            raise ConvertError(f"site {site.name}: no faces in {site.data}")
        _, x = classifier.infer(np.stack(crops))
        y, left_out = np.array(labels), {}
    else:
        searched, unreadable = search(site_photos(site), agent_detector(detector_model), [None])
        photos = crops_of(searched, 0, classifier, unreadable, None)
        x, y = photos.x, photos.y
        left_out = {reason: len(names) for reason, names in photos.left_out.items()}
        if not len(y):
            raise ConvertError(f"site {site.name}: no faces found in {site.data}")
    return x, y, classifier.bundle_head().no_mask_probability(x), left_out


def site_photos(site: Site) -> list[tuple[Path, int]]:
    return [(sample.path, int(sample.label == NO_MASK))
            for sample in scan([str(site.data)], [MASK, NO_MASK]).samples]


def agent_detector(detector_model: str | None):
    """The agent's detector at its default settings (no site tuning)."""
    return detector_from(DetectConfig(model=detector_model))


def detector_part(site: Site, detector_model: str | None, k: int, repeats: int, seed: int,
                  sample: int) -> dict:
    """Detector threshold fitted on k labelled photos per class, judged on `sample` other
    photos of the site (the threshold grid is searched once per photo)."""
    rng = np.random.default_rng(seed)
    paths = site_photos(site)
    chosen = rng.choice(len(paths), min(sample, len(paths)), replace=False)
    grid = threshold_grid(DetectConfig().score_threshold)
    searched, _ = search([paths[i] for i in chosen], agent_detector(detector_model), grid)
    counts = np.array([[len(faces) for faces in per] for _, _, per in searched])
    labels = np.array([value for _, value, _ in searched])
    added = added_faces(counts)
    draws = []
    for _ in range(repeats):
        picked = np.concatenate([rng.choice(np.flatnonzero(labels == c),
                                            min(k, int(np.sum(labels == c)) // 2),
                                            replace=False) for c in (0, 1)])
        rest = np.setdiff1d(np.arange(len(labels)), picked)
        report = fit_threshold(counts[picked], grid)
        j = grid.index(report.threshold)
        masked = rest[labels[rest] == 0]
        draws.append({"accepted": report.accepted, "threshold": report.threshold,
                      "found_before": float(np.mean(counts[rest, 0] >= 1)),
                      "found_after": float(np.mean(counts[rest, j] >= 1)),
                      "masked_found_before": float(np.mean(counts[masked, 0] >= 1)),
                      "masked_found_after": float(np.mean(counts[masked, j] >= 1)),
                      "added_per_photo": float(np.mean(added[rest, j]))})
    return {"k": k, "repeats": repeats, "photos": len(labels),
            "accepted": sum(d["accepted"] for d in draws),
            "found_before": round(float(np.mean([d["found_before"] for d in draws])), 4),
            "found_after": round(float(np.mean([d["found_after"] for d in draws])), 4),
            "found_after_min": round(min(d["found_after"] for d in draws), 4),
            "masked_found_before": round(float(np.mean([d["masked_found_before"]
                                                         for d in draws])), 4),
            "masked_found_after": round(float(np.mean([d["masked_found_after"]
                                                        for d in draws])), 4),
            "added_per_photo": round(float(np.mean([d["added_per_photo"] for d in draws])), 4),
            "added_per_photo_max": round(max(d["added_per_photo"] for d in draws), 4),
            "thresholds": sorted({d["threshold"] for d in draws}),
            "found_by_threshold": {str(t): round(float(np.mean(counts[:, j] >= 1)), 4)
                                   for j, t in enumerate(grid)}}


def simulate(x, y, p_bundle, classifier: Classifier, ks, repeats: int, seed: int,
             options: FitOptions | None = None) -> list[dict]:
    """Per k, `repeats` draws of k labels per class: each draw's head judged by `adapt`'s
    rule and, whatever the verdict, scored on the site's other faces (`draws`: what the
    labels said of it beside what it would have done, so the rule can be checked)."""
    prior = classifier.bundle_head()
    anchor_x, anchor_y = classifier.anchors()
    rng = np.random.default_rng(seed)
    rows = []
    for k in ks:
        if min(np.sum(y == 0), np.sum(y == 1)) < 2 * k:
            continue
        before, after, accepted, seconds, draws = [], [], 0, [], []
        for _ in range(repeats):
            chosen = np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False)
                                     for c in (0, 1)])
            rest = np.setdiff1d(np.arange(len(y)), chosen)
            b = metrics(y[rest], p_bundle[rest], prior.threshold)
            report = fit_head(x[chosen], y[chosen], anchor_x, anchor_y, prior, None,
                              p_bundle[chosen], options or FitOptions())
            seconds.append(report.seconds)
            fitted = metrics(y[rest], report.head.no_mask_probability(x[rest]),
                             report.head.threshold)
            draws.append({"accepted": report.accepted,
                          "fixed": report.after["site"]["fixed"],
                          "broken": report.after["site"]["broken"],
                          "change_if_taken": round(fitted["balanced_accuracy"]
                                                   - b["balanced_accuracy"], 4)})
            accepted += report.accepted
            before.append(b)
            after.append(fitted if report.accepted else b)
        rows.append({**summarise(k, before, after, accepted, repeats, seconds),
                     "draws": draws})
    return rows


def ceiling(x, y, p_bundle, classifier: Classifier, folds: int = 5, seed: int = 0,
            options: FitOptions | None = None) -> dict:
    """Out-of-fold balanced accuracy of the device's fit trained on all the site's labels
    but one fold's (each fold's head with its own threshold), beside the bundle's."""
    prior = classifier.bundle_head()
    anchor_x, anchor_y = classifier.anchors()
    fold = fold_ids(y, folds, seed)
    predicted = np.zeros(len(y), int)
    for k in range(folds):
        train, test = fold != k, fold == k
        head = fit_head(x[train], y[train], anchor_x, anchor_y, prior, None,
                        p_bundle[train], options or FitOptions()).head
        predicted[test] = head.no_mask_probability(x[test]) >= head.threshold
    before = (p_bundle >= prior.threshold).astype(int)
    return {"folds": folds, "labels_per_fit": int(np.sum(fold != 0)),
            "balanced_accuracy_before": round(balanced_accuracy(y, before), 4),
            "balanced_accuracy_after": round(balanced_accuracy(y, predicted), 4)}


def summarise(k, before, after, accepted, repeats, seconds) -> dict:
    def mean(rows, key):
        return round(float(np.mean([r[key] for r in rows])), 4)

    gains = [a["balanced_accuracy"] - b["balanced_accuracy"] for a, b in zip(after, before)]
    return {"k": k, "repeats": repeats, "accepted": accepted,
            "below_unadapted": round(float(np.mean(np.array(gains) < -1e-9)), 4),
            "balanced_accuracy_before": mean(before, "balanced_accuracy"),
            "balanced_accuracy_after": mean(after, "balanced_accuracy"),
            "balanced_accuracy_after_min": round(min(a["balanced_accuracy"] for a in after), 4),
            "worst_change": round(min(gains), 4),
            "no_mask_recall_before": mean(before, "no_mask_recall"),
            "no_mask_recall_after": mean(after, "no_mask_recall"),
            "fit_s_mean": round(float(np.mean(seconds)), 3)}


def refit_cost(x, y, classifier: Classifier, n: int = 2000) -> dict:
    """Seconds and peak traced memory (numpy included) of one refit on n site samples."""
    rng = np.random.default_rng(0)
    idx = rng.choice(len(y), n, replace=len(y) < n)
    anchor_x, anchor_y = classifier.anchors()
    prior = classifier.bundle_head()
    p = prior.no_mask_probability(x[idx])
    tracemalloc.start()
    started = time.perf_counter()
    fit_head(x[idx], y[idx], anchor_x, anchor_y, prior, None, p)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"samples": n, "seconds": round(seconds, 3), "peak_extra_mb": round(peak / 2**20, 1)}


def per_face_ms(classifier: Classifier, runs: int = 2000) -> dict:
    """Per-face latency with the bundle's head and with a site head in use."""
    crop = np.random.default_rng(0).integers(0, 256, (1, classifier.crop.size,
                                                      classifier.crop.size, 3), np.uint8)
    out = {}
    bundle = classifier.bundle_head()
    for name, head in (("bundle_head", None),
                       ("site_head", Head(bundle.weights, bundle.bias, 0.5,
                                          classifier.info.sha256, "site-bench"))):
        classifier.heads.pin(head)
        times = timings(partial(classifier.predict_crops, crop), runs, warmup=50)
        out[name] = round(float(np.median(times)) * 1000, 4)
    return out


def bench_adapt(sites: list[Site], detector_model: str | None, out: Path, repeats: int = 20,
                min_face: int = 20, seed: int = 1, detector_k: int = 20,
                detector_sample: int = 600, options: FitOptions | None = None) -> int:
    results = []
    print(f"{'site':<16} {'k':>3} {'bal.acc before':>15} {'after':>7} {'min after':>10} "
          f"{'worst change':>13} {'below':>6} {'no-mask recall':>15} {'accepted':>9}")
    cost = face_cost = None
    for site in sites:
        classifier = Classifier(site.bundle)
        x, y, p, left_out = site_faces(site, classifier, detector_model, min_face)
        rows = simulate(x, y, p, classifier, KS, repeats, seed, options)
        top = ceiling(x, y, p, classifier)
        for r in rows:
            print(f"{site.name:<16} {r['k']:>3} {r['balanced_accuracy_before']:>15.1%} "
                  f"{r['balanced_accuracy_after']:>7.1%} {r['balanced_accuracy_after_min']:>10.1%} "
                  f"{r['worst_change']:>+13.1%} {r['below_unadapted']:>6.0%} "
                  f"{r['no_mask_recall_before']:>6.1%} -> "
                  f"{r['no_mask_recall_after']:>6.1%} {r['accepted']:>5}/{r['repeats']}")
        print(f"{site.name:<16} {'all':>3} {top['balanced_accuracy_before']:>15.1%} "
              f"{top['balanced_accuracy_after']:>7.1%}   (ceiling: {top['labels_per_fit']} "
              f"labels per fit, {top['folds']}-fold)")
        result = {"site": site.name, "bundle": str(site.bundle), "data": str(site.data),
                  "faces": {"with_mask": int(np.sum(y == 0)),
                            "without_mask": int(np.sum(y == 1))},
                  "left_out": left_out, "curve": rows, "ceiling": top}
        if not is_voc(site.data):
            print(f"{site.name:<16} photos left out (no single face found by the agent's "
                  f"detector): {sum(left_out.values())} "
                  f"({', '.join(f'{k} {v}' for k, v in left_out.items() if v)})")
            part = detector_part(site, detector_model, detector_k, repeats, seed,
                                 detector_sample)
            result["detector"] = part
            print(f"{site.name:<16} detector threshold from k = {part['k']} photos per class: "
                  f"found {part['found_before']:.1%} -> {part['found_after']:.1%} (worst draw "
                  f"{part['found_after_min']:.1%}; masked {part['masked_found_before']:.1%} -> "
                  f"{part['masked_found_after']:.1%}), faces added per photo "
                  f"{part['added_per_photo']:.3f} (worst {part['added_per_photo_max']:.3f}), "
                  f"accepted {part['accepted']}/{part['repeats']}, thresholds "
                  f"{part['thresholds']}")
        results.append(result)
        if cost is None or len(y) > cost["site_faces"]:
            cost = {**refit_cost(x, y, classifier), "site": site.name, "site_faces": len(y)}
        if face_cost is None:
            face_cost = per_face_ms(classifier)
    print(f"refit on {cost['samples']} samples: {cost['seconds']:.2f} s, "
          f"{cost['peak_extra_mb']:.1f} MB peak extra; per face: bundle head "
          f"{face_cost['bundle_head']:.3f} ms, site head {face_cost['site_head']:.3f} ms")
    write_json(out, {"machine": machine(), "repeats": repeats, "min_face": min_face,
                     "fit_options": dataclasses.asdict(options or FitOptions()),
                     "sites": results, "refit": cost, "per_face_ms": face_cost})
    return 0
