"""Build the pipeline's parts from the config: the one place where they are wired.

The service, the CLI tools, the benchmarks and `mask-convert` all get their detector,
classifier and tracker here, so every one of them runs with the settings (and defaults)
of the config's `detect`, `classify` and `track` sections, declared once in config.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from .config import Config
from .delivery.topics import Topics
from .errors import ModelError, cannot_read
from .people.config import TrackConfig
from .people.track import Tracker
from .pipeline import Pipeline
from .vision.classify import Classifier
from .vision.config import ClassifyConfig, DetectConfig
from .vision.detect import Detector, create_detector
from .vision.head import head_path
from .vision.models import detector_model_path
from .vision.motion import MotionGate
from .vision.tuning import TuningFile, tuning_path


@contextlib.contextmanager
def reading_model(setting: str, configured: str | None) -> Iterator[None]:
    """A model file this user may not read is one line and exit 78, not an internal error
    (and exit 1, which systemd restarts every 5 s for ever)."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or configured or "the bundled model"
        raise ModelError(cannot_read(where, exc.strerror, setting)) from None


def detector_from(settings: DetectConfig, state_dir: str | Path | None = None,
                  site_tuning: bool = True) -> Detector:
    """The configured detector (ModelError when its model file is missing or bad), with
    the score threshold fitted at this site in `state_dir` when there is one (and
    `detect.site_tuning`; `adapt` itself searches from the configured threshold)."""
    with reading_model("detect.model", settings.model):
        model = detector_model_path(settings.detector, settings.model, state_dir or ".")
        tuning = None
        if state_dir and site_tuning and settings.site_tuning and settings.detector != "haar":
            tuning = TuningFile(tuning_path(state_dir), settings.detector,
                                settings.score_threshold)
        return create_detector(settings, model, tuning)


def classifier_from(settings: ClassifyConfig, state_dir: str | Path | None = None) -> Classifier:
    """The bundle's classifier, with the site head in `state_dir` when there is one."""
    head = head_path(state_dir) if state_dir and settings.site_head else None
    with reading_model("classify.model", settings.model):
        return Classifier(settings.model, threads=settings.threads,
                          no_mask_threshold=settings.no_mask_threshold, head_file=head)


def tracker_from(settings: TrackConfig) -> Tracker:
    return Tracker(settings)


def topics_from(cfg: Config) -> Topics:
    """This device's MQTT topics (the config must be resolved: device_id set)."""
    return Topics.of(cfg.mqtt.topic_prefix, cfg.device_id or "",
                     cfg.homeassistant.discovery_prefix)


def pipeline_from(cfg: Config) -> Pipeline:
    """Detector + classifier + tracker from the config (ModelError when a model is bad)."""
    return Pipeline(detector_from(cfg.detect, cfg.state_dir),
                    classifier_from(cfg.classify, cfg.state_dir), tracker_from(cfg.track),
                    cfg.detect.fps, cfg.detect.roi,
                    gate=MotionGate() if cfg.detect.motion_gate else None,
                    idle_check_s=cfg.detect.idle_check_s)
