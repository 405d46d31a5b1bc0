"""Face detectors behind one small interface: `detector.detect(frame_bgr, region) -> [Face]`.

`region` (optional) is the part of the frame worth looking at (where something moved, where
people are tracked). It is cut out at the whole frame's detection scale, so a face is seen
at the same resolution wherever it is and the cost follows the area searched.

- `yunet`: OpenCV's YuNet (cv2.FaceDetectorYN), the default. It finds masked faces
  (the hard case); at a 480 px long side it finds small ones too.
- `blazeface`: MediaPipe BlazeFace short/full range (TFLite); anchors decoded here.
- `haar`: OpenCV's frontal-face Haar cascade, the user's baseline (embedded in OpenCV,
  no file needed); it misses most masked faces.
`mask-agent bench-detect` measures all three on a Pascal VOC scene set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from ..errors import ModelError
from .config import DetectConfig
from .contrast import TILES_PER_FRAME, backlit, equalised, exposed_for_subject, light_sample
from .preprocess import Box, area, iou, shared
from .resample import shrink
from .tflite import load_interpreter
from .tuning import TuningFile


@dataclass(frozen=True)
class Face:
    """A detected face: box in frame pixels and the detector's confidence."""

    box: Box
    score: float


class Detector(Protocol):
    name: str

    def detect(self, frame_bgr: np.ndarray, region: Box | None = None) -> list[Face]: ...


class Thresholded:
    """A detector with a score threshold that can change while it runs: the one fitted
    at this site (`tuning`, re-read from the state dir) or one set by `adapt`'s search."""

    score_threshold: float
    tuning: TuningFile | None = None

    def set_score_threshold(self, threshold: float) -> None:
        self.score_threshold = threshold

    def follow_tuning(self) -> None:
        if self.tuning is not None:
            threshold = self.tuning.threshold()
            if threshold != self.score_threshold:
                self.set_score_threshold(threshold)


FINE, COARSE = 0, 1  # YuNet's two searches (an index into its nets)
SNAP = 32  # detector input sides are multiples of this: few distinct input shapes
EDGE = 2  # detector pixels: a face this close to a cut edge of a region is cut too


@dataclass(frozen=True)
class View:
    """What a detector looks at: part of a frame, scaled; maps its boxes back."""

    image: np.ndarray
    factor: float  # detector pixels per frame pixel
    x0: int  # the part's corners in the frame, and the frame's size
    y0: int
    x1: int
    y1: int
    frame_w: int
    frame_h: int

    def to_frame(self, x: float, y: float, w: float, h: float) -> Box:
        f = self.factor
        return (int(round(x / f + self.x0)), int(round(y / f + self.y0)),
                int(round(w / f)), int(round(h / f)))

    def whole(self, faces: list[Face]) -> list[Face]:
        """The faces not cut by an edge of the part that is not the frame's edge: such a
        face lies in another region too (or is found whole at the next full look), and its
        cut half would pass for a second, smaller face."""
        margin = EDGE / self.factor
        inner = (self.x0 > 0, self.y0 > 0, self.x1 < self.frame_w, self.y1 < self.frame_h)
        if not any(inner):
            return faces
        return [f for f in faces if not (
            (inner[0] and f.box[0] <= self.x0 + margin)
            or (inner[1] and f.box[1] <= self.y0 + margin)
            or (inner[2] and f.box[0] + f.box[2] >= self.x1 - margin)
            or (inner[3] and f.box[1] + f.box[3] >= self.y1 - margin))]


