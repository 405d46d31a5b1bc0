"""What the agent reports about itself: the `status` word, `stats`, `/healthz`.

The service feeds `Health` (source state, people and events counted); the publisher and
the outbox are read, never changed, here.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol


class DeliveryView(Protocol):
    """What health needs to know about delivery (the Publisher has it)."""

    published: int
    last_error: str | None
    refusing: bool  # the broker refuses our publishes (MQTT 5 reason code, e.g. its ACL)
    refused: int

    @property
    def broker(self) -> str: ...  # host:port in use or being tried

    def is_connected(self) -> bool: ...


class OutboxView(Protocol):
    error: str | None

    @property
    def degraded(self) -> bool: ...

    def depth(self) -> int: ...

    def dropped(self) -> int: ...


@dataclass
class Health:
    source: str = "starting"  # starting, ok, lost, ended
    source_error: str | None = None
    samples_error: str | None = None  # why the site sample store is not in use
    started: float = field(default_factory=time.monotonic)  # durations: immune to clock steps
    people: Counter = field(default_factory=Counter)  # people per label, first decision
    people_left: Counter = field(default_factory=Counter)  # per label they had at `end`
    events: Counter = field(default_factory=Counter)  # events per type
    _last_stats: float = field(default_factory=time.monotonic)  # when stats were last sent
    _last_frames: int = 0

    def status(self, outbox: OutboxView, delivery: DeliveryView | None = None) -> str:
        """The retained `status` word."""
        if self.source == "lost":
            return "source_lost"
        if delivery is not None and delivery.refusing:
            return "unauthorized"
        if outbox.degraded:
            return "degraded"
        return "online"

    def status_line(self, status: str, fps: float | None, outbox: OutboxView,
                    delivery: DeliveryView | None) -> str:
        """The line `systemctl status maskwatch` shows (sd_notify's STATUS=): what an
        operator asks first, in one line: does it see, does it deliver (and if not, why),
        what waits, whom it counted. (It said only `online` through a broker outage.)"""
        detail = self.source_error or outbox.error
        parts = [f"{status}: {detail}" if detail else status]
        if fps is not None:  # measured every few seconds: not yet at the start
            parts.append(f"{fps:.1f} fps")
        if delivery is not None:
            if delivery.is_connected() and not delivery.refusing:
                parts.append(f"delivering to {delivery.broker}")
            else:
                parts.append(delivery.last_error or f"not connected to {delivery.broker} yet")
        waiting = outbox.depth()
        parts.append(f"{waiting} event{'s' * (waiting != 1)} waiting in the outbox" if waiting
                     else "outbox empty")
        counted = ", ".join(f"{n} {label}" for label, n in sorted(self.people.items()))
        parts.append(f"people: {counted or 'none yet'}")
        return "; ".join(parts)

    def stats_due(self, interval_s: float) -> bool:
        return time.monotonic() - self._last_stats >= interval_s

    def stats_sent(self, frames: int) -> None:
        """Start the next fps window (only the periodic `stats` message does: a /metrics
        scrape must not shorten it)."""
        self._last_stats, self._last_frames = time.monotonic(), frames

    def stats(self, pipeline_stats, delivery: DeliveryView, outbox: OutboxView) -> dict:
        """The `stats` payload; fps is measured since the last `stats` message."""
        s = pipeline_stats
        fps = (s.frames - self._last_frames) / max(1e-6, time.monotonic() - self._last_stats)
        return {
            "ts": time.time(),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "fps": round(fps, 2),
            "frames": s.frames,
            "detections": s.detections,
            "faces": s.faces,
            "classified": s.classified,
            "people": dict(self.people),
            "people_left": dict(self.people_left),
            "events": dict(self.events),
            "published": delivery.published,
            "outbox_depth": outbox.depth(),
            "outbox_dropped": outbox.dropped(),
            "outbox_error": outbox.error,
            "source": self.source,
            "source_error": self.source_error,
            "broker_connected": delivery.is_connected(),
            "broker": delivery.broker,
            "broker_error": delivery.last_error,
            "status": self.status(outbox, delivery),
            "events_refused": delivery.refused,
            "samples_error": self.samples_error,
        }

    def report(self, delivery: DeliveryView, outbox: OutboxView) -> tuple[bool, dict]:
        """(healthy, details) for /healthz: the source delivers and the broker is connected."""
        broker_ok = delivery.is_connected() and not delivery.refusing
        return self.source == "ok" and broker_ok, {
            "status": self.status(outbox, delivery), "source": self.source,
            "source_error": self.source_error, "broker_connected": broker_ok,
            "broker": delivery.broker,
            "broker_error": delivery.last_error, "outbox_error": outbox.error,
        }
