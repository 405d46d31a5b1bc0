"""`mask-agent bench-near`: are faces near the lens found? Close-range frames built from
photos that hold one face each, the detector run as the agent runs it.

A doorway camera sees a person at arm's length with a face half the frame high; the dev
scenes have almost no such face (median ~22 px). So each face crop, with its true box,
is placed in a 640x480 frame at 30, 50, 70 and 90 % of the frame's height:

- placement: centred, or cut by the frame's left edge (a quarter of the face outside);
- light: as photographed; dark (the face at 35 % brightness: an unlit entrance); backlit
  (the face at 35 % in front of a near-white background: a bright window behind).

Faces come from the training folder's `jolignier` crops (cut from real street and crowd
scenes with a 10 % margin: the face box is known) and from the dev scenes' annotated faces
of at least 48 px (cut the same way). Only detection is measured here: these photos train
the classifier, so nothing about labels is. A face is found when a detection overlaps its
box (clipped to the frame) with IoU >= 0.3. Reported: found-rate by size and class
(centred, as photographed; masked faces also by source: the misses are mostly jolignier's
black masks, profiles and faces cut at the crop's edge, with no head around them), by
light and by placement, and detections that overlap no face.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from ..config import Config
from ..errors import SourceError
from ..vision.decision import MASK, NO_MASK
from ..vision.preprocess import Box, iou
from .measure import machine, progress, write_json

FRAME_W, FRAME_H = 640, 480
SIZES = (0.3, 0.5, 0.7, 0.9)  # face height / frame height
LIGHTS = ("normal", "dark", "backlit")
PLACEMENTS = ("centre", "edge")
MARGIN = 0.10  # jolignier's crops: 10 % of the face added on each side
DARK = 0.35  # face brightness in the dark and backlit frames
BACKLIGHT = 245  # the bright window behind a backlit face
BACKGROUND = 120  # an ordinary wall
MIN_DEV_FACE = 48


@dataclass(frozen=True)
class FaceCrop:
    image: np.ndarray  # the face with MARGIN on each side
    label: str
    source: str


def jolignier_crops(train: Path, per_class: int) -> list[FaceCrop]:
    """Evenly spread crops of both classes (sorted names, every k-th)."""
    crops = []
    for label in (MASK, NO_MASK):
        paths = sorted((train / "jolignier" / label).glob("*.jpg"))
        step = max(1, len(paths) // max(1, per_class))
        for path in paths[::step][:per_class]:
            image = cv2.imread(str(path))
            if image is not None:
                crops.append(FaceCrop(image, label, "jolignier"))
    return crops


def dev_crops(voc: Path, per_class: int) -> list[FaceCrop]:
    """Annotated dev-scene faces of at least MIN_DEV_FACE px, cut with MARGIN."""
    from ..vision.voc import read_voc_images

    crops: list[FaceCrop] = []
    counts = {MASK: 0, NO_MASK: 0}
    for image_path, faces in read_voc_images(voc):
        big = [f for f in faces if f.label in counts and counts[f.label] < per_class and
               min(f.box[2], f.box[3]) >= MIN_DEV_FACE]
        image = cv2.imread(str(image_path)) if big else None
        if image is None:
            continue
        for face in big:
            x, y, w, h = face.box
            mx, my = int(round(w * MARGIN)), int(round(h * MARGIN))
            padded = cv2.copyMakeBorder(image, my, my, mx, mx, cv2.BORDER_REPLICATE)
            crops.append(FaceCrop(padded[y:y + h + 2 * my, x:x + w + 2 * mx], face.label,
                                  "dev"))
            counts[face.label] += 1
    return crops


def compose(crop: FaceCrop, size: float, light: str, placement: str) -> tuple[np.ndarray, Box]:
    """The frame and the face's true box in it (clipped to the frame)."""
    ch, cw = crop.image.shape[:2]
    scale = size * FRAME_H / (ch / (1 + 2 * MARGIN))
    patch = cv2.resize(crop.image, (max(1, round(cw * scale)), max(1, round(ch * scale))),
                       interpolation=cv2.INTER_CUBIC)
    if light != "normal":
        patch = (patch.astype(np.float32) * DARK).astype(np.uint8)
    ph, pw = patch.shape[:2]
    face_w, face_h = pw / (1 + 2 * MARGIN), ph / (1 + 2 * MARGIN)
    x0 = (FRAME_W - pw) // 2 if placement == "centre" else \
        int(-face_w * 0.25 - (pw - face_w) / 2)
    y0 = (FRAME_H - ph) // 2
    frame = np.full((FRAME_H, FRAME_W, 3), BACKLIGHT if light == "backlit" else BACKGROUND,
                    np.uint8)
    fx0, fy0, sx0, sy0 = max(0, x0), max(0, y0), max(0, -x0), max(0, -y0)
    w, h = min(pw - sx0, FRAME_W - fx0), min(ph - sy0, FRAME_H - fy0)
    frame[fy0:fy0 + h, fx0:fx0 + w] = patch[sy0:sy0 + h, sx0:sx0 + w]
    left, top = x0 + (pw - face_w) / 2, y0 + (ph - face_h) / 2
    x1, y1 = min(FRAME_W, left + face_w), min(FRAME_H, top + face_h)
    left, top = max(0.0, left), max(0.0, top)
    return frame, (int(left), int(top), int(x1 - left), int(y1 - top))


def rate(hits: list[bool]) -> float | None:
    return round(sum(hits) / len(hits), 4) if hits else None


