"""Fit a site head: L2-regularised logistic regression on pooled features, in numpy.

Why this shape:
- The backbone stays as shipped (int8, no TensorFlow on the device); only the last
  layer is refitted, on features the agent already computes for every face it classifies.
- The bundle's anchor set (training faces of every class) is always part of the fit, and
  the L2 penalty pulls towards the bundle's own layer, so a handful of site labels moves
  the decision where this doorway needs it without forgetting the general case.
- Classes are balanced (each class carries equal weight) and the site's samples together
  weigh `site_share` times the anchors, so 10 labelled faces count.
- Everything said about the new head on the site is out of fold: k-fold cross-validation
  (repeated with three fold splits), the folds fitted together as columns of one weight
  matrix (one pass over the data per step for all folds), which keeps a refit on 2,000
  samples within seconds on a Pi. Even the no-mask threshold applied to a fold is chosen
  on the other folds' out-of-fold scores, never on the fold it is judged on.
- Forty labels cannot tell a one-point gain from noise (one label is worth 2.5 points), so
  the head is accepted only when the gain is clear: per labelled face, the new head's
  out-of-fold verdict is paired with the current head's, and the faces it sets right, net
  of those it sets wrong, must be at least `min_net_fixed` (2) and above zero at the
  one-sided `confidence` (a sign test: two fixed and none broken pass, three fixed and one
  broken pass, two fixed and one broken do not), while
  accuracy on the anchors drops by at most `max_anchor_drop`. Otherwise: "not enough
  labels to tell", and nothing changes. On the held-out sites of `mask-convert
  bench-adapt`, heads that set one of 40 labelled faces right and none wrong gained 1.5
  to 3.0 points on chandrikadeb7 and lost 0.4 to 1.7 on jolignier: one net fix is not
  evidence; two is the least that kept every k = 20 draw from costing accuracy.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from ..vision.head import Head, sigmoid

MIN_PER_CLASS = 5  # below this a fit is refused: cross-validation needs both classes
ADVISED_PER_CLASS = 20  # what the console advises (the benchmark's k = 20)
THRESHOLD_GRID = np.round(np.arange(0.10, 0.91, 0.05), 2)


@dataclass(frozen=True)
class FitOptions:
    l2: float = 0.05  # penalty on (w - bundle w), per unit of total sample weight
    site_share: float = 1.0  # site samples' total weight relative to the anchors'
    folds: int = 5
    cv_repeats: int = 3  # cross-validation repeated with other fold splits (less noise)
    iterations: int = 250
    max_anchor_drop: float = 0.01  # accuracy on the anchors may drop this much at most
    min_net_fixed: int = 2  # site faces the new head must set right, net of those it breaks
    confidence: float = 0.8  # one-sided: the net's lower bound at this level must be > 0


@dataclass
class AdaptReport:
    accepted: bool
    reason: str
    site_counts: dict[str, int]
    before: dict  # metrics of the current head on the site samples (and anchors)
    after: dict  # cross-validated metrics of the new head
    seconds: float
    head: Head | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"accepted": self.accepted, "reason": self.reason,
                "site_counts": self.site_counts, "before": self.before, "after": self.after,
                "seconds": round(self.seconds, 3),
                "head": self.head.id if self.head else None}


def balanced_accuracy(y: np.ndarray, predicted: np.ndarray) -> float:
    """Mean recall of the classes present (mask = 0, no mask = 1)."""
    recalls = [float(np.mean(predicted[y == c] == c)) for c in (0, 1) if np.any(y == c)]
    return float(np.mean(recalls)) if recalls else 0.0


def metrics(y: np.ndarray, p_no_mask: np.ndarray, threshold: float) -> dict:
    predicted = (p_no_mask >= threshold).astype(int)
    return {"n": int(len(y)),
            "balanced_accuracy": round(balanced_accuracy(y, predicted), 4),
            "accuracy": round(float(np.mean(predicted == y)), 4) if len(y) else 0.0,
            "no_mask_recall": round(float(np.mean(predicted[y == 1] == 1)), 4)
            if np.any(y == 1) else None}


def class_balanced_weights(y: np.ndarray, total: float) -> np.ndarray:
    """Each class present gets an equal share of `total`."""
    weights = np.zeros(len(y), np.float64)
    classes = [c for c in (0, 1) if np.any(y == c)]
    for c in classes:
        weights[y == c] = total / len(classes) / np.sum(y == c)
    return weights


def fit_logistic(x: np.ndarray, y: np.ndarray, weights: np.ndarray, prior_w: np.ndarray,
                 prior_b: float, l2: float, iterations: int,
                 overwrite_x: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Weighted L2 logistic regression for several weightings at once.

    x (N, F), y (N,), weights (N, K): column k is one fit (a zero weight leaves a sample
    out, e.g. its cross-validation fold). Minimises, per column, the weighted mean log
    loss + l2/2 |w - prior_w|^2 by Nesterov's accelerated gradient with a step from a
    Lipschitz bound. Returns (W (F, K), b (K,)). `overwrite_x`: centre x in place (no
    copy of the data: the fit must fit beside the agent on a small device)."""
    mean = x.mean(axis=0, dtype=np.float64)
    xc = x if overwrite_x and x.dtype == np.float32 else x.astype(np.float32)
    xc -= mean.astype(np.float32)
    weights = weights / weights.sum(axis=0, keepdims=True)
    k = weights.shape[1]
    w0 = np.repeat(prior_w[:, None].astype(np.float64), k, axis=1)
    b0 = np.full(k, prior_b + float(prior_w @ mean))  # the prior's bias in centred space
    step = 1.0 / lipschitz(xc, weights, l2)
    w, b = w0.copy(), b0.copy()
    w_prev, b_prev = w, b
    yk = y[:, None].astype(np.float64)
    for i in range(iterations):
        momentum = i / (i + 3.0)
        vw, vb = w + momentum * (w - w_prev), b + momentum * (b - b_prev)
        z = xc @ vw.astype(np.float32) + vb
        residual = (sigmoid(z) - yk) * weights
        grad_w = (xc.T @ residual.astype(np.float32)) + l2 * (vw - w0)
        grad_b = residual.sum(axis=0)
        w_prev, b_prev = w, b
        w, b = vw - step * grad_w, vb - step * grad_b
    return w.astype(np.float32), (b - mean @ w).astype(np.float32)


