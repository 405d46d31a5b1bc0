"""Frame sources: V4L2 cameras, video files, RTSP/HTTP streams and the Pi camera.

Files are read frame by frame with timestamps from the video clock, so a run over a file
is deterministic (tests, benchmarks); `realtime` paces them like a camera. Live sources
are read by a background thread that keeps only the newest frame: when processing falls
behind, old frames are dropped instead of queueing up latency and memory.
A source that cannot be opened raises SourceError with a hint (which /dev/video*
devices exist; whether a file exists and is a video). `Reopener` keeps a source going:
a source lost after it worked is reopened with exponential backoff (`source_lost`); one
that never opened is an error at once, unless `source.wait` asks to wait for it.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import stat
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Protocol

import cv2
import numpy as np

from ..errors import SourceError, cannot_read
from .config import SourceConfig, hide_credentials

log = logging.getLogger("maskwatch.camera")

LIVE_READ_TIMEOUT_S = 5.0
STREAM_OPEN_TIMEOUT_MS = 5000


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


def camera_hint() -> str:
    devices = sorted(glob.glob("/dev/video*"))
    if not devices:
        return "no camera here: no /dev/video* device exists (try a video file: --source FILE)"
    return f"cameras here: {', '.join(devices)}"


def camera_device(uri: str) -> str | None:
    """The device file of a camera source ("0" is /dev/video0 under Linux's V4L2; elsewhere
    an index names no file)."""
    if uri.isdigit():
        return f"/dev/video{uri}" if sys.platform.startswith("linux") else None
    return uri


def check_camera_device(uri: str) -> None:
    """A camera that is not there, or that this process may not open, is said so: OpenCV
    only reports that it could not open it, and "cannot open camera 0; cameras here:
    /dev/video0" left a user who is not in the `video` group (logged in over SSH, say)
    guessing."""
    device = camera_device(uri)
    if device is None:
        return
    if not os.path.exists(device):
        named = uri if uri == device else f"{uri} ({device})"
        raise SourceError(f"camera {named} does not exist; {camera_hint()}")
    if not os.access(device, os.R_OK | os.W_OK):
        raise SourceError(f"cannot open camera {uri}: permission denied on {device} (add this "
                          "user to the 'video' group: sudo usermod -aG video $USER, then log "
                          "in again)")


def _check_file_openable(path: str) -> None:
    """A one-line reason why a file cannot be a video source, before OpenCV tries."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SourceError(f"video file not found: {path}") from None
    except OSError as exc:  # under a folder this user may not enter (/home, to the service)
        raise SourceError(cannot_read(path, exc.strerror, "source.uri")) from None
    if stat.S_ISDIR(mode):
        raise SourceError(f"{path} is a directory, not a video file")
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise SourceError(f"cannot open {path}: the process is out of file descriptors "
                              "(too many open connections?)") from None
        raise SourceError(f"cannot open {path}: {exc.strerror}") from None


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
        _check_file_openable(self.path)
        # one decoder thread: FFmpeg's default (one per core) costs ~5 MB of frame buffers
        # for a file the agent reads no faster than it processes
        cap = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
        ok, image = cap.read() if cap.isOpened() else (False, None)
        if not ok:
            cap.release()
            raise SourceError(f"cannot read video file {self.path}: not a video, truncated, "
                              "or no codec for it")
        self._peeked: np.ndarray | None = image
        return cap

    def read(self) -> Frame | None:
        ok, image = self._next_image()
        if not ok and self.loop:
            self._cap.release()
            self._cap = self._open()
            ok, image = self._next_image()
        if not ok:
            if not os.path.isfile(self.path):  # never raises, unlike Path.is_file
                raise SourceError(f"video file disappeared: {self.path}")
            return None
        ts = self._index / self.fps
        self._index += 1
        if self.realtime:
            delay = self._started + ts - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        return Frame(image, ts, self._index - 1)

    @property
    def frame_count(self) -> int:
        """Frames in the file as its header says (0 when unknown)."""
        return max(0, int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))

    def _next_image(self) -> tuple[bool, np.ndarray | None]:
        if self._peeked is not None:
            image, self._peeked = self._peeked, None
            return True, image
        return self._cap.read()

    def close(self) -> None:
        self._cap.release()


