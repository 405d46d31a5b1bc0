"""The int8 mask classifier: a model bundle (`model.json` + `.tflite`) run through TFLite.

`model.json` says everything the device needs to feed the model exactly as it was trained:
labels in output order, input size, crop geometry, colour order, quantisation, and the
no-mask operating threshold. The `.tflite` file's sha256 is checked against it, so a
truncated or swapped model is a clear error instead of silent nonsense.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .decision import MASK, NO_MASK, canonical_label, decide
from .head import BUNDLE_HEAD, Head, HeadFile
from .models import sha256_file
from .preprocess import Box, CropSpec, face_input
from .tflite import load_interpreter

BUNDLE_FORMAT = "maskwatch-classifier"
DEFAULT_BUNDLE = Path(__file__).parent / "default_model"


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    scores: dict[str, float] = field(default_factory=dict)
    # pooled backbone features (F,), empty for a bundle without them: the tracker's
    # appearance embedding and what site adaptation learns from
    features: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32),
                                 compare=False, repr=False)


@dataclass(frozen=True)
class BundleInfo:
    """What `model.json` says about the model, validated."""

    path: Path  # the .tflite file
    name: str
    sha256: str
    labels: list[str]
    crop: CropSpec
    no_mask_threshold: float | None
    meta: dict

    def summary(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "labels": self.labels,
                "version": self.meta.get("version")}


def checked_labels(names: list[str], meta_path: Path) -> list[str]:
    """The bundle's labels as the agent names them (`mask` / `no_mask`, `WithMask` / ...
    read as `with_mask` / `without_mask`). A model with no no-mask class would run and
    never raise an alert: it is refused, as is a label named twice."""
    labels = [canonical_label(name) for name in names]
    missing = [label for label in (MASK, NO_MASK) if label not in labels]
    if missing or len(set(labels)) != len(labels):
        raise ModelError(
            f"model bundle {meta_path}: labels {', '.join(names)}: the agent needs one "
            f"{MASK} and one {NO_MASK} label (its alerts are on {NO_MASK})")
    return labels


def read_bundle(location: str | Path | None) -> BundleInfo:
    """Read and validate a bundle folder, its model.json, or a .tflite beside model.json."""
    location = Path(location) if location else DEFAULT_BUNDLE
    meta_path = location / "model.json" if location.is_dir() else (
        location if location.suffix == ".json" else location.with_name("model.json"))
    if not meta_path.is_file():
        raise ModelError(f"model bundle not found: {meta_path} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"model bundle {meta_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise ModelError(f"{meta_path} is not a maskwatch model bundle (format != {BUNDLE_FORMAT})")
    try:
        tflite = meta_path.parent / meta["file"]
        labels = [str(x) for x in meta["labels"]]
        crop = CropSpec(size=int(meta["input"]["size"]), scale=float(meta["crop"]["scale"]))
        threshold = meta.get("no_mask_threshold")
        threshold = None if threshold is None else float(threshold)
        expected = str(meta["sha256"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"model bundle {meta_path} lacks a valid field: {exc}") from None
    labels = checked_labels(labels, meta_path)
    if not tflite.is_file():
        raise ModelError(f"model file not found: {tflite} (named in {meta_path})")
    actual = sha256_file(tflite)
    if actual != expected:
        raise ModelError(f"model file {tflite} does not match model.json "
                         f"(sha256 {actual[:12]}… != {expected[:12]}…): corrupt or replaced")
    return BundleInfo(tflite, str(meta.get("name", tflite.stem)), actual, labels, crop,
                      threshold, meta)


class Classifier:
    """Classifies face crops, one face per invocation.

    The input shape stays fixed (batch 1): resizing the interpreter to the number of faces
    re-allocated its tensors whenever that number changed, +12.5 MB of peak RSS over a
    street clip, for no gain per face (measured with `mask-agent bench`)."""

    def __init__(self, bundle: str | Path | None = None, threads: int = 1,
                 no_mask_threshold: float | None = None,
                 head_file: Path | None = None) -> None:
        self.info = read_bundle(bundle)
        self.labels = self.info.labels
        self.crop = self.info.crop
        self.no_mask_threshold = (no_mask_threshold if no_mask_threshold is not None
                                  else self.info.no_mask_threshold)
        self._interpreter = load_interpreter(self.info.path, threads, self.info.sha256)
        inp = self._interpreter.get_input_details()[0]
        out, features = self._outputs(self._interpreter.get_output_details())
        self._input_index, self._output_index = inp["index"], out["index"]
        self._input_dtype = inp["dtype"]
        self._input_quant = inp["quantization"]
        self._output_quant = out["quantization"]
        self._features = features
        self.feature_size = int(features["shape"][-1]) if features else 0
        if self.feature_size and (len(self.labels) != 2 or NO_MASK not in self.labels):
            head_file = None  # a site head decides mask / no mask only
        self.heads = HeadFile(head_file, self.info.sha256, self.feature_size)
        if int(inp["shape"][0]) != 1:
            self._interpreter.resize_tensor_input(self._input_index,
                                                  [1, self.crop.size, self.crop.size, 3])
            self._interpreter.allocate_tensors()
        if int(inp["shape"][1]) != self.crop.size or int(out["shape"][-1]) != len(self.labels):
            raise ModelError(
                f"{self.info.path} does not match model.json: input {list(inp['shape'])}, "
                f"{int(out['shape'][-1])} outputs; model.json says size {self.crop.size}, "
                f"{len(self.labels)} labels")

    def _outputs(self, details: list[dict]) -> tuple[dict, dict | None]:
        """(scores output, features output or None): told apart by width, the scores
        having one value per label, the pooled features many more."""
        ordered = sorted(details, key=lambda d: int(d["shape"][-1]))
        if len(ordered) > 1 and int(ordered[-1]["shape"][-1]) > len(self.labels):
            return ordered[0], ordered[-1]
        return ordered[0], None

    def feature_quantization(self) -> dict:
        scale, zero = self._features["quantization"] if self._features else (0.0, 0)
        return {"scale": float(scale), "zero_point": int(zero)}

    def _to_input(self, crops: np.ndarray) -> np.ndarray:
        if self._input_dtype == np.uint8:
            return crops.astype(np.uint8)
        scale, zero = self._input_quant
        if self._input_dtype == np.int8:
            return np.clip(np.round(crops / scale + zero), -128, 127).astype(np.int8)
        return crops.astype(np.float32)

    def infer(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class probabilities (N, classes), pooled features (N, F)) of the bundle's own
        head, for RGB uint8 crops (N, size, size, 3); F is 0 for a bundle without the
        features output. One invocation per face yields both."""
        out = np.zeros((len(crops), len(self.labels)), np.float32)
        feats = np.zeros((len(crops), self.feature_size), np.float32)
        scale, zero = self._output_quant
        for i in range(len(crops)):
            self._interpreter.set_tensor(self._input_index, self._to_input(crops[i:i + 1]))
            self._interpreter.invoke()
            raw = self._interpreter.get_tensor(self._output_index)[0]
            out[i] = (raw.astype(np.float32) - zero) * scale if scale else raw
            if self._features is not None:
                f_scale, f_zero = self._features["quantization"]
                feats[i] = (self._interpreter.get_tensor(self._features["index"])[0]
                            .astype(np.float32) - f_zero) * f_scale
        return out, feats

    def scores(self, crops: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) of the bundle's own head."""
        return self.infer(crops)[0]

    def linear_head(self) -> tuple[np.ndarray, np.ndarray]:
        """The bundle's final layer in float, (W (classes, F), b (classes,)): the start and
        the prior of a site refit. Read from the graph's constant tensors."""
        weights = bias = None
        for d in self._interpreter.get_tensor_details():
            shape = [int(v) for v in d["shape"]]
            scales = d["quantization_parameters"]["scales"]
            if shape == [len(self.labels), self.feature_size] and len(scales):
                weights = self._interpreter.get_tensor(d["index"]).astype(np.float32) * (
                    scales.reshape(-1, 1) if len(scales) > 1 else scales[0])
            elif shape == [len(self.labels)] and d["dtype"] == np.int32 and len(scales):
                bias = self._interpreter.get_tensor(d["index"]).astype(np.float32) * scales
        if weights is None or bias is None:
            raise ModelError(f"{self.info.path}: cannot find its final layer's weights")
        return weights, bias

    def bundle_head(self) -> Head:
        """The bundle's own final layer as a head on the features (mask vs no mask)."""
        weights, bias = self.linear_head()
        nm = self.labels.index(NO_MASK)
        other = 1 - nm
        threshold = 0.5 if self.no_mask_threshold is None else self.no_mask_threshold
        return Head(weights[nm] - weights[other], float(bias[nm] - bias[other]), threshold,
                    self.info.sha256)

    def anchors(self) -> tuple[np.ndarray, np.ndarray]:
        """The bundle's anchor set: (features (N, F), labels (N,) with 1 = without_mask);
        empty when the bundle has none."""
        entry = self.info.meta.get("anchors")
        if not entry or not self.feature_size:
            return np.zeros((0, self.feature_size), np.float32), np.zeros(0, int)
        path = self.info.path.parent / entry["file"]
        try:
            data = np.load(path)
            raw, labels = data["features"], data["labels"]
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"anchor set {path} unreadable: {exc}") from None
        scale, zero = float(data["scale"]), int(data["zero_point"])
        names = [str(n) for n in data["label_names"]]
        y = np.array([names[i] == NO_MASK for i in labels], int)
        return (raw.astype(np.float32) - zero) * scale, y

    def threshold(self) -> float | None:
        """The no-mask threshold in use now (the site head's when there is one)."""
        head = self.heads.current()
        return head.threshold if head else self.no_mask_threshold

    def identity(self) -> dict:
        """What events name as their model: the bundle and the head in use."""
        head = self.heads.current()
        return {"name": self.info.name, "sha256": self.info.sha256,
                "head": head.id if head else BUNDLE_HEAD}

    def decided_scores(self, scores: np.ndarray, features: np.ndarray,
                       head: Head | None) -> tuple[np.ndarray, float | None]:
        """(scores, no-mask threshold) after the site head, when one is in use."""
        if head is None:
            return scores, self.no_mask_threshold
        no_mask = head.no_mask_probability(features)
        scores = np.empty_like(scores)
        scores[:, self.labels.index(NO_MASK)] = no_mask
        scores[:, 1 - self.labels.index(NO_MASK)] = 1.0 - no_mask
        return scores, head.threshold

    def predict_crops(self, crops: np.ndarray) -> list[Prediction]:
        raw, features = self.infer(crops)
        scores, threshold = self.decided_scores(raw, features, self.heads.current())
        out = []
        for row, feats in zip(scores, features):
            index = decide(row, self.labels, threshold)
            out.append(Prediction(self.labels[index], round(float(row[index]), 4),
                                  {k: round(float(v), 4) for k, v in zip(self.labels, row)},
                                  feats))
        return out

    def crops(self, frame_bgr: np.ndarray, boxes: list[Box]) -> np.ndarray:
        """The model inputs for face boxes in a frame (the shared preprocessing)."""
        return np.stack([face_input(frame_bgr, box, self.crop) for box in boxes])

    def classify(self, frame_bgr: np.ndarray, boxes: list[Box]) -> list[Prediction]:
        """Predictions for face boxes in one frame."""
        if not boxes:
            return []
        return self.predict_crops(self.crops(frame_bgr, boxes))
