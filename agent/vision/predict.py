"""Single-image prediction: the JSON shared by `mask-agent detect` and POST /v1/predict."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError, SourceError, cannot_read
from .decision import MASK, NO_MASK

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}  # what decode_image reads


class ImageTooLarge(InputError):
    """The image's header declares more pixels than allowed (a decompression bomb)."""


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The frame size from the first SOF marker, walking the markers as libjpeg does: any
    number of 0xFF fill bytes may come before a marker (one fill byte once hid a
    20000 x 20000 frame from a parser that did not skip them). Anything else that is not
    a marker where one must be: None, and the image is refused."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        while i + 1 < len(data) and data[i + 1] == 0xFF:  # fill bytes
            i += 1
        if i + 9 >= len(data):
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    kind = data[12:16]
    if kind == b"VP8X" and len(data) >= 30:
        return (int.from_bytes(data[24:27], "little") + 1,
                int.from_bytes(data[27:30], "little") + 1)
    if kind == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if kind == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of a JPEG, PNG, BMP or WebP; None when the format
    is not one of these or the header is broken. Reads no pixels."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    return None


def decode_image(data: bytes, name: str = "upload", max_pixels: int = 40_000_000):
    """BGR image from encoded bytes (JPEG, PNG, BMP, WebP); InputError when undecodable,
    ImageTooLarge when its header declares more than `max_pixels` (checked before any
    pixel is decoded: a 69-byte PNG can claim 60000 x 60000)."""
    size = image_size(data) if data else None
    if size is None:
        raise InputError(f"cannot decode image {name} (not a JPEG, PNG, BMP or WebP image, "
                         "or its header is truncated)")
    if size[0] * size[1] > max_pixels:
        raise ImageTooLarge(f"image {name} is {size[0]}x{size[1]} pixels, more than the "
                            f"{max_pixels} allowed (detect.max_image_pixels)")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"cannot decode image {name} (not an image, or truncated)")
    return image


def hidden(name: str) -> bool:
    """Hidden files and folders, `__MACOSX` and macOS' `._photo.jpg` companions (what an
    archive made on a Mac leaves beside the photos) are no photos."""
    return name.startswith((".", "__MACOSX"))


def unreadable(path: Path | str, reason: str | None) -> SourceError:
    """A file or folder this user may not read, as a SourceError (exit 66); before, an
    internal error, "please report"."""
    return SourceError(cannot_read(path, reason))


def is_folder(path: Path) -> bool:
    """Path.is_dir, where a path under a folder this user may not enter is a SourceError
    (is_dir raises PermissionError there)."""
    try:
        return path.is_dir()
    except OSError as exc:
        raise unreadable(path, exc.strerror) from None


def images_in(folder: Path) -> list[Path]:
    """The photos in a folder and the folders inside it, sorted. A folder this user may
    not open is a SourceError: pathlib's glob passes over it in silence (no photos)."""
    if os.path.isdir(folder) and not os.access(folder, os.R_OK | os.X_OK):
        raise unreadable(folder, None)
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(hidden(part) for part in p.relative_to(folder).parts))


def image_paths(path: str) -> list[str]:
    """The path, or for a folder the photos in it. A folder with none is a SourceError
    naming what it holds instead (an iPhone's .HEIC, say)."""
    if not is_folder(Path(path)):
        return [path]
    found = images_in(Path(path))
    if not found:
        others = sorted({f.suffix or f.name for f in Path(path).rglob("*") if f.is_file()})
        raise SourceError(f"no images in {path} (read: {', '.join(sorted(IMAGE_SUFFIXES))}"
                          f"; found: {', '.join(others[:5]) or 'nothing'})")
    return [str(p) for p in found]


def read_image_file(path: str, max_pixels: int = 40_000_000):
    """BGR image from a file; raises InputError/SourceError with a one-line reason."""
    p = Path(path)
    try:
        if not p.is_file():  # a folder, a device or a pipe is no image file either
            raise SourceError(f"image not found: {path}")
        data = p.read_bytes()
    except OSError as exc:
        raise unreadable(path, exc.strerror) from None
    return decode_image(data, path, max_pixels)


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


COLOURS = {MASK: (0, 180, 0), NO_MASK: (0, 0, 255)}  # BGR
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
