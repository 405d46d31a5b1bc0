"""Frame sources: V4L2 cameras, video files, RTSP/HTTP streams and the Pi camera.

Files are read frame by frame with timestamps from the video clock, so a run over a file
is deterministic (tests, benchmarks); `realtime` paces them like a camera. Live sources
are read by a background thread that keeps only the newest frame: when processing falls
behind, old frames are dropped instead of queueing up latency and memory.
A source that cannot be opened or stops delivering raises SourceError; the service
retries with backoff and reports `source_lost`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from .errors import SourceError

LIVE_READ_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # BGR
    ts: float  # seconds on the source's clock (video time for files, monotonic for live)
    index: int


class Source(Protocol):
    live: bool
    description: str

    def read(self) -> Frame | None: ...

    def close(self) -> None: ...


def describe(uri: str) -> str:
    """The URI without credentials, safe for logs and status messages."""
    if "://" in uri and "@" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri


class FileSource:
    """A video file read frame by frame; `loop` restarts it at the end."""

    live = False

    def __init__(self, path: str, realtime: bool = False, loop: bool = False) -> None:
        self.path, self.realtime, self.loop = path, realtime, loop
        self.description = path
        self._cap = self._open()
        self.fps = self._cap.get(cv2.CAP_PROP_FPS) or 25.0
        if not 1.0 <= self.fps <= 240.0:
            self.fps = 25.0
        self._index = 0  # frames delivered in total (over loops)
        self._started = time.monotonic()

    def _open(self) -> cv2.VideoCapture:
        if not Path(self.path).is_file():
            raise SourceError(f"video file not found: {self.path}")
        cap = cv2.VideoCapture(self.path)
        if not cap.isOpened():
            raise SourceError(f"cannot open video file {self.path} (not a video, or no codec)")
        return cap

    def read(self) -> Frame | None:
        ok, image = self._cap.read()
        if not ok and self.loop:
            self._cap.release()
            self._cap = self._open()
            ok, image = self._cap.read()
        if not ok:
            if not Path(self.path).is_file():
                raise SourceError(f"video file disappeared: {self.path}")
            return None
        ts = self._index / self.fps
        self._index += 1
        if self.realtime:
            delay = self._started + ts - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        return Frame(image, ts, self._index - 1)

    def close(self) -> None:
        self._cap.release()


class LiveSource:
    """A camera or stream read by a thread that keeps only the newest frame."""

    live = True

    def __init__(self, uri: str, width: int | None = None, height: int | None = None) -> None:
        self.description = describe(uri)
        target: int | str = int(uri) if uri.isdigit() else uri
        self._cap = cv2.VideoCapture(target)
        if not self._cap.isOpened():
            raise SourceError(f"cannot open camera or stream {self.description}")
        if width:
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        self._latest: Frame | None = None
        self._failed = False
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._count = 0
        self._thread = threading.Thread(target=self._pump, name="camera", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while not self._stop.is_set():
            ok, image = self._cap.read()
            with self._cond:
                if not ok:
                    self._failed = True
                    self._cond.notify_all()
                    return
                self._latest = Frame(image, time.monotonic(), self._count)
                self._count += 1
                self._cond.notify_all()

    def read(self) -> Frame | None:
        with self._cond:
            got = self._cond.wait_for(lambda: self._latest is not None or self._failed,
                                      timeout=LIVE_READ_TIMEOUT_S)
            if self._latest is not None:
                frame, self._latest = self._latest, None
                return frame
        if self._failed:
            raise SourceError(f"camera or stream {self.description} stopped delivering frames")
        if not got:
            raise SourceError(f"no frame from {self.description} for {LIVE_READ_TIMEOUT_S:.0f} s")
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._cap.release()


class PiCameraSource:
    """The Raspberry Pi camera through picamera2 (libcamera)."""

    live = True
    description = "picamera2"

    def __init__(self, width: int | None = None, height: int | None = None) -> None:
        try:
            from picamera2 import Picamera2  # type: ignore[import-not-found]
        except ImportError:
            raise SourceError("source 'picamera2' needs the picamera2 package "
                              "(sudo apt install python3-picamera2)") from None
        try:
            self._cam = Picamera2()
            size = (width or 640, height or 480)
            self._cam.configure(self._cam.create_video_configuration(
                main={"size": size, "format": "RGB888"}))
            self._cam.start()
        except Exception as exc:  # picamera2 raises many types; all mean "no camera"
            raise SourceError(f"cannot start the Pi camera: {exc}") from None
        self._count = 0

    def read(self) -> Frame | None:
        image = self._cam.capture_array("main")  # RGB888 in libcamera is BGR in memory
        self._count += 1
        return Frame(image, time.monotonic(), self._count - 1)

    def close(self) -> None:
        self._cam.stop()
        self._cam.close()


def is_file_source(uri: str) -> bool:
    return not uri.isdigit() and "://" not in uri and not uri.startswith("/dev/") \
        and uri != "picamera2"


def open_source(uri: str, realtime: bool = False, loop: bool = False,
                width: int | None = None, height: int | None = None) -> Source:
    """Open a source by URI; raises SourceError with a one-line reason."""
    if uri == "picamera2":
        return PiCameraSource(width, height)
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if is_file_source(uri):
        return FileSource(uri, realtime=realtime, loop=loop)
    return LiveSource(uri, width, height)
