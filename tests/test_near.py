"""Faces near the lens: two-scale detection, the near-camera bench, and the detector's
model file paired with the detector asked for."""

from __future__ import annotations

import dataclasses
import json
import subprocess

import numpy as np
import pytest

from maskwatch.agent.bench.near import at_any_size
from maskwatch.agent.config import DetectConfig, load
from maskwatch.agent.errors import ModelError
from maskwatch.agent.factory import detector_from
from maskwatch.agent.vision.detect import Face, create_detector, join_scales
from maskwatch.agent.vision.preprocess import iou

from .conftest import agent_command


def test_coarse_faces_join_only_where_no_fine_face_is():
    fine = [Face((100, 100, 40, 40), 0.9)]
    coarse = [Face((96, 98, 48, 46), 0.8),  # the same face, seen coarser: dropped
              Face((300, 60, 200, 220), 0.7),  # a near face the fine search scored low
              Face((90, 90, 120, 120), 0.6)]  # around the fine face's centre: the same face
    joined = join_scales(fine, coarse)
    assert [f.box for f in joined] == [(100, 100, 40, 40), (300, 60, 200, 220)]


def test_a_coarse_face_joins_where_the_fine_search_found_only_a_part_of_it():
    from maskwatch.agent.vision.detect import without_nested

    half = Face((364, 8, 231, 292), 0.65)  # the fine search: half of a face filling the frame
    whole = Face((48, 0, 526, 460), 0.89)  # the coarse search: that face
    assert without_nested(join_scales([half], [whole])) == [whole]
    surer = Face((364, 8, 231, 292), 0.95)  # scored higher than the coarse face: kept
    assert without_nested(join_scales([surer], [whole])) == [surer]


def near_frames(shared, per_class: int, sizes: tuple, lights: tuple,
                placements: tuple = ("centre",), masked_only: bool = False):
    """`bench-near`'s frames of real crops (jolignier, `per_class` a class): each crop at
    each of `sizes` of a 640x480 frame's height, in each of `lights` and `placements`.
    Yields ((crop index, size, light, placement), frame, the face's true box)."""
    from maskwatch.agent.bench.near import compose, jolignier_crops

    crops = [c for c in jolignier_crops(shared / "data" / "train", per_class)
             if c.label == "with_mask" or not masked_only]
    for i, crop in enumerate(crops):
        for size in sizes:
            for light in lights:
                for place in placements:
                    yield (i, size, light, place), *compose(crop, size, light, place)


def masked_found(shared, per_class: int, detectors: dict, sizes: tuple,
                 lights: tuple) -> dict[str, set]:
    """Which real masked crops (jolignier), centred at each of `sizes` of a 640x480
    frame's height in each of `lights`, each detector finds: {name: {(crop, size, light)}}."""
    found: dict[str, set] = {name: set() for name in detectors}
    for (i, size, light, _), frame, truth in near_frames(shared, per_class, sizes, lights,
                                                         masked_only=True):
        for name, detector in detectors.items():
            if any(iou(f.box, truth) >= 0.3 for f in detector.detect(frame)):
                found[name].add((i, size, light))
    return found


def found_with_a_rule_off(shared, monkeypatch, module, name: str, off, per_class: int,
                          sizes: tuple, lights: tuple) -> tuple[set, set]:
    """Which real masked crops the default detector finds (`masked_found`), and which it
    finds with one rule switched off (`module.name` set to `off`): (with, without)."""
    settings = load(None, []).detect
    with_rule = masked_found(shared, per_class, {"d": detector_from(settings)}, sizes,
                             lights)["d"]
    monkeypatch.setattr(module, name, off)
    without = masked_found(shared, per_class, {"d": detector_from(settings)}, sizes,
                           lights)["d"]
    return with_rule, without


def test_near_masked_faces_are_found_more_with_the_coarse_search(shared):
    """Real masked crops (jolignier) placed at 70 and 90 % of a 640x480 frame's height:
    the two-scale detector finds more of them than the 480 px search alone, and every
    face the single scale finds is still found."""
    settings = load(None, []).detect
    found = masked_found(shared, 30, {"one": detector_from(dataclasses.replace(
        settings, coarse_side=0)), "two": detector_from(settings)}, (0.7, 0.9), ("normal",))
    assert found["one"] <= found["two"] and len(found["two"]) > len(found["one"])
    print(f"\nnear masked (70 and 90 %): one scale {len(found['one'])}, two scales "
          f"{len(found['two'])}")


