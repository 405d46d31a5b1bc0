"""The people part's settings: `track` (following a person and deciding their label)."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import setting


@dataclass(frozen=True)
class TrackConfig:
    iou_threshold: float = setting(0.3, "float", "minimum box overlap to continue a track",
                                   low=0.01, high=1.0)
    max_missed_s: float = setting(1.5, "float", "a person is gone after this long unseen",
                                  low=0.05, high=600)
    min_votes: int = setting(3, "int", "classifications before a label is decided", low=1,
                             high=100)
    min_seen_s: float = setting(0.5, "float", "a person counts once seen this long (by time, "
                                "so counts do not depend on the detection rate)", low=0.0,
                                high=60)
    min_hit_ratio: float = setting(0.5, "float", "and found in at least this share of the "
                                   "detector runs meanwhile (a steady face, not a flicker)",
                                   low=0.0, high=1.0)
    agreement: float = setting(0.6, "float", "share of votes the decided label needs",
                               low=0.5, high=1.0)
    window: int = setting(9, "int", "most recent votes kept per person", low=1, high=1000)
    update_votes: int = setting(5, "int", "consecutive votes for another label before an "
                                "update", low=1, high=1000)
    update_min_s: float = setting(1.0, "float", "those votes must span at least this long",
                                  low=0.0, high=600)
    update_confidence: float = setting(0.7, "float", "and have at least this mean confidence",
                                       low=0.0, high=1.0)
    hold_off_s: float = setting(10.0, "float", "changing back within this long needs twice "
                                "the votes", low=0.0, high=3600)
    max_distance: float = setting(1.0, "float", "a detection this close to a track's "
                                  "predicted face (centre distance in face sizes) continues it",
                                  low=0.0, high=10)
    static_check: bool = setting(True, "bool", "a face that never moves (poster, photo) "
                                 "produces no events; a person sitting still still moves a little")
    reid_s: float = setting(3.0, "float", "a decided person lost for up to this long after "
                            "max_missed_s is recognised by appearance when a face reappears "
                            "nearby (their `end` waits as long); 0: off", low=0.0, high=60)
    reid_distance: float = setting(0.12, "float", "largest cosine distance between appearance "
                                   "embeddings (classifier features) for the same person",
                                   low=0.0, high=1.0)
    reid_max_distance: float = setting(4.0, "float", "and at most this far from where they "
                                       "were lost (face sizes)", low=0.0, high=100)
