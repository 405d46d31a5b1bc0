"""The motion gate: sensor noise and lighting drift are not motion; a person entering is."""

from __future__ import annotations

import numpy as np

from maskwatch.agent.bench.measure import EmptyScene
from maskwatch.agent.config import DetectConfig, TrackConfig
from maskwatch.agent.people.track import Tracker
from maskwatch.agent.pipeline import Pipeline
from maskwatch.agent.vision.camera import Frame
from maskwatch.agent.vision.detect import Face
from maskwatch.agent.vision.motion import MotionGate


def test_noise_and_lighting_drift_are_not_motion():
    scene, gate = EmptyScene((640, 480), frames=300), MotionGate()
    moved = [gate.moved(scene.read().image) for _ in range(300)]
    assert moved[0] == [(0, 0, 640, 480)]  # the first frame is all new
    assert all(m == [] for m in moved[1:])  # 10 s of noise and +-8 % brightness drift


def test_someone_entering_is_motion_where_they_are():
    scene, gate = EmptyScene((640, 480), frames=40), MotionGate()
    for _ in range(20):
        gate.moved(scene.read().image)
    image = scene.read().image.copy()
    image[200:300, 400:470] = 30  # a dark figure at x 400..470, y 200..300
    [(x, y, w, h)] = gate.moved(image)
    assert 380 <= x <= 400 and 400 + 70 <= x + w <= 490 and 180 <= y <= 200 and h >= 90


class CountingDetector:
    name = "counting"

    def __init__(self) -> None:
        self.runs = 0

    def detect(self, frame, region=None):
        self.runs += 1
        return []


def test_pipeline_skips_detection_on_an_empty_scene_but_checks_now_and_then():
    from maskwatch.agent.vision.classify import Classifier

    detector = CountingDetector()
    pipeline = Pipeline(detector, Classifier(), Tracker(TrackConfig()),
                        detect_fps=DetectConfig().fps, gate=MotionGate(), idle_check_s=2.0)
    scene = EmptyScene((320, 240), frames=300)  # 10 s at 30 fps
    while (frame := scene.read()) is not None:
        pipeline.process(frame)
    assert pipeline.stats.frames == 300
    assert detector.runs == 5  # the first frame, then one idle check every 2 s
    assert pipeline.stats.idle_skips == 100 - 5  # of 100 scheduled (10 per second)


def test_tracked_people_keep_the_detector_running():
    class OneFace(CountingDetector):
        def detect(self, frame, region=None):
            self.runs += 1
            return [Face((100, 100, 40, 40), 0.9)]

    from maskwatch.agent.vision.classify import Classifier

    detector = OneFace()
    pipeline = Pipeline(detector, Classifier(), Tracker(TrackConfig()), detect_fps=10.0,
                        gate=MotionGate(), idle_check_s=2.0)
    still = np.full((240, 320, 3), 120, np.uint8)  # nothing moves, but a person is tracked
    for i in range(60):
        pipeline.process(Frame(still, i / 30.0, i))
    assert detector.runs == 20  # every scheduled detection (10 per second for 2 s)


