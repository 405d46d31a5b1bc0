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

from maskwatch.agent.config import DetectConfig
from maskwatch.agent.factory import detector_from
from maskwatch.agent.vision.detect import Detector, find_subject_face
from maskwatch.agent.vision.preprocess import Box, CropSpec, whole_image_box

from .dataset import Sample


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


def training_detector(model: str) -> DetectConfig:
    """The agent's detector settings (config `detect.*`) with two changes for training
    photos: they are mostly close-up crops, padded before detection, so YuNet looks at 640 px
    (not the agent's 480) and keeps faces down to 8 px (the subject filter in faces.py decides)."""
    return DetectConfig(detector="yunet", model=model, max_side=640, min_face=8)


class FaceCropper:
    """Cuts classifier inputs from photos the way the device does (detector + face_input)."""

    def __init__(self, spec: CropSpec, detector_model: str | None, cache_dir: Path | None):
        self.spec = spec
        self.detector = (detector_from(training_detector(detector_model))
                         if detector_model else None)
        cache_path = cache_dir / "face_boxes.json" if cache_dir else None
        self.cache = FaceBoxCache(cache_path)
        self.unreadable: list[str] = []
        self.detected = 0
        self.whole = 0

    def load(self, sample: Sample) -> tuple[np.ndarray, tuple] | None:
        image = read_image(sample.path)
        if image is None:
            self.unreadable.append(str(sample.path))
            return None
        box = self.cache.lookup(sample.sha256, image, self.detector)
        if box is None:
            self.whole += 1
            box = whole_image_box(image, self.spec)
        else:
            self.detected += 1
        return image, box
