"""Face augmentation for training: geometry through the crop, light and sensor after it.

Geometry (shift, zoom, rotation, small-face resolution) is applied by moving the face
box and downscaling the photo before `agent.preprocess.face_input`, so augmented crops
are cut exactly the way the device cuts them. Photometric changes target what real
doorways show and the trial runs got wrong: low light, backlight (a dark face against a
bright window), gamma, blur, sensor noise, JPEG artefacts, and colour jitter/greyscale so
the mask's colour is not the cue.
"""

from __future__ import annotations

import cv2
import numpy as np

from maskwatch.agent.vision.preprocess import Box, CropSpec, face_input

SMALL_FACE_P = 0.35  # share of augmented crops that simulate a small, far face


def jitter_geometry(image: np.ndarray, box: Box, rng: np.random.Generator,
                    small_face_p: float = SMALL_FACE_P) -> tuple[np.ndarray, Box]:
    """Rotate the photo about the face, shift/zoom the box, sometimes shrink the face."""
    x, y, w, h = box
    cx, cy, side = x + w / 2, y + h / 2, max(w, h)
    angle = rng.uniform(-12, 12)
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    image = cv2.warpAffine(image, matrix, (image.shape[1], image.shape[0]),
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    zoom = rng.uniform(0.9, 1.12)
    cx += rng.uniform(-0.07, 0.07) * side
    cy += rng.uniform(-0.07, 0.07) * side
    w, h = w * zoom, h * zoom
    if rng.random() < small_face_p:  # a small, far face, as doorway cameras often see
        target = rng.uniform(14, 48)
        factor = min(1.0, target / max(w, h))
        if factor < 1.0:
            size = (max(8, int(image.shape[1] * factor)), max(8, int(image.shape[0] * factor)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            cx, cy, w, h = cx * factor, cy * factor, w * factor, h * factor
    return image, (int(round(cx - w / 2)), int(round(cy - h / 2)),
                   max(2, int(round(w))), max(2, int(round(h))))


def _backlight(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Darken the centre (the face) and brighten the rim, like a face against a window."""
    size = crop.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = np.sqrt((xx - size / 2) ** 2 + (yy - size / 2) ** 2) / (size / 2)
    centre_gain = rng.uniform(0.35, 0.7)
    rim_gain = rng.uniform(1.1, 1.6)
    gain = centre_gain + (rim_gain - centre_gain) * np.clip(r, 0, 1) ** 2
    return crop.astype(np.float32) * gain[..., None]


def jitter_light(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photometric augmentation of an RGB uint8 crop."""
    out = crop.astype(np.float32)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.3:  # hue rotation and saturation: mask colour must not be the cue
        hsv = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV)
        hsv = hsv.astype(np.int16)
        hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-12, 13))) % 180
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.6, 1.4), 0, 255)
        out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    if rng.random() < 0.1:
        grey = out.mean(axis=2, keepdims=True)
        out = np.repeat(grey, 3, axis=2)
    if rng.random() < 0.2:
        out = _backlight(out, rng)
    out = out * rng.uniform(0.75, 1.25) + rng.uniform(-25, 25)  # contrast, brightness
    if rng.random() < 0.35:  # low light / overexposure through gamma
        gamma = rng.uniform(0.6, 2.2)
        out = 255.0 * (np.clip(out, 0, 255) / 255.0) ** gamma
    if rng.random() < 0.2:
        out = out * rng.uniform(0.3, 0.7)  # dim scene
    if rng.random() < 0.25:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 1.6))
    if rng.random() < 0.3:
        out = out + rng.normal(0, rng.uniform(2, 10), out.shape)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        quality = int(rng.integers(30, 90))
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return np.ascontiguousarray(out)


def augmented_input(image_bgr: np.ndarray, box: Box, spec: CropSpec,
                    rng: np.random.Generator, small_face_p: float = SMALL_FACE_P) -> np.ndarray:
    """One augmented classifier input for a face, through the device's own crop."""
    image, moved = jitter_geometry(image_bgr, box, rng, small_face_p)
    return jitter_light(face_input(image, moved, spec), rng)
