"""Local contrast for the face detector's view: faces in hard light.

A face against a bright window, or in an unlit entrance, keeps its shape but loses its
contrast: on `mask-agent bench-near`'s dark and backlit frames (the face at 35 %
brightness) YuNet found a fifth fewer masked faces than in the same frames as
photographed. A global lift (a gamma curve) gave back almost nothing, since what is
lost is contrast, not brightness; contrast-limited adaptive histogram equalisation
(CLAHE) of the luminance stretches each neighbourhood's own range, so a dark face
regains its edges while a well-lit one barely changes (the clip limit caps the gain).

Against a bright window the camera's exposure is set by the window, and everything in
front of it is underexposed: a face at a third of its brightness. An exposure change is a
gain on the pixel values (gamma-encoded or not, a gain stays a gain), so where a view is
`backlit` both searches first see it exposed for what is in front of the window
(`exposed_for_subject`: a gain that brings the mean of the pixels that are not near white
to SUBJECT_LEVEL, at most MAX_GAIN), as a camera's backlight compensation does; the
window, already white, stays white. On `mask-agent bench-near`'s backlit frames it
raised masked faces found from 86 to 92 %; the dev scenes' figures did not move.

Where (`detect.contrast`): equalised always in the near (coarse) search, which is cheap
and adds no false face on the dev scenes' far crowds; in the fine search only when the
view is `backlit`, since equalising every fine search added 38 boxes on no face there
(one dev scene in ten is that bright; those added 3).

Tiles have a fixed size in detector pixels (an eighth of the whole frame's long side at
that scale), so a face is equalised the same way whether the whole frame or one moving
region is searched. Only the detector sees the equalised image; the classifier's crops
are cut from the frame as it was.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

TILES_PER_FRAME = 8  # tiles along the whole frame's long side
CLIP_LIMIT = 2.0  # OpenCV's default: enough for a face at a third of its brightness

_clahe: dict[tuple[int, int], cv2.CLAHE] = {}


def equalised(image_bgr: np.ndarray, tile_px: float) -> np.ndarray:
    """`image_bgr` with its luminance locally equalised (tiles about `tile_px` on a side);
    colour kept."""
    h, w = image_bgr.shape[:2]
    grid = (max(1, math.ceil(w / tile_px)), max(1, math.ceil(h / tile_px)))
    clahe = _clahe.get(grid)
    if clahe is None:
        clahe = _clahe[grid] = cv2.createCLAHE(CLIP_LIMIT, grid)
    ycc = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2YCrCb)
    ycc[..., 0] = clahe.apply(np.ascontiguousarray(ycc[..., 0]))
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2BGR)


BRIGHT = 220  # luminance of a window, a lit sky: near white
BRIGHT_SHARE = 0.25  # this share of the view near white: whatever is in front is backlit


SUBJECT_LEVEL = 110.0  # mean luminance of a subject exposed for (a mid grey, as metering aims)
MAX_GAIN = 4.0  # two stops: beyond it noise, not a face, is what grows


def light_sample(image_bgr: np.ndarray) -> np.ndarray:
    """Every fourth pixel of every fourth row, grey: a look at the light, not at detail.
    Taken once per view, it serves both `backlit` and `exposed_for_subject`."""
    return cv2.cvtColor(np.ascontiguousarray(image_bgr[::4, ::4]), cv2.COLOR_BGR2GRAY)


def exposed_for_subject(image_bgr: np.ndarray, sample: np.ndarray | None = None) -> np.ndarray:
    """`image_bgr` with a gain that exposes it for what is not near white (the people in
    front of a window); unchanged where that is already bright enough. `sample`: its
    `light_sample`, when already taken."""
    grey = light_sample(image_bgr) if sample is None else sample
    subject = grey[grey < BRIGHT]
    if subject.size == 0:
        return image_bgr
    gain = min(MAX_GAIN, SUBJECT_LEVEL / max(1.0, float(subject.mean())))
    return cv2.convertScaleAbs(image_bgr, alpha=gain) if gain > 1.01 else image_bgr


def backlit(image_bgr: np.ndarray, sample: np.ndarray | None = None) -> bool:
    """Is a quarter of the view near white (a window, a lit doorway behind people)?
    Judged on its `light_sample` (`sample`, when already taken). (A dark view is not
    judged: equalising a whole dark frame also lifts its noise, and the near search
    already sees dark faces equalised.)"""
    grey = light_sample(image_bgr) if sample is None else sample
    return bool(np.count_nonzero(grey >= BRIGHT) >= BRIGHT_SHARE * grey.size)