def test_bench_reports_work_per_frame_for_each_mode(tmp_path):
    import json
    import subprocess

    from maskwatch.agent.demo import DEMO_CLIP

    from .conftest import agent_command

    out = tmp_path / "bench.json"
    result = subprocess.run(agent_command("bench", str(DEMO_CLIP), "--frames", "60", "--size",
                                          "320x240", "--out", str(out)),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["machine"]["cpu"] and data["threads"] == 1
    rows = {r["mode"]: r for r in data["results"]}
    assert set(rows) == {"defaults", "every-frame", "empty", "doorway"}
    assert all(r["frames"] == 60 and r["size"] == [320, 240] for r in rows.values())
    assert rows["doorway"]["people"] == 1  # a face from the clip, crossing the still scene
    assert rows["doorway"]["frame_share_searched_per_frame"] < 0.2  # where it walks
    assert rows["every-frame"]["detector_runs_per_frame"] == 1.0
    assert rows["defaults"]["detector_runs_per_frame"] < 0.5  # the 10/s cap on 25 fps
    assert rows["empty"]["faces"] == 0 and rows["empty"]["detector_runs_per_frame"] < 0.1
    assert "det/f" in result.stdout and "CPU %" in result.stdout
    stages = rows["defaults"]["peak_rss_mb_after"]
    assert list(stages) == ["imports", "models", "source open", "first frame"]
    assert stages["imports"] <= stages["first frame"] <= rows["defaults"]["peak_rss_mb"]
    split = rows["defaults"]["rss_mb_at_end"]  # Linux: anonymous + mapped from files
    assert split["anon"] > 5 and split["file"] > 5
    assert split["anon"] + split["file"] <= rows["defaults"]["peak_rss_mb"] + 1
    assert "anonymous" in result.stdout
    assert rows["every-frame"]["frame_share_searched_per_frame"] > 0.5  # people move


def test_only_what_moved_and_where_people_are_is_searched():
    """After the first full look, a person walking across a still scene is searched for
    around them, not in the whole frame; the whole frame again at the idle check."""
    class Walker(CountingDetector):
        def __init__(self):
            super().__init__()
            self.calls, self.x = [], 100  # (x of the face then, region searched)

        def detect(self, frame, region=None):
            self.calls.append((self.x, region))
            return [Face((self.x, 200, 40, 40), 0.9)]

    from maskwatch.agent.vision.classify import Classifier

    detector = Walker()
    pipeline = Pipeline(detector, Classifier(), Tracker(TrackConfig()), detect_fps=10.0,
                        gate=MotionGate(), idle_check_s=2.0)
    scene = EmptyScene((640, 480), frames=75)
    for i in range(75):  # 2.5 s at 30 fps, the person moving right 4 px a frame
        image = scene.read().image.copy()
        detector.x = 100 + 4 * i
        image[200:240, detector.x:detector.x + 40] = 20
        pipeline.process(Frame(image, i / 30.0, i))
    runs: dict[int, list] = {}
    for x, region in detector.calls:
        runs.setdefault(x, []).append(region)
    xs = sorted(runs)
    assert runs[xs[0]] == [None]  # the first look: the whole frame
    for x in xs[1:20]:  # 0.1 .. 1.9 s: what moved and where the person is, nothing else
        regions = runs[x]
        assert None not in regions
        assert any(rx <= x and x + 40 <= rx + rw and ry <= 200 and ry + rh >= 240
                   for rx, ry, rw, rh in regions)
        assert sum(w * h for _, _, w, h in regions) < 0.25 * 640 * 480
    assert runs[xs[20]] == [None]  # the check of the whole frame every 2 s
    assert pipeline.stats.searched < 0.25 * pipeline.stats.detections


class RegionRecorder(CountingDetector):
    """Finds nothing; records (image shape, region) of every call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def detect(self, frame, region=None):
        self.calls.append((frame.shape[:2], region))
        return []


def test_people_apart_are_searched_apart():
    """Two people at opposite corners: two small regions, not the box around both."""
    from maskwatch.agent.vision.classify import Classifier

    detector = RegionRecorder()
    pipeline = Pipeline(detector, Classifier(), Tracker(TrackConfig()), detect_fps=10.0,
                        gate=MotionGate(), idle_check_s=2.0)
    scene = EmptyScene((640, 480), frames=30)
    for i in range(30):  # 1 s
        image = scene.read().image.copy()
        image[40:100, 40 + 3 * i:90 + 3 * i] = 20  # top left, moving right
        image[380:440, 540 - 3 * i:590 - 3 * i] = 230  # bottom right, moving left
        pipeline.process(Frame(image, i / 30.0, i))
    assert detector.calls[0][1] is None  # the first look: the whole frame
    later = [region for _, region in detector.calls[1:]]
    assert len(later) == 2 * 9  # two regions per detection run, 9 runs after the first
    for region in later:
        assert region[2] * region[3] < 0.12 * 640 * 480  # each a small part (both: 0.9)
    assert {region[0] < 320 for region in later} == {True, False}  # one each side


def test_regions_stay_inside_the_roi_in_its_own_pixels():
    from maskwatch.agent.vision.classify import Classifier

    detector = RegionRecorder()
    pipeline = Pipeline(detector, Classifier(), Tracker(TrackConfig()), detect_fps=10.0,
                        roi=(0.5, 0.0, 0.5, 1.0), gate=MotionGate(), idle_check_s=2.0)
    scene = EmptyScene((640, 480), frames=60)
    for i in range(60):  # 2 s: someone in the left half, then in the right half
        image = scene.read().image.copy()
        x = 100 + 3 * i if i < 30 else 400 + 3 * (i - 30)
        image[200:260, x:x + 50] = 20
        pipeline.process(Frame(image, i / 30.0, i))
    assert detector.calls[0] == ((480, 320), None)  # the first look: all of the ROI
    later = detector.calls[1:]
    assert all(shape == (480, 320) for shape, _ in later)  # only ever the ROI is shown
    regions = [region for _, region in later]
    # in the ROI's own pixels, around the person (x 400.. in the frame = 80.. in the ROI)
    assert regions and all(region is not None and region[0] >= 400 - 320 - 40
                           for region in regions)
    assert len(regions) <= 10  # nothing searched while the person was outside the ROI
