"""The agent service: source -> pipeline -> events -> outbox/MQTT, with health and stats.

Owns the I/O around the pipeline: reopening a lost source with backoff (`source_lost`),
publishing events durably, stats, Home Assistant discovery, the optional HTTP endpoint,
systemd readiness/watchdog, and a clean stop on SIGTERM (end open tracks, drain what the
broker takes, `offline`; anything unacknowledged stays in the outbox for the next start).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from .camera import Source, describe, open_source
from .classify import Classifier
from .config import mqtt_password
from .detect import create_detector
from .discovery import discovery_messages, is_birth
from .errors import SourceError, StateError
from .events import EventContext, build_event, encode
from .models import detector_model_path
from .outbox import MemoryOutbox, Outbox
from .pipeline import Pipeline
from .predict import draw_faces
from .publish import Publisher, topic_base
from .systemd import Notifier
from .track import Tracker, Transition, VoteRules

log = logging.getLogger("maskwatch.service")

UNTIL_EOF_DRAIN_S = 60.0
STOP_DRAIN_S = 5.0


@dataclass
class Health:
    """What /healthz, `status` and `stats` report."""

    source: str = "starting"  # starting, ok, lost, ended
    source_error: str | None = None
    outbox_error: str | None = None
    started: float = field(default_factory=time.time)
    people: Counter = field(default_factory=Counter)  # decided people per label
    events: Counter = field(default_factory=Counter)  # events per type


def build_pipeline(cfg: dict) -> Pipeline:
    """Detector + classifier + tracker from the config (ModelError when a model is bad)."""
    d = cfg["detect"]
    model = detector_model_path(d["detector"], d["model"], cfg["state_dir"])
    detector = create_detector(d["detector"], model, max_side=d["max_side"],
                               min_face=d["min_face"], score_threshold=d["score_threshold"])
    c = cfg["classify"]
    classifier = Classifier(c["model"], threads=c["threads"],
                            no_mask_threshold=c["no_mask_threshold"])
    t = cfg["track"]
    tracker = Tracker(t["iou_threshold"], t["max_missed_s"],
                      VoteRules(t["min_votes"], t["agreement"], t["window"], t["update_votes"]))
    return Pipeline(detector, classifier, tracker, d["fps"], d["roi"])


def open_outbox(cfg: dict) -> tuple[Outbox, str | None]:
    """The SQLite outbox, or a memory one (and the reason) when the state dir is unusable."""
    o = cfg["outbox"]
    try:
        return Outbox(o["path"], o["max_events"], o["max_bytes"]), None
    except StateError as exc:
        log.error("%s; keeping events in memory until it is fixed", exc)
        return MemoryOutbox(o["max_events"], o["max_bytes"]), str(exc)


class Agent:
    def __init__(self, cfg: dict, pipeline: Pipeline | None = None) -> None:
        self.cfg = cfg
        self.stop_event = threading.Event()
        self.health = Health()
        self.notifier = Notifier()
        self.pipeline = pipeline or build_pipeline(cfg)
        self.model_info = self.pipeline.classifier.info.summary()
        outbox, error = open_outbox(cfg)
        self.health.outbox_error = error
        self.publisher = Publisher(cfg, outbox, mqtt_password(cfg))
        self.base = topic_base(cfg)
        self.publisher.on_connected.append(self._announce)
        if cfg["homeassistant"]["enabled"]:
            prefix = cfg["homeassistant"]["discovery_prefix"]
            self.publisher.subscribe(f"{prefix}/status", self._on_ha_status)
        self.http = None
        self._context: EventContext | None = None
        self._clock_offset = 0.0
        self._last_stats = time.monotonic()
        self._last_stats_frames = 0
        self.latest_frame = None

    # --- announcements -----------------------------------------------------------------
    def _announce(self) -> None:
        if not self.cfg["homeassistant"]["enabled"]:
            return
        for topic, payload in discovery_messages(self.cfg, self.base,
                                                 self.pipeline.classifier.labels,
                                                 self.model_info["name"]):
            self.publisher.publish_now(topic, payload, qos=1, retain=True)
        self._publish_counts()

    def _on_ha_status(self, payload: bytes) -> None:
        if is_birth(payload):
            log.info("Home Assistant is online: announcing discovery again")
            self._announce()

    def _publish_counts(self) -> None:
        counts = {label: self.health.people.get(label, 0)
                  for label in self.pipeline.classifier.labels}
        self.publisher.publish_now(f"{self.base}/counts", json.dumps(counts), qos=1,
                                   retain=True)

    # --- status ------------------------------------------------------------------------
    def status_text(self) -> str:
        if self.health.source == "lost":
            return "source_lost"
        if self.health.outbox_error:
            return "degraded"
        return "online"

    def _update_status(self) -> None:
        status = self.status_text()
        self.publisher.set_status(status)
        detail = self.health.source_error or self.health.outbox_error or ""
        self.notifier.status(f"{status}: {detail}" if detail else
                             f"{status}; {self.pipeline.stats.frames} frames, "
                             f"outbox {self.publisher.outbox.depth()}")

    def stats(self) -> dict:
        now = time.monotonic()
        frames = self.pipeline.stats.frames
        elapsed = max(1e-6, now - self._last_stats)
        s = self.pipeline.stats
        return {
            "ts": time.time(),
            "uptime_s": round(time.time() - self.health.started, 1),
            "fps": round((frames - self._last_stats_frames) / elapsed, 2),
            "frames": frames,
            "detections": s.detections,
            "faces": s.faces,
            "classified": s.classified,
            "people": dict(self.health.people),
            "events": dict(self.health.events),
            "published": self.publisher.published,
            "outbox_depth": self.publisher.outbox.depth(),
            "outbox_dropped": self.publisher.outbox.dropped(),
            "outbox_error": self.health.outbox_error,
            "source": self.health.source,
            "source_error": self.health.source_error,
            "broker_connected": self.publisher.connected.is_set(),
            "broker_error": self.publisher.last_error,
            "status": self.status_text(),
        }

    def health_report(self) -> tuple[bool, dict]:
        """(healthy, details): healthy when the source delivers and the broker is connected."""
        source_ok = self.health.source == "ok"
        broker_ok = self.publisher.connected.is_set()
        return source_ok and broker_ok, {
            "status": self.status_text(), "source": self.health.source,
            "source_error": self.health.source_error, "broker_connected": broker_ok,
            "broker_error": self.publisher.last_error, "outbox_error": self.health.outbox_error,
        }

    def snapshot_jpeg(self) -> bytes | None:
        """The latest frame with the latest boxes, as JPEG (None before the first frame)."""
        frame = self.latest_frame
        if frame is None:
            return None
        image = draw_faces(frame.image.copy(), [
            (face.box, face.label, f"#{face.track_id} {face.label or '?'}")
            for face in self.pipeline.latest])
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
        return buf.tobytes() if ok else None

    def make_predictor(self):
        """A separate detector and classifier for HTTP requests (interpreters aren't shared)."""
        fresh = build_pipeline(self.cfg)
        return fresh.detector, fresh.classifier

    def _maybe_stats(self) -> None:
        now = time.monotonic()
        if now - self._last_stats < self.cfg["mqtt"]["stats_interval_s"]:
            return
        payload = self.stats()
        self._last_stats, self._last_stats_frames = now, self.pipeline.stats.frames
        self.publisher.publish_now(f"{self.base}/stats", json.dumps(payload))

    # --- events ------------------------------------------------------------------------
    def _wall(self, ts: float) -> float:
        return ts + self._clock_offset

    def _emit(self, transition: Transition) -> None:
        assert self._context is not None
        track = transition.track
        event = build_event(transition, self._context, self._wall(track.last_seen),
                            self._wall(track.first_seen))
        self.health.events[transition.kind] += 1
        if transition.kind == "new":
            self.health.people[event["label"]] += 1
        if transition.kind in ("new", "update") and event["label"] == "without_mask":
            self.publisher.publish_now(f"{self.base}/unmasked", "ON", qos=1)
        payload = encode(event)
        try:
            self.publisher.publish_event(payload)
        except StateError as exc:
            self._fall_back_to_memory(str(exc))
            self.publisher.publish_event(payload)
        if transition.kind == "new":
            self._publish_counts()
        log.debug("event %s %s track %s", event["type"], event["label"], event["track_id"])

    def _fall_back_to_memory(self, reason: str) -> None:
        """Disk full or state dir broken: keep going with a bounded memory outbox."""
        log.error("%s; keeping new events in memory", reason)
        self.health.outbox_error = reason
        o = self.cfg["outbox"]
        self.publisher.outbox = MemoryOutbox(o["max_events"], o["max_bytes"])
        self._update_status()

    # --- the loop ----------------------------------------------------------------------
    def _open(self, uri: str) -> Source | None:
        s = self.cfg["source"]
        try:
            source = open_source(uri, realtime=s["realtime"], loop=s["loop"],
                                 width=s["width"], height=s["height"])
        except SourceError as exc:
            self._source_lost(str(exc))
            return None
        self.health.source, self.health.source_error = "ok", None
        self._clock_offset = time.time() - (time.monotonic() if source.live else 0.0)
        self._update_status()
        log.info("reading frames from %s", source.description)
        return source

    def _source_lost(self, reason: str) -> None:
        if self.health.source != "lost":
            log.warning("source lost: %s", reason)
        self.health.source, self.health.source_error = "lost", reason
        self._update_status()

    def _backoff(self, delay: float) -> float:
        """Wait (interruptibly, still pinging the watchdog) and return the next delay."""
        deadline = time.monotonic() + delay
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            self.notifier.watchdog()
            self._maybe_stats()
            self.stop_event.wait(min(0.5, max(0.0, deadline - time.monotonic())))
        return min(delay * 2, self.cfg["source"]["retry_max_s"])

    def _end_tracks(self, ts: float) -> None:
        for transition in self.pipeline.finish(ts):
            self._emit(transition)

    def run(self, source_uri: str | None = None, until_eof: bool = False) -> int:
        """Process frames until stopped (or the source ends, with until_eof)."""
        uri = source_uri or str(self.cfg["source"]["uri"])
        self.publisher.start()
        if self.http is not None:
            self.http.start()
        source = self._open(uri)
        self.notifier.ready(f"{self.status_text()}; source {describe(uri)}")
        delay = self.cfg["source"]["retry_initial_s"]
        last_ts = 0.0
        try:
            while not self.stop_event.is_set():
                self.notifier.watchdog()
                self._maybe_stats()
                if source is None:
                    delay = self._backoff(delay)
                    if not self.stop_event.is_set():
                        source = self._open(uri)
                    continue
                try:
                    frame = source.read()
                except SourceError as exc:
                    frame, error = None, str(exc)
                else:
                    error = None
                if frame is None:
                    source.close()
                    source = None
                    self._end_tracks(last_ts + 3600)
                    if error is None and until_eof:
                        self.health.source = "ended"
                        break
                    self._source_lost(error or f"{describe(uri)} ended")
                    continue
                delay = self.cfg["source"]["retry_initial_s"]
                if self._context is None:
                    h, w = frame.image.shape[:2]
                    self._context = EventContext(self.cfg["device_id"], self.model_info, (w, h))
                last_ts = frame.ts
                self.latest_frame = frame
                for transition in self.pipeline.process(frame):
                    self._emit(transition)
        finally:
            self._shutdown(source, last_ts, until_eof)
        return 0

    def _shutdown(self, source: Source | None, last_ts: float, until_eof: bool) -> None:
        self.notifier.stopping()
        if source is not None:
            source.close()
        if self._context is not None:
            self._end_tracks(last_ts + 3600)
        drain = UNTIL_EOF_DRAIN_S if until_eof and not self.stop_event.is_set() else STOP_DRAIN_S
        self.publisher.publish_now(f"{self.base}/stats", json.dumps(self.stats()))
        left = self.publisher.stop(drain_timeout_s=drain)
        if self.http is not None:
            self.http.stop()
        if left:
            log.warning("%d events not yet acknowledged stay in the outbox %s for the next "
                        "start", left, self.publisher.outbox.path)
        log.info("stopped after %d frames", self.pipeline.stats.frames)

    def install_signal_handlers(self) -> None:
        def stop(signum, _frame):
            log.info("received %s: stopping", signal.Signals(signum).name)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)


def state_dir_ready(path: str) -> str | None:
    """None when the state directory is writable, else why not."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        probe = Path(path) / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        return f"state directory {path} is not writable: {exc.strerror}"
    return None
