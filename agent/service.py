"""The agent service: source -> pipeline -> events -> outbox/MQTT.

This module is the loop and little else: each concern lives where it belongs (source
reopening in camera.Reopener, durable delivery in outbox/publish, Home Assistant in
discovery.Announcer, status/stats in health, HTTP in http, systemd in systemd). A clean
stop (SIGTERM, end of file) ends open tracks, drains what the broker takes, says
`offline`, and leaves anything unacknowledged in the outbox for the next start.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace
from typing import Callable

import cv2

from .config import DEFAULT_HOSTNAMES, Config
from .delivery.config import mqtt_password
from .delivery.discovery import Announcer
from .delivery.outbox import ResilientOutbox
from .delivery.publish import Publisher
from .errors import EXIT_IOERR, EXIT_NOPERM, EXIT_OK, EXIT_TEMPFAIL, StateError
from .factory import classifier_from, pipeline_from, topics_from
from .health import Health
from .people.events import EventContext, build_event, encode
from .people.track import Transition
from .pipeline import Pipeline
from .systemd import Notifier
from .vision.camera import (
    Frame,
    Reopener,
    Source,
    capture_size,
    ends_at_eof,
    quiet_opencv,
)
from .vision.config import hide_credentials
from .vision.decision import NO_MASK
from .vision.predict import draw_faces

# not "maskwatch.service": in the journal systemd's own lines about the unit begin so
log = logging.getLogger("maskwatch.agent")

UNTIL_EOF_DRAIN_S = 60.0  # the broker answered before: give it time to take the backlog
NEVER_CONNECTED_DRAIN_S = 10.0  # no broker so far: don't hold the exit for a minute
STOP_DRAIN_S = 5.0
PRUNE_EVERY_S = 600.0  # crops past adapt.retention_days go within ten minutes
STATUS_EVERY_S = 5.0  # systemd's status line (fps, outbox, people) is refreshed this often


def wall_clock(ts: float, live: bool, file_offset: float) -> float:
    """Wall-clock time of a frame time. Live frames carry monotonic time, so the clock is
    read now, at the event: after an NTP step (a Pi without a real-time clock boots in the
    past and steps later) the next event has the right time. A file's frames carry video
    time: `file_offset`, fixed when it opened, maps it."""
    return ts + (time.time() - time.monotonic() if live else file_offset)


class Agent:
    def __init__(self, cfg: Config, pipeline: Pipeline | None = None,
                 publish: bool = True, outbox_kept: bool = True) -> None:
        self.cfg = cfg
        self.publish = publish  # False: no broker (the demo without one); events still queued
        self.outbox_kept = outbox_kept  # False: deleted after the run (the demo's temp dir)
        self.stop_event = threading.Event()
        self.health = Health()
        self.notifier = Notifier()
        self.pipeline = pipeline or pipeline_from(cfg)
        self.model_info = self.pipeline.classifier.info.summary()
        self.topics = topics_from(cfg)
        self.outbox = ResilientOutbox(cfg.outbox.path or ":memory:", cfg.outbox.max_events,
                                      cfg.outbox.max_bytes)
        self.publisher = Publisher(cfg.mqtt, self.topics, self.outbox, mqtt_password(cfg.mqtt))
        self.announcer = Announcer(cfg.homeassistant, cfg.device_id or "", self.topics,
                                   self.pipeline.classifier.labels, self.model_info["name"],
                                   self.publisher)
        self.publisher.on_connected.append(self.announcer.on_connect)
        if cfg.homeassistant.enabled:
            self.publisher.subscribe(self.topics.ha_status, self.announcer.on_ha_status)
        self.on_event: list[Callable[[dict], None]] = []  # extra listeners (the demo)
        self.samples = self._open_samples()  # collection on, or the console
        if cfg.adapt.collect and self.samples is not None:
            from .site.doorway import collector_listener

            self.pipeline.on_classified.append(
                collector_listener(cfg.adapt, self.samples, self.pipeline.classifier))
        self.http = None
        if cfg.http.enabled:
            from .web.http import HttpEndpoint

            self.http = HttpEndpoint(cfg.http, cfg.detect.max_image_pixels, self)
        self.latest_frame: Frame | None = None
        self._context: EventContext | None = None
        self._clock_offset = 0.0  # wall time of video time 0 (files)
        self._live = False
        self._delivery_state = (False, False)  # (connected, refused) when last told
        self._next_prune = time.monotonic() + PRUNE_EVERY_S
        self._next_status = time.monotonic() + STATUS_EVERY_S
        self._fps: float | None = None  # frames a second, once measured
        self._fps_since = (time.monotonic(), 0)

    def _open_samples(self):
        """The site sample store, or None: not needed, or unusable (another program's
        samples.sqlite3, a full disk; a damaged one is set aside and renewed in
        `open_store`). Collection is a side job: without its store the agent still
        detects and delivers, and says why collection is off."""
        cfg = self.cfg
        if not (cfg.adapt.collect or (cfg.http.enabled and cfg.http.console)):
            return None
        from .site.doorway import open_store

        try:
            return open_store(cfg.adapt, cfg.state_dir)
        except StateError as exc:
            self.health.samples_error = str(exc)
            log.error("%s; running without collection", exc)
            return None

    # --- what the HTTP endpoint and systemd see --------------------------------------
    def status_text(self) -> str:
        return self.health.status(self.outbox, self.publisher)

    def stats(self) -> dict:
        return self.health.stats(self.pipeline.stats, self.publisher, self.outbox)

    def health_report(self) -> tuple[bool, dict]:
        return self.health.report(self.publisher, self.outbox)

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

    def make_console(self, token: str | None):
        """The web console, fed by this agent's events and stats; with no token
        configured, it logs in with one generated into the state dir."""
        from .web.console import Console, PeopleLog, console_token

        if token is None:
            token, path, made = console_token(self.cfg.state_dir or ".")
            log.warning("console login token %s %s (readable by this user only)",
                        "written to" if made else "is in", path)

        people = PeopleLog()
        self.on_event.append(people.add)
        cfg = self.cfg
        return Console(cfg.state_dir, cfg.adapt.collect,
                       lambda: classifier_from(cfg.classify, cfg.state_dir), token,
                       self.stats, self.samples, people,
                       self.pipeline.classifier.identity)

    def make_predictor(self):
        """A separate detector and classifier for HTTP requests (interpreters aren't shared)."""
        fresh = pipeline_from(self.cfg)
        return fresh.detector, fresh.classifier

    def _update_status(self) -> None:
        """The retained `status` word, and systemd's status line (`systemctl status`)."""
        status = self.status_text()
        self.publisher.set_status(status)
        self._next_status = time.monotonic() + STATUS_EVERY_S
        self.notifier.status(self.health.status_line(
            status, self._fps, self.outbox, self.publisher if self.publish else None))

    def _measure_fps(self) -> None:
        """Frames a second since the last measure (every STATUS_EVERY_S)."""
        now, frames = time.monotonic(), self.pipeline.stats.frames
        since, before = self._fps_since
        self._fps, self._fps_since = (frames - before) / max(1e-6, now - since), (now, frames)

    def _tick(self) -> None:
        """Housekeeping between frames: watchdog, outbox recovery, periodic stats."""
        self.notifier.watchdog()
        delivery_state = (self.publisher.is_connected(), self.publisher.refusing)
        if delivery_state != self._delivery_state:  # the broker, `unauthorized`: come and go
            self._delivery_state = delivery_state
            self._update_status()
        elif time.monotonic() >= self._next_status:
            self._measure_fps()
            self._update_status()
        if self.outbox.degraded and self.outbox.maintain():
            self._update_status()
        if self.samples is not None and time.monotonic() >= self._next_prune:
            from .site.doorway import prune_quietly

            self._next_prune = time.monotonic() + PRUNE_EVERY_S
            prune_quietly(self.samples)
        if self.health.stats_due(self.cfg.mqtt.stats_interval_s):
            self.publisher.publish_now(self.topics.stats, json.dumps(self.stats()))
            self.health.stats_sent(self.pipeline.stats.frames)

    # --- events ------------------------------------------------------------------------
    def _emit(self, transition: Transition) -> None:
        assert self._context is not None
        track = transition.track
        context = replace(self._context, model=self.pipeline.classifier.identity())
        event = build_event(transition, context,
                            wall_clock(track.last_seen, self._live, self._clock_offset),
                            wall_clock(track.first_seen, self._live, self._clock_offset))
        was_degraded = self.outbox.degraded

        def numbered(seq: int) -> bytes:
            event["seq"] = seq  # this device's event number: a consumer checks for gaps
            return encode(event)

        self.publisher.queue_numbered(self.topics.events, numbered)
        if transition.kind in ("new", "update") and event["label"] == NO_MASK:
            self.publisher.queue(self.topics.unmasked, "ON")
        if self.outbox.degraded != was_degraded:
            self._update_status()
        self.health.events[transition.kind] += 1
        if transition.kind == "new":
            self.health.people[event["label"]] += 1
            self.announcer.publish_counts(self.health.people)
        elif transition.kind == "end":
            self.health.people_left[event["label"]] += 1
            self.announcer.publish_final_counts(self.health.people_left)
        log.info("person #%d %s: %s (%.2f)", event["track_id"], event["type"], event["label"],
                 event["confidence"])
        for listener in self.on_event:
            listener(event)


    def _end_tracks(self, ts: float) -> None:
        for transition in self.pipeline.finish(ts):
            self._emit(transition)

    # --- the loop ----------------------------------------------------------------------
    def _on_source(self, state: str, source: Source | None, reason: str | None) -> None:
        if state == "ok" and source is not None:
            self._live = source.live
            self._clock_offset = time.time() - (time.monotonic() if source.live else 0.0)
        if state in ("lost", "ended") and self._context is not None:
            self._end_tracks(self._last_ts)
        if state == "lost" and self.health.source != "lost":
            log.warning("source lost: %s", reason)
        self.health.source, self.health.source_error = state, reason
        self._update_status()

    def run(self, source_uri: str | None = None, until_eof: bool = False) -> int:
        """Process frames until stopped (or the source ends, with until_eof); returns the
        exit code. SourceError when the source cannot be opened at start."""
        uri = source_uri or self.cfg.source.uri
        until_eof = until_eof or ends_at_eof(uri, self.cfg.source)
        quiet_opencv()
        self._last_ts = 0.0
        frames = Reopener(uri, capture_size(self.cfg.source, self.cfg.detect.max_side),
                          self.stop_event, self._on_source, self._tick, until_eof=until_eof)
        frames.open_first()
        if self.publish:
            self.publisher.start()
        if self.http is not None:
            self.http.start()
        if self.publish and self.cfg.device_id in DEFAULT_HOSTNAMES:
            log.warning("device_id is %r, a default host name: on a fleet every device "
                        "needs its own (set device_id in the config), or their events, counts "
                        "and Home Assistant entities merge into one device",
                        self.cfg.device_id)
        self.notifier.ready(f"{self.status_text()}; source {hide_credentials(uri)}")
        self._fps_since = (time.monotonic(), self.pipeline.stats.frames)  # from the start
        started = time.monotonic()
        try:
            while True:
                self._tick()
                frame = frames.next_frame()
                if frame is None:
                    if not self.stop_event.is_set():
                        log.info("%s ended", hide_credentials(uri))
                    break
                if self._context is None:
                    h, w = frame.image.shape[:2]
                    self._context = EventContext(self.cfg.device_id or "", self.model_info,
                                                 (w, h))
                self._last_ts = frame.ts
                self.latest_frame = frame
                for transition in self.pipeline.process(frame):
                    self._emit(transition)
        finally:
            frames.close()
            code = self._shutdown(until_eof, time.monotonic() - started)
        return code

    def _shutdown(self, until_eof: bool, seconds: float) -> int:
        self.notifier.stopping()
        if self._context is not None:
            self._end_tracks(self._last_ts)
        left = 0
        self.announcer.close()
        if self.publish:
            self.publisher.publish_now(self.topics.stats, json.dumps(self.stats()))
            drain = STOP_DRAIN_S
            if until_eof and not self.stop_event.is_set():
                drain = UNTIL_EOF_DRAIN_S if self.publisher.ever_connected else \
                    NEVER_CONNECTED_DRAIN_S
            queued = self.outbox.depth()
            if queued:
                log.info("waiting up to %.0f s for the broker to take %d queued events", drain,
                         queued)
            left = self.publisher.stop(drain_timeout_s=drain)
        if self.http is not None:
            self.http.stop()
        self.outbox.maintain()
        self._log_summary(seconds)
        return self._exit_code(left, until_eof)

    def _log_summary(self, seconds: float) -> None:
        s = self.pipeline.stats
        people = ", ".join(f"{k} {v}" for k, v in sorted(self.health.people.items())) or "none"
        events = ", ".join(f"{k} {v}" for k, v in sorted(self.health.events.items())) or "none"
        log.info("stopped after %d frames (%.1f fps): people %s; events %s", s.frames,
                 s.frames / max(seconds, 1e-6), people, events)

    def _exit_code(self, left: int, until_eof: bool) -> int:
        """74 when the outbox could not be written (events only in memory are lost now),
        75 when --until-eof leaves events undelivered, else 0."""
        if self.outbox.degraded:
            log.error("the event outbox %s could not be written (%s); %d events that existed "
                      "only in memory are lost", self.outbox.path, self.outbox.error,
                      self.outbox.in_memory())
            return EXIT_IOERR
        if left and self.publish:
            if self.outbox_kept:
                log.warning("%d events not yet delivered stay in the outbox %s for the next "
                            "start", left, self.outbox.path)
            else:
                log.warning("%d events were not delivered (this run's outbox is not kept)",
                            left)
            if until_eof and self.publisher.refused:
                log.error("the MQTT broker refused %d publishes (%s): not allowed to publish",
                          self.publisher.refused, self.publisher.last_error)
                return EXIT_NOPERM
            if until_eof:
                return EXIT_TEMPFAIL
        return EXIT_OK
