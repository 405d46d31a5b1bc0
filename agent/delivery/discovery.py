"""Home Assistant MQTT discovery: the device appears with its entities by itself.

Retained config messages under `<discovery_prefix>/<component>/<node>/<object>/config`:
- binary_sensor "Unmasked person present" (on for `off_delay_s` after a no-mask event),
- sensors counting people per label since the agent started (total_increasing), one per
  label of the model bundle,
- an `event` entity fed by the person events (`new`, `update`, `end`),
all tied to the device's `status` topic for availability and grouped by a `device` block.
`Announcer` sends them on every connect and again when Home Assistant says `online` on
`<discovery_prefix>/status` (it forgets retained discovery on restart otherwise), at most
once per `REANNOUNCE_MIN_S` however often that comes (52 `online` messages in a row are
one announcement, not 52).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Protocol

from .. import __version__
from ..vision.decision import NO_MASK
from .config import HomeAssistantConfig
from .topics import Topics

log = logging.getLogger("maskwatch.discovery")

BIRTH_PAYLOADS = (b"online", b"offline")
MAX_BIRTH_BYTES = 16
REANNOUNCE_MIN_S = 30.0


def node_id(device_id: str) -> str:
    return f"maskwatch_{device_id}"  # hyphens are valid here and match ACL patterns (%u)


def device_block(device_id: str, model_name: str) -> dict:
    return {
        "identifiers": [node_id(device_id)],
        "name": f"maskwatch {device_id}",
        "manufacturer": "maskwatch",
        "model": model_name,
        "sw_version": __version__,
    }


def discovery_messages(settings: HomeAssistantConfig, device_id: str, topics: Topics,
                       labels: list[str], model_name: str) -> list[tuple[str, str]]:
    """(topic, JSON payload) for every entity; publish retained."""
    node = node_id(device_id)
    common = {
        "availability_topic": topics.status,
        "availability_template": "{{ 'offline' if value == 'offline' else 'online' }}",
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device_block(device_id, model_name),
        "origin": {"name": "maskwatch", "sw_version": __version__},
    }
    messages = [(topics.discovery("binary_sensor", node, "unmasked"), {
        **common,
        "name": "Unmasked person present",
        "unique_id": f"{node}_unmasked",
        "object_id": f"{node}_unmasked",
        "state_topic": topics.unmasked,
        "payload_on": "ON",
        "payload_off": "OFF",
        "off_delay": settings.off_delay_s,
        "device_class": "occupancy",
    })]
    for label in labels:
        messages.append((topics.discovery("sensor", node, f"people_{label}"), {
            **common,
            "name": f"People {label.replace('_', ' ')}",
            "unique_id": f"{node}_people_{label}",
            "object_id": f"{node}_people_{label}",
            "state_topic": topics.counts,
            "value_template": "{{ value_json." + label + " | default(0) }}",
            "state_class": "total_increasing",
            "unit_of_measurement": "people",
            "icon": "mdi:emoticon-outline" if label == NO_MASK else "mdi:face-mask",
        }))
    messages.append((topics.discovery("event", node, "person"), {
        **common,
        "name": "Person",
        "unique_id": f"{node}_person",
        "object_id": f"{node}_person",
        "state_topic": topics.events,
        "event_types": ["new", "update", "end"],
        "value_template": "{{ {'event_type': value_json.type, 'label': value_json.label, "
                          "'track_id': value_json.track_id, 'confidence': "
                          "value_json.confidence} | to_json }}",
    }))
    return [(topic, json.dumps(payload, sort_keys=True)) for topic, payload in messages]


def is_birth(payload: bytes) -> bool:
    """Strictly validate Home Assistant's status payload; True for `online`."""
    if len(payload) > MAX_BIRTH_BYTES or payload.strip() not in BIRTH_PAYLOADS:
        raise ValueError(f"unexpected Home Assistant status payload {payload[:32]!r}")
    return payload.strip() == b"online"


class RetainedPublisher(Protocol):
    def publish_now(self, topic: str, payload: bytes | str, qos: int = 0,
                    retain: bool = False) -> bool: ...


class Announcer:
    """Keeps the retained state on the broker: discovery (when enabled) and the counts."""

    def __init__(self, settings: HomeAssistantConfig, device_id: str, topics: Topics,
                 labels: list[str], model_name: str, publisher: RetainedPublisher) -> None:
        self.settings, self.topics, self.labels = settings, topics, labels
        self.publisher = publisher
        self._messages = discovery_messages(settings, device_id, topics, labels, model_name)
        self._counts: Mapping[str, int] = {}
        self._last_birth_announce = -REANNOUNCE_MIN_S
        self._lock = threading.Lock()
        self.announcements = 0

    def on_connect(self) -> None:
        """Everything retained, again: a broker may have lost it."""
        self._announce(force=True)
        self.publish_counts(self._counts)

    def on_ha_status(self, payload: bytes) -> None:
        if is_birth(payload):
            if self._announce(force=False):
                log.info("Home Assistant is online: announced discovery again")
            self.publish_counts(self._counts)

    def _announce(self, force: bool) -> bool:
        if not self.settings.enabled:
            return False
        with self._lock:
            now = time.monotonic()
            if not force:
                if now - self._last_birth_announce < REANNOUNCE_MIN_S:
                    return False
                self._last_birth_announce = now
            self.announcements += 1
        for topic, payload in self._messages:
            self.publisher.publish_now(topic, payload, qos=1, retain=True)
        return True

    def publish_counts(self, people: Mapping[str, int]) -> None:
        """People per label (retained); every label of the model, zero when none."""
        self._counts = dict(people)
        counts = {label: int(people.get(label, 0)) for label in self.labels}
        self.publisher.publish_now(self.topics.counts, json.dumps(counts), qos=1, retain=True)
