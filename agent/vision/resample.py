"""Fast downscaling for the detector's view and the motion gate (not for classifier crops:
those go through `preprocess`, exactly as in training).

OpenCV's INTER_AREA is a plain block average, and fast, only when both factors are whole
numbers; for any other factor (640 -> 480 is 4/3) it takes a general path that cost
1.7-3.0 ms a call on 640x480, more than the rest of the frame's work but the detector.
Bilinear interpolation is ~6x cheaper and, for a factor up to 2, samples every input
pixel's neighbourhood, so it loses nothing area averaging would keep. Larger factors are
first cut down by a whole factor that divides both sides (1280x720 -> 640x360) with the
fast block average, then finished bilinearly; where no such factor exists the exact area
average is used, slow but right.
"""

from __future__ import annotations

import cv2
import numpy as np

BILINEAR_UP_TO = 2.0  # a bilinear shrink by at most this factor skips no input pixel


def _whole(factor: float) -> bool:
    return abs(factor - round(factor)) < 1e-9


def shrink(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` scaled down to `size` (width, height)."""
    h, w = image.shape[:2]
    fx, fy = w / size[0], h / size[1]
    if _whole(fx) and _whole(fy):
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    if max(fx, fy) <= BILINEAR_UP_TO:
        return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    k = _dividing_step(w, h, min(fx, fy))
    if k > 1 and max(fx, fy) / k <= BILINEAR_UP_TO:
        return cv2.resize(block_average(image, k), size, interpolation=cv2.INTER_LINEAR)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _dividing_step(w: int, h: int, most: float) -> int:
    """The largest whole factor up to `most` that divides both sides (1: none)."""
    return next((k for k in range(int(most), 1, -1) if w % k == 0 and h % k == 0), 1)


def block_average(image: np.ndarray, k: int) -> np.ndarray:
    """Each k x k block of `image` averaged into one pixel (OpenCV's fast path). The last
    w % k columns and h % k rows, fewer than k pixels at the far edges, are left out."""
    h, w = image.shape[:2]
    if k <= 1:
        return image
    return cv2.resize(image[:h - h % k, :w - w % k], (w // k, h // k),
                      interpolation=cv2.INTER_AREA)
