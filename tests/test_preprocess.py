"""The one crop-and-resize: geometry, interpolation, and training == device tensors."""

from __future__ import annotations

import cv2
import numpy as np

from maskwatch.agent.vision.classify import Classifier
from maskwatch.agent.vision.preprocess import CropSpec, face_input, resize_square, square_region


def test_square_region_is_centred_and_scaled():
    assert square_region((100, 50, 40, 60), 1.2) == (84, 44, 72, 72)


def test_crop_outside_frame_repeats_edges():
    frame = np.zeros((50, 50, 3), np.uint8)
    frame[:, :, 2] = 200  # red in BGR
    crop = face_input(frame, (-10, -10, 30, 30), CropSpec(size=32))
    assert crop.shape == (32, 32, 3)
    assert (crop[..., 0] == 200).all()  # RGB: red channel first, edges replicated


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
