"""One frame through the pipeline: detect (at a capped rate) -> classify -> track -> vote.

The pipeline skips work to run fast on a Pi: faces are detected at most `detect_fps`
times per second of video time (the tracker carries people in between), not at all while
the motion gate sees nothing move and nobody is tracked (but for a full check every
`idle_check_s`), and a face is
classified only while its person is undecided (and now and then after, to catch someone
putting a mask on). It does no I/O: it returns the tracker's transitions and leaves
publishing to the service.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from .camera import Frame
from .classify import Classifier, Prediction
from .detect import Detector, Face
from .motion import MotionGate
from .preprocess import Box
from .track import Track, Tracker, Transition

STAGES = ("detect", "classify", "track")


@dataclass
class PipelineStats:
    frames: int = 0
    detections: int = 0  # detector runs
    idle_skips: int = 0  # detections skipped: nothing moved, nobody tracked
    faces: int = 0
    classified: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))


@dataclass(frozen=True)
class FaceView:
    """The latest labelled faces, for snapshots."""

    box: Box
    track_id: int
    label: str | None


def roi_pixels(roi: tuple[float, float, float, float] | None, width: int,
               height: int) -> Box | None:
    if not roi:
        return None
    x, y, w, h = roi
    return (int(x * width), int(y * height), max(1, int(w * width)), max(1, int(h * height)))


SIGNATURE_SIZE = 16


def signature(image: np.ndarray, box: Box) -> np.ndarray:
    """A 16x16 grey thumbnail of a face: enough to tell a living face from a poster."""
    x, y, w, h = box
    fh, fw = image.shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(fw, x + w), min(fh, y + h)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((SIGNATURE_SIZE, SIGNATURE_SIZE), np.uint8)
    patch = cv2.resize(image[y0:y1, x0:x1], (SIGNATURE_SIZE, SIGNATURE_SIZE),
                       interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY) if patch.ndim == 3 else patch


class Pipeline:
    def __init__(self, detector: Detector, classifier: Classifier, tracker: Tracker,
                 detect_fps: float, roi: tuple[float, float, float, float] | None = None,
                 gate: MotionGate | None = None, idle_check_s: float = 2.0) -> None:
        self.detector, self.classifier, self.tracker = detector, classifier, tracker
        self.detect_interval = 1.0 / detect_fps
        self.roi = roi
        self.gate, self.idle_check_s = gate, idle_check_s
        self.stats = PipelineStats()
        self.latest: list[FaceView] = []
        self._next_detect: float | None = None
        self._last_detect = float("-inf")
        # called with (track, crop, prediction, ts) per classified face (sample collection)
        self.on_classified: list[Callable[[Track, np.ndarray, Prediction, float], None]] = []

    def _detect(self, image: np.ndarray) -> list[Face]:
        region = roi_pixels(self.roi, image.shape[1], image.shape[0])
        if region is None:
            return self.detector.detect(image)
        x, y, w, h = region
        faces = self.detector.detect(image[y:y + h, x:x + w])
        return [Face((f.box[0] + x, f.box[1] + y, f.box[2], f.box[3]), f.score) for f in faces]

    def process(self, frame: Frame) -> list[Transition]:
        self.stats.frames += 1
        transitions: list[Transition] = []
        if self._next_detect is None or frame.ts >= self._next_detect - 1e-6:
            self._next_detect = frame.ts + self.detect_interval
            if self._worth_detecting(frame):
                self._last_detect = frame.ts
                transitions.extend(self._observe(frame))
            else:
                self.stats.idle_skips += 1
        started = time.perf_counter()
        transitions.extend(self.tracker.expire(frame.ts))
        self.stats.seconds["track"] += time.perf_counter() - started
        return transitions

    def _worth_detecting(self, frame: Frame) -> bool:
        """Detect unless nothing moved, nobody is tracked and the idle check is not due."""
        if self.gate is None:
            return True
        started = time.perf_counter()
        moved = self.gate.moved(frame.image)
        self.stats.seconds["detect"] += time.perf_counter() - started
        return (moved is not None or bool(self.tracker.tracks)
                or frame.ts - self._last_detect >= self.idle_check_s)

    def _observe(self, frame: Frame) -> list[Transition]:
        t0 = time.perf_counter()
        faces = self._detect(frame.image)
        t1 = time.perf_counter()
        boxes = [f.box for f in faces]
        tracks = self.tracker.update(boxes, frame.ts, lambda box: signature(frame.image, box))
        voting = [(t, b) for t, b in zip(tracks, boxes) if t.needs_vote()]
        t2 = time.perf_counter()
        crops = self.classifier.crops(frame.image, [b for _, b in voting]) if voting else []
        predictions = self.classifier.predict_crops(crops) if voting else []
        t3 = time.perf_counter()
        transitions = []
        for (track, _), crop, prediction in zip(voting, crops, predictions):
            self.tracker.observe_appearance(track, prediction.features, frame.ts)
            change = self.tracker.vote(track, prediction.label, prediction.confidence,
                                       frame.ts)
            if change is not None:
                transitions.append(change)
            for listener in self.on_classified:
                listener(track, crop, prediction, frame.ts)
        self.latest = [FaceView(b, t.id, t.label) for t, b in zip(tracks, boxes)]
        t4 = time.perf_counter()
        s = self.stats
        s.detections += 1
        s.faces += len(faces)
        s.classified += len(voting)
        s.seconds["detect"] += t1 - t0
        s.seconds["classify"] += t3 - t2
        s.seconds["track"] += (t2 - t1) + (t4 - t3)
        return transitions

    def finish(self, ts: float) -> list[Transition]:
        """End every open track (source ended or agent stopping)."""
        return self.tracker.expire(ts, everything=True)