def _grow(start: int, size: int, factor: float, limit: int) -> tuple[int, int]:
    """One axis of a region, [start, start + size), grown about its centre until its
    scaled length is a multiple of SNAP (at least 2 SNAP), and kept inside [0, limit)."""
    start, end = max(0, start), min(limit, start + size)
    scaled = max(2, math.ceil((end - start) * factor / SNAP)) * SNAP
    grown = min(limit, math.ceil(scaled / factor))
    begin = max(0, min((start + end - grown) // 2, limit - grown))
    return begin, begin + grown


def detection_factor(frame: np.ndarray, max_side: int) -> float:
    """Detector pixels per frame pixel when the frame's long side is scaled to max_side
    (never enlarged; 0: as it is)."""
    return min(1.0, max_side / float(max(frame.shape[:2]))) if max_side > 0 else 1.0


def view_of(frame: np.ndarray, region: Box | None, max_side: int) -> View:
    """The part of `frame` to search (all of it when region is None), scaled as the whole
    frame is for detection (its long side to max_side)."""
    h, w = frame.shape[:2]
    factor = detection_factor(frame, max_side)
    x0, y0, x1, y1 = 0, 0, w, h
    if region is not None:
        (x0, x1), (y0, y1) = (_grow(region[0], region[2], factor, w),
                              _grow(region[1], region[3], factor, h))
    part = frame[y0:y1, x0:x1]
    if factor < 1.0:
        size = (max(1, round((x1 - x0) * factor)), max(1, round((y1 - y0) * factor)))
        part = shrink(part, size)
    return View(part, factor, x0, y0, x1, y1, w, h)


def _keep(faces: list[Face], min_face: int) -> list[Face]:
    return [f for f in faces if min(f.box[2], f.box[3]) >= min_face]


class HaarDetector:
    """OpenCV Haar cascade (frontalface_default), the baseline."""

    name = "haar"

    def __init__(self, max_side: int, min_face: int, scale_factor: float = 1.1,
                 min_neighbors: int = 5) -> None:
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise ModelError(f"cannot load Haar cascade {path}")
        self.max_side, self.min_face = max_side, min_face
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors

    def detect(self, frame_bgr: np.ndarray, region: Box | None = None) -> list[Face]:
        view = view_of(frame_bgr, region, self.max_side)
        gray = cv2.cvtColor(view.image, cv2.COLOR_BGR2GRAY)
        min_size = max(8, int(self.min_face * view.factor))
        found = self._cascade.detectMultiScale(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(min_size, min_size))
        return _keep(view.whole([Face(view.to_frame(*b), 1.0) for b in found]), self.min_face)


class YuNetDetector(Thresholded):
    """OpenCV YuNet (2023mar ONNX) through cv2.FaceDetectorYN, at two scales.

    The fine search (`max_side`, 480 px) finds small, far faces; a face near the lens is
    large there, and YuNet scores a large masked face low (0.18-0.50 for navy or black
    masks, faces cut by the frame's edge, a hand under the chin), while the same face
    shrunk to a 160 px frame scores 0.58-0.63. So a coarse search of the same view at
    `coarse_side` (about a ninth of the pixels) runs beside it, and its faces join the
    fine ones where no fine face overlaps them: the nearer a person stands, the more the
    coarse search is what finds them. A coarse face counts only where the fine search saw
    a face too, at any score from SEEN_SCORE, unless it is too large for the fine search
    (UNSEEN_FRACTION): what neither scale is sure of alone, both seeing it makes a face
    (a hand or a receipt the coarse search takes for a face is seldom seen by the fine
    one). In hard light a search first sees its view with
    local contrast equalised (`detect.contrast`, `contrast.py`): the coarse one always,
    the fine one where the view is backlit; a backlit view is also exposed for what is in
    front of the window first. A face found inside a larger one is a part of it (an eye
    and a brow of a face filling the frame) and is dropped (`without_nested`), also where
    the fine search found only such a part and the coarse one the whole face. A fine face
    scored just under the threshold gets a second look (`detect.second_look`,
    `_looked_again`): found again at other scales (larger for a large face), it is a face.
    """

    name = "yunet"

    def __init__(self, model_path: str | Path, max_side: int, min_face: int,
                 score_threshold: float, nms_threshold: float = 0.3,
                 coarse_side: int = 0, contrast: str = "none",
                 coarse_threshold: float | None = None, second_look: bool = False,
                 tuning: TuningFile | None = None) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise ModelError(f"YuNet model not found: {model_path}")
        try:
            self._nets = [cv2.FaceDetectorYN.create(
                str(model_path), "", (320, 320), score_threshold, nms_threshold, 5000)
                for _ in range(2 if coarse_side else 1)]  # one per scale: no reshaping
            self._look = cv2.FaceDetectorYN.create(
                str(model_path), "", (LOOK_INPUT, LOOK_INPUT), score_threshold,
                nms_threshold, 5000) if second_look else None
        except cv2.error as exc:
            raise ModelError(f"cannot load YuNet model {model_path}: {exc.msg.strip()}") from None
        self.max_side, self.min_face = max_side, min_face
        self.coarse_side = coarse_side if 0 < coarse_side < max_side else 0
        self.contrast, self.coarse_threshold = contrast, coarse_threshold
        self._input_sizes: list[tuple[int, int] | None] = [None, None]
        self.tuning = tuning
        self.set_score_threshold(score_threshold)
        self.follow_tuning()

    def set_score_threshold(self, threshold: float) -> None:
        """The fine search's faces must reach `threshold`; with a coarse search or a second
        look it reports from SEEN_SCORE up, to confirm the coarse faces and to find the
        doubtful ones (`detect`)."""
        doubts = self.coarse_side or self._look is not None
        fine = min(threshold, SEEN_SCORE) if doubts else threshold
        self._nets[FINE].setScoreThreshold(fine)
        if self.coarse_side:
            coarse = threshold if self.coarse_threshold is None else \
                min(threshold, self.coarse_threshold)
            self._nets[COARSE].setScoreThreshold(coarse)
        if self._look is not None:
            self._look.setScoreThreshold(threshold)
        self.score_threshold = threshold

    def search_thresholds(self) -> tuple[float, ...]:
        """The score each search's faces must reach now (fine, then coarse)."""
        fine = round(float(self.score_threshold), 6)
        if not self.coarse_side:
            return (fine,)
        return fine, round(float(self._nets[COARSE].getScoreThreshold()), 6)

    def _in_hard_light(self, scale: int, view: View) -> np.ndarray:
        """The view as this search sees it (`detect.contrast`): a backlit view exposed for
        what is in front of the window (`backlit`, `all`), then local contrast equalised
        in the coarse search (all but `none`) and in the fine one where the view is
        backlit (`backlit`) or always (`all`)."""
        image = view.image
        if self.contrast == "none":
            return image
        sample = light_sample(image) if self.contrast in ("backlit", "all") else None
        lit = sample is not None and backlit(image, sample)
        if lit:
            image = exposed_for_subject(image, sample)
        if self.contrast == "all" or scale == COARSE or lit:
            whole = max(view.frame_w, view.frame_h) * view.factor
            image = equalised(image, whole / TILES_PER_FRAME)
        return image

    def _search(self, scale: int, frame_bgr: np.ndarray, region: Box | None,
                side: int) -> list[Face]:
        view = view_of(frame_bgr, region, side)
        image = self._in_hard_light(scale, view)
        size = (image.shape[1], image.shape[0])
        net = self._nets[scale]
        if size != self._input_sizes[scale]:
            net.setInputSize(size)
            self._input_sizes[scale] = size
        _, found = net.detect(image)
        faces = [Face(view.to_frame(*row[:4]), float(row[-1]))
                 for row in (found if found is not None else [])]
        return view.whole(faces)

    def detect(self, frame_bgr: np.ndarray, region: Box | None = None) -> list[Face]:
        self.follow_tuning()
        seen = self._search(FINE, frame_bgr, region, self.max_side)
        faces = [f for f in seen if f.score >= self.score_threshold]
        if self.coarse_side:
            short_side = min(frame_bgr.shape[:2])
            coarse = [f for f in self._search(COARSE, frame_bgr, region, self.coarse_side)
                      if f.box[3] >= COARSE_MIN_FRACTION * short_side]
            faces = join_scales(faces, confirmed(coarse, seen, UNSEEN_FRACTION * short_side))
        if self._look is not None:
            faces += self._looked_again(frame_bgr, seen, faces)
        return _keep(without_nested(faces), self.min_face)

    def _looked_again(self, frame_bgr: np.ndarray, seen: list[Face],
                      faces: list[Face]) -> list[Face]:
        """The faces the fine search scored just under the threshold that a second look
        finds (`look_sides`), of those that are none of `faces` (found by either
        search): where the coarse search found a near face, a doubtful fine box on it is
        most often a part of it (an ear, an eye and a brow)."""
        factor = detection_factor(frame_bgr, self.max_side)
        doubtful = [f for f in seen if LOOK_FROM <= f.score < self.score_threshold
                    and f.box[3] * factor >= LOOK_MIN_PX
                    and not any(same_face(f.box, kept.box) for kept in faces)]
        return [f for f in doubtful if self._found_again(
            frame_bgr, f.box, look_sides(max(f.box[2], f.box[3]) * factor))]

    def _found_again(self, frame_bgr: np.ndarray, box: Box, sides: tuple[int, ...]) -> bool:
        """Does YuNet find a face on `box` (IoU LOOK_IOU) at the threshold with the face
        at each of `sides` pixels? Stops at the first size that does not."""
        for side in sides:
            view = window_around(frame_bgr, box, side / max(box[2], box[3]), LOOK_INPUT)
            _, found = self._look.detect(self._in_hard_light(FINE, view))
            boxes = [view.to_frame(*row[:4]) for row in (found if found is not None else [])]
            if not any(iou(b, box) >= LOOK_IOU for b in boxes):
                return False
        return True


# A second look at a doubtful face (`detect.second_look`). YuNet's score of one face swings
# with the exact scale it is seen at: a face it scores 0.3-0.5 in the 480 px search may
# score above the threshold at another. Searched again in a square window around it,
# scaled so that the face is LOOK_FACE_SIDES pixels high, a face found at each of the three
# sizes is a face; one found at any single size is as often a false face (15-27 more boxes
# on no annotated face on the dev scenes, trials). On the dev scenes masked faces found
# rose 92.6 -> 93.2 % (766 -> 771 of 827), boxes on no annotated face 239 -> 240 (a blur);
# the near bench's large faces gained nothing. It costs a look (about 1.5 ms) for each
# doubtful face, most of which fail at the first size: 6 % of the street clip's fps.
LOOK_FROM = 0.3  # the fine search's faces from this score up to the threshold
LOOK_MIN_PX = 30  # ... this high or more at the fine search's scale (far faces are many)
LOOK_FACE_SIDES = (48, 64, 96)  # the face's height in the window, pixels
LOOK_INPUT = 128  # the window's side after scaling: one input shape, one net, no reshaping
LOOK_IOU = 0.5  # a box found on the window is the doubtful face at this IoU
# A face near the lens, this large or more at the fine search's scale, shrunk to 48 px
# loses what made it a face to YuNet (a masked face filling the frame was found at 96 and
# 128 px, not at 48 or 64): it is looked at with the face at LARGE_LOOK_SIDES instead,
# in the same window. On bench-near, masked faces at 70 and 90 % of the height 94.2 ->
# 95.0 %, at 30 % 88.3 -> 89.2 %, one more box on no face (32); dev scenes unchanged.
LARGE_LOOK_PX = 150
LARGE_LOOK_SIDES = (96, 128)


def look_sides(face_px: float) -> tuple[int, ...]:
    """The heights a doubtful face is looked at with, by its size (pixels, its longer
    side) at the fine search's scale."""
    return LARGE_LOOK_SIDES if face_px >= LARGE_LOOK_PX else LOOK_FACE_SIDES


def window_around(frame: np.ndarray, box: Box, factor: float, side: int) -> View:
    """A `side` x `side` view of `frame` centred on `box` and scaled by `factor` (what lies
    outside the frame is black), as YuNet's input; it maps its boxes back to the frame."""
    span = side / factor
    x0 = int(round(box[0] + box[2] / 2 - span / 2))
    y0 = int(round(box[1] + box[3] / 2 - span / 2))
    size = max(1, int(round(span)))
    h, w = frame.shape[:2]
    part = frame[max(0, y0):max(0, min(h, y0 + size)), max(0, x0):max(0, min(w, x0 + size))]
    part = cv2.copyMakeBorder(part, max(0, -y0), size - part.shape[0] - max(0, -y0),
                              max(0, -x0), size - part.shape[1] - max(0, -x0),
                              cv2.BORDER_CONSTANT, value=0)
    image = cv2.resize(part, (side, side), interpolation=cv2.INTER_AREA if factor < 1
                       else cv2.INTER_LINEAR)
    return View(image, side / size, x0, y0, x0 + size, y0 + size, w, h)


# a coarse face covering this share of a fine face, or the fine face this share of it,
# is that face: the coarse search's box of a face can sit off it (on the ear beside a
# black mask, on the mask below the eyes), overlapping it less than an IoU of 0.3 would
# need, and would pass for a second person
JOIN_SHARED = 0.3
# The fine search reports faces from this score up; a coarse face counts only where it saw
# one (at any score from here): a near masked face scores 0.18-0.50 there, while a hand,
# a receipt or a lit scarf that the coarse search takes for a face is most often not seen
# at all (on the dev scenes, boxes on no annotated face 245 -> 239 with masked and
# unmasked faces found alike; 238 at 0.15 and 241 at 0.05)
SEEN_SCORE = 0.1
# ... but a coarse face this share of the frame's height or more needs no fine face: one
# that large, the fine search may not see at all (on bench-near, a masked face at 90 % of
# the height was lost to the rule without this; on the dev scenes no coarse box on no face
# is that tall)
UNSEEN_FRACTION = 0.5
# The coarse search is for near faces: its faces shorter than this share of the frame's
# short side are left to the fine search (on the dev scenes, smaller coarse faces were
# mostly false: 28 more boxes on no face at 0.15, 12 at 0.2, masked recall alike)
COARSE_MIN_FRACTION = 0.2


def same_face(a: Box, b: Box) -> bool:
    """Are these one face at two scales (JOIN_SHARED covered, or one box around the other's
    centre)?"""
    return shared(a, b) >= JOIN_SHARED or _contains_centre(a, b) or _contains_centre(b, a)


def confirmed(coarse: list[Face], seen: list[Face], tall: float = math.inf) -> list[Face]:
    """The coarse faces the fine search saw too (at any score it reported), and those at
    least `tall` pixels high."""
    return [face for face in coarse
            if face.box[3] >= tall or any(same_face(face.box, s.box) for s in seen)]


def join_scales(fine: list[Face], coarse: list[Face]) -> list[Face]:
    """The fine faces, and each coarse face that no fine face overlaps (a near face the
    fine search scored under its threshold). Where both found a face the fine box stays:
    it is the more precise one, unless it is a part of the coarse face (`part_of`): then
    the coarse face joins too, and `without_nested` drops the part."""
    joined = list(fine)
    for face in sorted(coarse, key=lambda f: -f.score):
        if not any(same_face(face.box, other.box) and not part_of(other, face)
                   for other in joined):
            joined.append(face)
    return joined


def part_of(part: Face, whole: Face) -> bool:
    """Is `part` a part of the face `whole`: lying NESTED_SHARE or more inside it, no
    larger, and scored lower? A face filling the frame is seen whole by the coarse search
    and as half a face, or an eye and a brow, by the fine one, which kept the whole face
    out (on `bench-near`, masked faces at 90 % of the height 91.7 -> 94.2 %, boxes on no
    face 43 -> 31; dev scenes 93.2 -> 93.3 %, boxes on no annotated face 240 -> 239).
    Without "scored lower" the coarse box took the place of real fine faces too (dev
    scenes' unmasked faces 97.3 -> 96.6 %)."""
    return (area(part.box) <= area(whole.box) and whole.score > part.score
            and shared(part.box, whole.box) >= NESTED_SHARE)


# a face this share of which lies inside a larger face is a part of that face: YuNet's own
# suppression compares boxes by IoU, which is small for a small box inside a large one
NESTED_SHARE = 0.6


def without_nested(faces: list[Face]) -> list[Face]:
    """The faces, less each one lying NESTED_SHARE or more inside a larger kept one. Near
    the lens, where a face fills the frame, YuNet also finds an eye and a brow, or a
    cheek, as faces of their own: on `bench-near`'s frames 26 of its 67 boxes on no face
    were such parts. (At 0.4, people overlapping in a crowd were dropped too.)"""
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: -area(f.box)):
        if all(shared(face.box, larger.box) < NESTED_SHARE for larger in kept):
            kept.append(face)
    chosen = {id(face) for face in kept}
    return [face for face in faces if id(face) in chosen]  # in the order found


def _contains_centre(outer: Box, inner: Box) -> bool:
    """`outer` holds `inner`'s centre and is at least as large (one face at two scales
    whose boxes differ in size more than iou tolerates)."""
    cx, cy = inner[0] + inner[2] / 2, inner[1] + inner[3] / 2
    inside = outer[0] <= cx <= outer[0] + outer[2] and outer[1] <= cy <= outer[1] + outer[3]
    return inside and area(outer) >= area(inner)


def _blazeface_anchors(input_size: int) -> np.ndarray:
    """Anchor centres (N x 2, normalised) as MediaPipe's SsdAnchorsCalculator makes them.

    Short range (128 px): strides 8, 16, 16, 16 -> 16x16x2 + 8x8x6 = 896 anchors.
    Full range (192 px): one stride-4 layer -> 48x48x1 = 2304 anchors.
    Anchors share a fixed size of 1, so only centres matter.
    """
    strides = [8, 16, 16, 16] if input_size == 128 else [4]
    centres: list[tuple[float, float]] = []
    layer = 0
    while layer < len(strides):
        stride, repeats = strides[layer], 0
        while layer < len(strides) and strides[layer] == stride:
            repeats += 2 if input_size == 128 else 1
            layer += 1
        cells = int(np.ceil(input_size / stride))
        for yy in range(cells):
            for xx in range(cells):
                centres.extend([((xx + 0.5) / cells, (yy + 0.5) / cells)] * repeats)
    return np.asarray(centres, dtype=np.float32)


class BlazeFaceDetector(Thresholded):
    """MediaPipe BlazeFace (short or full range TFLite), letterboxed to its square input."""

    name = "blazeface"

    def __init__(self, model_path: str | Path, min_face: int, score_threshold: float,
                 nms_threshold: float = 0.3, num_threads: int = 1,
                 tuning: TuningFile | None = None) -> None:
        self._interpreter = load_interpreter(model_path, num_threads)
        inp = self._interpreter.get_input_details()[0]
        self.input_size = int(inp["shape"][1])
        self._input_index = inp["index"]
        outputs = sorted(self._interpreter.get_output_details(), key=lambda d: d["shape"][-1])
        self._scores_index, self._boxes_index = outputs[0]["index"], outputs[-1]["index"]
        self._anchors = _blazeface_anchors(self.input_size)
        if len(self._anchors) != int(outputs[-1]["shape"][1]):
            raise ModelError(f"{model_path} is not a BlazeFace model (unexpected anchor count)")
        self.min_face = min_face
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.tuning = tuning

    def _letterbox(self, frame: np.ndarray) -> tuple[np.ndarray, float, int, int]:
        h, w = frame.shape[:2]
        side = max(h, w)
        pad_x, pad_y = (side - w) // 2, (side - h) // 2
        square = cv2.copyMakeBorder(frame, pad_y, side - h - pad_y, pad_x, side - w - pad_x,
                                    cv2.BORDER_CONSTANT, value=(0, 0, 0))
        image = cv2.resize(square, (self.input_size, self.input_size),
                           interpolation=cv2.INTER_AREA)
        return image, float(side), pad_x, pad_y

    def detect(self, frame_bgr: np.ndarray, region: Box | None = None) -> list[Face]:
        """The region (if any) is letterboxed to the model's fixed input on its own."""
        self.follow_tuning()
        view = view_of(frame_bgr, region, max_side=0)
        image, side, pad_x, pad_y = self._letterbox(view.image)
        tensor = cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1.0
        self._interpreter.set_tensor(self._input_index, tensor[None])
        self._interpreter.invoke()
        raw_scores = self._interpreter.get_tensor(self._scores_index)[0, :, 0]
        raw_boxes = self._interpreter.get_tensor(self._boxes_index)[0]
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores, -50.0, 50.0)))
        keep = np.flatnonzero(scores >= self.score_threshold)
        if keep.size == 0:
            return []
        reg = raw_boxes[keep, :4] / self.input_size
        centres = self._anchors[keep] + reg[:, :2]
        sizes = reg[:, 2:4]
        boxes = np.concatenate([centres - sizes / 2, sizes], axis=1) * side
        boxes[:, 0] += view.x0 - pad_x
        boxes[:, 1] += view.y0 - pad_y
        picked = cv2.dnn.NMSBoxes(boxes.tolist(), scores[keep].tolist(),
                                  self.score_threshold, self.nms_threshold)
        faces = [Face(tuple(int(round(v)) for v in boxes[i]), float(scores[keep][i]))
                 for i in np.asarray(picked).reshape(-1)]
        return _keep(view.whole(faces), self.min_face)


