"""Transfer learning: ImageNet MobileNetV2, frozen, with a small softmax head.

Following Keras' transfer-learning guide, the backbone is frozen and only the head is
trained first. On a CPU the frozen backbone is the cost, so its pooled features are
computed once per (clean or augmented) crop and the head trains on those in seconds.
`--fine-tune N` adds a second stage that unfreezes the top N backbone layers and trains
end to end on freshly augmented crops at a low learning rate.
The Keras model takes RGB pixels in 0..255 (float) and normalises inside, so the int8
export can take raw uint8 pixels.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskwatch.agent.vision.decision import MASK, NO_MASK, decide_all
from maskwatch.agent.vision.preprocess import CropSpec, face_input

from .augment import augmented_input
from .dataset import Sample, scan, stratified_split
from .errors import ConvertError
from .faces import FaceCropper
from .metrics import format_report, full_report, plot_confusion
from .model import build_backbone, build_model, features, unfreeze_top

HARD_COPIES = 2  # augmented copies of each validation photo for the operating point
THRESHOLD_FLOOR = 0.05  # the lowest no-mask threshold train chooses


@dataclass
class TrainOptions:
    data: list[str]
    out: Path
    alpha: float = 0.35
    size: int = 128
    weights: str = "imagenet"
    epochs: int = 40
    fine_tune: int = 0  # backbone layers to unfreeze in stage two (0: none)
    fine_tune_epochs: int = 3
    fine_tune_lr: float = 3e-5
    classes: list[str] | None = None  # keep only these class folders (None: all)
    copies: int = 2  # augmented copies per training photo (cached features)
    val_fraction: float = 0.15
    seed: int = 1
    batch_size: int = 64
    detector_model: str | None = None  # YuNet ONNX used to crop faces like the agent
    cache_dir: Path | None = None
    no_mask_recall: float = 0.98  # target for the operating threshold on validation
    limit: int = 0  # use at most this many photos per class (tests, quick trials)
    small_face_p: float = 0.35  # share of augmented crops shrunk to a small, far face
    threshold_on: str = "hard"  # choose the no-mask threshold on 'hard' or 'clean' validation


def check_output_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConvertError(f"output folder {out} is not writable: {exc.strerror}") from None


def crops_for(samples: list[Sample], cropper: FaceCropper, copies: int, seed: int,
              progress: str, small_face_p: float = 0.35,
              ) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """(clean crops, augmented crops per copy, kept indices); unreadable files skipped."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    clean: list[np.ndarray] = []
    augmented: list[np.ndarray] = []
    kept: list[int] = []
    for i, sample in enumerate(tqdm(samples, desc=progress, unit="img", file=sys.stderr,
                                    disable=None)):
        loaded = cropper.load(sample)
        if loaded is None:
            continue
        image, box = loaded
        kept.append(i)
        clean.append(face_input(image, box, cropper.spec))
        augmented.extend(augmented_input(image, box, cropper.spec, rng, small_face_p)
                         for _ in range(copies))
    return clean, augmented, kept


def class_weights(y: np.ndarray, n: int) -> dict[int, float]:
    counts = np.bincount(y, minlength=n).astype(float)
    return {i: float(len(y) / (n * c)) if c else 0.0 for i, c in enumerate(counts)}


def choose_no_mask_threshold(scores: np.ndarray, y: np.ndarray, labels: list[str],
                             target_recall: float) -> float | None:
    """Highest threshold (<= 0.5) on the no-mask score that keeps no-mask recall >= target,
    rounded down to 4 decimals (recall kept; 0.05, not 0.05000000074505806)."""
    if NO_MASK not in labels:
        return None
    no_mask = labels.index(NO_MASK)
    positives = np.sort(scores[y == no_mask, no_mask])
    if positives.size == 0:
        return None
    k = int(np.floor((1.0 - target_recall) * positives.size))
    threshold = float(np.clip(positives[k] - 1e-6, THRESHOLD_FLOOR, 0.5))
    return math.floor(threshold * 10_000) / 10_000