def test_faces_filling_the_frame_are_found_whole_where_the_fine_search_saw_a_part(
        shared, monkeypatch):
    """Real masked crops (jolignier) at 90 % of the frame's height: with the coarse
    search's whole face taking the place of a fine part of it, more are found, and every
    face found without that is still found."""
    from maskwatch.agent.vision import detect

    whole, parts = found_with_a_rule_off(shared, monkeypatch, detect, "part_of",
                                         lambda part, face: False, 60, (0.9,), ("normal",))
    assert parts <= whole and len(whole) > len(parts)
    print(f"\nmasked faces at 90 %: {len(parts)} with the fine part kept, {len(whole)} whole")


def test_a_large_doubtful_face_is_looked_at_large():
    from maskwatch.agent.vision.detect import LARGE_LOOK_SIDES, LOOK_FACE_SIDES, look_sides

    assert look_sides(60) == LOOK_FACE_SIDES  # a far face: 48, 64 and 96 px
    assert look_sides(400) == LARGE_LOOK_SIDES  # a face filling the frame: never shrunk to 48
    assert min(LARGE_LOOK_SIDES) > min(LOOK_FACE_SIDES)


def test_near_masked_faces_are_found_more_when_looked_at_large(shared, monkeypatch):
    """Real masked crops (jolignier) at 70 and 90 % of the frame's height, which the fine
    search scores just under the threshold: looked at with the face at 96 and 128 px, more
    are found than at 48, 64 and 96 px, and none is lost."""
    from maskwatch.agent.vision import detect

    large, small = found_with_a_rule_off(shared, monkeypatch, detect, "LARGE_LOOK_PX",
                                         float("inf"), 60, (0.7, 0.9), ("normal",))
    assert small <= large and len(large) > len(small)
    print(f"\nmasked at 70 and 90 %: {len(small)} looked at small, {len(large)} at large sizes")


def test_a_lower_coarse_threshold_finds_more_near_masked_faces(shared):
    """`detect.coarse_score_threshold` below score_threshold: real masked crops at 50-90 %
    of the frame's height, as photographed, backlit and dark, are found at least as often,
    and some only then (the coarse search scores a near masked face 0.4-0.5; as
    photographed and backlit, the second look now finds those of these crops too)."""
    settings = load(None, []).detect
    detectors = {"same": detector_from(settings),
                 "lower": detector_from(dataclasses.replace(settings,
                                                            coarse_score_threshold=0.4))}
    found = masked_found(shared, 30, detectors, (0.5, 0.7, 0.9), ("normal", "backlit", "dark"))
    assert found["same"] <= found["lower"] and len(found["lower"]) > len(found["same"])


def test_a_site_threshold_never_lifts_the_coarse_search_above_its_own(state_dir):
    """A site threshold (adapt's tuning) sets the fine search's; the coarse search keeps
    its own lower one, and follows a site threshold below it."""
    yunet = state_dir / "models" / "face_detection_yunet_2023mar.onnx"
    detector = create_detector(DetectConfig(coarse_score_threshold=0.4), yunet)
    for site, coarse in ((0.7, 0.4), (0.3, 0.3)):
        detector.set_score_threshold(site)
        assert (detector.score_threshold, detector.search_thresholds()) == \
            (site, (site, coarse))
    plain = create_detector(DetectConfig(), yunet)
    plain.set_score_threshold(0.7)
    assert plain.search_thresholds() == (0.7, 0.7)


