"""The one crop-and-resize: geometry, interpolation, and training == device tensors."""

from __future__ import annotations

import cv2
import numpy as np

from maskwatch.agent.vision.classify import Classifier
from maskwatch.agent.vision.preprocess import (
    CropSpec,
    exposed,
    face_input,
    resize_square,
    square_region,
)


def test_square_region_is_centred_and_scaled():
    assert square_region((100, 50, 40, 60), 1.2) == (84, 44, 72, 72)


def test_crop_outside_frame_repeats_edges():
    frame = np.full((50, 50, 3), 210, np.uint8)
    frame[:, :, 2] = 240  # red in BGR
    crop = face_input(frame, (-10, -10, 30, 30), CropSpec(size=32))
    assert crop.shape == (32, 32, 3)
    assert (crop[..., 0] == 240).all()  # RGB: red channel first, edges replicated


def test_upscaling_is_bilinear_and_downscaling_area():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
    big = rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)
    assert np.array_equal(resize_square(small, 128),
                          cv2.resize(small, (128, 128), interpolation=cv2.INTER_LINEAR))
    assert np.array_equal(resize_square(big, 128),
                          cv2.resize(big, (128, 128), interpolation=cv2.INTER_AREA))


def test_training_path_equals_device_path(shared, state_dir):
    """The same photos through convert's training input and the agent's classifier input."""
    from maskwatch.convert.dataset import scan
    from maskwatch.convert.faces import FaceCropper
    from maskwatch.convert.train import crops_for

    classifier = Classifier()
    samples = scan([shared / "data" / "train" / "peng"]).samples[:12]
    cropper = FaceCropper(classifier.crop,
                          str(state_dir / "models" / "face_detection_yunet_2023mar.onnx"), None)
    training, _, kept = crops_for(samples, cropper, copies=0, seed=0, progress="test")
    assert len(kept) == len(samples)
    for sample, train_tensor in zip(samples, training):
        image, box = cropper.load(sample)
        device_tensor = classifier.crops(image, [box])[0]
        assert device_tensor.dtype == train_tensor.dtype == np.uint8
        assert np.array_equal(device_tensor, train_tensor)
    assert cropper.detected > 0


def test_a_dark_face_is_lifted_and_a_lit_one_left_alone():
    rng = np.random.default_rng(3)
    lit = rng.integers(40, 250, (128, 128, 3), dtype=np.uint8)
    assert exposed(lit) is lit  # its bright end is near white: as it was
    shade = (lit.astype(np.float32) * 0.65).astype(np.uint8)  # bright end ~160: lit enough
    assert exposed(shade) is shade
    dark = (lit.astype(np.float32) * 0.08).astype(np.uint8)  # ~12/255 on average
    lifted = exposed(dark)
    assert lifted.dtype == np.uint8 and lifted.shape == dark.shape
    assert 150 <= np.percentile(lifted, 98) <= 255 and lifted.mean() > 4 * dark.mean()
    # relative contrasts kept: a gain, not an equalisation
    assert np.corrcoef(dark.ravel(), lifted.ravel())[0, 1] > 0.99


def test_a_face_is_judged_without_the_bright_window_around_it():
    face = np.full((128, 128, 3), 20, np.uint8)
    face[:32], face[-32:], face[:, :32], face[:, -32:] = 250, 250, 250, 250  # the window
    lifted = exposed(face)
    assert lifted[64, 64, 0] >= 150  # the middle half decides: the face is lifted
