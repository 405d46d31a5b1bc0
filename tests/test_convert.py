"""mask-convert end to end on a few dozen real faces: train, export int8, evaluate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from .conftest import ROOT, free_port, need_module


@pytest.fixture(autouse=True, scope="module")
def _tensorflow():
    need_module("tensorflow", "training tests need: pip install -e '.[convert]'")

WEIGHTS_035 = "weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
WEIGHTS_100 = "weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


def convert(*args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "maskwatch.convert", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, shared):
    """36 real faces (12 per class) and one truncated file."""
    root = tmp_path_factory.mktemp("data") / "tiny"
    for label, source in (("with_mask", "peng"), ("without_mask", "peng"),
                          ("mask_weared_incorrect", "jolignier")):
        (root / label).mkdir(parents=True)
        for path in sorted((shared / "data" / "train" / source / label).glob("*.jpg"))[:12]:
            shutil.copy(path, root / label / path.name)
    good = sorted((root / "with_mask").glob("*.jpg"))[0].read_bytes()
    (root / "with_mask" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data, shared):
    run = tmp_path_factory.mktemp("run") / "run"
    result = convert("train", str(tiny_data), "--out", str(run), "--size", "96", "--alpha",
                     "0.35", "--weights", str(shared / WEIGHTS_035), "--epochs", "2",
                     "--copies", "1", "--val-fraction", "0.25", "--fine-tune", "8",
                     "--fine-tune-epochs", "1", "--detector-model",
                     str(shared / "models" / "face_detection_yunet_2023mar.onnx"))
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def test_train_writes_a_complete_run_folder(trained):
    for name in ("model.keras", "config.json", "report.json", "training_curves.png",
                 "confusion_validation.png", "validation_crops.npz"):
        assert (trained / name).is_file(), name
    report = json.loads((trained / "report.json").read_text())
    assert report["labels"] == ["with_mask", "without_mask", "mask_weared_incorrect"]
    assert report["data"]["classes"]["with_mask"] == 13  # the truncated file is scanned
    assert report["split"]["train"] + report["split"]["validation"] == 36
    assert any("truncated.jpg" in p for p in report["unreadable"])
    assert report["face_crops"]["detected"] > 0
    assert "validation" in report and "confusion_matrix" in report["validation"]


def test_export_int8_bundle_agrees_with_keras(trained, tmp_path):
    import keras

    from maskwatch.agent.vision.classify import Classifier

    bundle = tmp_path / "bundle"
    result = convert("export", str(trained), "--out", str(bundle), "--calibration", "40",
                     "--max-drop", "100")
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["input"]["dtype"] == "uint8" and meta["quantization"]["input"]["scale"] > 0
    assert meta["metrics"]["parity"]["agreement"] >= 0.8  # int8 agrees with float
    classifier = Classifier(bundle)  # the agent's own interpreter code
    report = json.loads((trained / "report.json").read_text())
    assert classifier.labels == report["labels"]
    crops = np.load(trained / "validation_crops.npz")["x"]
    keras_scores = keras.models.load_model(trained / "model.keras").predict(
        crops.astype(np.float32), verbose=0)
    int8_scores = classifier.scores(crops)
    agreement = np.mean(keras_scores.argmax(1) == int8_scores.argmax(1))
    assert agreement >= 0.8, agreement
    assert np.max(np.abs(keras_scores - int8_scores)) < 0.25


def test_export_fails_when_int8_drops_too_much(trained, tmp_path):
    result = convert("export", str(trained), "--out", str(tmp_path / "b"), "--calibration",
                     "10", "--max-drop", "-1")
    assert result.returncode == 3
    assert "dropped" in result.stderr and "Traceback" not in result.stderr


def test_evaluate_keras_and_bundle_on_scenes_and_folders(trained, tiny_data, dev_set, tmp_path):
    out = tmp_path / "eval.json"
    result = convert("evaluate", str(trained), str(tiny_data), "--json", str(out), "--plots",
                     str(tmp_path / "plots"))
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())["datasets"][0]
    assert data["all"]["n"] == 36 and "balanced_accuracy" in data["all"]
    assert (tmp_path / "plots" / "confusion_tiny.png").is_file()
    result = convert("evaluate", str(ROOT / "agent" / "vision" / "default_model"), str(dev_set),
                     "--min-face", "32", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    scenes = json.loads(out.read_text())["datasets"][0]
    assert set(scenes["by_face_size"]) <= {"<32", "32-64", ">=64"}
    assert scenes["all"]["mask_vs_no_mask"]["per_class"]["without_mask"]["support"] > 50


def test_class_folder_photos_are_scored_on_the_face_the_detector_finds(tiny_data, tmp_path):
    """Photos taken at a door hold a face in a larger frame: scored whole they say nothing
    of the classifier (the bundled model called all 24 here "with mask"); with a
    detector model each is cut around its face, as `train` cuts training photos."""
    import cv2

    door = tmp_path / "door"
    for label in ("with_mask", "without_mask"):
        (door / label).mkdir(parents=True)
        for i, path in enumerate(sorted((tiny_data / label).glob("*.jpg"))[:12]):
            face = cv2.imread(str(path))
            if face is None:
                continue  # the truncated file
            frame = np.full((480, 640, 3), (90, 110, 130), np.uint8)
            x, y = 120 + 25 * i, 100 + 5 * i
            frame[y:y + 160, x:x + 160] = cv2.resize(face, (160, 160))
            cv2.imwrite(str(door / label / path.name), frame)
    bundle = str(ROOT / "agent" / "vision" / "default_model")
    runs = {}
    for how, extra in (("whole", []), ("face", ["--detector-model", "bundled"])):
        out = tmp_path / f"{how}.json"
        result = convert("evaluate", bundle, str(door), "--json", str(out), *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[how] = (json.loads(out.read_text())["datasets"][0], result.stdout)
    whole, (face, printed) = runs["whole"][0], runs["face"]
    assert whole["boxes"] == "whole photo" and face["boxes"] == "detector"
    assert face["all"]["n"] == whole["all"]["n"] == 24
    found = 24 - face["photos_without_a_face_found"]
    assert found >= 12 and f"a face found in {found} photos" in printed
    assert face["all"]["balanced_accuracy"] >= whole["all"]["balanced_accuracy"] + 0.3


def test_imagenet_weights_that_cannot_be_downloaded_are_one_line_exit_69(tiny_data,
                                                                           tmp_path):
    """No internet (a proxy on a port nobody answers) and no cached file: the user is told
    to pass the file, not shown Keras' traceback."""
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras"),
           "https_proxy": f"http://127.0.0.1:{free_port()}", "no_proxy": ""}
    env["HTTPS_PROXY"] = env["https_proxy"]
    result = convert("train", str(tiny_data), "--out", str(tmp_path / "run"),
                     "--detector-model", "none", "--weights", "imagenet", env=env)
    assert result.returncode == 69, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("mask-convert")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "--weights FILE" in lines[0]
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5" in lines[0]