def threshold_warning(threshold: float | None, report: dict, target_recall: float,
                      on: str) -> str | None:
    """A warning when the no-mask threshold sits at its floor: the validation photos (too
    few, or too hard for this model) cannot give the no-mask recall asked for, and every
    masked face scored above the floor is called unmasked; the user should know."""
    binary = report.get("mask_vs_no_mask")
    if threshold is None or threshold > THRESHOLD_FLOOR or not binary:
        return None
    no_mask = binary["per_class"][NO_MASK]["recall"]
    if no_mask >= target_recall:
        return None
    masked = binary["per_class"][MASK]["recall"]
    return (f"the no-mask threshold is at its floor ({THRESHOLD_FLOOR}): on {on} validation "
            f"it keeps no-mask recall {no_mask:.3f}, under --no-mask-recall {target_recall:g}, "
            f"and masked recall falls to {masked:.3f}; more photos per class, or a lower "
            f"--no-mask-recall, give a better operating point")


def limit_per_class(samples: list[Sample], limit: int, seed: int) -> list[Sample]:
    if limit <= 0:
        return samples
    rng = np.random.default_rng(seed)
    out: list[Sample] = []
    for label in sorted({s.label for s in samples}):
        group = [s for s in samples if s.label == label]
        idx = rng.permutation(len(group))[:limit]
        out.extend(group[i] for i in sorted(idx))
    return out


def plot_curves(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix in ("", "val_"):
            if prefix + key in history:
                ax.plot(history[prefix + key], label=prefix + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def augmented_batches(samples, y, cropper: FaceCropper, batch_size: int, seed: int,
                      small_face_p: float):
    """A keras PyDataset of freshly augmented crops, for the fine-tuning stage."""
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(samples))

        def __len__(self):
            return int(np.ceil(len(samples) / batch_size))

        def __getitem__(self, index):
            xs, ys = [], []
            for i in self.order[index * batch_size:(index + 1) * batch_size]:
                image, box = cropper.load(samples[i])
                xs.append(augmented_input(image, box, cropper.spec, self.rng, small_face_p))
                ys.append(y[i])
            return np.stack(xs).astype(np.float32), np.asarray(ys)

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(samples))

    return Batches()


