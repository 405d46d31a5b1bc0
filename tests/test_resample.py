"""The detector's and the motion gate's downscaling: fast for any factor, and close to
OpenCV's area average (what it replaced) on a real frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from maskwatch.agent.demo import DEMO_CLIP
from maskwatch.agent.vision.resample import block_average, shrink


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    cap = cv2.VideoCapture(str(DEMO_CLIP))
    ok, image = cap.read()
    cap.release()
    assert ok
    return cv2.resize(image, (640, 480), interpolation=cv2.INTER_LINEAR)


def area(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def test_whole_factors_are_the_area_average_itself(frame):
    for size in ((320, 240), (160, 120), (80, 60)):
        assert np.array_equal(shrink(frame, size), area(frame, size))


@pytest.mark.parametrize("source, size", [((640, 480), (480, 360)),  # the default view
                                          ((1280, 720), (480, 270)),  # two steps
                                          ((1920, 1080), (480, 270)),  # a whole factor
                                          ((1000, 700), (163, 114))])  # odd sizes
def test_any_factor_lands_on_the_size_close_to_the_area_average(frame, source, size):
    image = cv2.resize(frame, source, interpolation=cv2.INTER_LINEAR)
    small = shrink(image, size)
    assert small.shape == (size[1], size[0], 3)
    difference = np.abs(small.astype(np.int16) - area(image, size).astype(np.int16))
    assert difference.mean() < 2.5  # grey levels (plain bilinear at 1000x700: 3.05)


def test_block_average_leaves_out_only_the_last_partial_block(frame):
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    small = block_average(grey, 7)  # 640 = 7 * 91 + 3, 480 = 7 * 68 + 4
    assert small.shape == (68, 91)
    assert small[0, 0] == round(grey[:7, :7].mean())
    assert block_average(grey, 1) is grey
