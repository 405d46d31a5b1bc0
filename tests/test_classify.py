"""The bundled int8 classifier: loading, checks against model.json, CLI output."""

from __future__ import annotations

import json
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from maskwatch.agent.errors import ModelError
from maskwatch.agent.vision.classify import DEFAULT_BUNDLE, Classifier, read_bundle
from maskwatch.agent.vision.decision import MASK, NO_MASK
from maskwatch.agent.vision.tflite import runtime_fits_numpy
from maskwatch.agent.vision.voc import read_voc

from .conftest import agent_command


def test_bundle_metadata_is_complete():
    info = read_bundle(None)
    meta = info.meta
    assert meta["labels"][:2] == ["with_mask", "without_mask"]
    assert meta["input"]["dtype"] in ("uint8", "int8") and meta["input"]["colour"] == "RGB"
    assert meta["crop"]["scale"] == 1.2 and "bilinear" in meta["crop"]["interpolation"]
    assert 0 < meta["no_mask_threshold"] <= 0.5
    assert meta["quantization"]["input"]["scale"] > 0
    assert meta["training"]["data"]["images"] > 10000
    assert (DEFAULT_BUNDLE / meta["file"]).stat().st_size < 4_000_000


def test_batch_equals_one_by_one():
    classifier = Classifier()
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 255, (5, classifier.crop.size, classifier.crop.size, 3), np.uint8)
    together = classifier.scores(crops)
    alone = np.concatenate([classifier.scores(crops[i:i + 1]) for i in range(5)])
    assert np.allclose(together, alone, atol=1e-6)
    assert np.allclose(together.sum(axis=1), 1.0, atol=0.02)


def dev_faces(dev_set, per_label: int = 15, min_size: int = 48):
    """Faces >= min_size px from the development scenes (never trained on), per label."""
    picked: dict[str, list] = {MASK: [], NO_MASK: []}
    for face in read_voc(dev_set):
        if face.label in picked and face.size >= min_size and \
                len(picked[face.label]) < per_label:
            picked[face.label].append(face)
    return [f for faces in picked.values() for f in faces]


def test_classifies_real_faces_from_held_out_scenes(dev_set):
    classifier = Classifier()
    faces = dev_faces(dev_set)
    right = sum(classifier.classify(cv2.imread(str(f.image)), [f.box])[0].label == f.label
                for f in faces)
    assert len(faces) == 30 and right >= 27  # >= 90 % on faces it never saw


def test_a_masked_face_against_a_window_is_still_masked(dev_set):
    """The issue's case: masked faces at ~12/255 (8 % of their light) in front of a bright
    window. Without exposure most were called "no mask"; lifted, they are masked."""
    from maskwatch.convert.evaluate import relit

    classifier = Classifier()
    masked = [f for f in read_voc(dev_set) if f.label == MASK and f.size >= 48][:30]
    right = sum(classifier.classify(relit(cv2.imread(str(f.image)), f.box, "backlit", 0.08),
                                    [f.box])[0].label == MASK for f in masked)
    assert len(masked) == 30 and right >= 24, right


def copy_bundle(tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, target)
    return target


def test_replaced_model_file_is_refused(tmp_path):
    bundle = copy_bundle(tmp_path)
    path = bundle / "classifier.tflite"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match model.json"):
        Classifier(bundle)


def test_tflite_runtime_is_refused_with_numpy_2_and_litert_is_not():
    """Below Python 3.10 the runtime is tflite-runtime 2.14, built against NumPy 1.x: with
    NumPy 2 its Interpreter fails with a SystemError (seen on 3.9 with NumPy 2.0.2), so
    the check comes first; pyproject.toml pins NumPy 1.x there."""
    assert runtime_fits_numpy("tflite_runtime.interpreter", "1.26.4")
    assert not runtime_fits_numpy("tflite_runtime.interpreter", "2.0.2")
    assert runtime_fits_numpy("ai_edge_litert.interpreter", "2.0.2")
    assert runtime_fits_numpy("tensorflow.lite", "2.1.0")


