"""Evaluate a Keras model or an int8 bundle on class folders or Pascal VOC scenes.

Faces are cut with the device's crop (`agent.preprocess.face_input`); VOC faces from
their annotated boxes, class-folder photos whole; with a detector model, around the boxes
the agent's YuNet finds (what the device classifies; photos as `train` crops them).
Results are given for the whole set and by face size (longer box side: <32, 32-64,
>=64 px), since small faces are where a doorway camera struggles.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from maskwatch.agent.bench.near import BACKLIGHT
from maskwatch.agent.errors import InputError
from maskwatch.agent.people.track import best_match
from maskwatch.agent.vision.decision import MASK, NO_MASK, decide_all
from maskwatch.agent.vision.preprocess import Box, CropSpec, face_input, whole_image_box
from maskwatch.agent.vision.voc import is_voc, read_voc

from .dataset import scan
from .errors import ConvertError
from .faces import FaceCropper, read_image
from .metrics import format_report, full_report, plot_confusion

SIZE_BUCKETS = (("<32", 0, 32), ("32-64", 32, 64), (">=64", 64, 10**9))


class KerasScorer:
    def __init__(self, path: Path):
        import keras

        run = path if path.is_dir() else path.parent
        model_file = path / "model.keras" if path.is_dir() else path
        report = json.loads((run / "report.json").read_text()) if (
            run / "report.json").is_file() else {}
        try:
            self.model = keras.models.load_model(model_file)
        except (OSError, ValueError) as exc:
            raise ConvertError(f"cannot load Keras model {model_file}: {exc}") from None
        size = int(self.model.input_shape[1])
        self.labels = report.get("labels") or [MASK, NO_MASK]
        self.crop = CropSpec(size=size, scale=float(report.get("crop", {}).get("scale", 1.2)))
        self.threshold = report.get("no_mask_threshold")
        self.name = str(model_file)

    def scores(self, crops: np.ndarray) -> np.ndarray:
        return self.model.predict(crops.astype(np.float32), batch_size=128, verbose=0)


class BundleScorer:
    def __init__(self, path: Path):
        from maskwatch.agent.vision.classify import Classifier

        self.classifier = Classifier(path)
        self.labels = self.classifier.labels
        self.crop = self.classifier.crop
        self.threshold = self.classifier.no_mask_threshold
        self.name = str(self.classifier.info.path)

    def scores(self, crops: np.ndarray) -> np.ndarray:
        out = [self.classifier.scores(crops[i:i + 64]) for i in range(0, len(crops), 64)]
        return np.concatenate(out)


def load_scorer(model: str):
    path = Path(model)
    if not path.exists():
        raise ConvertError(f"model not found: {model}")
    if path.suffix == ".tflite" or (path / "model.json").is_file():
        return BundleScorer(path)
    return KerasScorer(path)


def progress(items: list, what: str):
    """A progress bar on a terminal (tqdm), nothing in a log."""
    from tqdm import tqdm

    return tqdm(items, desc=what, file=sys.stderr, disable=None, leave=False)


def relit(image: np.ndarray, face: Box, light: str, brightness: float) -> np.ndarray:
    """`image` as in hard light: `dark`, all of it at `brightness` (an unlit entrance);
    `backlit`, the face box at `brightness` and the rest most of the way to white (a
    person in front of a bright window). `normal`: as photographed."""
    if light == "normal":
        return image
    if light != "backlit":
        return (image.astype(np.float32) * brightness).astype(np.uint8)
    out = 0.3 * image.astype(np.float32) + 0.7 * BACKLIGHT  # the window, as bench-near's
    x, y, w, h = face
    box = (slice(max(0, y), y + h), slice(max(0, x), x + w))
    out[box] = image[box] * brightness
    return out.astype(np.uint8)


def voc_crops(root: Path, spec: CropSpec, min_face: int, labels: list[str], detector=None,
              light: str = "normal", brightness: float = 1.0):
    """Crops of annotated faces: around the annotated box, or (with a detector) around the
    detector's matching box (IoU >= 0.3), which is what the device classifies. With a
    `light` other than normal, each face is cut from its image relit (`relit`); the
    detector still searches the image as photographed (this measures the classifier)."""
    crops, y, sizes, skipped = [], [], [], []
    missed = 0
    current: tuple[Path, np.ndarray | None, list] | None = None
    for face in progress(read_voc(root), f"{root.name}: faces"):
        if face.label not in labels or face.size < min_face:
            continue
        if current is None or current[0] != face.image:
            image = read_image(face.image)
            boxes = [f.box for f in detector.detect(image)] if (
                detector is not None and image is not None) else []
            current = (face.image, image, boxes)
        image, boxes = current[1], current[2]
        if image is None:
            skipped.append(str(face.image))
            continue
        box = face.box
        if detector is not None:
            match = best_match(face.box, boxes)
            if match is None:
                missed += 1
                continue
            box = boxes[match]
        crops.append(face_input(relit(image, face.box, light, brightness), box, spec))
        y.append(labels.index(face.label))
        sizes.append(face.size)
    return crops, y, sizes, sorted(set(skipped)), missed


def folder_crops(root: Path, spec: CropSpec, labels: list[str],
                 cropper: FaceCropper | None = None):
    """Crops of class-folder photos: the whole photo, or (with a cropper, as `train` cuts
    them) around the one face the agent's detector finds in it, the whole photo where it
    finds none. A photo taken at a door is mostly background: scored whole, it says little
    of what the device, which classifies the face, will do."""
    crops, y, sizes, skipped = [], [], [], []
    for sample in progress(scan([root]).samples, f"{root.name}: photos"):
        if sample.label not in labels:
            continue
        if cropper is not None:
            loaded = cropper.load(sample)
            image, box = loaded if loaded is not None else (None, None)
        else:
            image = read_image(sample.path)
            box = whole_image_box(image, spec) if image is not None else None
        if image is None:
            skipped.append(str(sample.path))
            continue
        crops.append(face_input(image, box, spec))
        y.append(labels.index(sample.label))
        sizes.append(max(box[2], box[3]))
    return crops, y, sizes, skipped


def boxes_from(voc: bool, detector, cropper: FaceCropper | None) -> str:
    """Where the classified crops were cut: the detector's boxes, the annotated ones (VOC),
    or the whole photo (class folders)."""
    if (detector if voc else cropper) is not None:
        return "detector"
    return "annotation" if voc else "whole photo"


def evaluate_set(scorer, root: Path, scale: float, min_face: int, threshold, plots: Path | None,
                 detector=None, light: str = "normal", brightness: float = 1.0,
                 cropper: FaceCropper | None = None):
    spec = CropSpec(size=scorer.crop.size, scale=scale)
    missed = None
    voc = is_voc(root)
    if voc:
        crops, y, sizes, skipped, missed = voc_crops(root, spec, min_face, scorer.labels,
                                                     detector, light, brightness)
    elif light != "normal":
        raise ConvertError(f"{root}: --light needs a Pascal VOC set (the face box is known)")
    else:
        found_before = cropper.detected if cropper is not None else 0
        crops, y, sizes, skipped = folder_crops(root, spec, scorer.labels, cropper)
    if not crops:
        raise ConvertError(f"no faces with known labels in {root}")
    scores = scorer.scores(np.stack(crops))
    pred = decide_all(scores, scorer.labels, threshold)
    y, sizes = np.asarray(y), np.asarray(sizes)
    result = {"data": str(root), "skipped_unreadable": skipped, "light": light,
              "brightness": brightness,
              "boxes": boxes_from(voc, detector, cropper),
              "faces_missed_by_detector": missed,
              "all": full_report(y, pred, scorer.labels), "by_face_size": {}}
    if voc and detector is not None:
        print(f"{root}: {missed} annotated faces not found by the detector (not classified)")
    if cropper is not None and not voc:
        found = cropper.detected - found_before
        whole = len(crops) - found
        result["photos_without_a_face_found"] = whole
        print(f"{root}: a face found in {found} photos, cropped around it; "
              f"{whole} scored whole (none found)")
    lit = "" if light == "normal" else f", {light} at {brightness:g} brightness"
    print(format_report(f"{root} (all faces{lit})", result["all"]))
    for name, lo, hi in SIZE_BUCKETS:
        keep = (sizes >= lo) & (sizes < hi)
        if keep.any():
            rep = full_report(y[keep], pred[keep], scorer.labels)
            result["by_face_size"][name] = rep
            print(format_report(f"  faces {name} px", rep))
    if plots is not None:
        plots.mkdir(parents=True, exist_ok=True)
        plot_confusion(result["all"], plots / f"confusion_{root.name}.png", str(root))
    return result


def evaluate(model: str, data: list[str], json_path: Path | None = None,
             plots: Path | None = None, scale: float = 1.2, min_face: int = 0,
             threshold: float | None = None, use_argmax: bool = False,
             detector_model: str | None = None, light: str = "normal",
             brightness: float = 1.0) -> dict:
    scorer = load_scorer(model)
    detector = cropper = None
    if detector_model:
        from maskwatch.agent.config import DetectConfig
        from maskwatch.agent.errors import ModelError
        from maskwatch.agent.factory import detector_from

        try:
            # VOC scenes: exactly the agent's default detector settings (config.yaml:
            # detect.*); class-folder photos: as `train` crops them
            detector = detector_from(DetectConfig(detector="yunet", model=detector_model))
            cropper = FaceCropper(CropSpec(size=scorer.crop.size, scale=scale),
                                  detector_model, None)
        except ModelError as exc:
            raise ConvertError(str(exc)) from None
    if use_argmax:
        threshold = None
    elif threshold is None:
        threshold = scorer.threshold
    results = {"model": scorer.name, "labels": scorer.labels, "no_mask_threshold": threshold,
               "crop_scale": scale, "min_face": min_face, "datasets": []}
    for root in data:
        path = Path(root)
        if not path.is_dir():
            raise ConvertError(f"data folder not found: {root}")
        try:
            results["datasets"].append(evaluate_set(scorer, path, scale, min_face, threshold,
                                                    plots, detector, light, brightness,
                                                    cropper))
        except InputError as exc:
            raise ConvertError(str(exc)) from None
    if json_path is not None:
        try:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(results, indent=2))
        except OSError as exc:
            raise ConvertError(f"cannot write {json_path}: {exc.strerror}") from None
    return results