def lipschitz(xc: np.ndarray, weights: np.ndarray, l2: float) -> float:
    """Upper bound on the gradient's Lipschitz constant over all columns' weightings."""
    per_sample = weights.max(axis=1).astype(np.float32)
    v = np.random.default_rng(0).standard_normal(xc.shape[1]).astype(np.float32)
    top = 0.0
    for _ in range(20):  # power iteration on X^T diag(max weight) X
        u = xc.T @ (per_sample * (xc @ v))
        top = float(np.linalg.norm(u))
        v = u / max(top, 1e-12)
    bias_term = float(per_sample.sum())
    return 0.25 * (top + bias_term) * 1.1 + l2


def best_threshold(y: np.ndarray, p_no_mask: np.ndarray, prefer: float = 0.5,
                   anchor_y: np.ndarray | None = None,
                   anchor_p: np.ndarray | None = None) -> float:
    """The threshold, on a coarse grid, with the best balanced accuracy on (y, p_no_mask).
    With a few dozen labels the best range is wide and noisy, so ties go to the best
    balanced accuracy on the anchors, then to the one nearest `prefer` (0.5: the head is
    fitted with balanced classes, so 0.5 is its balanced operating point)."""
    candidates = THRESHOLD_GRID
    site = np.array([balanced_accuracy(y, (p_no_mask >= t).astype(int)) for t in candidates])
    anchors = np.zeros(len(candidates)) if anchor_p is None else np.array(
        [balanced_accuracy(anchor_y, (anchor_p >= t).astype(int)) for t in candidates])
    order = np.lexsort((np.abs(candidates - prefer), -anchors, -site))
    return float(candidates[order[0]])


