"""One frame through the pipeline: detect (at a capped rate) -> classify -> track -> vote.

The pipeline skips work to run fast on a Pi and spends it where faces are:
- faces are detected at most `detect_fps` times per second of video time (the tracker
  carries people in between);
- with the motion gate, only the parts of the frame that moved or hold a tracked person
  are searched (at the whole frame's detection scale, so small faces stay findable; close
  parts joined, faces found twice kept once), nothing at all while nothing moves and
  nobody is tracked, and the whole frame every `idle_check_s` (a person who stands still
  is not lost);
- a face is classified only while its person is undecided (and now and then after, to
  catch someone putting a mask on).
It does no I/O: it returns the tracker's transitions and leaves publishing to the service.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations

import cv2
import numpy as np

from .people.track import Track, Tracker, Transition
from .vision.camera import Frame
from .vision.classify import Classifier, Prediction
from .vision.detect import Detector, Face
from .vision.motion import MotionGate
from .vision.preprocess import Box, area, around, shared

STAGES = ("detect", "classify", "track")


@dataclass
class PipelineStats:
    frames: int = 0
    detections: int = 0  # detector runs
    idle_skips: int = 0  # detections skipped: nothing moved, nobody tracked
    searched: float = 0.0  # frames' worth of pixels the detector searched
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


def union(boxes: list[Box]) -> Box:
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    return x0, y0, x1 - x0, y1 - y0


def merged(boxes: list[Box]) -> list[Box]:
    """Boxes joined while the box around two costs little more than searching both
    (overlapping or close ones): fewer, larger regions, each searched once."""
    boxes = list(boxes)
    while (pair := _joinable(boxes)) is not None:
        i, j = pair
        boxes[i] = union([boxes[i], boxes.pop(j)])
    return boxes


def _joinable(boxes: list[Box]) -> tuple[int, int] | None:
    """The first two boxes (i < j) whose surrounding box is at most MERGE_SLACK times
    their areas together."""
    return next(((i, j) for i, j in combinations(range(len(boxes)), 2)
                 if area(union([boxes[i], boxes[j]]))
                 <= MERGE_SLACK * (area(boxes[i]) + area(boxes[j]))), None)


def distinct(faces: list[Face], max_shared: float = 0.6) -> list[Face]:
    """Faces found twice (where two searched regions meet) kept once, the larger box."""
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: (-area(f.box), -f.score)):
        if all(shared(face.box, other.box) <= max_shared for other in kept):
            kept.append(face)
    return kept


def clip_to(box: Box, within: Box) -> Box | None:
    """`box` cut to `within`, in `within`'s own coordinates; None when they do not overlap."""
    x0, y0 = max(box[0], within[0]), max(box[1], within[1])
    x1 = min(box[0] + box[2], within[0] + within[2])
    y1 = min(box[1] + box[3], within[1] + within[3])
    if x1 <= x0 or y1 <= y0:
        return None
    return x0 - within[0], y0 - within[1], x1 - x0, y1 - y0


TRACK_MARGIN = 1.0  # a tracked face is looked for within one face size of where it was
MOTION_MARGIN = 0.25  # and a moving blob with a quarter of its size around it
WHOLE_FRAME_SHARE = 0.6  # regions this share of the frame or more: search all of it
MERGE_SLACK = 1.3  # join two regions when the box around both is at most this much larger
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
        self._last_full = float("-inf")  # when the whole frame was last searched
        # called with (track, crop, prediction, ts) per classified face (sample collection)
        self.on_classified: list[Callable[[Track, np.ndarray, Prediction, float], None]] = []

    def _detect(self, image: np.ndarray, regions: list[Box] | None) -> list[Face]:
        """Faces in the ROI (the whole frame without one), searched only in `regions`
        (frame pixels) when given."""
        h, w = image.shape[:2]
        roi = roi_pixels(self.roi, w, h) or (0, 0, w, h)
        x, y, rw, rh = roi
        searched = rw * rh
        if regions is not None:
            regions = [r for r in (clip_to(r, roi) for r in regions) if r is not None]
            covered = sum(map(area, regions))
            if covered >= WHOLE_FRAME_SHARE * searched:
                regions = None
            else:
                searched = covered
        within = image[y:y + rh, x:x + rw]
        if regions is None:
            faces = self.detector.detect(within)
        else:
            faces = distinct([f for r in regions for f in self.detector.detect(within, r)])
        self.stats.searched += searched / (w * h)
        if (x, y) == (0, 0):
            return faces
        return [Face((f.box[0] + x, f.box[1] + y, f.box[2], f.box[3]), f.score) for f in faces]

    def process(self, frame: Frame) -> list[Transition]:
        self.stats.frames += 1
        transitions: list[Transition] = []
        if self._next_detect is None or frame.ts >= self._next_detect - 1e-6:
            self._next_detect = frame.ts + self.detect_interval
            worth, regions = self._where_to_look(frame)
            if worth:
                transitions.extend(self._observe(frame, regions))
            else:
                self.stats.idle_skips += 1
        started = time.perf_counter()
        transitions.extend(self.tracker.expire(frame.ts))
        self.stats.seconds["track"] += time.perf_counter() - started
        return transitions

    def _where_to_look(self, frame: Frame) -> tuple[bool, list[Box] | None]:
        """(detect at all?, the regions to search; None: the whole frame).

        Without a gate, or when the full check is due: the whole frame. Otherwise what
        moved and where tracked people are; nothing when neither."""
        if self.gate is None:
            return True, None
        started = time.perf_counter()
        moved = self.gate.moved(frame.image)
        self.stats.seconds["detect"] += time.perf_counter() - started
        if frame.ts - self._last_full >= self.idle_check_s - 1e-6:
            self._last_full = frame.ts
            return True, None
        looks = [around(t.predicted(frame.ts), TRACK_MARGIN) for t in self.tracker.tracks]
        looks += [around(box, MOTION_MARGIN) for box in moved]
        if not looks:
            return False, None
        return True, merged(looks)

    def _observe(self, frame: Frame, regions: list[Box] | None) -> list[Transition]:
        t0 = time.perf_counter()
        faces = self._detect(frame.image, regions)
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
