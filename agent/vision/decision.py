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

# Class folder names other data sets use, read as ours (compared lower-case, without
# spaces, "-" and "_"): Kaggle's WithMask / WithoutMask, mask / no_mask, and the like. A
# model whose no-mask class is not called `without_mask` would never raise an alert.
LABEL_ALIASES = {
    MASK: ("withmask", "mask", "masked", "masks"),
    NO_MASK: ("withoutmask", "nomask", "unmasked", "nomasks", "withoutmasks"),
    INCORRECT: ("maskwearedincorrect", "maskwornincorrect", "maskwornincorrectly",
                "incorrectmask", "incorrectlyworn", "incorrect"),
}


def canonical_label(name: str) -> str:
    """The class a folder name stands for: ours where it is one of its aliases, else the
    name itself (an extra class of the practitioner's own)."""
    key = "".join(ch for ch in name.lower() if ch not in " -_")
    for label, aliases in LABEL_ALIASES.items():
        if key in aliases:
            return label
    return name


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
