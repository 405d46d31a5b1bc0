"""The no-mask operating rule and the evaluation metrics, on hand-made numbers."""

from __future__ import annotations

import numpy as np
import pytest

from maskwatch.agent.vision.decision import INCORRECT, MASK, NO_MASK, decide, decide_all
from maskwatch.convert.metrics import binary_view, classification_report

LABELS = [MASK, NO_MASK, INCORRECT]


@pytest.mark.parametrize("scores,threshold,expected", [
    ([0.70, 0.30, 0.00], 0.25, NO_MASK),  # over the threshold: no mask, though not the max
    ([0.70, 0.30, 0.00], 0.35, MASK),  # under it: the best other class
    ([0.20, 0.30, 0.50], 0.35, INCORRECT),  # under it, and "incorrect" beats "mask"
    ([0.20, 0.30, 0.50], 0.30, NO_MASK),  # at the threshold counts as over
    ([0.20, 0.30, 0.50], None, INCORRECT),  # no threshold: plain argmax
])
def test_no_mask_threshold_rule(scores, threshold, expected):
    assert LABELS[decide(np.array(scores), LABELS, threshold)] == expected


def test_threshold_ignored_without_a_no_mask_class():
    assert decide(np.array([0.4, 0.6]), ["a", "b"], 0.1) == 1


def test_decide_all_matches_decide_row_by_row():
    rng = np.random.default_rng(0)
    scores = rng.dirichlet(np.ones(3), size=50)
    rows = [decide(row, LABELS, 0.3) for row in scores]
    assert decide_all(scores, LABELS, 0.3).tolist() == rows


def test_classification_report_counts():
    # 4 mask (3 right), 2 no-mask (both right), 1 incorrect (called mask)
    y_true = [0, 0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 0, 1, 1, 1, 0]
    report = classification_report(y_true, y_pred, LABELS)
    assert report["n"] == 7 and report["accuracy"] == round(5 / 7, 4)
    assert report["confusion_matrix"] == [[3, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert report["per_class"][MASK] == {"precision": 0.75, "recall": 0.75, "f1": 0.75,
                                         "support": 4}
    assert report["per_class"][NO_MASK]["precision"] == round(2 / 3, 4)
    assert report["balanced_accuracy"] == round((0.75 + 1.0 + 0.0) / 3, 4)


def test_binary_view_drops_incorrect_faces_and_counts_incorrect_predictions_as_mask():
    y_true = np.array([0, 1, 2, 1])
    y_pred = np.array([2, 1, 1, 0])  # mask called incorrect (= mask), incorrect dropped
    report = binary_view(y_true, y_pred, LABELS)
    assert report["n"] == 3
    assert report["confusion_matrix"] == [[1, 0], [1, 1]]  # rows: mask, no mask
    assert report["per_class"][NO_MASK]["recall"] == 0.5


def test_binary_view_needs_both_classes():
    assert binary_view(np.array([0]), np.array([0]), ["a", "b"]) is None


def test_a_threshold_at_its_floor_that_misses_the_recall_asked_is_warned_of():
    from maskwatch.convert.metrics import full_report
    from maskwatch.convert.train import choose_no_mask_threshold, threshold_warning

    labels = [MASK, NO_MASK]
    # 20 unmasked faces, two of them scored almost "masked"; 20 masked faces mostly at 0.2
    no_mask = [0.9] * 18 + [0.01, 0.02]
    masked = [0.2] * 12 + [0.02] * 8
    scores = np.array([[1 - s, s] for s in no_mask + masked])
    y = np.array([1] * 20 + [0] * 20)
    threshold = choose_no_mask_threshold(scores, y, labels, 0.98)
    assert threshold == 0.05  # clipped to the floor, rounded (not 0.0500000007...)
    report = full_report(y, decide_all(scores, labels, threshold), labels)
    warning = threshold_warning(threshold, report, 0.98, "hard")
    assert warning is not None
    assert "no-mask recall 0.900" in warning and "masked recall falls to 0.400" in warning
    # met recall: no warning, however low the threshold
    assert threshold_warning(0.05, full_report(y[:18], np.ones(18, int), labels), 0.98,
                             "hard") is None
    assert choose_no_mask_threshold(scores[:18], y[:18], labels, 0.98) == 0.5
