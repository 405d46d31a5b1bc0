"""A small tracker and a per-person vote, in the spirit of Norfair.

Matching: each track predicts where its face is now (constant velocity, smoothed from its
last detections), and detections are matched greedily to the predictions by overlap (IoU)
or, failing that, by centre distance measured in face sizes, so a face that moves fast or
is missed for a moment (a head turn, a hand) keeps its person. A track unseen for
`max_missed_s` is lost; a decided person lost for up to `reid_s` more is recognised by
appearance (the classifier's pooled features, cosine distance) when a new face appears
near where they were lost, and continues under the same id; then, or otherwise, it ends.

Voting: each track collects the classifier's votes; its label is decided once `min_votes`
votes agree by `agreement` and the face has been seen for `min_seen_s` (in at least
`min_hit_ratio` of the detector runs meanwhile). Hysteresis keeps
labels from flip-flopping: a decided label changes only after `update_votes` consecutive
votes for another label that span at least `update_min_s` with a mean confidence of at
least `update_confidence` (someone puts a mask on), and a change back within `hold_off_s`
needs twice the votes.

Static faces: a person moves a little even when sitting still; a poster or a photo on the
wall does not. A track's `new` waits until it has shown motion (its box moved, or the
pixels inside it changed: `alive_*` below); a face that never does produces no events.

The tracker emits transitions (`new`, `update`, `end`); turning them into messages is
events.py's job.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..vision.preprocess import Box, area, around, intersection, iou  # noqa: F401 (re-exported)
from .config import TrackConfig

RECHECK_EVERY = 3  # a decided track is classified again every Nth detection (label changes)
LOST_KEPT = 32  # lost people remembered for re-identification at most (bounded memory)
VELOCITY_SMOOTHING = 0.5  # weight of the newest velocity estimate
ALIVE_MOVE = 0.15  # the box centre moved this share of the face size: a live person
# ... while another face is in front of it: a half-hidden portrait is found smaller and
# off-centre (by up to a quarter of its size), a walker in a crowd moves further
ALIVE_MOVE_BEHIND = 0.5
WALKING_FACES_PER_S = 0.5  # a face moving this fast (face widths a second) is walking
ALIVE_PIXELS = 4.0  # mean grey-level change of the face signature: a live person



def best_match(box: Box, candidates: list[Box], min_iou: float = 0.3) -> int | None:
    """Index of the candidate overlapping `box` most, if that overlap reaches min_iou."""
    best = max(range(len(candidates)), key=lambda i: iou(box, candidates[i]), default=None)
    return best if best is not None and iou(box, candidates[best]) >= min_iou else None


def centre_distance(a: Box, b: Box) -> float:
    """Distance between box centres in face sizes (the larger box's longer side)."""
    dx = (a[0] + a[2] / 2) - (b[0] + b[2] / 2)
    dy = (a[1] + a[3] / 2) - (b[1] + b[3] / 2)
    return math.hypot(dx, dy) / max(1.0, a[2], a[3], b[2], b[3])


@dataclass
class Track:
    id: int
    box: Box
    first_seen: float
    last_seen: float
    votes: deque = field(default_factory=deque)  # (label, confidence, ts)
    label: str | None = None  # decided label
    streak: list = field(default_factory=list)  # consecutive (label, confidence, ts) against it
    hits: int = 1
    opportunities: int = 1  # detector runs since the track began (hits / this: steadiness)
    detections_since_vote: int = 0
    velocity: tuple[float, float] = (0.0, 0.0)  # centre, pixels per second
    alive: bool = False  # has shown motion: a person, not a poster
    first_box: Box | None = None
    signature: np.ndarray | None = None  # the first grey face thumbnail
    changed_at: float | None = None  # when the label last changed (update)
    previous_label: str | None = None
    embedding: np.ndarray | None = None  # unit-length mean of its classifier features
    label_since: float | None = None  # when the current label began (first seen, or update)
    label_seconds: dict = field(default_factory=dict)  # time spent in earlier labels

    def decide(self, label: str, ts: float) -> None:
        """Take `label`; a first decision covers the person since first seen."""
        if self.label is None:
            self.label, self.label_since = label, self.first_seen
            return
        since = self.first_seen if self.label_since is None else self.label_since
        self.label_seconds[self.label] = self.label_seconds.get(self.label, 0.0) + \
            max(0.0, ts - since)
        self.label, self.label_since = label, ts

    def time_by_label(self) -> dict[str, float]:
        """Seconds spent in each label, up to the last sighting (what `end` reports)."""
        spent = dict(self.label_seconds)
        if self.label is not None and self.label_since is not None:
            spent[self.label] = spent.get(self.label, 0.0) + \
                max(0.0, self.last_seen - self.label_since)
        return {label: round(seconds, 2) for label, seconds in spent.items()}

    def predicted(self, ts: float) -> Box:
        """Where the face should be at `ts`, moving as it did."""
        dt = max(0.0, ts - self.last_seen)
        x, y, w, h = self.box
        return (int(round(x + self.velocity[0] * dt)), int(round(y + self.velocity[1] * dt)),
                w, h)

    def needs_vote(self) -> bool:
        """Undecided tracks vote on every detection; decided ones now and then."""
        return self.label is None or self.detections_since_vote >= RECHECK_EVERY

    def tally(self) -> dict[str, int]:
        return dict(Counter(label for label, *_ in self.votes))

    def confidence(self, label: str) -> float:
        scores = [c for lbl, c, *_ in self.votes if lbl == label]
        return round(sum(scores) / len(scores), 4) if scores else 0.0

    def walking(self) -> bool:
        """Moving at WALKING_FACES_PER_S face widths a second or more (smoothed)."""
        speed = math.hypot(*self.velocity)
        return speed >= WALKING_FACES_PER_S * max(1, self.box[2])

    def moved_to(self, box: Box, ts: float) -> None:
        """A new detection of this face: update box and velocity."""
        dt = ts - self.last_seen
        if dt > 0:
            vx = ((box[0] + box[2] / 2) - (self.box[0] + self.box[2] / 2)) / dt
            vy = ((box[1] + box[3] / 2) - (self.box[1] + self.box[3] / 2)) / dt
            k = VELOCITY_SMOOTHING
            self.velocity = (k * vx + (1 - k) * self.velocity[0],
                             k * vy + (1 - k) * self.velocity[1])
        self.box, self.last_seen = box, ts
        self.hits += 1
        self.detections_since_vote += 1

    def look(self, signature: np.ndarray) -> None:
        """The pixels where the face first was, now: a living face changes them (blinks,
        breath, small turns) even when its box stays put; a poster changes only by noise."""
        if self.signature is None:
            self.signature = signature.astype(np.float32)
        elif not self.alive:
            change = float(np.mean(np.abs(signature.astype(np.float32) - self.signature)))
            self.alive = change >= ALIVE_PIXELS


IN_FRONT_MARGIN = 0.5  # another face's head (hair, a hat) reaches this share of its size


def _in_front(place: Box, passing: list[Box]) -> bool:
    """A walking face (with its head around it) over `place` now: someone passing in
    front. What changes there then is them, not this face's life: a portrait on the wall
    behind people walking by would otherwise turn into a person. (People standing side
    by side do not count: they do not cross each other.)"""
    return any(intersection(place, around(box, IN_FRONT_MARGIN)) for box in passing)


def unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


@dataclass(frozen=True)
class Transition:
    kind: str  # "new", "update" or "end"
    track: Track


class Tracker:
    """Follows faces across detections; its rules are the config's `track` section."""

    def __init__(self, rules: TrackConfig) -> None:
        self.rules = rules
        self.tracks: list[Track] = []
        self.lost: list[Track] = []  # decided people unseen past max_missed_s, not yet ended
        self._next_id = 1
        self._last_update: float | None = None
        self.interval = 0.0  # time between detector runs now (what one detection covers)

    def _pairs(self, boxes: list[Box], ts: float) -> list[tuple[float, int, int]]:
        """(score, track index, box index) for every plausible match, best first: overlap
        with the predicted box, else closeness of centres (in face sizes)."""
        pairs = []
        for ti, track in enumerate(self.tracks):
            guess = track.predicted(ts)
            for bi, box in enumerate(boxes):
                overlap = iou(guess, box)
                if overlap >= self.rules.iou_threshold:
                    pairs.append((1.0 + overlap, ti, bi))
                    continue
                distance = centre_distance(guess, box)
                size_ratio = max(box[2], guess[2]) / max(1, min(box[2], guess[2]))
                if distance <= self.rules.max_distance and size_ratio <= 2.0:
                    pairs.append((1.0 - distance / (self.rules.max_distance + 1e-9), ti, bi))
        return sorted(pairs, reverse=True)

    def update(self, boxes: list[Box], ts: float,
               look: Callable[[Box], np.ndarray] | None = None) -> list[Track]:
        """Match detections at time `ts`; returns the track of each box, in box order.
        `look(box)` (a small grey thumbnail of the frame there) lets a face that stays put
        prove it is alive; without it, such a face counts as alive."""
        matched: dict[int, Track] = {}
        used: set[int] = set()
        if self._last_update is not None and ts > self._last_update:
            self.interval = min(ts - self._last_update, self.rules.max_missed_s)
        self._last_update = ts
        for track in self.tracks:
            track.opportunities += 1
        for _, ti, bi in self._pairs(boxes, ts):
            if ti in used or bi in matched:
                continue
            self.tracks[ti].moved_to(boxes[bi], ts)
            matched[bi] = self.tracks[ti]
            used.add(ti)
        for bi, box in enumerate(boxes):
            if bi not in matched:
                track = Track(self._next_id, box, ts, ts, first_box=box,
                              alive=not self.rules.static_check)
                self._next_id += 1
                self.tracks.append(track)
                matched[bi] = track
        walking = [bi for bi in range(len(boxes)) if matched[bi].walking()]
        for bi, track in matched.items():
            if not track.alive:
                passing = [boxes[other] for other in walking if other != bi]
                self._judge_alive(track, boxes[bi], passing, look)
        return [matched[bi] for bi in range(len(boxes))]

    @staticmethod
    def _judge_alive(track: Track, box: Box, passing: list[Box],
                     look: Callable[[Box], np.ndarray] | None) -> None:
        """Has this face shown life: its box moved from where it was first found, or the
        pixels there changed? While another face is in front of it, only a walk counts: a
        portrait on the wall half hidden by a passer-by is found smaller and off-centre,
        and the pixels there are theirs."""
        place = track.first_box or track.box
        moved = centre_distance(place, box)
        if _in_front(place, passing):  # only a walk, not a box cut by the passer-by
            track.alive = moved >= ALIVE_MOVE_BEHIND
        elif moved >= ALIVE_MOVE:
            track.alive = True
        elif look is None:
            track.alive = track.hits > 1  # nothing to judge by: seen twice is enough
        else:
            track.look(look(place))

    def vote(self, track: Track, label: str, confidence: float,
             ts: float | None = None) -> Transition | None:
        """Add one classification; returns `new` or `update` when the decision changes."""
        ts = track.last_seen if ts is None else ts
        track.votes.append((label, confidence, ts))
        while len(track.votes) > self.rules.window:
            track.votes.popleft()
        track.detections_since_vote = 0
        if track.label is None:
            return self._try_decide(track)
        if label == track.label:
            track.streak = []
            return None
        if track.streak and track.streak[-1][0] != label:
            track.streak = []
        track.streak.append((label, confidence, ts))
        return self._try_update(track, ts)

    def _try_update(self, track: Track, ts: float) -> Transition | None:
        """Hysteresis: sustained, confident evidence; going back soon needs twice as much."""
        rules, streak = self.rules, track.streak
        label = streak[-1][0]
        needed = rules.update_votes
        if label == track.previous_label and track.changed_at is not None and \
                ts - track.changed_at < rules.hold_off_s:
            needed *= 2
        if len(streak) < needed or streak[-1][2] - streak[0][2] < rules.update_min_s:
            return None
        if sum(c for _, c, _ in streak) / len(streak) < rules.update_confidence:
            return None
        track.previous_label = track.label
        track.decide(label, ts)
        track.changed_at, track.streak = ts, []
        return Transition("update", track) if track.alive else None

    def _seen_long_enough(self, track: Track) -> bool:
        """Seen for `min_seen_s`, and in at least `min_hit_ratio` of the detector runs
        meanwhile. Counting by time and by share, not by number of detections, keeps people
        counts from growing with the detection rate: a face the detector only catches now
        and then would otherwise collect enough hits at 30 runs per second, not at 5. Each
        detection stands for the interval between detector runs, so the time seen is the
        span of its detections plus one interval: at 5 runs per second the span alone
        would come out 0.2 s short of what 30 runs per second measure."""
        return self._seen_s(track) >= self.rules.min_seen_s and self._steady(track)

    def _seen_s(self, track: Track) -> float:
        return track.last_seen - track.first_seen + self.interval

    def _steady(self, track: Track) -> bool:
        return track.hits >= self.rules.min_hit_ratio * track.opportunities

    def waiting_for(self, track: Track) -> list[str]:
        """What an undecided track still lacks before its `new` (empty: nothing):
        "votes" (fewer than min_votes), "agreement" (votes split), "time" (seen for less
        than min_seen_s), "steadiness" (found in under min_hit_ratio of the detector runs),
        "motion" (has not moved yet: could be a poster). Benchmarks use it to say why a
        decision was slow."""
        lacking = []
        if len(track.votes) < self.rules.min_votes:
            lacking.append("votes")
        if track.votes:
            count = Counter(lbl for lbl, *_ in track.votes).most_common(1)[0][1]
            if count / len(track.votes) < self.rules.agreement:
                lacking.append("agreement")
        if self._seen_s(track) < self.rules.min_seen_s:
            lacking.append("time")
        if not self._steady(track):
            lacking.append("steadiness")
        if not track.alive:
            lacking.append("motion")
        return lacking

    def _try_decide(self, track: Track) -> Transition | None:
        if self.waiting_for(track):
            return None
        track.decide(Counter(lbl for lbl, *_ in track.votes).most_common(1)[0][0],
                     track.last_seen)
        return Transition("new", track)

    def expire(self, ts: float, everything: bool = False) -> list[Transition]:
        """End tracks unseen for max_missed_s (all of them with `everything`).

        A person who left before a decision still gets one `new` (majority of their
        votes) when they were seen for `min_seen_s` with at least two votes and showed
        life; a stray detection, a passer-by glimpsed for a moment or a poster get nothing.
        A decided person with an appearance embedding is first `lost` for `reid_s`: a face
        that reappears nearby and looks the same continues them (`observe_appearance`).
        """
        out: list[Transition] = []
        alive: list[Track] = []
        for track in self.tracks:
            if not everything and ts - track.last_seen <= self.rules.max_missed_s:
                alive.append(track)
                continue
            if track.label is None and track.alive and self._seen_long_enough(track) and \
                    len(track.votes) >= min(2, self.rules.min_votes):
                track.decide(Counter(lbl for lbl, *_ in track.votes).most_common(1)[0][0],
                             track.last_seen)
                out.append(Transition("new", track))
            if track.label is None:
                continue
            if not everything and self.rules.reid_s > 0 and track.embedding is not None:
                self.lost.append(track)
            else:
                out.append(Transition("end", track))
        self.tracks = alive
        out.extend(self._forget_lost(ts, everything))
        return out

    def _forget_lost(self, ts: float, everything: bool) -> list[Transition]:
        """`end` for lost people past the re-identification window (or beyond LOST_KEPT)."""
        deadline = self.rules.max_missed_s + self.rules.reid_s
        gone: list[Track] = []
        kept: list[Track] = []
        for track in self.lost:
            (gone if everything or ts - track.last_seen > deadline else kept).append(track)
        gone += kept[:max(0, len(kept) - LOST_KEPT)]
        self.lost = kept[max(0, len(kept) - LOST_KEPT):]
        return [Transition("end", t) for t in gone]

    def observe_appearance(self, track: Track, features: np.ndarray, ts: float) -> None:
        """Add a face's classifier features to its track's appearance. A new, undecided
        track that looks like a person lost nearby moments ago becomes that person again
        (same id, votes and label: no second `new`)."""
        if not features.size:
            return
        f = unit(features.astype(np.float32))
        track.embedding = f if track.embedding is None else unit(0.8 * track.embedding + 0.2 * f)
        if track.label is not None or track.hits > 2 or not self.lost:
            return
        best, best_distance = None, self.rules.reid_distance
        for lost in self.lost:
            distance = 1.0 - float(lost.embedding @ f)
            near = centre_distance(lost.box, track.box) <= self.rules.reid_max_distance
            if near and distance <= best_distance:
                best, best_distance = lost, distance
        if best is not None:
            self.lost.remove(best)
            self._continue(best, track)

    @staticmethod
    def _continue(lost: Track, track: Track) -> None:
        """`track` (a fresh detection) carries on as the lost person."""
        track.id, track.first_seen = lost.id, lost.first_seen
        track.votes, track.label = lost.votes, lost.label
        track.previous_label, track.changed_at = lost.previous_label, lost.changed_at
        track.label_since, track.label_seconds = lost.label_since, lost.label_seconds
        track.alive = True
        track.embedding = unit(lost.embedding + track.embedding)
