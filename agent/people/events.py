"""Person events as JSON messages (schema: agent/people/schema/event.schema.json).

One message per transition of a person's track (`new`, `update`, `end`), never one per
frame. `end` carries the person's final label and `label_seconds`, the time they spent in
each label, for compliance reports (a person who puts a mask on at the door is `new`
without_mask, then `update` with_mask). `id` is a fresh UUID per message so subscribers
can drop the duplicates that at-least-once delivery may bring.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..vision.head import BUNDLE_HEAD
from .track import Transition

SCHEMA_PATH = Path(__file__).parent / "schema" / "event.schema.json"


def iso(ts: float) -> str:
    """ISO 8601 UTC with milliseconds and a Z suffix."""
    stamp = dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class EventContext:
    """What every event of this run shares."""

    device_id: str
    model: dict  # {"name", "sha256", "head"}
    frame_size: tuple[int, int]  # width, height


def build_event(transition: Transition, context: EventContext, wall_ts: float,
                first_seen_wall: float) -> dict:
    track = transition.track
    label = track.label or "unknown"
    event = {
        "id": str(uuid.uuid4()),
        "type": transition.kind,
        "device_id": context.device_id,
        "track_id": track.id,
        "label": label,
        "confidence": track.confidence(label),
        "votes": track.tally(),
        "first_seen": iso(first_seen_wall),
        "ts": iso(wall_ts),
        "box": [int(v) for v in track.box],
        "frame_size": [int(context.frame_size[0]), int(context.frame_size[1])],
        "model": {"name": context.model.get("name"), "sha256": context.model.get("sha256"),
                  "head": context.model.get("head", BUNDLE_HEAD)},
    }
    if transition.kind == "end":
        event["label_seconds"] = track.time_by_label()  # the final label is `label`
    return event


def encode(event: dict) -> bytes:
    return json.dumps(event, separators=(",", ":"), sort_keys=True).encode()


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())
