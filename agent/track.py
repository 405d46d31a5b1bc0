"""A small IoU tracker and a per-person vote, in the spirit of Norfair.

Detections are matched to tracks greedily by box overlap (IoU); unmatched detections
start tracks, and a track unseen for `max_missed_s` has ended. Each track collects the
classifier's votes; its label is decided once `min_votes` votes agree by `agreement`, and
changes only after `update_votes` consecutive votes for another label (someone puts a
mask on), so one noisy frame never flips a person. The tracker emits transitions
(`new`, `update`, `end`); turning them into messages is events.py's job.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from .config import TrackConfig
from .preprocess import Box

RECHECK_EVERY = 3  # a decided track is classified again every Nth detection (label changes)


def iou(a: Box, b: Box) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def best_match(box: Box, candidates: list[Box], min_iou: float = 0.3) -> int | None:
    """Index of the candidate overlapping `box` most, if that overlap reaches min_iou."""
    best = max(range(len(candidates)), key=lambda i: iou(box, candidates[i]), default=None)
    return best if best is not None and iou(box, candidates[best]) >= min_iou else None


@dataclass
class Track:
    id: int
    box: Box
    first_seen: float
    last_seen: float
    votes: deque = field(default_factory=deque)  # (label, confidence)
    label: str | None = None  # decided label
    streak: tuple[str | None, int] = (None, 0)  # consecutive votes against the label
    hits: int = 1
    detections_since_vote: int = 0

    def needs_vote(self) -> bool:
        """Undecided tracks vote on every detection; decided ones now and then."""
        return self.label is None or self.detections_since_vote >= RECHECK_EVERY

    def tally(self) -> dict[str, int]:
        return dict(Counter(label for label, _ in self.votes))

    def confidence(self, label: str) -> float:
        scores = [c for lbl, c in self.votes if lbl == label]
        return round(sum(scores) / len(scores), 4) if scores else 0.0


@dataclass(frozen=True)
class Transition:
    kind: str  # "new", "update" or "end"
    track: Track


class Tracker:
    """Follows faces across detections; its rules are the config's `track` section."""

    def __init__(self, rules: TrackConfig) -> None:
        self.iou_threshold = rules.iou_threshold
        self.max_missed_s = rules.max_missed_s
        self.rules = rules
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(self, boxes: list[Box], ts: float) -> list[Track]:
        """Match detections at time `ts`; returns the track of each box, in box order."""
        pairs = sorted(((iou(t.box, b), ti, bi) for ti, t in enumerate(self.tracks)
                        for bi, b in enumerate(boxes)), reverse=True)
        matched: dict[int, Track] = {}
        used: set[int] = set()
        for overlap, ti, bi in pairs:
            if overlap < self.iou_threshold:
                break
            if ti in used or bi in matched:
                continue
            track = self.tracks[ti]
            track.box, track.last_seen = boxes[bi], ts
            track.hits += 1
            track.detections_since_vote += 1
            matched[bi] = track
            used.add(ti)
        for bi, box in enumerate(boxes):
            if bi not in matched:
                track = Track(self._next_id, box, ts, ts)
                self._next_id += 1
                self.tracks.append(track)
                matched[bi] = track
        return [matched[bi] for bi in range(len(boxes))]

    def vote(self, track: Track, label: str, confidence: float) -> Transition | None:
        """Add one classification; returns `new` or `update` when the decision changes."""
        rules = self.rules
        track.votes.append((label, confidence))
        while len(track.votes) > rules.window:
            track.votes.popleft()
        track.detections_since_vote = 0
        if track.label is None:
            return self._try_decide(track)
        if label == track.label:
            track.streak = (None, 0)
            return None
        count = track.streak[1] + 1 if track.streak[0] == label else 1
        track.streak = (label, count)
        if count >= rules.update_votes:
            track.label, track.streak = label, (None, 0)
            return Transition("update", track)
        return None

    def _try_decide(self, track: Track) -> Transition | None:
        if len(track.votes) < self.rules.min_votes:
            return None
        label, count = Counter(lbl for lbl, _ in track.votes).most_common(1)[0]
        if count / len(track.votes) >= self.rules.agreement:
            track.label = label
            return Transition("new", track)
        return None

    def expire(self, ts: float, everything: bool = False) -> list[Transition]:
        """End tracks unseen for max_missed_s (all of them with `everything`).

        A person who left before a decision still gets one `new` (majority of their
        votes) when they had at least two votes; a single stray detection gets nothing.
        """
        out: list[Transition] = []
        alive: list[Track] = []
        for track in self.tracks:
            if not everything and ts - track.last_seen <= self.max_missed_s:
                alive.append(track)
                continue
            if track.label is None and len(track.votes) >= min(2, self.rules.min_votes):
                track.label = Counter(lbl for lbl, _ in track.votes).most_common(1)[0][0]
                out.append(Transition("new", track))
            if track.label is not None:
                out.append(Transition("end", track))
        self.tracks = alive
        return out
