"""Motion gating: spend nothing on the detector where and when nothing moves.

A doorway is empty most of the day. Before a scheduled detection the pipeline asks the
gate whether the picture changed: a 96-pixel-wide grey copy of the frame is compared with
a slowly updated background. A global change of brightness (clouds, auto exposure) is
not motion: the median difference is subtracted first. Sensor noise is below the
threshold. The pipeline still runs a full detection every `idle_check_s` (a person who
stands perfectly still is not lost) and always while people are being tracked.
"""

from __future__ import annotations

import cv2
import numpy as np

from .preprocess import Box

GATE_WIDTH = 96  # pixels: enough to see a person enter, ~0.1 ms per frame
DIFF_THRESHOLD = 10.0  # grey levels above the frame's median change
MIN_CHANGED = 0.003  # share of the small image that must change to count as motion
BACKGROUND_RATE = 0.05  # how fast the background follows the scene


class MotionGate:
    def __init__(self) -> None:
        self._background: np.ndarray | None = None
        self._small: np.ndarray | None = None

    def _shrink(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        size = (GATE_WIDTH, max(1, round(h * GATE_WIDTH / w)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
        return cv2.GaussianBlur(grey, (3, 3), 0).astype(np.float32)

    def moved(self, image: np.ndarray) -> list[Box]:
        """The regions (frame pixels) that changed since the background, one per moving
        blob (blobs a few pixels apart are one); empty when nothing moved."""
        small = self._shrink(image)
        if self._background is None or self._background.shape != small.shape:
            self._background = small
            h, w = image.shape[:2]
            return [(0, 0, w, h)]  # nothing known yet: everything is new
        delta = small - self._background
        delta -= float(np.median(delta))  # a global brightness change is not motion
        changed = np.abs(delta) > DIFF_THRESHOLD
        cv2.accumulateWeighted(small, self._background, BACKGROUND_RATE)
        if changed.mean() < MIN_CHANGED:
            return []
        mask = cv2.dilate(changed.astype(np.uint8), np.ones((3, 3), np.uint8))
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        scale = image.shape[1] / small.shape[1]
        return [(int(x * scale), int(y * scale), int(np.ceil(w * scale)), int(np.ceil(h * scale)))
                for x, y, w, h, _ in stats[1:count]]