def bench_near(cfg: Config, train: Path, voc: Path | None, per_class: int, out: str) -> int:
    from ..factory import detector_from

    if not (train / "jolignier").is_dir():
        raise SourceError(f"{train}: no jolignier/ training folder (../shared/data/train)")
    cv2.setNumThreads(1)
    crops = jolignier_crops(train, per_class) + (dev_crops(voc, per_class) if voc else [])
    detector = detector_from(cfg.detect, cfg.state_dir)
    cases: list[dict] = []
    times = []
    for index, crop in enumerate(progress(crops, "near faces")):
        for size in SIZES:
            for light in LIGHTS:
                for placement in PLACEMENTS:
                    frame, truth = compose(crop, size, light, placement)
                    t0 = time.perf_counter()
                    faces = detector.detect(frame)
                    times.append(time.perf_counter() - t0)
                    hit = any(iou(f.box, truth) >= 0.3 for f in faces)
                    cases.append({"face": index, "source": crop.source,
                                  "label": crop.label, "size": size,
                                  "light": light, "placement": placement, "found": hit,
                                  "others": sum(iou(f.box, truth) < 0.3 for f in faces)})
    report = summarise(cases)
    print_near(report, cfg, len(crops), times)
    write_json(out, {"detect": asdict(cfg.detect), "machine": machine(), "faces": len(crops),
                     "ms_per_frame_median": round(1000 * float(np.median(times)), 2),
                     **report})
    return 0


def summarise(cases: list[dict]) -> dict:
    def pick(**match):
        return [c["found"] for c in cases if all(c[k] == v for k, v in match.items())]

    return {
        "by_size": {label: {str(s): rate(pick(label=label, size=s, light="normal",
                                               placement="centre")) for s in SIZES}
                    for label in (MASK, NO_MASK)},
        "by_light": {label: {light: rate(pick(label=label, light=light)) for light in LIGHTS}
                     for label in (MASK, NO_MASK)},
        "by_placement": {label: {p: rate(pick(label=label, placement=p)) for p in PLACEMENTS}
                         for label in (MASK, NO_MASK)},
        "by_source": {src: rate([c["found"] for c in cases if c["source"] == src])
                      for src in sorted({c["source"] for c in cases})},
        "backlit_masked_by_size": {str(s): rate(pick(label=MASK, size=s, light="backlit"))
                                   for s in SIZES},
        "masked_by_source_and_size": {
            src: {str(s): rate(pick(label=MASK, size=s, light="normal", placement="centre",
                                    source=src)) for s in SIZES}
            for src in sorted({c["source"] for c in cases})},
        "at_any_size": {label: {light: at_any_size(cases, label, light) for light in LIGHTS}
                        for label in (MASK, NO_MASK)},
        "other_boxes": sum(c["others"] for c in cases),
        "frames": len(cases),
    }


def at_any_size(cases: list[dict], label: str, light: str) -> float | None:
    """Share of the faces (centred, in this light) found at one size or more of SIZES.

    A person walking up to the door passes through every size, and one frame in which
    the face is found starts their track: this is how many of the faces a person
    approaching would be found at all, beside the by-size rows, which count each frame
    on its own (and which the targets are set on)."""
    found: dict[int, bool] = {}
    for c in cases:
        if c["label"] == label and c["light"] == light and c["placement"] == "centre":
            found[c["face"]] = found.get(c["face"], False) or c["found"]
    return rate(list(found.values()))


def print_near(report: dict, cfg: Config, faces: int, times: list[float]) -> None:
    d = cfg.detect
    print(f"near faces: {faces} face crops x {report['frames'] // max(1, faces)} frames "
          f"(640x480), detector {d.detector}, max_side {d.max_side}, coarse_side "
          f"{d.coarse_side}, score >= {d.score_threshold}; "
          f"{1000 * float(np.median(times)):.1f} ms/frame")
    heights = " ".join(f"{int(s * 100):>5}%" for s in SIZES)
    print(f"found, centred, as photographed   face height: {heights}")
    for label, row in report["by_size"].items():
        print(f"  {label:<32} {' '.join(_pct(row[str(s)]) for s in SIZES)}")
    for src, row in report["masked_by_source_and_size"].items():
        print(f"  {MASK + ', ' + src + ' faces':<32} {' '.join(_pct(row[str(s)]) for s in SIZES)}")
    print("found by light (all sizes, both placements):  " + "  ".join(LIGHTS))
    for label, row in report["by_light"].items():
        print(f"  {label:<32} {' '.join(_pct(row[light]) for light in LIGHTS)}")
    print("found by placement:  centre  edge (a quarter of the face outside the frame)")
    for label, row in report["by_placement"].items():
        print(f"  {label:<32} {' '.join(_pct(row[p]) for p in PLACEMENTS)}")
    print("found at one size or more of "
          f"{'/'.join(str(int(s * 100)) for s in SIZES)} % (centred: a person walking up "
          "to the lens):  " + "  ".join(LIGHTS))
    for label, row in report["at_any_size"].items():
        print(f"  {label:<32} {' '.join(_pct(row[light]) for light in LIGHTS)}")
    print(f"backlit masked faces by height: "
          f"{' '.join(_pct(report['backlit_masked_by_size'][str(s)]) for s in SIZES)}")
    print(f"by source: {report['by_source']}; boxes on no face: {report['other_boxes']}")


def _pct(value: float | None) -> str:
    return f"{value:>6.1%}" if value is not None else "     -"