def train(opts: TrainOptions) -> dict:
    """Train, write the run folder, return the report."""
    started = time.time()
    check_output_dir(opts.out)
    dataset = scan(opts.data, opts.classes)
    for name, label in sorted(dataset.read_as.items()):
        print(f"class folder {name} read as {label}")
    samples = limit_per_class(dataset.samples, opts.limit, opts.seed)
    train_set, val_set = stratified_split(samples, opts.val_fraction, opts.seed)
    labels = dataset.labels
    spec = CropSpec(size=opts.size)
    backbone = build_backbone(opts.alpha, opts.size, opts.weights)
    cropper = FaceCropper(spec, opts.detector_model, opts.cache_dir)

    train_clean, train_aug, train_kept = crops_for(train_set, cropper, opts.copies, opts.seed,
                                                   "train crops", opts.small_face_p)
    val_clean, _, val_kept = crops_for(val_set, cropper, 0, opts.seed, "val crops")
    cropper.cache.save()
    if not train_kept or not val_kept:
        raise ConvertError("no readable images left after skipping unreadable files")
    y_train = np.array([labels.index(train_set[i].label) for i in train_kept])
    y_val = np.array([labels.index(val_set[i].label) for i in val_kept])
    f_train = features(backbone, train_clean + train_aug)
    y_train_all = (np.concatenate([y_train, np.repeat(y_train, opts.copies)]) if opts.copies
                   else y_train)  # augmented crops follow their photo's order, copies in a row
    f_val = features(backbone, val_clean)

    import keras

    keras.utils.set_random_seed(opts.seed)
    model = build_model(backbone, len(labels))
    head = keras.Sequential([keras.Input((f_train.shape[1],)), model.get_layer("dropout"),
                             model.get_layer("scores")])
    head.compile(optimizer=keras.optimizers.Adam(1e-3),
                 loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    fit = head.fit(f_train, y_train_all, validation_data=(f_val, y_val), epochs=opts.epochs,
                   batch_size=opts.batch_size, class_weight=class_weights(y_train_all,
                                                                          len(labels)),
                   callbacks=[keras.callbacks.EarlyStopping(patience=6,
                                                            restore_best_weights=True)],
                   verbose=2)
    history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}

    if opts.fine_tune > 0:
        history = fine_tune(model, backbone, opts, train_set, train_kept, y_train, val_clean,
                            y_val, cropper, history)

    val_scores = model.predict(np.stack(val_clean).astype(np.float32), verbose=0,
                               batch_size=128)
    # The operating point is chosen on "hard" validation: the same held-out photos through
    # the deployment-like augmentation (small faces, low light, backlight, blur, noise),
    # because clean validation photos are too easy to show where the decision point fails.
    _, val_hard, _ = crops_for(val_set, cropper, HARD_COPIES, opts.seed + 1, "hard val crops",
                               opts.small_face_p)
    y_hard = np.repeat(y_val, HARD_COPIES)
    hard_scores = model.predict(np.stack(val_hard).astype(np.float32), verbose=0,
                                batch_size=128)
    if opts.threshold_on == "hard":
        threshold = choose_no_mask_threshold(hard_scores, y_hard, labels, opts.no_mask_recall)
    else:
        threshold = choose_no_mask_threshold(val_scores, y_val, labels, opts.no_mask_recall)
    val_argmax = full_report(y_val, val_scores.argmax(1), labels)
    val_report = full_report(y_val, decide_all(val_scores, labels, threshold), labels)
    hard_argmax = full_report(y_hard, hard_scores.argmax(1), labels)
    hard_report = full_report(y_hard, decide_all(hard_scores, labels, threshold), labels)
    print(format_report("validation (argmax)", val_argmax))
    print(format_report(f"validation (no-mask threshold {threshold})", val_report))
    print(format_report("hard validation (argmax)", hard_argmax))
    print(format_report(f"hard validation (no-mask threshold {threshold})", hard_report))
    warning = threshold_warning(threshold, hard_report if opts.threshold_on == "hard"
                                else val_report, opts.no_mask_recall, opts.threshold_on)
    if warning:
        print(f"mask-convert: warning: {warning}", file=sys.stderr)

    model.save(opts.out / "model.keras")
    np.savez_compressed(opts.out / "validation_crops.npz", x=np.stack(val_clean), y=y_val)
    plot_curves(history, opts.out / "training_curves.png")
    plot_confusion(val_report, opts.out / "confusion_validation.png", "validation split")
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()}
    report = {
        "labels": labels,
        "crop": {"size": spec.size, "scale": spec.scale},
        "alpha": opts.alpha,
        "no_mask_threshold": threshold,
        "data": dataset.summary(),
        "split": {"train": len(train_kept), "validation": len(val_kept), "seed": opts.seed,
                  "val_fraction": opts.val_fraction},
        "face_crops": {"detected": cropper.detected, "whole_image": cropper.whole},
        "unreadable": cropper.unreadable,
        "validation": val_report,
        "validation_argmax": val_argmax,
        "validation_hard": hard_report,
        "validation_hard_argmax": hard_argmax,
        "threshold_chosen_on": opts.threshold_on,
        "threshold_warning": warning,
        "history": history,
        "seconds": round(time.time() - started, 1),
        "command": "mask-convert " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    }
    (opts.out / "config.json").write_text(json.dumps(config, indent=2))
    (opts.out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def fine_tune(model, backbone, opts: TrainOptions, train_set, train_kept, y_train, val_clean,
              y_val, cropper: FaceCropper, history: dict) -> dict:
    """Stage two: unfreeze the top `opts.fine_tune` backbone layers (BatchNorm stays frozen)."""
    import keras

    unfreeze_top(backbone, opts.fine_tune)
    model.compile(optimizer=keras.optimizers.Adam(opts.fine_tune_lr),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    kept = [train_set[i] for i in train_kept]
    batches = augmented_batches(kept, y_train, cropper, opts.batch_size, opts.seed,
                                opts.small_face_p)
    fit = model.fit(batches, validation_data=(np.stack(val_clean).astype(np.float32), y_val),
                    epochs=opts.fine_tune_epochs,
                    class_weight=class_weights(y_train, int(model.output_shape[-1])),
                    verbose=2)
    for k, vals in fit.history.items():
        history.setdefault(k, []).extend(float(v) for v in vals)
    return history
