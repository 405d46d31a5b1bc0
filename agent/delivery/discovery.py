"""Home Assistant MQTT discovery: the device appears with its entities by itself.

Retained config messages under `<discovery_prefix>/<component>/<node>/<object>/config`:
- binary_sensor "Unmasked person present" (on for `off_delay_s` after a no-mask event),
- sensors counting people per label since the agent started (total_increasing), one per
  label of the model bundle: by each person's *first* decision (`counts`), and by the label
  they had when they left (`final_counts`: what a compliance report needs, since a person
  who puts a mask on at the door is first counted `without_mask`),
- an `event` entity fed by the person events (`new`, `update`, `end`),
all tied to the device's `status` topic for availability and grouped by a `device` block.
`Announcer` sends them on every connect and again when Home Assistant says `online` on
`<discovery_prefix>/status` (it forgets retained discovery on restart otherwise), at most
once per `REANNOUNCE_MIN_S` however often that comes (52 `online` messages in a row are
one announcement, not 52), and once more at the end of that window when another `online`
came inside it: the last `online` of a storm is always answered (a broker that does not hand
retained messages to Home Assistant's wildcard subscription, RabbitMQ's, would otherwise
leave every entity unavailable after two reloads 9 s apart).
Every entity subscribes at QoS 1 (`qos`), so at-least-once delivery reaches Home Assistant,
and names its entity id both ways: `default_entity_id` (Home Assistant 2025.10 and later,
where `object_id` is deprecated) and `object_id` (older releases); the ids are the same.
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


def entity_ids(component: str, object_id: str) -> dict[str, str]:
    """The entity's unique id and its entity id, as new and old Home Assistant read it
    (both present: 2025.10+ takes `default_entity_id` and does not warn about the other)."""
    return {"unique_id": object_id, "object_id": object_id,
            "default_entity_id": f"{component}.{object_id}"}


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
        "qos": 1,
    }
    messages = [(topics.discovery("binary_sensor", node, "unmasked"), {
        **common,
        "name": "Unmasked person present",
        **entity_ids("binary_sensor", f"{node}_unmasked"),
        "state_topic": topics.unmasked,
        "payload_on": "ON",
        "payload_off": "OFF",
        "off_delay": settings.off_delay_s,
        "device_class": "occupancy",
    })]
    for label in labels:
        icon = "mdi:emoticon-outline" if label == NO_MASK else "mdi:face-mask"
        for kind, topic, name in (("people", topics.counts, "People {}"),
                                  ("left", topics.final_counts, "People left {}")):
            messages.append((topics.discovery("sensor", node, f"{kind}_{label}"), {
                **common,
                "name": name.format(label.replace("_", " ")),
                **entity_ids("sensor", f"{node}_{kind}_{label}"),
                "state_topic": topic,
                "value_template": "{{ value_json." + label + " | default(0) }}",
                "state_class": "total_increasing",
                "unit_of_measurement": "people",
                "icon": icon,
            }))
    messages.append((topics.discovery("event", node, "person"), {
        **common,
        "name": "Person",
        **entity_ids("event", f"{node}_person"),
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
                 labels: list[str], model_name: str, publisher: RetainedPublisher,
                 reannounce_min_s: float = REANNOUNCE_MIN_S) -> None:
        self.settings, self.topics, self.labels = settings, topics, labels
        self.publisher = publisher
        self.reannounce_min_s = reannounce_min_s
        self._messages = discovery_messages(settings, device_id, topics, labels, model_name)
        self._counts: Mapping[str, int] = {}
        self._final_counts: Mapping[str, int] = {}
        self._last_birth_announce = -reannounce_min_s
        self._trailing: threading.Timer | None = None  # the answer to a storm's last online
        self._lock = threading.Lock()
        self.announcements = 0

    def on_connect(self) -> None:
        """Everything retained, again: a broker may have lost it."""
        self._announce(force=True)
        self._publish_all_counts()

    def on_ha_status(self, payload: bytes) -> None:
        if is_birth(payload):
            if self._announce(force=False):
                log.info("Home Assistant is online: announced discovery again")
            self._publish_all_counts()

    def close(self) -> None:
        """Cancel an announcement still waiting for the end of its window."""
        with self._lock:
            if self._trailing is not None:
                self._trailing.cancel()
                self._trailing = None

    def _announce(self, force: bool) -> bool:
        """Announce now; an `online` inside the window instead schedules one announcement
        at the window's end (one, however many more come)."""
        if not self.settings.enabled:
            return False
        with self._lock:
            now = time.monotonic()
            if not force:
                wait = self._last_birth_announce + self.reannounce_min_s - now
                if wait > 0:
                    self._schedule_trailing(wait)
                    return False
                self._last_birth_announce = now
            self.announcements += 1
        self._send_discovery()
        return True

    def _schedule_trailing(self, wait: float) -> None:
        if self._trailing is not None:
            return
        self._trailing = threading.Timer(wait, self._announce_trailing)
        self._trailing.daemon = True
        self._trailing.start()

    def _announce_trailing(self) -> None:
        with self._lock:
            self._trailing = None
            self._last_birth_announce = time.monotonic()
            self.announcements += 1
        log.info("Home Assistant came online again within %.0f s: announced discovery at "
                 "the end of that window", self.reannounce_min_s)
        try:
            self._send_discovery()
            self._publish_all_counts()
        except Exception:  # a timer thread has no caller to tell; the next connect re-sends
            log.exception("announcing discovery again failed")

    def _send_discovery(self) -> None:
        for topic, payload in self._messages:
            self.publisher.publish_now(topic, payload, qos=1, retain=True)

    def _publish_all_counts(self) -> None:
        self.publish_counts(self._counts)
        self.publish_final_counts(self._final_counts)

    def publish_counts(self, people: Mapping[str, int]) -> None:
        """People per label by their first decision (retained); every label, zero when none."""
        self._counts = dict(people)
        self._publish(self.topics.counts, people)

    def publish_final_counts(self, people: Mapping[str, int]) -> None:
        """People per label they had when they left (retained): counted at each `end`."""
        self._final_counts = dict(people)
        self._publish(self.topics.final_counts, people)

    def _publish(self, topic: str, people: Mapping[str, int]) -> None:
        counts = {label: int(people.get(label, 0)) for label in self.labels}
        self.publisher.publish_now(topic, json.dumps(counts), qos=1, retain=True)
