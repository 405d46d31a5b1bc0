"""Single-image prediction: the JSON shared by `mask-agent detect` and POST /v1/predict."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .errors import InputError, SourceError


def decode_image(data: bytes, name: str = "upload"):
    """BGR image from encoded bytes (JPEG, PNG, ...); InputError when undecodable."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        raise InputError(f"cannot decode image {name} (not an image, or truncated)")
    return image


def read_image_file(path: str):
    """BGR image from a file; raises InputError/SourceError with a one-line reason."""
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"image not found: {path}")
    return decode_image(p.read_bytes(), path)


def detect_result(image, detector, classifier) -> dict:
    """The JSON of `mask-agent detect` (and POST /v1/predict) for one image."""
    faces = detector.detect(image)
    predictions = classifier.classify(image, [f.box for f in faces])
    return {
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "faces": [{"box": [int(v) for v in f.box], "score": round(f.score, 4),
                   "label": p.label, "confidence": p.confidence}
                  for f, p in zip(faces, predictions)],
    }


COLOURS = {"with_mask": (0, 180, 0), "without_mask": (0, 0, 255)}  # BGR
OTHER_COLOUR = (0, 165, 255)


def draw_faces(image, faces):
    """Draw (box, label, caption) triples in place, coloured by label; returns the image."""
    for (x, y, w, h), label, caption in faces:
        colour = COLOURS.get(label, OTHER_COLOUR)
        cv2.rectangle(image, (x, y), (x + w, y + h), colour, 2)
        cv2.putText(image, caption, (x, max(10, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    colour, 1, cv2.LINE_AA)
    return image


def annotate(image, result: dict):
    """Draw the faces of a `detect_result` (in place) and return the image."""
    return draw_faces(image, [(f["box"], f["label"], f"{f['label']} {f['confidence']:.2f}")
                              for f in result["faces"]])