DETECTORS = ("yunet", "blazeface", "haar")
MODEL_SUFFIX = {"yunet": ".onnx", "blazeface": ".tflite"}


def create_detector(settings: DetectConfig, model_path: str | Path | None,
                    tuning: TuningFile | None = None) -> Detector:
    """The detector named in `settings` (detect.* of the config); model ignored for haar.

    Haar runs on at least 640 px (it needs the resolution to find anything), BlazeFace
    with a score threshold of at most 0.5 (its scores run lower than YuNet's).
    """
    name = settings.detector
    if name == "haar":
        return HaarDetector(max_side=max(settings.max_side, 640), min_face=settings.min_face)
    if model_path is None:
        raise ModelError(f"detector {name!r} needs a model file (run: mask-agent models fetch)")
    suffix = MODEL_SUFFIX.get(name)
    if suffix and Path(model_path).suffix.lower() != suffix:
        raise ModelError(f"{model_path} is not a {name} model (it takes a {suffix} file)")
    if name == "yunet":
        return YuNetDetector(model_path, max_side=settings.max_side, min_face=settings.min_face,
                             score_threshold=settings.score_threshold,
                             coarse_side=settings.coarse_side, contrast=settings.contrast,
                             coarse_threshold=settings.coarse_score_threshold,
                             second_look=settings.second_look, tuning=tuning)
    if name == "blazeface":
        return BlazeFaceDetector(model_path, min_face=settings.min_face,
                                 score_threshold=min(settings.score_threshold, 0.5),
                                 tuning=tuning)
    raise ModelError(f"unknown detector {name!r} (choose one of {', '.join(DETECTORS)})")


# a photo of one person (training data, labelled site crops): its subject's face
PAD_FRACTION = 0.35  # context added around a photo before detection, per side
MIN_FACE_FRACTION = 0.08  # smaller detections are background faces, not the subject


def subject_faces(image: np.ndarray, detector: Detector) -> list[Face]:
    """The photo's faces large enough to be its subject, in image pixels, the likeliest
    subject (largest confident) first."""
    h, w = image.shape[:2]
    pad = int(round(max(h, w) * PAD_FRACTION))
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT,
                                value=(114, 114, 114))
    faces = [f for f in detector.detect(padded)
             if max(f.box[2], f.box[3]) >= MIN_FACE_FRACTION * max(h, w)]
    faces.sort(key=lambda f: -f.box[2] * f.box[3] * f.score)
    return [Face((f.box[0] - pad, f.box[1] - pad, f.box[2], f.box[3]), f.score) for f in faces]


def find_subject_face(image: np.ndarray, detector: Detector) -> Box | None:
    """Box of the photo's main face (largest confident detection), in image pixels."""
    faces = subject_faces(image, detector)
    return faces[0].box if faces else None