def fold_ids(y: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Stratified fold number per sample."""
    rng = np.random.default_rng(seed)
    ids = np.zeros(len(y), int)
    for c in (0, 1):
        members = rng.permutation(np.flatnonzero(y == c))
        ids[members] = np.arange(len(members)) % folds
    return ids


def fit_head(site_x: np.ndarray, site_y: np.ndarray, anchor_x: np.ndarray,
             anchor_y: np.ndarray, prior: Head, current: Head | None,
             current_site_p: np.ndarray, options: FitOptions = FitOptions(),
             head_id: str | None = None) -> AdaptReport:
    """Fit, cross-validate and judge a site head. `prior` is the bundle's own layer (the
    L2 anchor); `current_site_p` is P(no mask) of the head in use now on the site samples
    (the "before"); `current` is that head (None: the bundle's, i.e. `prior`)."""
    started = time.perf_counter()
    counts = {"with_mask": int(np.sum(site_y == 0)), "without_mask": int(np.sum(site_y == 1))}
    in_use = current or prior
    before = {"site": metrics(site_y, current_site_p, in_use.threshold),
              "anchors": metrics(anchor_y, in_use.no_mask_probability(anchor_x),
                                 in_use.threshold)}
    if min(counts.values()) < MIN_PER_CLASS:
        return AdaptReport(False, f"label at least {MIN_PER_CLASS} faces per class first "
                           f"(have {counts['with_mask']} with mask, {counts['without_mask']} "
                           f"without; {ADVISED_PER_CLASS} per class advised)", counts, before,
                           {}, time.perf_counter() - started)
    folds = min(options.folds, min(counts.values()))
    assignments = [fold_ids(site_y, folds, seed) for seed in range(options.cv_repeats)]
    x = np.concatenate([anchor_x, site_x], dtype=np.float32)
    y = np.concatenate([anchor_y, site_y])
    base = np.concatenate([class_balanced_weights(anchor_y, 1.0),
                           class_balanced_weights(site_y, options.site_share)])
    columns = []  # one per (repeat, fold) leaving that fold out, the last: all samples
    for fold in assignments:
        for k in range(folds):
            column = base.copy()
            column[len(anchor_y):][fold == k] = 0.0
            columns.append(column)
    columns.append(base)
    w, b = fit_logistic(x, y, np.stack(columns, axis=1), prior.weights, prior.bias,
                        options.l2, options.iterations, overwrite_x=True)
    del x
    out_of_fold = np.zeros((len(assignments), len(site_y)))  # per repeat
    for r, fold in enumerate(assignments):
        for k in range(folds):
            column = r * folds + k
            z = site_x[fold == k] @ w[:, column] + b[column]
            out_of_fold[r, fold == k] = sigmoid(z)
    full = Head(w[:, -1].copy(), float(b[-1]), 0.5, prior.bundle_sha256)
    anchor_p = full.no_mask_probability(anchor_x)
    new_right = cross_fitted_verdicts(site_y, out_of_fold, assignments, folds, anchor_y,
                                      anchor_p) == site_y
    threshold = best_threshold(np.tile(site_y, len(assignments)), out_of_fold.ravel(), 0.5,
                               anchor_y, anchor_p)
    head = Head(full.weights, full.bias, threshold, prior.bundle_sha256,
                head_id or "site-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    old_right = (current_site_p >= in_use.threshold).astype(int) == site_y
    after = {"site": paired_gain(site_y, old_right, new_right, options.confidence),
             "anchors": metrics(anchor_y, head.no_mask_probability(anchor_x), threshold)}
    after["site"].update(
        balanced_accuracy=round(before["site"]["balanced_accuracy"] + after["site"]["gain"], 4),
        accuracy=round(float(new_right.mean()), 4),
        no_mask_recall=round(float(new_right[:, site_y == 1].mean()), 4)
        if np.any(site_y == 1) else None)
    accepted, reason = judge(before, after, options)
    report = AdaptReport(accepted, reason, counts, before, after,
                         time.perf_counter() - started, head)
    report.head = Head(head.weights, head.bias, head.threshold, head.bundle_sha256, head.id,
                       provenance_of(report, anchor_y, folds, options))
    return report


def cross_fitted_verdicts(y: np.ndarray, out_of_fold: np.ndarray, assignments: list,
                          folds: int, anchor_y: np.ndarray, anchor_p: np.ndarray) -> np.ndarray:
    """(repeats, N) verdicts (1 = no mask) of each fold's head on its fold, at a threshold
    chosen on the other folds' out-of-fold scores: the fold judged never chose it."""
    verdicts = np.zeros(out_of_fold.shape, int)
    for r, fold in enumerate(assignments):
        for k in range(folds):
            others = fold != k
            t = best_threshold(y[others], out_of_fold[r, others], 0.5, anchor_y, anchor_p)
            verdicts[r, ~others] = out_of_fold[r, ~others] >= t
    return verdicts


def paired_gain(y: np.ndarray, old_right: np.ndarray, new_right: np.ndarray,
                confidence: float) -> dict:
    """The new head against the current one on the same labelled faces (McNemar's view:
    only the faces where they disagree tell them apart). `fixed`/`broken`: faces the new
    head's out-of-fold verdict sets right/wrong that the current one had wrong/right, mean
    over the repeats; `net_lower`: the one-sided `confidence` lower bound of fixed - broken
    (the sign test's normal approximation, z * sqrt(fixed + broken)); `gain`: the
    balanced-accuracy change."""
    diff = new_right.mean(axis=0) - old_right.astype(float)
    classes = [c for c in (0, 1) if np.any(y == c)]
    gain = sum(float(diff[y == c].mean()) for c in classes) / max(1, len(classes))
    fixed = float(np.sum(np.clip(diff, 0, None)))
    broken = float(np.sum(np.clip(-diff, 0, None)))
    z = NormalDist().inv_cdf(confidence)
    return {"n": int(len(y)), "gain": round(gain, 4), "fixed": round(fixed, 2),
            "broken": round(broken, 2),
            "net_lower": round(fixed - broken - z * float(np.sqrt(fixed + broken)), 2),
            "confidence": confidence}


def judge(before: dict, after: dict, options: FitOptions) -> tuple[bool, str]:
    """Accept on a clear site gain (balanced accuracy up, at least `min_net_fixed` labelled
    faces set right net of those it breaks, and the lower bound of that net above zero)
    that keeps the anchors within `max_anchor_drop`."""
    site = after["site"]
    net_fixed = round(site["fixed"] - site["broken"], 2)
    anchor_drop = before["anchors"]["accuracy"] - after["anchors"]["accuracy"]
    summary = (f"site balanced accuracy {before['site']['balanced_accuracy']:.1%} -> "
               f"{site['balanced_accuracy']:.1%} (cross-validated: {site['fixed']:g} labelled "
               f"faces set right, {site['broken']:g} set wrong), anchors "
               f"{before['anchors']['accuracy']:.1%} -> {after['anchors']['accuracy']:.1%}")
    if site["gain"] <= 0:
        return False, f"no gain on this site: {summary}; the current head stays"
    if site["net_lower"] <= 0 or net_fixed < options.min_net_fixed:
        return False, (f"not enough labels to tell ({net_fixed:g} set right net; at "
                       f"{site['confidence']:.0%} confidence it could be none): {summary}; "
                       f"label more faces; the current head stays")
    if anchor_drop > options.max_anchor_drop + 1e-9:
        return False, (f"it would forget the general case (anchors drop "
                       f"{anchor_drop:.1%} > {options.max_anchor_drop:.0%}): {summary}; the "
                       f"current head stays")
    return True, summary


def provenance_of(report: AdaptReport, anchor_y: np.ndarray, folds: int,
                  options: FitOptions) -> dict:
    return {"created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            "site_samples": report.site_counts,
            "anchor_samples": {"with_mask": int(np.sum(anchor_y == 0)),
                               "without_mask": int(np.sum(anchor_y == 1))},
            "folds": folds, "l2": options.l2, "site_share": options.site_share,
            "before": report.before, "after": report.after}
