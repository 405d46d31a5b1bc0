"""Turn class scores into a label, with the bundle's operating threshold for no-mask.

A missed violation (an unmasked person called masked) is the worst error this product can
make, so the model bundle stores a threshold on the `without_mask` score chosen for
no-mask recall: at or above it the face is `without_mask`, below it the best other class
wins. Training, evaluation and the device all decide through `decide`.
"""

from __future__ import annotations

import numpy as np

MASK = "with_mask"
NO_MASK = "without_mask"
INCORRECT = "mask_weared_incorrect"  # the spelling of the public data sets


def decide(scores: np.ndarray, labels: list[str], no_mask_threshold: float | None) -> int:
    """Index of the decided label for one row of class scores."""
    if no_mask_threshold is None or NO_MASK not in labels:
        return int(np.argmax(scores))
    no_mask = labels.index(NO_MASK)
    if scores[no_mask] >= no_mask_threshold:
        return no_mask
    others = scores.copy()
    others[no_mask] = -np.inf
    return int(np.argmax(others))


def decide_all(scores: np.ndarray, labels: list[str],
               no_mask_threshold: float | None) -> np.ndarray:
    """`decide` for each row of an (N, classes) score matrix."""
    return np.array([decide(row, labels, no_mask_threshold) for row in scores], dtype=int)
