"""The site part's settings: `adapt` (collecting crops for labelling and adaptation)."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import setting


@dataclass(frozen=True)
class AdaptConfig:
    collect: bool = setting(False, "bool", "keep face crops for labelling and site adaptation "
                            "(STORES PICTURES OF FACES in <state_dir>/samples; see README, "
                            "Privacy)")
    max_samples: int = setting(2000, "int", "most crops kept (oldest unlabelled go first)",
                               low=10, high=100_000)
    max_mb: float = setting(50.0, "float", "most megabytes of crops kept", low=1, high=10_000)
    retention_days: float = setting(30.0, "float", "crops older than this are deleted",
                                    low=0.01, high=3650)
    min_interval_s: float = setting(3.0, "float", "at most one crop per person this often",
                                    low=0.0, high=3600)
    near_margin: float = setting(0.2, "float", "keep faces whose no-mask score is this close "
                                 "to the threshold", low=0.0, high=1.0)
    random_share: float = setting(0.03, "float", "and this share of confident ones", low=0.0,
                                  high=1.0)