def test_bench_near_prints_found_rates_by_size_light_and_placement(shared, tmp_path):
    out = tmp_path / "near.json"
    result = subprocess.run(agent_command("bench-near", str(shared / "data" / "train"),
                                          "--per-class", "3", "--out", str(out)),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["frames"] == 6 * 4 * 3 * 2  # faces x sizes x lights x placements
    assert set(report["by_light"]["with_mask"]) == {"normal", "dark", "backlit"}
    assert "found, centred" in result.stdout
    for label, by_size in report["by_size"].items():  # the same centred faces, any size
        assert report["at_any_size"][label]["normal"] >= max(by_size.values())
    assert "found at one size or more" in result.stdout


def test_a_face_found_at_one_size_counts_once_for_a_person_walking_up():
    """Face 0 is found at 50 % only, face 1 at no size (found only cut by the edge, which
    does not count: a walk is centred), face 2 at two sizes: two of three faces."""
    def case(face, size, found, placement="centre"):
        return {"face": face, "label": "with_mask", "light": "normal", "size": size,
                "placement": placement, "found": found}

    cases = [case(0, 0.3, False), case(0, 0.5, True), case(1, 0.3, False),
             case(1, 0.5, False), case(1, 0.5, True, placement="edge"),
             case(2, 0.3, True), case(2, 0.5, True)]
    assert at_any_size(cases, "with_mask", "normal") == round(2 / 3, 4)
    assert at_any_size(cases, "with_mask", "dark") is None


def test_a_detector_model_that_does_not_fit_is_one_line_never_a_swap(state_dir, dev_set):
    image = sorted((dev_set / "images").iterdir())[0]
    yunet = state_dir / "models" / "face_detection_yunet_2023mar.onnx"
    result = subprocess.run(agent_command("detect", "--detector", "blazeface", "--set",
                                          f"detect.model={yunet}", "--set",
                                          f"state_dir={state_dir}", str(image)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 78
    assert result.stderr.strip().splitlines() == [
        f"mask-agent: error: {yunet} is not a blazeface model (it takes a .tflite file)"]


def test_detector_flag_takes_the_model_given_beside_it(state_dir):
    full = state_dir / "models" / "face_detection_full_range.tflite"
    detector = create_detector(DetectConfig(detector="blazeface", model=str(full)), full)
    assert detector.input_size == 192  # the full-range model, not the short-range default


def test_coarse_side_not_below_max_side_means_one_scale(state_dir):
    yunet = state_dir / "models" / "face_detection_yunet_2023mar.onnx"
    detector = create_detector(DetectConfig(max_side=160, coarse_side=160), yunet)
    assert detector.coarse_side == 0
    with pytest.raises(ModelError):
        create_detector(DetectConfig(detector="yunet"), state_dir / "models" /
                        "face_detection_full_range.tflite")


def test_masked_faces_in_hard_light_are_found_more_with_contrast(shared):
    """Real masked crops (jolignier) darkened to 35 %, on a wall and against a bright
    window, at 50-90 % of the frame's height: with local contrast equalised (the near
    search always, the fine one when backlit: the default), more are found than without."""
    settings = load(None, []).detect
    detectors = {contrast: detector_from(dataclasses.replace(settings, contrast=contrast))
                 for contrast in ("none", "backlit")}
    found = {name: len(hits) for name, hits in masked_found(
        shared, 40, detectors, (0.5, 0.7, 0.9), ("dark", "backlit")).items()}
    assert found["backlit"] > found["none"], found
    print(f"\nmasked in hard light, found: {found}")


def test_contrast_is_an_enum_and_a_yaml_off_is_refused(tmp_path):
    from maskwatch.agent.errors import ConfigError

    config = tmp_path / "c.yaml"
    config.write_text("detect:\n  contrast: off\n")  # YAML reads off as false
    with pytest.raises(ConfigError, match="detect.contrast: expected one of backlit, near, "):
        load(config, [])


def test_a_view_with_a_window_behind_is_backlit():
    from maskwatch.agent.vision.contrast import backlit, equalised

    wall = np.full((360, 480, 3), 120, np.uint8)
    window = wall.copy()
    window[:, 300:] = 245  # a bright window over 37 % of the view
    assert not backlit(wall) and backlit(window)
    face = np.full((120, 120, 3), 40, np.uint8)
    face[40:80, 30:90] = 55  # a dark face's features, 15 grey levels apart
    lifted = equalised(face, 60)
    assert lifted.shape == face.shape and lifted.dtype == np.uint8
    assert int(lifted[60, 60, 0]) - int(lifted[10, 10, 0]) > 15  # their contrast grows


def test_a_backlit_view_is_exposed_for_what_is_in_front_of_the_window():
    from maskwatch.agent.vision.contrast import SUBJECT_LEVEL, exposed_for_subject

    view = np.full((360, 480, 3), 245, np.uint8)  # a window over most of the view
    view[100:300, 150:330] = 40  # a person in front of it, underexposed
    view[180:200, 200:280] = 55  # their features, 15 grey levels apart
    exposed = exposed_for_subject(view)
    assert exposed[0, 0].tolist() == [255, 255, 255]  # the window: white, still
    assert abs(float(exposed[110:170, 160:320].mean()) - SUBJECT_LEVEL) < 10
    assert int(exposed[190, 240, 0]) - int(exposed[110, 160, 0]) > 30  # a gain of ~2.7
    lit = np.full((360, 480, 3), 130, np.uint8)
    assert exposed_for_subject(lit) is lit  # exposed well enough: left alone


def test_a_face_found_inside_a_larger_face_is_a_part_of_it():
    from maskwatch.agent.vision.detect import without_nested

    face = Face((100, 40, 300, 380), 0.6)  # a face filling the frame
    eye = Face((260, 100, 90, 110), 0.7)  # its eye and brow, found as a face of their own
    neighbour = Face((330, 60, 200, 240), 0.8)  # someone beside, overlapping a little
    assert without_nested([eye, face, neighbour]) == [face, neighbour]


def _boxes_on_no_face(shared, detector, sizes: tuple, lights: tuple) -> int:
    """Boxes overlapping no face (IoU < 0.3) on real crops (jolignier, 60 a class) at
    `sizes` of the frame's height in `lights`, centred and cut by the frame's edge."""
    from maskwatch.agent.bench.near import PLACEMENTS

    return sum(iou(f.box, truth) < 0.3
               for _, frame, truth in near_frames(shared, 60, sizes, lights, PLACEMENTS)
               for f in detector.detect(frame))


def test_backlit_masked_faces_are_found_more_when_exposed_for(shared, monkeypatch):
    """Real masked crops (jolignier) darkened to 35 % in front of a bright window at
    50-90 % of the frame's height: exposing the view for them first (the default) finds
    more than contrast equalisation alone (a gain capped at 1)."""
    from maskwatch.agent.vision import contrast

    exposed, equalised_only = found_with_a_rule_off(shared, monkeypatch, contrast, "MAX_GAIN",
                                                    1.0, 40, (0.5, 0.7, 0.9), ("backlit",))
    assert len(exposed) > len(equalised_only)
    print(f"\nbacklit masked found: equalised only {len(equalised_only)}, exposed for "
          f"{len(exposed)}, {len(equalised_only - exposed)} of them lost")


def test_parts_of_a_face_filling_the_frame_are_not_faces_of_their_own(shared, monkeypatch):
    """Real crops at 50-90 % of the frame's height, backlit: fewer boxes on no face (an eye
    and a brow, a cheek) with nested boxes dropped than without."""
    from maskwatch.agent.vision import detect

    settings = load(None, []).detect
    sizes = (0.5, 0.7, 0.9)
    dropped = _boxes_on_no_face(shared, detector_from(settings), sizes, ("backlit",))
    monkeypatch.setattr(detect, "NESTED_SHARE", 1.01)  # nothing counts as nested
    kept = _boxes_on_no_face(shared, detector_from(settings), sizes, ("backlit",))
    assert dropped < kept, (dropped, kept)
    print(f"\nboxes on no face, backlit, 50-90 %: {dropped} (parts kept: {kept})")


def test_a_coarse_face_counts_only_where_the_fine_search_saw_one():
    from maskwatch.agent.vision.detect import confirmed

    seen = [Face((300, 70, 190, 200), 0.21)]  # a near masked face, scored low at 480 px
    near = Face((296, 60, 200, 220), 0.7)  # the coarse search's box of it
    hand = Face((20, 250, 120, 130), 0.6)  # a hand the coarse search took for a face
    assert confirmed([near, hand], seen) == [near]
    filling = Face((60, 10, 420, 460), 0.8)  # a face filling the frame: too large for it
    assert confirmed([filling, hand], [], tall=240) == [filling]


def test_confirmed_coarse_faces_put_fewer_boxes_on_no_face(dev_set, tmp_path, monkeypatch):
    """On the dev scenes (real photos): coarse faces the fine search did not see at all
    (hands, a receipt, a lit scarf) are left out, and no annotated face is lost."""
    from maskwatch.agent.bench.measure import bench_detectors
    from maskwatch.agent.vision import detect

    cfg = load(None, [f"state_dir={tmp_path}"])

    def bench(name: str) -> dict:
        out = tmp_path / f"{name}.json"
        assert bench_detectors(cfg, dev_set, ["yunet"], str(out)) == 0
        return json.loads(out.read_text())["results"][0]

    only_seen = bench("confirmed")
    monkeypatch.setattr(detect, "confirmed", lambda coarse, seen, tall=0.0: coarse)
    every = bench("every")
    assert only_seen["boxes_on_no_annotated_face"] < every["boxes_on_no_annotated_face"]
    for recall in ("masked_recall", "unmasked_recall"):
        assert only_seen[recall] == every[recall]
