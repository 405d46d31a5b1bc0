"""Face detectors on real scenes, the detect CLI, and model fetching."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import threading

import cv2
import pytest

from maskwatch.agent.bench.measure import scene_at
from maskwatch.agent.config import DetectConfig
from maskwatch.agent.demo import DEMO_CLIP
from maskwatch.agent.errors import ModelError
from maskwatch.agent.people.track import iou
from maskwatch.agent.vision.detect import (
    BlazeFaceDetector,
    _blazeface_anchors,
    create_detector,
    view_of,
    window_around,
)
from maskwatch.agent.vision.models import DETECTOR_FILES, OPTIONAL, FetchError, fetch

from .conftest import agent_command


def test_blazeface_anchor_counts():
    assert len(_blazeface_anchors(128)) == 896
    assert len(_blazeface_anchors(192)) == 2304


@pytest.mark.parametrize("name", ["yunet", "blazeface", "haar"])
def test_detectors_find_the_face(name, state_dir, dev_set):
    image = cv2.imread(str(sorted((dev_set / "images").iterdir())[0]))
    model = None if name == "haar" else state_dir / "models" / DETECTOR_FILES[name].name
    faces = create_detector(DetectConfig(detector=name), model).detect(image)
    assert faces, name
    x, y, w, h = faces[0].box
    assert 60 < x + w / 2 < 220 and 230 < y + h / 2 < 380  # the annotated face is here


@pytest.mark.parametrize("name", ["yunet", "blazeface"])
def test_a_region_is_searched_at_the_whole_frames_scale(name, state_dir, dev_set):
    image = cv2.imread(str(sorted((dev_set / "images").iterdir())[0]))
    model = state_dir / "models" / DETECTOR_FILES[name].name
    detector = create_detector(DetectConfig(detector=name), model)
    whole = detector.detect(image)[0].box
    found = detector.detect(image, region=(60, 220, 170, 170))  # around the face
    assert found and iou(found[0].box, whole) > 0.75  # the same face, in frame pixels
    assert detector.detect(image, region=(300, 0, 100, 100)) == []  # no face there


def test_regions_are_grown_to_a_few_input_shapes():
    import numpy as np

    frame = np.zeros((480, 640, 3), np.uint8)
    for region in [(10, 20, 5, 5), (600, 470, 100, 100), (200, 100, 251, 97)]:
        view = view_of(frame, region, max_side=480)
        h, w = view.image.shape[:2]
        assert w % 32 == 0 and h % 32 == 0 and w >= 64 and h >= 64, (region, w, h)
        x, y, bw, bh = view.to_frame(0, 0, w, h)
        assert x >= 0 and y >= 0 and x + bw <= 640 and y + bh <= 480  # inside the frame
        rx, ry, rw, rh = region
        assert x <= min(rx, 640 - 1) and y <= min(ry, 480 - 1)  # covers the region's start
        assert x + bw >= min(rx + rw, 640) - 1 and y + bh >= min(ry + rh, 480) - 1  # and end
    assert view_of(frame, None, max_side=480).image.shape[:2] == (360, 480)


def test_a_face_cut_by_a_regions_edge_is_not_a_face_there():
    import numpy as np

    from maskwatch.agent.vision.detect import Face

    frame = np.zeros((480, 640, 3), np.uint8)
    view = view_of(frame, (0, 200, 320, 200), max_side=480)  # left edge = the frame's
    y0, x1 = view.y0, view.x1
    inside = Face((100, y0 + 20, 40, 40), 0.9)
    at_frame_edge = Face((0, y0 + 20, 40, 40), 0.9)  # the frame ends there too: whole
    cut_right = Face((x1 - 30, y0 + 20, 40, 40), 0.9)  # runs past the part's right edge
    cut_top = Face((100, y0, 40, 40), 0.9)
    assert view.whole([inside, at_frame_edge, cut_right, cut_top]) == [inside, at_frame_edge]
    whole_frame = view_of(frame, None, max_side=480)
    assert whole_frame.whole([cut_top, at_frame_edge]) == [cut_top, at_frame_edge]


# dev scenes whose masked face (frame at a 640 px long side) the 480 px search scores just
# under the threshold: a second look finds it (`detect.second_look`)
DOUBTFUL_MASKED = {"maksssksksss326.jpg": (307, 186, 134, 107),
                   "maksssksksss594.jpg": (389, 83, 45, 42),
                   "maksssksksss760.jpg": (338, 256, 40, 66)}


def test_a_second_look_finds_masked_faces_scored_just_under_the_threshold(state_dir, dev_set):
    model = state_dir / "models" / DETECTOR_FILES["yunet"].name
    looking = create_detector(DetectConfig(second_look=True), model)
    one_scale = create_detector(DetectConfig(second_look=True, coarse_side=0), model)
    not_looking = create_detector(DetectConfig(second_look=False), model)
    for name, truth in DOUBTFUL_MASKED.items():
        image, _ = scene_at(cv2.imread(str(dev_set / "images" / name)), 640)
        assert not any(iou(f.box, truth) >= 0.3 for f in not_looking.detect(image)), name
        for detector in (looking, one_scale):
            assert any(iou(f.box, truth) >= 0.3 for f in detector.detect(image)), name


def test_a_second_looks_window_is_centred_on_the_face_and_black_past_the_frame():
    import numpy as np

    frame = np.full((480, 640, 3), 200, np.uint8)
    view = window_around(frame, (0, 10, 40, 40), factor=64 / 40, side=128)  # at a corner
    assert view.image.shape == (128, 128, 3)
    assert view.to_frame(32, 32, 64, 64) == (0, 10, 40, 40)  # the face, mapped back
    assert view.image[5, 5].max() == 0 and view.image[100, 100].min() == 200  # padded


def test_blazeface_full_range(state_dir, dev_set):
    det = BlazeFaceDetector(state_dir / "models" / DETECTOR_FILES["blazeface-full"].name,
                            min_face=20, score_threshold=0.5)
    assert det.input_size == 192
    image = cv2.imread(str(sorted((dev_set / "images").iterdir())[0]))
    assert det.detect(image)


def test_missing_optional_detector_model_says_how_to_fetch(tmp_path):
    result = subprocess.run(agent_command("detect", "x.jpg", "--detector", "blazeface",
                                          "--set", f"state_dir={tmp_path}"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 78
    assert "mask-agent models fetch --only blazeface" in result.stderr
    assert result.stderr.count("\n") == 1


def test_wrong_file_as_model(tmp_path):
    bogus = tmp_path / "yunet.onnx"
    bogus.write_bytes(b"garbage")
    with pytest.raises(ModelError, match="cannot load YuNet"):
        create_detector(DetectConfig(detector="yunet"), bogus)
    with pytest.raises(ModelError, match="is not a blazeface model"):
        create_detector(DetectConfig(detector="blazeface"), bogus)  # .onnx: the wrong kind
    tflite = tmp_path / "blazeface.tflite"
    tflite.write_bytes(b"garbage")
    with pytest.raises(ModelError, match="cannot load TFLite"):
        create_detector(DetectConfig(detector="blazeface"), tflite)


def test_detect_cli_json_and_annotate(state_dir, dev_set, tmp_path):
    images = sorted((dev_set / "images").iterdir())[:3]
    result = subprocess.run(
        agent_command("detect", *map(str, images), "--json", "--annotate", str(tmp_path / "a"),
                      "--set", f"state_dir={state_dir}"),
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == list(map(str, images))
    face = lines[0]["faces"][0]
    assert set(face) == {"box", "score", "label", "confidence"} and len(face["box"]) == 4
    assert len(list((tmp_path / "a").glob("*.jpg"))) == 3


def test_detect_cli_missing_image(state_dir):
    result = subprocess.run(agent_command("detect", "/nonexistent.jpg", "--set",
                                          f"state_dir={state_dir}"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 66 and "image not found" in result.stderr


def test_detect_reads_the_photos_of_a_folder_and_names_a_folder_without_any(tmp_path):
    clip = cv2.VideoCapture(str(DEMO_CLIP))
    photos = tmp_path / "door" / "monday"
    photos.mkdir(parents=True)
    for i in range(2):
        ok, frame = clip.read()
        assert ok
        cv2.imwrite(str(photos / f"frame{i}.jpg"), frame)
    (photos / "._frame0.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS companion
    phone = tmp_path / "phone"
    phone.mkdir()
    (phone / "IMG_0001.HEIC").write_bytes(b"ftypheic")
    shutil.copy(photos / "frame0.jpg", tmp_path / "door" / "frame0.jpg")  # a second frame0
    result = subprocess.run(agent_command("detect", str(tmp_path / "door"), str(phone),
                                          "--json", "--annotate", str(tmp_path / "out"),
                                          "--set", f"state_dir={tmp_path / 's'}"),
                            capture_output=True, text=True, timeout=120)
    assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == [
        str(tmp_path / "door" / "frame0.jpg"), str(photos / "frame0.jpg"),
        str(photos / "frame1.jpg")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "frame0-2.jpg", "frame0.jpg", "frame1.jpg"]  # neither frame0 replaced the other
    assert result.stderr == (f"mask-agent: error: no images in {phone} (read: .bmp, .jpeg, "
                             ".jpg, .png, .webp; found: .HEIC)\n")
    assert result.returncode == 66


def test_fetch_copies_from_folder_and_verifies(shared, tmp_path):
    paths = fetch(tmp_path / "m", source_dir=shared / "models")  # the optional ones
    assert sorted(p.name for p in paths) == sorted(DETECTOR_FILES[n].name for n in OPTIONAL)
    only_one = tmp_path / "one"
    only_one.mkdir()
    shutil.copy(shared / "models" / DETECTOR_FILES["blazeface"].name, only_one)
    assert [p.name for p in fetch(tmp_path / "m1", source_dir=only_one)] == [
        DETECTOR_FILES["blazeface"].name]  # copies what it finds
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / DETECTOR_FILES["yunet"].name).write_bytes(b"tampered")
    with pytest.raises(FetchError, match="refusing"):
        fetch(tmp_path / "m2", source_dir=bad, names=["yunet"])
    assert not (tmp_path / "m2" / DETECTOR_FILES["yunet"].name).exists()


def test_fetch_downloads_over_http(shared, tmp_path):
    """The real download path, against a local mirror of the public files."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(shared / "models"))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        result = subprocess.run(agent_command("models", "fetch", "--base-url", url,
                                              "--dest", str(tmp_path / "m")),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert len(result.stdout.splitlines()) == len(OPTIONAL)
        result = subprocess.run(agent_command("models", "fetch", "--base-url", url + "/nope",
                                              "--dest", str(tmp_path / "n")),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 69
        line = result.stderr.strip()
        assert line.count("\n") == 0 and "cannot download face_detection_short_range" in line
        assert url + "/nope/" in line and "--from DIR" in line
    finally:
        server.shutdown()
