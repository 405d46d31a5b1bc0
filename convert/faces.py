"""Find the face in each training photo with the agent's own detector.

The device classifies square crops around YuNet boxes; training on the same crops (same
detector, same `agent.preprocess.face_input`) keeps the two identical. Most training
images are already face crops, so each photo is padded before detection (a detector needs
some context around a face) and, where no face is found, the whole photo is the face.
Boxes are cached in a JSON file keyed by content hash, so a rerun costs nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from maskwatch.agent.detect import Detector, find_subject_face
from maskwatch.agent.preprocess import Box


def read_image(path: Path) -> np.ndarray | None:
    """BGR image, or None when the file is unreadable or truncated."""
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        return None
    return image


class FaceBoxCache:
    """sha256 -> [x, y, w, h] or null (no face found), stored as JSON."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.boxes: dict[str, list[int] | None] = {}
        if path is not None and path.is_file():
            self.boxes = json.loads(path.read_text())

    def save(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.boxes))

    def lookup(self, sha256: str, image: np.ndarray, detector: Detector | None) -> Box | None:
        if sha256 not in self.boxes:
            box = find_subject_face(image, detector) if detector is not None else None
            self.boxes[sha256] = list(box) if box is not None else None
        found = self.boxes[sha256]
        return tuple(found) if found is not None else None
