"""Pascal VOC scene sets (`images/`, `annotations/`): face boxes and labels per image.

Used by `mask-convert evaluate` and `mask-agent bench-detect`; standard library only.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, SourceError
from .decision import canonical_label


@dataclass(frozen=True)
class VocFace:
    image: Path
    label: str
    box: tuple[int, int, int, int]  # x, y, w, h

    @property
    def size(self) -> int:
        """Face size in pixels: the longer side of the box."""
        return max(self.box[2], self.box[3])


def is_voc(root: Path) -> bool:
    return (root / "images").is_dir() and (root / "annotations").is_dir()


def read_annotation(xml_path: Path, images: Path) -> tuple[Path, list[VocFace]]:
    """The image an annotation file describes, and its face boxes."""
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as exc:
        raise InputError(f"bad VOC annotation {xml_path}: {exc}") from None
    root = tree.getroot()
    filename = root.findtext("filename") or xml_path.with_suffix(".png").name
    image = images / filename
    if not image.is_file():
        matches = sorted(images.glob(xml_path.stem + ".*"))
        image = matches[0] if matches else image
    faces = []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        x0, y0, x1, y1 = (int(round(float(box.findtext(k, "0"))))
                          for k in ("xmin", "ymin", "xmax", "ymax"))
        if x1 > x0 and y1 > y0:
            # "mask", "no-mask", ... as other annotated sets name them: read as ours
            faces.append(VocFace(image, canonical_label((obj.findtext("name") or "").strip()),
                                 (x0, y0, x1 - x0, y1 - y0)))
    return image, faces


def read_voc_images(root: Path, limit: int = 0) -> list[tuple[Path, list[VocFace]]]:
    """(image, its faces) per annotation file, in file-name order (the first `limit`)."""
    if not root.is_dir():
        raise SourceError(f"{root}: no such folder")
    if not is_voc(root):
        raise InputError(f"{root} is not a Pascal VOC set (needs images/ and annotations/)")
    out = []
    for xml_path in sorted((root / "annotations").glob("*.xml"))[: limit or None]:
        out.append(read_annotation(xml_path, root / "images"))
    return out


def read_voc(root: Path) -> list[VocFace]:
    """All faces of a VOC set, in file-name order."""
    faces = [face for _, image_faces in read_voc_images(root) for face in image_faces]
    if not faces:
        raise InputError(f"VOC set {root} has no face boxes")
    return faces
