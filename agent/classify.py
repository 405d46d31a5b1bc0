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

from .decision import decide
from .errors import ModelError
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
                 no_mask_threshold: float | None = None) -> None:
        self.info = read_bundle(bundle)
        self.labels = self.info.labels
        self.crop = self.info.crop
        self.no_mask_threshold = (no_mask_threshold if no_mask_threshold is not None
                                  else self.info.no_mask_threshold)
        self._interpreter = load_interpreter(self.info.path, threads)
        inp = self._interpreter.get_input_details()[0]
        out = self._interpreter.get_output_details()[0]
        self._input_index, self._output_index = inp["index"], out["index"]
        self._input_dtype = inp["dtype"]
        self._input_quant = inp["quantization"]
        self._output_quant = out["quantization"]
        if int(inp["shape"][0]) != 1:
            self._interpreter.resize_tensor_input(self._input_index,
                                                  [1, self.crop.size, self.crop.size, 3])
            self._interpreter.allocate_tensors()
        if int(inp["shape"][1]) != self.crop.size or int(out["shape"][-1]) != len(self.labels):
            raise ModelError(
                f"{self.info.path} does not match model.json: input {list(inp['shape'])}, "
                f"{int(out['shape'][-1])} outputs; model.json says size {self.crop.size}, "
                f"{len(self.labels)} labels")

    def _to_input(self, crops: np.ndarray) -> np.ndarray:
        if self._input_dtype == np.uint8:
            return crops.astype(np.uint8)
        scale, zero = self._input_quant
        if self._input_dtype == np.int8:
            return np.clip(np.round(crops / scale + zero), -128, 127).astype(np.int8)
        return crops.astype(np.float32)

    def scores(self, crops: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) for RGB uint8 crops (N, size, size, 3)."""
        out = np.zeros((len(crops), len(self.labels)), np.float32)
        scale, zero = self._output_quant
        for i in range(len(crops)):
            self._interpreter.set_tensor(self._input_index, self._to_input(crops[i:i + 1]))
            self._interpreter.invoke()
            raw = self._interpreter.get_tensor(self._output_index)[0]
            out[i] = (raw.astype(np.float32) - zero) * scale if scale else raw
        return out

    def predict_crops(self, crops: np.ndarray) -> list[Prediction]:
        out = []
        for row in self.scores(crops):
            index = decide(row, self.labels, self.no_mask_threshold)
            out.append(Prediction(self.labels[index], round(float(row[index]), 4),
                                  {k: round(float(v), 4) for k, v in zip(self.labels, row)}))
        return out

    def crops(self, frame_bgr: np.ndarray, boxes: list[Box]) -> np.ndarray:
        """The model inputs for face boxes in a frame (the shared preprocessing)."""
        return np.stack([face_input(frame_bgr, box, self.crop) for box in boxes])

    def classify(self, frame_bgr: np.ndarray, boxes: list[Box]) -> list[Prediction]:
        """Predictions for face boxes in one frame."""
        if not boxes:
            return []
        return self.predict_crops(self.crops(frame_bgr, boxes))
