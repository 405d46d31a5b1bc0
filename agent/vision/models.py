"""Detector model files: where they live, and `mask-agent models fetch`.

The default detector, YuNet (MIT, 227 KB), ships inside the package
(agent/vision/default_detector/, sha256-checked like the classifier bundle), so a fresh install
needs no download. The optional BlazeFace models (Apache-2.0) are downloaded from their
public sources once (pinned sha256) into `<state_dir>/models`, or copied from a folder
(`--from DIR`) on devices without internet.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import MaskwatchError, ModelError


@dataclass(frozen=True)
class ModelFile:
    name: str
    sha256: str
    url: str
    licence: str


DETECTOR_FILES: dict[str, ModelFile] = {
    "yunet": ModelFile(
        "face_detection_yunet_2023mar.onnx",
        "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
        "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/"
        "face_detection_yunet_2023mar.onnx", "MIT"),
    "blazeface": ModelFile(
        "face_detection_short_range.tflite",
        "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
        "https://github.com/google/mediapipe/raw/master/mediapipe/modules/face_detection/"
        "face_detection_short_range.tflite", "Apache-2.0"),
    "blazeface-full": ModelFile(
        "face_detection_full_range.tflite",
        "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
        "https://github.com/google/mediapipe/raw/master/mediapipe/modules/face_detection/"
        "face_detection_full_range.tflite", "Apache-2.0"),
}
BUNDLED_DIR = Path(__file__).parent / "default_detector"
BUNDLED = {"yunet"}  # shipped in the package; `models fetch` is for the others
OPTIONAL = tuple(name for name in DETECTOR_FILES if name not in BUNDLED)
DOWNLOAD_TIMEOUT_S = 60
MAX_MODEL_BYTES = 50_000_000


class FetchError(MaskwatchError):
    """A model could not be downloaded or copied, or failed its checksum."""

    exit_code = 69


def models_dir(state_dir: str | Path | None = None) -> Path:
    if state_dir is None:
        from ..settings import default_state_dir

        state_dir = default_state_dir()
    return Path(state_dir) / "models"


def bundled_model_path(detector: str = "yunet") -> Path:
    """The detector model shipped in the package, checked against its pinned sha256."""
    model = DETECTOR_FILES[detector]
    path = BUNDLED_DIR / model.name
    if not path.is_file() or sha256_file(path) != model.sha256:
        raise ModelError(f"bundled {detector} model {path} is missing or corrupt: reinstall "
                         "maskwatch")
    return path


def detector_model_path(detector: str, configured: str | None,
                        state_dir: str | Path) -> Path | None:
    """The detector's model file: the configured path, else the bundled or fetched one."""
    if detector == "haar":
        return None
    if configured:
        return Path(configured)
    if detector in BUNDLED:
        return bundled_model_path(detector)
    path = models_dir(state_dir) / DETECTOR_FILES[detector].name
    if not path.is_file():
        raise ModelError(f"{detector} model not found at {path}: run 'mask-agent models fetch "
                         f"--only {detector}' (offline: add --from DIR, a folder holding "
                         f"{DETECTOR_FILES[detector].name})")
    return path


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _install_verified(tmp: Path, model: ModelFile, dest_dir: Path, origin: str) -> Path:
    actual = sha256_file(tmp)
    if actual != model.sha256:
        tmp.unlink(missing_ok=True)
        raise FetchError(f"{model.name} from {origin} has sha256 {actual[:16]}…, expected "
                         f"{model.sha256[:16]}…: refusing it")
    target = dest_dir / model.name
    os.replace(tmp, target)
    target.chmod(0o644)
    return target


def _download(url: str, out: Path, name: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, \
                open(out, "wb") as f:
            copied = 0
            for chunk in iter(lambda: response.read(1 << 16), b""):
                copied += len(chunk)
                if copied > MAX_MODEL_BYTES:
                    raise FetchError(f"{url} is larger than {MAX_MODEL_BYTES} bytes")
                f.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise FetchError(f"cannot download {name} from "
                         f"{url}: {reason}; without internet, copy the file to this device and "
                         "run: mask-agent models fetch --from DIR") from None


def fetch(dest_dir: Path, source_dir: Path | None = None, base_url: str | None = None,
          names: list[str] | None = None) -> list[Path]:
    """Fetch (or copy) detector models into dest_dir, verifying each sha256.

    Default: the optional detectors (the bundled YuNet needs no fetching). Files already
    present with the right checksum are kept. With `source_dir`, the files found there
    are copied and the missing ones skipped (an error only when none is found).
    """
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot create {dest_dir}: {exc.strerror}") from None
    wanted = names or list(OPTIONAL)
    unknown = [n for n in wanted if n not in DETECTOR_FILES]
    if unknown:
        raise FetchError(f"unknown model {unknown[0]!r} (known: {', '.join(DETECTOR_FILES)})")
    done: list[Path] = []
    missing: list[str] = []
    for name in wanted:
        model = DETECTOR_FILES[name]
        target = dest_dir / model.name
        if target.is_file() and sha256_file(target) == model.sha256:
            done.append(target)
            continue
        fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=".fetch-")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            if source_dir is not None:
                origin = source_dir / model.name
                if not origin.is_file():
                    missing.append(model.name)
                    continue
                shutil.copyfile(origin, tmp)
            else:
                origin = f"{base_url.rstrip('/')}/{model.name}" if base_url else model.url
                _download(str(origin), tmp, model.name)
            done.append(_install_verified(tmp, model, dest_dir, str(origin)))
        finally:
            tmp.unlink(missing_ok=True)
    if missing and (names or not done):
        raise FetchError(f"not found in {source_dir}: {', '.join(missing)}")
    return done
