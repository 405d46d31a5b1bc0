"""Tracker and vote with scripted detections."""

from __future__ import annotations

from maskwatch.agent.config import TrackConfig
from maskwatch.agent.track import RECHECK_EVERY, Tracker, iou


def walk(tracker, steps, label_at, start=0.0, dt=0.1, y=50):
    """One person walking left to right; returns transitions in order."""
    out = []
    for i in range(steps):
        ts = start + i * dt
        tracks = tracker.update([(10 + 4 * i, y, 40, 40)], ts)
        for track in tracks:
            if track.needs_vote():
                change = tracker.vote(track, label_at(i), 0.9)
                if change:
                    out.append((change.kind, change.track.id, change.track.label))
        out.extend((t.kind, t.track.id, t.track.label) for t in tracker.expire(ts))
    return out


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert abs(iou((0, 0, 10, 10), (5, 0, 10, 10)) - 50 / 150) < 1e-9


def test_one_person_walking_through_gives_one_new_and_one_end():
    tracker = Tracker(TrackConfig(max_missed_s=0.5, min_votes=3, agreement=0.6))
    out = walk(tracker, 30, lambda i: "without_mask")
    out += [(t.kind, t.track.id, t.track.label) for t in tracker.expire(100.0)]
    assert out == [("new", 1, "without_mask"), ("end", 1, "without_mask")]


def test_no_event_before_enough_agreeing_votes():
    tracker = Tracker(TrackConfig(max_missed_s=0.5, min_votes=3, agreement=0.7, window=9))
    labels = ["with_mask", "without_mask", "with_mask", "without_mask", "with_mask",
              "with_mask", "with_mask"]
    out = walk(tracker, len(labels), lambda i: labels[i])
    assert out == [("new", 1, "with_mask")]  # decided only once 5 of 7 agree


def test_sustained_change_gives_one_update_and_flicker_none():
    rules = TrackConfig(max_missed_s=0.5, min_votes=3, agreement=0.6, window=9, update_votes=3)
    tracker = Tracker(rules)
    labels = ["without_mask"] * 4 + ["with_mask"] + ["without_mask"] * 6 + ["with_mask"] * 30
    out = walk(tracker, len(labels), lambda i: labels[i])
    assert [o[0] for o in out] == ["new", "update"]
    assert out[1][2] == "with_mask"


def test_decided_track_is_rechecked_only_now_and_then():
    tracker = Tracker(TrackConfig(max_missed_s=0.5, min_votes=1, agreement=0.5))
    votes = 0
    for i in range(12):
        for track in tracker.update([(10, 10, 40, 40)], i * 0.1):
            if track.needs_vote():
                votes += 1
                tracker.vote(track, "with_mask", 0.9)
    assert votes == 1 + (12 - 1) // RECHECK_EVERY


def test_two_people_keep_their_ids():
    tracker = Tracker(TrackConfig(max_missed_s=0.5, min_votes=2))
    for i in range(5):
        a, b = tracker.update([(10 + i, 10, 40, 40), (200 - i, 10, 40, 40)], i * 0.1)
        assert (a.id, b.id) == (1, 2)
    a, b = tracker.update([(200 - 5, 10, 40, 40), (15, 10, 40, 40)], 0.5)  # order swapped
    assert (a.id, b.id) == (2, 1)


def test_person_leaving_before_decision_still_counted_once_stray_detection_not():
    tracker = Tracker(TrackConfig(max_missed_s=0.2, min_votes=5, agreement=0.6))
    for i in range(2):
        for track in tracker.update([(10, 10, 40, 40)], i * 0.1):
            tracker.vote(track, "without_mask", 0.8)
    for track in tracker.update([(300, 300, 30, 30)], 0.15):  # a one-frame false face
        tracker.vote(track, "with_mask", 0.6)
    out = [(t.kind, t.track.label) for t in tracker.expire(5.0)]
    assert out == [("new", "without_mask"), ("end", "without_mask")]
