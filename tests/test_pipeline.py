"""Pipeline behaviour: detection rate cap, region of interest, undecided-only classification,
and the Pi camera source (the one piece of hardware that cannot exist here: faked)."""

from __future__ import annotations

import sys
import types

import numpy as np

from maskwatch.agent.config import SourceConfig, TrackConfig
from maskwatch.agent.people.track import Tracker
from maskwatch.agent.pipeline import Pipeline, roi_pixels
from maskwatch.agent.vision.camera import FileSource, PiCameraSource, open_source
from maskwatch.agent.vision.classify import Classifier
from maskwatch.agent.vision.detect import Face


class ScriptedDetector:
    """Returns one fixed face and records what it was shown."""

    name = "scripted"

    def __init__(self) -> None:
        self.shapes: list[tuple[int, int]] = []

    def detect(self, frame, region=None):
        self.shapes.append(frame.shape[:2])
        return [Face((10, 10, 40, 40), 0.9)]


def test_detection_rate_cap_and_roi(street_video):
    detector = ScriptedDetector()
    pipeline = Pipeline(detector, Classifier(),
                        Tracker(TrackConfig(min_votes=2, static_check=False)), detect_fps=5.0,
                        roi=(0.5, 0.0, 0.5, 1.0))
    source = FileSource(str(street_video))
    for _ in range(49):  # two seconds of 24.5 fps video
        pipeline.process(source.read())
    assert pipeline.stats.detections == 10  # 5 per second of video time
    assert set(detector.shapes) == {(372, 269)}  # only the right half was searched
    assert pipeline.latest[0].box[0] == 10 + 269  # boxes come back in frame pixels
    # one person: classified until decided, then only now and then
    assert pipeline.stats.classified < pipeline.stats.detections


def test_roi_pixels():
    assert roi_pixels(None, 640, 480) is None
    assert roi_pixels([0.25, 0.5, 0.5, 0.5], 640, 480) == (160, 240, 320, 240)


def test_picamera2_source(monkeypatch):
    frames = []

    class FakePicamera2:
        def create_video_configuration(self, main):
            self.size = main["size"]
            return main

        def configure(self, config):
            pass

        def start(self):
            pass

        def capture_array(self, stream):
            frame = np.zeros((self.size[1], self.size[0], 3), np.uint8)
            frames.append(frame)
            return frame

        def stop(self):
            pass

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=FakePicamera2))
    source = open_source("picamera2", SourceConfig(width=320, height=240))
    assert isinstance(source, PiCameraSource) and source.live
    frame = source.read()
    assert frame.image.shape == (240, 320, 3) and frame.index == 0
    source.close()


def test_picamera2_missing_is_a_clear_error(monkeypatch):
    import pytest

    from maskwatch.agent.errors import SourceError

    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(SourceError, match="python3-picamera2"):
        open_source("picamera2", SourceConfig())


def test_unopenable_sources(tmp_path):
    import pytest

    from maskwatch.agent.errors import SourceError

    not_video = tmp_path / "x.mp4"
    not_video.write_text("not a video")
    with pytest.raises(SourceError, match="cannot read video file .*not a video"):
        open_source(str(not_video), SourceConfig())
    with pytest.raises(SourceError, match="camera /dev/video99 does not exist; "):
        open_source("/dev/video99", SourceConfig())
    with pytest.raises(SourceError, match=r"camera 99 \(/dev/video99\) does not exist; "):
        open_source("99", SourceConfig())


def test_a_camera_this_user_may_not_open_is_said_so():
    """Not in the `video` group (a user logged in over SSH): the device is there but closed
    to this process. Root may open anything, so as root the check runs in a child that has
    become `nobody` (uid 65534); a user meets a device it has no rights on itself."""
    import os
    import tempfile
    from pathlib import Path

    import pytest

    from maskwatch.agent.errors import SourceError
    from maskwatch.agent.vision.camera import check_camera_device

    # in /tmp itself, not under $TMPDIR, which may be a folder nobody else may enter
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        os.chmod(folder, 0o755)  # nobody may look in, not open the device
        device = Path(folder) / "video0"
        device.touch()
        device.chmod(0)
        if os.geteuid() != 0:
            with pytest.raises(SourceError, match="permission denied on .*'video' group"):
                check_camera_device(str(device))
            return
        child = os.fork()
        if child == 0:  # pragma: no cover - the child's result is its exit status
            try:
                os.setgid(65534)
                os.setuid(65534)
                check_camera_device(str(device))
                os._exit(1)
            except SourceError as error:
                os._exit(0 if "'video' group" in str(error) else 2)
            finally:
                os._exit(3)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