@pytest.mark.parametrize("case", ["wrong_alpha", "corrupt_weights", "one_class", "unwritable"])
def test_bad_input_is_one_line(case, tiny_data, shared, tmp_path):
    args = ["train", str(tiny_data), "--out", str(tmp_path / "run"), "--size", "96",
            "--detector-model", "none", "--weights", str(shared / WEIGHTS_035)]
    if case == "wrong_alpha":
        args[-1] = str(shared / WEIGHTS_100)  # 1.0 weights for the default alpha 0.35
    elif case == "corrupt_weights":
        bad = tmp_path / "bad.h5"
        bad.write_bytes(b"not hdf5" * 100)
        args[-1] = str(bad)
    elif case == "one_class":
        only = tmp_path / "one" / "with_mask"
        shutil.copytree(tiny_data / "with_mask", only)
        args[1] = str(tmp_path / "one")
    else:
        blocker = tmp_path / "file"
        blocker.write_text("")
        args[3] = str(blocker / "run")
    result = convert(*args)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("mask-convert")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_bench_seed_compares_with_the_seed_design(shared, street_video, tmp_path):
    out = tmp_path / "seed.json"
    result = convert("bench-seed", str(street_video), "--weights", str(shared / WEIGHTS_100),
                     "--frames", "5", "--rounds", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["median"]["seed"]["fps"] > 0 and data["ratio"] > 1  # the agent is faster
    assert "agent / seed:" in result.stdout


@pytest.mark.parametrize("brightness", ["0", "1.5", "nan"])
def test_evaluate_refuses_a_brightness_that_is_no_share(brightness, dev_set):
    result = convert("evaluate", str(ROOT / "agent" / "vision" / "default_model"), str(dev_set),
                     "--light", "dark", "--brightness", brightness, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.startswith("mask-convert")]
    assert result.returncode == 2 and len(lines) == 1 and "--brightness" in lines[0], \
        result.stderr[-2000:]


def test_relit_darkens_the_face_and_whitens_what_is_behind_it():
    from maskwatch.convert.evaluate import relit

    image = np.full((100, 100, 3), 100, np.uint8)
    lit = relit(image, (30, 30, 40, 40), "backlit", 0.1)
    assert lit[50, 50, 0] == 10 and lit[5, 5, 0] > 200  # face at 10 %, window near white
    assert (relit(image, (30, 30, 40, 40), "dark", 0.35) == 35).all()
    assert relit(image, (30, 30, 40, 40), "normal", 0.35) is image
