"""Every MQTT topic the agent uses, named in one place.

Device topics live under `<mqtt.topic_prefix>/<device_id>/`; Home Assistant's live
under its discovery prefix. The watcher subscribes with `+` in place of the device.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    base: str  # <prefix>/<device_id>
    discovery_prefix: str

    @classmethod
    def of(cls, topic_prefix: str, device_id: str, discovery_prefix: str) -> Topics:
        """The topics of one device (`mqtt.topic_prefix`, `device_id`,
        `homeassistant.discovery_prefix`)."""
        return cls(f"{topic_prefix}/{device_id}", discovery_prefix)

    @property
    def events(self) -> str:
        """Person events, QoS 1, through the outbox."""
        return f"{self.base}/events"

    @property
    def status(self) -> str:
        """online / source_lost / degraded / offline, retained (offline is the last will)."""
        return f"{self.base}/status"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    @property
    def counts(self) -> str:
        """People per label by their first decision (`new`), retained."""
        return f"{self.base}/counts"

    @property
    def final_counts(self) -> str:
        """People per label they had when they left (at their `end` event), retained."""
        return f"{self.base}/final_counts"

    @property
    def unmasked(self) -> str:
        """ON when an unmasked person is decided, QoS 1, through the outbox."""
        return f"{self.base}/unmasked"

    @property
    def ha_status(self) -> str:
        """Home Assistant's birth/will topic."""
        return f"{self.discovery_prefix}/status"

    def discovery(self, component: str, node: str, object_id: str) -> str:
        return f"{self.discovery_prefix}/{component}/{node}/{object_id}/config"


def all_devices(prefix: str, leaf: str) -> str:
    """The subscription for one topic of every device: <prefix>/+/<leaf>."""
    return f"{prefix}/+/{leaf}"
