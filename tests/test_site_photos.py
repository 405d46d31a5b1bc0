"""Labelled photos become only what the agent would see, and teach the detector the site.

Real training photos (jolignier's CCTV crops, where YuNet at its default 0.5 misses some
masked faces that it finds at 0.35-0.45), the bundled YuNet and classifier, and
`mask-agent adapt` run as a user runs it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from maskwatch.agent.config import load
from maskwatch.agent.errors import ModelError
from maskwatch.agent.factory import detector_from
from maskwatch.agent.site.photos import labelled_paths
from maskwatch.agent.site.threshold import fit_threshold, threshold_grid
from maskwatch.agent.vision.detect import subject_faces
from maskwatch.agent.vision.tuning import (
    TUNING_FILE,
    DetectorTuning,
    TuningFile,
    read_tuning,
    write_tuning,
)

from .conftest import agent_command

# jolignier masked photos with no face at 0.5 and exactly one at 0.45-0.35 (and down to 0.2)
HIDDEN_AT_DEFAULT = ("03a64197d365a25f.jpg", "094642e3301ab58e.jpg", "0d6eb238bf6a6094.jpg",
                     "0e6c23ff51780e28.jpg", "10f90b1546c6e8d9.jpg", "161290ee3ff45e8c.jpg",
                     "185ea5758c550625.jpg", "201a99f317e7bbdb.jpg")


def counts_table(rows: list[list[int]]) -> np.ndarray:
    return np.array(rows)


def test_a_lower_threshold_that_finds_hidden_faces_and_adds_none_is_accepted():
    grid = threshold_grid(0.5)
    assert grid == [0.5, 0.45, 0.4, 0.35, 0.3]
    plain = [[1] * 5] * 30
    hidden = [[0, 0, 1, 1, 1]] * 6  # found from 0.40 down
    report = fit_threshold(counts_table(plain + hidden), grid)
    assert report.accepted and report.threshold == 0.4, report.reason
    assert report.found_before == pytest.approx(30 / 36) and report.found_after == 1.0


def test_a_threshold_that_adds_faces_or_finds_too_few_is_refused():
    grid = threshold_grid(0.5)
    noisy = [[1, 1, 1, 2, 2]] * 10  # a second, false face from 0.35 down
    hidden = [[0, 0, 0, 1, 1]] * 6
    report = fit_threshold(counts_table([[1] * 5] * 24 + noisy + hidden), grid)
    assert not report.accepted and report.threshold == 0.5
    one = fit_threshold(counts_table([[1] * 5] * 39 + [[0, 0, 1, 1, 1]]), grid)
    assert not one.accepted and "not clearly better" in one.reason  # one photo is noise


def test_tuning_file_is_read_live_and_bad_files_fall_back_to_the_configured_threshold(tmp_path):
    path = tmp_path / TUNING_FILE
    watcher = TuningFile(path, "yunet", 0.5, check_s=0.0)
    assert watcher.threshold() == 0.5
    write_tuning(path, DetectorTuning(0.35, "yunet"))
    assert watcher.threshold() == 0.35
    for bad in ("[]", '{"format": "maskwatch-site-detector", "detector": "yunet", '
                '"score_threshold": 0.05}', "not json"):
        path.write_text(bad)
        assert watcher.threshold() == 0.5
        with pytest.raises(ModelError):
            read_tuning(path, "yunet")
    write_tuning(path, DetectorTuning(0.35, "blazeface"))
    with pytest.raises(ModelError, match="fitted for blazeface"):
        read_tuning(path, "yunet")


def labelled(shared, tmp_path, hidden: tuple[str, ...], per_class: int = 20):
    """with_mask/: the hidden photos, then plain ones; without_mask/: plain ones."""
    out = tmp_path / "labels"
    source = shared / "data/train/jolignier"
    for label in ("with_mask", "without_mask"):
        (out / label).mkdir(parents=True)
        names = list(hidden) if label == "with_mask" else []
        names += [p.name for p in sorted((source / label).glob("*.jpg"))[:60]
                  if p.name not in names][:per_class - len(names)]
        for name in names:
            shutil.copy(source / label / name, out / label / name)
    return out


def test_labelled_folders_named_as_other_data_sets_name_them_are_read(tmp_path):
    for name in ("WithMask", "no_mask", "unsorted"):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "no_mask" / "._a.png").write_bytes(b"\x00\x05\x16\x07")  # macOS companion
    assert [(p.parent.name, value) for p, value in labelled_paths(tmp_path)] == [
        ("WithMask", 0), ("no_mask", 1)]


def test_photos_without_a_single_face_are_left_out_and_named(shared, tmp_path):
    labels = labelled(shared, tmp_path, ())
    cv2.imwrite(str(labels / "with_mask" / "wall.jpg"), np.full((200, 200, 3), 90, np.uint8))
    face = cv2.imread(str(next((labels / "without_mask").glob("*.jpg"))))
    pair = np.hstack([face, face])  # two faces alike: which one is the subject?
    cv2.imwrite(str(labels / "without_mask" / "pair.jpg"), pair)
    state = tmp_path / "state"
    result = subprocess.run(agent_command("adapt", "--labels", str(labels), "--json",
                                          "--dry-run", "--set", f"state_dir={state}"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode in (0, 3), result.stderr
    photos = json.loads(result.stdout)["photos"]
    assert "wall.jpg" in photos["left_out"]["no_face"]["files"]
    assert photos["left_out"]["several_faces"]["files"] == ["pair.jpg"]
    assert photos["used"] + sum(r["count"] for r in photos["left_out"].values()) == 42
    assert not state.exists() or not any(state.iterdir())  # a dry run writes nothing


def test_adapt_fits_the_detector_threshold_the_agent_then_runs_with(shared, tmp_path):
    labels = labelled(shared, tmp_path, HIDDEN_AT_DEFAULT)
    state = tmp_path / "state"
    result = subprocess.run(agent_command("adapt", "--labels", str(labels), "--json",
                                          "--set", f"state_dir={state}"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    photos = json.loads(result.stdout)["photos"]
    fitted = photos["detector"]
    assert fitted["accepted"] and fitted["threshold"] < 0.5, fitted["reason"]
    assert fitted["found_after"] > fitted["found_before"]
    assert fitted["cross_validated"]["added_faces"] == 0
    left_out = photos["left_out"]["no_face"]["files"]
    assert not set(HIDDEN_AT_DEFAULT) & set(left_out)  # learnt from at the new threshold
    tuning = read_tuning(state / TUNING_FILE, "yunet")
    assert tuning.score_threshold == fitted["threshold"]
    cfg = load(None, [f"state_dir={state}"])
    detector = detector_from(cfg.detect, cfg.state_dir)
    assert detector.score_threshold == fitted["threshold"]  # what the agent runs with
    configured = detector_from(dataclasses.replace(cfg.detect, site_tuning=False))
    photos = [cv2.imread(str(labels / "with_mask" / name)) for name in HIDDEN_AT_DEFAULT]
    missed = [image for image in photos if not subject_faces(image, configured)]
    assert missed and all(subject_faces(image, detector) for image in missed)  # found now
    status = subprocess.run(agent_command("adapt", "--status", "--set", f"state_dir={state}"),
                            capture_output=True, text=True, timeout=60)
    assert json.loads(status.stdout)["detector"]["score_threshold"] == fitted["threshold"]
    subprocess.run(agent_command("adapt", "--revert", "--set", f"state_dir={state}"),
                   check=True, capture_output=True, timeout=60)
    assert not (state / TUNING_FILE).exists()
    assert detector_from(cfg.detect, cfg.state_dir).score_threshold == 0.5


def test_photos_with_no_face_at_all_are_one_line_and_exit_2(tmp_path):
    labels = tmp_path / "labels"
    for label in ("with_mask", "without_mask"):
        (labels / label).mkdir(parents=True)
        cv2.imwrite(str(labels / label / "wall.jpg"), np.full((120, 160, 3), 200, np.uint8))
    result = subprocess.run(agent_command("adapt", "--labels", str(labels), "--set",
                                          f"state_dir={tmp_path / 'state'}"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no face found" in result.stderr
