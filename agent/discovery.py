"""Home Assistant MQTT discovery: the device appears with its entities by itself.

Retained config messages under `<discovery_prefix>/<component>/<node>/<object>/config`:
- binary_sensor "Unmasked person present" (on for `off_delay_s` after a no-mask event),
- sensors counting people per label since the agent started (total_increasing),
- an `event` entity fed by the person events (`new`, `update`, `end`),
all tied to the device's `status` topic for availability and grouped by a `device` block.
They are announced on every connect and again when Home Assistant says `online` on
`<discovery_prefix>/status` (it forgets retained discovery on restart otherwise).
"""

from __future__ import annotations

import json

from . import __version__

BIRTH_PAYLOADS = (b"online", b"offline")
MAX_BIRTH_BYTES = 16


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


def discovery_messages(cfg: dict, base: str, labels: list[str],
                       model_name: str) -> list[tuple[str, str]]:
    """(topic, JSON payload) for every entity; publish retained."""
    ha = cfg["homeassistant"]
    prefix, device_id = ha["discovery_prefix"], cfg["device_id"]
    node = node_id(device_id)
    common = {
        "availability_topic": f"{base}/status",
        "availability_template": "{{ 'offline' if value == 'offline' else 'online' }}",
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device_block(device_id, model_name),
        "origin": {"name": "maskwatch", "sw_version": __version__},
    }
    messages = [(f"{prefix}/binary_sensor/{node}/unmasked/config", {
        **common,
        "name": "Unmasked person present",
        "unique_id": f"{node}_unmasked",
        "object_id": f"{node}_unmasked",
        "state_topic": f"{base}/unmasked",
        "payload_on": "ON",
        "payload_off": "OFF",
        "off_delay": ha["off_delay_s"],
        "device_class": "occupancy",
    })]
    for label in labels:
        messages.append((f"{prefix}/sensor/{node}/people_{label}/config", {
            **common,
            "name": f"People {label.replace('_', ' ')}",
            "unique_id": f"{node}_people_{label}",
            "object_id": f"{node}_people_{label}",
            "state_topic": f"{base}/counts",
            "value_template": "{{ value_json." + label + " | default(0) }}",
            "state_class": "total_increasing",
            "unit_of_measurement": "people",
            "icon": "mdi:face-mask" if label != "without_mask" else "mdi:emoticon-outline",
        }))
    messages.append((f"{prefix}/event/{node}/person/config", {
        **common,
        "name": "Person",
        "unique_id": f"{node}_person",
        "object_id": f"{node}_person",
        "state_topic": f"{base}/events",
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
