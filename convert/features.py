"""Expose the classifier's pooled backbone features as a second output of the same graph.

One int8 invocation then yields both the class scores and the features that site
adaptation (`mask-agent adapt`) and the tracker's re-identification use: no second pass,
no second model. The edit is on the TFLite flatbuffer itself (the input of the final
FULLY_CONNECTED op becomes a graph output), so it applies to a fresh export and upgrades
an existing bundle without its Keras model. The scores are bit-identical before and after.

The bundle also carries an anchor set: int8 features of a few hundred training faces per
class, so that a site refit never forgets the general case.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from maskwatch.agent.vision.models import sha256_file
from maskwatch.agent.vision.statefile import write_bytes_atomic

from .errors import ConvertError

FEATURES_NAME = "features"
ANCHORS_NAME = "anchors.npz"


def pooled_tensor(model) -> int:
    """Index of the tensor that feeds the last FULLY_CONNECTED op (the pooled features)."""
    from tensorflow.lite.python import schema_py_generated as schema

    graph = model.subgraphs[0]
    fully_connected = [
        op for op in graph.operators
        if model.operatorCodes[op.opcodeIndex].builtinCode
        == schema.BuiltinOperator.FULLY_CONNECTED
        or model.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode
        == schema.BuiltinOperator.FULLY_CONNECTED]
    if not fully_connected:
        raise ConvertError("no FULLY_CONNECTED op in the model: cannot find its features")
    return int(fully_connected[-1].inputs[0])


def with_features_output(flatbuffer: bytes) -> bytes:
    """The same model with the pooled features added as output `features` (idempotent)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    graph = model.subgraphs[0]
    index = pooled_tensor(model)
    if index not in list(graph.outputs):
        graph.outputs = np.append(np.asarray(graph.outputs, np.int32), np.int32(index))
    for signature in model.signatureDefs or []:
        names = [m.name.decode() if isinstance(m.name, bytes) else m.name
                 for m in signature.outputs]
        if FEATURES_NAME not in names:
            entry = schema.TensorMapT()
            entry.name, entry.tensorIndex = FEATURES_NAME, index
            signature.outputs.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def add_features(bundle: Path) -> dict:
    """Upgrade a bundle folder in place: features output + model.json `features` entry."""
    from maskwatch.agent.vision.classify import Classifier, read_bundle

    info = read_bundle(bundle)
    before = Classifier(bundle)
    probe = np.random.default_rng(0).integers(0, 256, (8, info.crop.size, info.crop.size, 3),
                                              dtype=np.uint8)
    scores_before = before.scores(probe)
    write_bytes_atomic(info.path, with_features_output(info.path.read_bytes()))
    meta = dict(info.meta)
    write_meta(info.path.parent, meta)  # the new sha256, so the bundle loads again
    after = Classifier(bundle)
    if after.feature_size == 0:
        raise ConvertError(f"{info.path}: the features output did not appear")
    if not np.array_equal(scores_before, after.scores(probe)):
        raise ConvertError(f"{info.path}: scores changed when the features output was added")
    meta["features"] = {"output": FEATURES_NAME, "size": after.feature_size,
                        "dtype": "int8", "quantization": after.feature_quantization()}
    write_meta(info.path.parent, meta)
    return meta


def write_meta(folder: Path, meta: dict) -> None:
    """model.json with the sha256 of the model file it names (set in `meta` too)."""
    meta["sha256"] = sha256_file(folder / meta["file"])
    write_bytes_atomic(folder / "model.json", (json.dumps(meta, indent=2) + "\n").encode())


def anchor_features(bundle: Path, data: list[str], per_class: int, seed: int,
                    detector_model: str | None
                    ) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """int8 features of `per_class` training faces per bundle label, drawn at random
    across all sources, cropped as training crops them (the subject face, else the photo),
    and the features' quantisation."""
    from maskwatch.agent.vision.classify import Classifier
    from maskwatch.agent.vision.models import bundled_model_path
    from maskwatch.agent.vision.preprocess import face_input

    from .dataset import scan
    from .faces import FaceCropper

    classifier = Classifier(bundle)
    if not classifier.feature_size:
        raise ConvertError(f"{bundle} has no features output: run mask-convert features first")
    cropper = FaceCropper(classifier.crop, detector_model or str(bundled_model_path("yunet")),
                          None)
    dataset = scan(data)
    rng = np.random.default_rng(seed)
    quant = classifier.feature_quantization()
    rows, labels = [], []
    for index, label in enumerate(classifier.labels):
        members = [s for s in dataset.samples if s.label == label]
        taken = 0
        for i in rng.permutation(len(members)):
            loaded = cropper.load(members[i])
            if loaded is None:
                continue
            image, box = loaded
            _, feats = classifier.infer(face_input(image, box, classifier.crop)[None])
            rows.append(np.round(feats[0] / quant["scale"] + quant["zero_point"]))
            labels.append(index)
            taken += 1
            if taken >= per_class:
                break
    return (np.clip(np.array(rows), -128, 127).astype(np.int8), np.array(labels, np.int8),
            classifier.labels, quant)


def add_anchors(bundle: Path, data: list[str], per_class: int = 200, seed: int = 1,
                detector_model: str | None = None) -> dict:
    """Write the bundle's anchor set (`anchors.npz`) and name it in model.json."""
    from maskwatch.agent.vision.classify import read_bundle

    features, labels, names, quant = anchor_features(bundle, data, per_class, seed,
                                                     detector_model)
    info = read_bundle(bundle)
    path = info.path.parent / ANCHORS_NAME
    np.savez_compressed(path, features=features, labels=labels, label_names=np.array(names),
                        scale=np.float32(quant["scale"]), zero_point=np.int32(quant["zero_point"]))
    meta = dict(info.meta)
    meta["anchors"] = {"file": ANCHORS_NAME, "sha256": sha256_file(path),
                       "per_class": {n: int(np.sum(labels == i)) for i, n in enumerate(names)},
                       "seed": seed, "sources": sorted({Path(d).name for d in data})}
    write_meta(info.path.parent, meta)
    return meta