class LiveSource:
    """A camera or stream read by a thread that keeps only the newest frame."""

    live = True

    def __init__(self, uri: str, width: int | None = None, height: int | None = None) -> None:
        self.description = hide_credentials(uri)
        if self._is_camera(uri):
            check_camera_device(uri)
            self._cap = cv2.VideoCapture(int(uri) if uri.isdigit() else uri)
            if not self._cap.isOpened():
                raise SourceError(f"cannot open camera {uri} (not a capture device, or in use "
                                  f"by another program?); {camera_hint()}")
        else:
            self._cap = cv2.VideoCapture(uri, cv2.CAP_FFMPEG, [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_OPEN_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_OPEN_TIMEOUT_MS])
            if not self._cap.isOpened():
                raise SourceError(f"cannot open stream {self.description} (no answer within "
                                  f"{STREAM_OPEN_TIMEOUT_MS // 1000} s, wrong address, or "
                                  "refused)")
        if self._is_camera(uri):
            self._ask_size(width, height)
        self._latest: Frame | None = None
        self._failed = False
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._count = 0
        self._thread = threading.Thread(target=self._pump, name="camera", daemon=True)
        self._thread.start()

    @staticmethod
    def _is_camera(uri: str) -> bool:
        return uri.isdigit() or uri.startswith("/dev/")

    def _ask_size(self, width: int | None, height: int | None) -> None:
        """Ask a V4L2 camera for width x height and log what it gives (a camera picks its
        nearest mode). Streams send what they send: pick their sub-stream instead."""
        if width:
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        given = (int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                 int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        log.info("camera %s gives %dx%d (asked for %sx%s)", self.description, *given,
                 width or "-", height or "-")

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


# Camera modes nearly every USB camera and the Pi camera offer, smallest first
CAPTURE_SIZES = ((640, 480), (1280, 720), (1920, 1080))


def capture_size(settings: SourceConfig, max_side: int) -> SourceConfig:
    """The settings with the size to ask a camera for: the configured width and height,
    else the smallest common mode whose long side reaches `detect.max_side` (640x480 at
    the default 480). A camera left at its own default often sends 1080p, and the agent
    would decode 6.75x the pixels only to shrink them to 480 for the detector."""
    if settings.width or settings.height:
        return settings
    width, height = next((s for s in CAPTURE_SIZES if s[0] >= max_side), CAPTURE_SIZES[-1])
    return replace(settings, width=width, height=height)


def is_file_source(uri: str) -> bool:
    return uri.startswith("file://") or (
        not uri.isdigit() and "://" not in uri and not uri.startswith("/dev/")
        and uri != "picamera2")


def ends_at_eof(uri: str, settings: SourceConfig) -> bool:
    """A video file not looped ends: there is nothing to wait for at its end. (Reopened as
    a lost camera is, its video time began again at 0 and the pipeline, scheduled past it,
    searched none of it: every pass after the first gave no one.)"""
    return is_file_source(uri) and not settings.loop


def open_source(uri: str, settings: SourceConfig) -> Source:
    """Open a source by URI; raises SourceError with a one-line reason."""
    if uri == "picamera2":
        return PiCameraSource(settings.width, settings.height)
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if is_file_source(uri):
        return FileSource(uri, realtime=settings.realtime, loop=settings.loop)
    return LiveSource(uri, settings.width, settings.height)


def quiet_opencv() -> None:
    """OpenCV's and FFmpeg's own warnings (one per failed reopen) would flood the journal;
    our log lines say what happened. (FFmpeg reads its level when first used.)"""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    logging_module = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging_module is not None:
        logging_module.setLogLevel(logging_module.LOG_LEVEL_SILENT)
    elif hasattr(cv2, "setLogLevel"):  # older OpenCV (4.11: Python 3.9, with NumPy 1)
        cv2.setLogLevel(0)  # LOG_LEVEL_SILENT


class Reopener:
    """Delivers frames from a source URI, reopening it with backoff when it is lost.

    `on_change(state, source, reason)` is called with "ok" (source opened), "lost"
    (reason given) and "ended" (a file reached its end with `until_eof`). `idle()` is
    called about twice a second while waiting (watchdog pings, stats).
    """

    def __init__(self, uri: str, settings: SourceConfig, stop: threading.Event,
                 on_change: Callable[[str, Source | None, str | None], None],
                 idle: Callable[[], None], until_eof: bool = False) -> None:
        self.uri, self.settings, self.stop = uri, settings, stop
        self.on_change, self.idle, self.until_eof = on_change, idle, until_eof
        self.source: Source | None = None
        self._delay = settings.retry_initial_s

    def open_first(self) -> None:
        """Open the source at start. It must open unless `source.wait` is set (a camera the
        service waits for); a file with `--until-eof` must open in any case."""
        try:
            self._open()
        except SourceError as exc:
            if not self.settings.wait or (self.until_eof and is_file_source(self.uri)):
                raise
            log.warning("%s; waiting for it (source.wait is on), retrying with backoff", exc)
            self.on_change("lost", None, str(exc))

    def _open(self) -> None:
        self.source = open_source(self.uri, self.settings)
        self._delay = self.settings.retry_initial_s
        log.info("reading frames from %s", self.source.description)
        self.on_change("ok", self.source, None)

    def next_frame(self) -> Frame | None:
        """The next frame; None when stopping or (with until_eof) at the end of a file."""
        while not self.stop.is_set():
            if self.source is None:
                self._wait()
                if self.stop.is_set():
                    return None
                try:
                    self._open()
                except SourceError as exc:
                    self.on_change("lost", None, str(exc))
                continue
            try:
                frame = self.source.read()
                error = None
            except SourceError as exc:
                frame, error = None, str(exc)
            if frame is not None:
                return frame
            self.close()
            if error is None and self.until_eof:
                self.on_change("ended", None, None)
                return None
            self.on_change("lost", None, error or f"{hide_credentials(self.uri)} ended")
        return None

    def _wait(self) -> None:
        deadline = time.monotonic() + self._delay
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.idle()
            self.stop.wait(min(0.5, max(0.0, deadline - time.monotonic())))
        self._delay = min(self._delay * 2, self.settings.retry_max_s)

    def close(self) -> None:
        if self.source is not None:
            self.source.close()
            self.source = None
