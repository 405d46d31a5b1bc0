"""Class-folder scanning, duplicate removal, split, VOC reading, bad data."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from maskwatch.agent.vision.voc import read_voc
from maskwatch.convert.dataset import scan, stratified_split
from maskwatch.convert.errors import ConvertError


def make_image(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((40, 40, 3), value, np.uint8)
    img[value % 40, :, :] = 255 - value
    cv2.imwrite(str(path), img)


@pytest.fixture
def two_roots(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for i in range(10):
        make_image(a / "with_mask" / f"m{i}.png", i)
        make_image(a / "without_mask" / f"n{i}.png", 100 + i)
    for i in range(4):
        make_image(b / "with_mask" / f"m{i}.png", 50 + i)
        make_image(b / "mask_weared_incorrect" / f"x{i}.png", 150 + i)
    shutil.copy(a / "with_mask" / "m0.png", b / "with_mask" / "dup.png")  # exact duplicate
    return a, b


def test_scan_merges_roots_and_drops_exact_duplicates(two_roots):
    data = scan(list(two_roots))
    assert data.labels == ["with_mask", "without_mask", "mask_weared_incorrect"]
    assert data.counts() == {"with_mask": 14, "without_mask": 10, "mask_weared_incorrect": 4}
    assert len(data.duplicates) == 1 and data.duplicates[0][0].endswith("dup.png")
    assert data.summary()["exact_duplicates_dropped"] == 1


def test_split_is_stratified_deterministic_and_disjoint(two_roots):
    data = scan(list(two_roots))
    train, val = stratified_split(data.samples, 0.25, seed=3)
    again, _ = stratified_split(data.samples, 0.25, seed=3)
    assert [s.path for s in train] == [s.path for s in again]
    assert {s.sha256 for s in train}.isdisjoint({s.sha256 for s in val})
    for label in data.labels:
        assert any(s.label == label for s in val)


def test_classes_filter(two_roots):
    data = scan(list(two_roots), ["with_mask", "without_mask"])
    assert data.labels == ["with_mask", "without_mask"]


def test_other_data_sets_class_folder_names_are_read_as_ours(tmp_path):
    root = tmp_path / "kaggle"
    for i in range(3):
        make_image(root / "WithMask" / f"m{i}.png", i)
        make_image(root / "Without Mask" / f"n{i}.png", 100 + i)
        make_image(root / "incorrect-mask" / f"x{i}.png", 200 + i)
    (root / "WithMask" / "._m0.png").write_bytes(b"\x00\x05\x16\x07")  # macOS companion
    make_image(root / "__MACOSX" / "WithMask" / "._m1.png", 9)
    make_image(root / ".thumbnails" / "t.png", 9)
    data = scan([root])
    assert data.labels == ["with_mask", "without_mask", "mask_weared_incorrect"]
    assert data.counts() == {"with_mask": 3, "without_mask": 3, "mask_weared_incorrect": 3}
    assert data.summary()["class_folders_read_as"] == {
        "Without Mask": "without_mask", "WithMask": "with_mask",
        "incorrect-mask": "mask_weared_incorrect"}


def test_a_data_set_without_a_no_mask_class_is_refused(tmp_path):
    root = tmp_path / "data"
    for i in range(3):
        make_image(root / "mask" / f"m{i}.png", i)
        make_image(root / "mask_off" / f"n{i}.png", 100 + i)
    with pytest.raises(ConvertError, match="no without_mask class folder .found with_mask, "
                                           "mask_off.: a mask classifier needs"):
        scan([root])


def test_photos_in_folders_inside_a_class_folder_are_read(tmp_path):
    root = tmp_path / "rmfd"  # one folder a person, as real masked-face sets keep them
    for i in range(4):
        make_image(root / "with_mask" / f"person{i % 2}" / f"m{i}.png", i)
        make_image(root / "without_mask" / f"person{i % 2}" / f"n{i}.png", 100 + i)
    make_image(root / "with_mask" / "__MACOSX" / "person0" / "._m0.png", 7)
    assert scan([root]).counts() == {"with_mask": 4, "without_mask": 4}


def test_a_data_folder_one_level_too_high_is_named(tmp_path):
    root = tmp_path / "archive"
    for split in ("Train", "Test"):
        make_image(root / split / "WithMask" / "m.png", 1)
        make_image(root / split / "WithoutMask" / "n.png", 2)
    with pytest.raises(ConvertError, match="no with_mask and no without_mask class folder "
                                           r"\(found Test, Train\).*; .*Test holds class "
                                           "folders: give it instead"):
        scan([root])


@pytest.mark.parametrize("setup,message", [
    (lambda r: None, "not found"),
    (lambda r: r.mkdir(), "no class folders"),
    (lambda r: (r / "with_mask").mkdir(parents=True), "no images"),
    (lambda r: make_image(r / "with_mask" / "a.png", 1), "at least two classes"),
])
def test_bad_data_folders(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(ConvertError, match=message):
        scan([root])


def test_voc_reader(dev_set):
    faces = read_voc(dev_set)
    assert len(faces) > 500
    assert {f.label for f in faces} <= {"with_mask", "without_mask", "mask_weared_incorrect"}
    assert all(f.image.is_file() and f.box[2] > 0 and f.box[3] > 0 for f in faces[:50])


def test_voc_reader_on_written_annotation(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    make_image(tmp_path / "images" / "s1.png", 10)
    (tmp_path / "annotations" / "s1.xml").write_text(
        "<annotation><filename>s1.png</filename><object><name>without_mask</name>"
        "<bndbox><xmin>5</xmin><ymin>6</ymin><xmax>25</xmax><ymax>30</ymax></bndbox>"
        "</object></annotation>")
    (face,) = read_voc(tmp_path)
    assert face.label == "without_mask" and face.box == (5, 6, 20, 24) and face.size == 24
    # other annotated sets name the classes their own way (Roboflow's "mask" / "no-mask")
    for name, label in (("no-mask", "without_mask"), ("Mask", "with_mask")):
        (tmp_path / "annotations" / "s1.xml").write_text(
            f"<annotation><filename>s1.png</filename><object><name>{name}</name>"
            "<bndbox><xmin>5</xmin><ymin>6</ymin><xmax>25</xmax><ymax>30</ymax></bndbox>"
            "</object></annotation>")
        assert read_voc(tmp_path)[0].label == label