def test_corrupt_model_with_matching_checksum_is_a_clear_error(tmp_path):
    bundle = copy_bundle(tmp_path)
    (bundle / "classifier.tflite").write_bytes(b"this is not a flatbuffer" * 10)
    meta = json.loads((bundle / "model.json").read_text())
    import hashlib

    meta["sha256"] = hashlib.sha256((bundle / "classifier.tflite").read_bytes()).hexdigest()
    (bundle / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="cannot load TFLite model"):
        Classifier(bundle)


def test_a_model_copied_over_in_place_leaves_the_running_one_as_it_was(tmp_path):
    bundle = copy_bundle(tmp_path)
    classifier = Classifier(bundle)
    crops = np.random.default_rng(3).integers(
        0, 256, (4, classifier.crop.size, classifier.crop.size, 3), np.uint8)
    before = classifier.scores(crops)
    model = classifier.info.path
    model.write_bytes(b"\0" * (model.stat().st_size // 3))  # as cp and scp write: in place
    assert np.array_equal(classifier.scores(crops), before)  # it ran the mapped file's bytes


def test_mismatched_labels_are_refused(tmp_path):
    bundle = copy_bundle(tmp_path)
    meta = json.loads((bundle / "model.json").read_text())
    meta["labels"] = meta["labels"] + ["extra"]
    (bundle / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="does not match model.json"):
        Classifier(bundle)


def test_labels_other_data_sets_use_are_read_as_ours(tmp_path):
    bundle = copy_bundle(tmp_path)
    meta = json.loads((bundle / "model.json").read_text())
    meta["labels"] = ["mask", "no_mask"]  # what `mask/`, `no_mask/` folders trained
    (bundle / "model.json").write_text(json.dumps(meta))
    assert Classifier(bundle).labels == [MASK, NO_MASK]  # so its alerts fire


@pytest.mark.parametrize("labels", [["mask_on", "mask_off"], ["with_mask", "masked"]])
def test_a_model_without_one_mask_and_one_no_mask_label_is_exit_78(tmp_path, labels):
    bundle = copy_bundle(tmp_path)
    meta = json.loads((bundle / "model.json").read_text())
    meta["labels"] = labels
    (bundle / "model.json").write_text(json.dumps(meta))
    result = subprocess.run(agent_command("classify", "x.jpg", "--set",
                                          f"classify.model={bundle}"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 78
    assert result.stderr.count("\n") == 1
    assert f"labels {', '.join(labels)}: the agent needs one with_mask" in result.stderr


@pytest.mark.parametrize("content,message", [
    (None, "bundle not found"),
    ("{not json", "not valid JSON"),
    ('{"format": "other"}', "not a maskwatch model bundle"),
    ('{"format": "maskwatch-classifier"}', "lacks a valid field"),
])
def test_bad_model_json(tmp_path, content, message):
    if content is not None:
        (tmp_path / "model.json").write_text(content)
    with pytest.raises(ModelError, match=message):
        read_bundle(tmp_path)


def test_bad_bundle_in_run_exits_78(tmp_path):
    result = subprocess.run(agent_command("classify", "x.jpg", "--set",
                                          f"classify.model={tmp_path}"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 78
    assert result.stderr.count("\n") == 1 and "bundle not found" in result.stderr


def test_classify_cli_json_and_bad_image(tmp_path, dev_set):
    f = dev_faces(dev_set, per_label=1)[0]
    x, y, w, h = f.box
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), cv2.imread(str(f.image))[y:y + h, x:x + w])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    result = subprocess.run(agent_command("classify", str(face), str(bad), "--json"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 65
    line = json.loads(result.stdout.strip().splitlines()[0])
    assert line["image"] == str(face) and line["label"] in line["scores"]
    assert set(line["scores"]) == set(read_bundle(None).labels)
    assert "cannot decode image" in result.stderr
