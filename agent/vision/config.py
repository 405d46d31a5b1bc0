"""The vision part's settings: `source`, `detect`, `classify`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..settings import setting


@dataclass(frozen=True)
class SourceConfig:
    uri: str = setting("0", "source", "camera index, /dev/videoN, video file, rtsp:// or "
                       "http(s):// URL, or 'picamera2'")
    realtime: bool = setting(False, "bool", "pace video files at their frame rate (live "
                             "sources always are)")
    loop: bool = setting(False, "bool", "restart a video file at its end")
    width: int | None = setting(None, "int", "capture width asked of a camera (V4L2, Pi); "
                                "null: the smallest of 640x480, 1280x720, 1920x1080 that "
                                "detect.max_side needs", low=16, high=8192, nullable=True)
    height: int | None = setting(None, "int", "capture height asked of a camera; null: as "
                                 "width", low=16, high=8192, nullable=True)
    wait: bool = setting(False, "bool", "keep retrying a camera or stream that is not there "
                         "at start (the systemd unit turns this on); off: exit 66 at once")
    retry_initial_s: float = setting(1.0, "float", "first wait before reopening a lost source",
                                     low=0.01, high=3600)
    retry_max_s: float = setting(30.0, "float", "longest wait between reopen attempts",
                                 low=0.01, high=3600)


CONTRAST = ("backlit", "near", "all", "none")


@dataclass(frozen=True)
class DetectConfig:
    detector: str = setting("yunet", "enum", "face detector",
                            choices=("yunet", "blazeface", "haar"))
    model: str | None = setting(None, "path", "detector model file; null: the bundled YuNet "
                                "(blazeface: the fetched file in <state_dir>/models)",
                                nullable=True)
    fps: float = setting(10.0, "float", "detection rate cap (frames per second of video time)",
                         low=0.1, high=120)
    max_side: int = setting(480, "int", "frames are scaled to this long side for detection "
                            "(with the motion gate only the parts that move or hold people "
                            "are searched, at this scale)", low=64, high=4096)
    coarse_side: int = setting(160, "int", "yunet: also search at this long side (near faces, "
                               "which the max_side search scores low); 0: one scale only",
                               low=0, high=4096)
    contrast: str = setting("backlit", "enum", "yunet: equalise local contrast before "
                            "searching (dark or backlit faces): in the coarse_side search "
                            "(near), and in the max_side one too where a quarter of the "
                            "view is near white (backlit; such a view is first exposed for "
                            "what is in front of the window), always (all, exposed as "
                            "backlit) or never (none); the classifier sees the frame as it "
                            "is", choices=CONTRAST)
    second_look: bool = setting(True, "bool", "yunet: a face the max_side search scores "
                                "from 0.3 up to score_threshold (30 px or more at that scale) "
                                "is searched again in a window around it, the face at 48, 64 "
                                "and 96 px (96 and 128 px where it is 150 px or more), and "
                                "counts where each of those sizes finds it")
    min_face: int = setting(20, "int", "ignore faces smaller than this (pixels)", low=4,
                            high=4096)
    score_threshold: float = setting(0.5, "float", "minimum detector confidence", low=0.0,
                                     high=1.0)
    coarse_score_threshold: float | None = setting(
        None, "float", "yunet: minimum confidence of the coarse_side search's faces (near "
        "faces, which it scores lower); null: as score_threshold", low=0.0, high=1.0,
        nullable=True)
    site_tuning: bool = setting(True, "bool", "use the score threshold fitted here by "
                                "`mask-agent adapt --labels` (<state_dir>/site_detector.json) "
                                "when there is one")
    roi: tuple[float, float, float, float] | None = setting(
        None, "roi", "region of interest [x, y, w, h] as fractions of the frame", nullable=True)
    motion_gate: bool = setting(True, "bool", "skip detection while nothing moves and nobody "
                                "is tracked (a cheap low-resolution frame difference)")
    idle_check_s: float = setting(2.0, "float", "with the motion gate: a full detection at "
                                  "least this often anyway", low=0.1, high=3600)
    max_image_pixels: int = setting(40_000_000, "int", "largest image (width x height) that "
                                    "`detect` and /v1/predict decode; larger is refused",
                                    low=1024, high=1_000_000_000)

    def using(self, detector: str) -> DetectConfig:
        """The same settings with another detector; the configured model file belongs to
        the configured detector only (the other gets its bundled or fetched file)."""
        if detector == self.detector:
            return self
        return dataclasses.replace(self, detector=detector, model=None)


@dataclass(frozen=True)
class ClassifyConfig:
    model: str | None = setting(None, "path", "model bundle folder; null: the bundled default",
                                nullable=True)
    no_mask_threshold: float | None = setting(None, "float", "override the bundle's no-mask "
                                              "threshold", low=0.0, high=1.0, nullable=True)
    threads: int = setting(1, "int", "TFLite interpreter threads", low=1, high=16)
    site_head: bool = setting(True, "bool", "use the head fitted here by `mask-agent adapt` "
                              "(<state_dir>/site_head.json) when there is one")


def hide_credentials(uri: str) -> str:
    """The URI with any user:password replaced, safe for logs, errors and --print."""
    if "://" in uri and "@" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return uri
