"""Full-integer int8 TFLite export with a float-vs-int8 parity check, as a model bundle.

Keras 3 saves a SavedModel with `model.export()`; the TFLite converter quantises weights
and activations with a representative set of crops drawn from the training photos through
the device's own crop. Input and output are uint8 (or int8): the device feeds raw RGB
pixels. The parity check runs both models on the run's validation split and fails the
export when int8 loses more than `max_drop` accuracy points.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

from maskwatch.agent.vision.classify import BUNDLE_FORMAT, Classifier
from maskwatch.agent.vision.decision import decide_all
from maskwatch.agent.vision.preprocess import CropSpec, face_input, whole_image_box
from maskwatch.agent.vision.statefile import write_bytes_atomic

from .augment import augmented_input
from .dataset import scan
from .errors import ConvertError, ParityError
from .faces import FaceBoxCache, read_image
from .features import FEATURES_NAME, with_features_output, write_meta
from .metrics import full_report

BUNDLE_VERSION = 1
TFLITE_NAME = "classifier.tflite"


def load_run(run: Path) -> tuple[dict, dict]:
    """(config.json, report.json) of a training run folder."""
    for name in ("model.keras", "config.json", "report.json", "validation_crops.npz"):
        if not (run / name).is_file():
            raise ConvertError(f"{run} is not a training run folder ({name} missing)")
    return json.loads((run / "config.json").read_text()), json.loads(
        (run / "report.json").read_text())


def representative_crops(config: dict, spec: CropSpec, count: int, seed: int) -> np.ndarray:
    """Calibration crops: training photos, half clean and half augmented, device crop."""
    dataset = scan(config["data"])
    rng = np.random.default_rng(seed)
    cache_dir = config.get("cache_dir")
    cache = FaceBoxCache(Path(cache_dir) / "face_boxes.json" if cache_dir else None)
    order = rng.permutation(len(dataset.samples))
    crops = []
    for i in order:
        sample = dataset.samples[i]
        image = read_image(sample.path)
        if image is None:
            continue
        found = cache.boxes.get(sample.sha256)
        box = tuple(found) if found is not None else whole_image_box(image, spec)
        crops.append(face_input(image, box, spec) if len(crops) % 2 == 0
                     else augmented_input(image, box, spec, rng))
        if len(crops) >= count:
            break
    return np.stack(crops)


def convert_int8(model, calibration: np.ndarray, io_type: str,
                 float_ops: list[str]) -> bytes:
    """int8 TFLite flatbuffer; `float_ops` op types (e.g. ADD) stay float."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        model.export(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)

        def dataset():
            for crop in calibration:
                yield [crop[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        io = tf.uint8 if io_type == "uint8" else tf.int8
        converter.inference_input_type = io
        converter.inference_output_type = io
        if not float_ops:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            return converter.convert()
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                               tf.lite.OpsSet.TFLITE_BUILTINS]
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=dataset,
            debug_options=tf.lite.experimental.QuantizationDebugOptions(
                denylisted_ops=float_ops, fully_quantize=True))
        return debugger.get_nondebug_quantized_model()


def float_scores(model, crops: np.ndarray) -> np.ndarray:
    return model.predict(crops.astype(np.float32), batch_size=128, verbose=0)


def parity(float_s: np.ndarray, int8_s: np.ndarray, y: np.ndarray, labels: list[str],
           threshold: float | None) -> dict:
    fp = decide_all(float_s, labels, threshold)
    qp = decide_all(int8_s, labels, threshold)
    f_rep, q_rep = full_report(y, fp, labels), full_report(y, qp, labels)
    return {
        "agreement": round(float(np.mean(fp == qp)), 4),
        "float_accuracy": f_rep["accuracy"],
        "int8_accuracy": q_rep["accuracy"],
        "float_balanced_accuracy": f_rep["balanced_accuracy"],
        "int8_balanced_accuracy": q_rep["balanced_accuracy"],
        "drop_points": round(100 * (f_rep["accuracy"] - q_rep["accuracy"]), 2),
        "max_abs_score_diff": round(float(np.max(np.abs(float_s - int8_s))), 4),
        "int8_validation": q_rep,
    }


def write_bundle(out: Path, flatbuffer: bytes, meta: dict) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out / TFLITE_NAME, flatbuffer)  # never under a running agent
        write_meta(out, meta)
    except OSError as exc:
        raise ConvertError(f"cannot write bundle to {out}: {exc.strerror}") from None
    return out / "model.json"


def export(run: Path, out: Path, name: str, io_type: str = "uint8", calibration: int = 400,
           max_drop: float = 1.0, float_ops: list[str] | None = None) -> dict:
    import keras

    config, report = load_run(run)
    labels = report["labels"]
    spec = CropSpec(size=int(report["crop"]["size"]), scale=float(report["crop"]["scale"]))
    threshold = report.get("no_mask_threshold")
    model = keras.models.load_model(run / "model.keras")
    calib = representative_crops(config, spec, calibration, int(config.get("seed", 1)))
    flatbuffer = with_features_output(convert_int8(model, calib, io_type, float_ops or []))
    meta = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "name": name,
        "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "file": TFLITE_NAME,
        "sha256": "",
        "labels": labels,
        "input": {"size": spec.size, "dtype": io_type, "colour": "RGB", "range": [0, 255],
                  "normalisation": "inside the model: x / 127.5 - 1"},
        "crop": {"size": spec.size, **spec.to_json()},
        "no_mask_threshold": threshold,
        "architecture": {"backbone": "MobileNetV2", "alpha": report.get("alpha"),
                         "float_ops": float_ops or []},
        "quantization": {},
        "training": {"data": report["data"], "split": report["split"],
                     "face_crops": report.get("face_crops"), "command": report.get("command")},
        "metrics": {"validation_float": report["validation"]},
        "command": "mask-convert " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    }
    meta_path = write_bundle(out, flatbuffer, meta)
    classifier = Classifier(out)
    details = classifier._interpreter
    inp, outp = details.get_input_details()[0], details.get_output_details()[0]
    meta["features"] = {"output": FEATURES_NAME, "size": classifier.feature_size,
                        "dtype": "int8", "quantization": classifier.feature_quantization()}
    meta["quantization"] = {
        "input": {"scale": float(inp["quantization"][0]),
                  "zero_point": int(inp["quantization"][1])},
        "output": {"scale": float(outp["quantization"][0]),
                   "zero_point": int(outp["quantization"][1])},
    }
    val = np.load(run / "validation_crops.npz")
    result = parity(float_scores(model, val["x"]), classifier.scores(val["x"]), val["y"],
                    labels, threshold)
    meta["metrics"]["parity"] = {k: v for k, v in result.items() if k != "int8_validation"}
    meta["metrics"]["validation_int8"] = result["int8_validation"]
    write_bundle(out, flatbuffer, meta)
    print(f"bundle: {meta_path} ({len(flatbuffer) / 1024:.0f} KiB)")
    print(f"parity on {len(val['y'])} validation crops: agreement {result['agreement']:.4f}, "
          f"float {result['float_accuracy']:.4f}, int8 {result['int8_accuracy']:.4f}, "
          f"drop {result['drop_points']:.2f} points")
    if result["drop_points"] > max_drop:
        raise ParityError(f"int8 accuracy dropped {result['drop_points']:.2f} points "
                          f"(more than --max-drop {max_drop}); bundle kept in {out} for study")
    return meta
