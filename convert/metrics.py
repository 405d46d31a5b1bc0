"""Classification metrics: accuracy, balanced accuracy, per-class P/R/F1, confusion matrix.

Besides the full label set, every report has a "mask vs no mask" view: faces labelled
`mask_weared_incorrect` are left out of it and a predicted `mask_weared_incorrect` counts
as "mask" (the person wears one), which is the product's primary decision.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskwatch.agent.vision.decision import MASK, NO_MASK

BINARY = (MASK, NO_MASK)


def classification_report(y_true: list[int] | np.ndarray, y_pred: list[int] | np.ndarray,
                          labels: list[str]) -> dict:
    y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    n = len(labels)
    matrix = np.zeros((n, n), dtype=int)
    for t, p in zip(y_true, y_pred):
        matrix[t, p] += 1
    per_class = {}
    recalls = []
    for i, label in enumerate(labels):
        support = int(matrix[i].sum())
        predicted = int(matrix[:, i].sum())
        tp = int(matrix[i, i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": round(precision, 4), "recall": round(recall, 4),
                            "f1": round(f1, 4), "support": support}
        if support:
            recalls.append(recall)
    total = int(matrix.sum())
    return {
        "n": total,
        "accuracy": round(float(np.trace(matrix)) / total, 4) if total else 0.0,
        "balanced_accuracy": round(float(np.mean(recalls)), 4) if recalls else 0.0,
        "per_class": per_class,
        "labels": list(labels),
        "confusion_matrix": matrix.tolist(),
    }


def binary_view(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict | None:
    """Mask vs no mask report (None when the labels lack either class)."""
    if not set(BINARY) <= set(labels):
        return None
    mask, no_mask = labels.index(MASK), labels.index(NO_MASK)
    y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    keep = np.isin(y_true, [mask, no_mask])
    t = (y_true[keep] == no_mask).astype(int)
    p = (y_pred[keep] == no_mask).astype(int)
    return classification_report(t, p, list(BINARY))


def full_report(y_true, y_pred, labels: list[str]) -> dict:
    report = classification_report(y_true, y_pred, labels)
    report["mask_vs_no_mask"] = binary_view(y_true, y_pred, labels)
    return report


def format_report(name: str, report: dict) -> str:
    """A short human-readable block for the terminal."""
    lines = [f"{name}: n={report['n']} accuracy={report['accuracy']:.4f} "
             f"balanced={report['balanced_accuracy']:.4f}"]
    for label, m in report["per_class"].items():
        lines.append(f"  {label:<24} P={m['precision']:.3f} R={m['recall']:.3f} "
                     f"F1={m['f1']:.3f} n={m['support']}")
    binary = report.get("mask_vs_no_mask")
    if binary and binary["n"]:
        nm = binary["per_class"][NO_MASK]
        lines.append(f"  mask vs no mask: balanced={binary['balanced_accuracy']:.4f} "
                     f"no-mask recall={nm['recall']:.4f} n={binary['n']}")
    return "\n".join(lines)


def plot_confusion(report: dict, path: Path, title: str) -> None:
    """Confusion matrix PNG (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(report["confusion_matrix"])
    labels = report["labels"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(labels), 1.2 + 1.2 * len(labels)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
