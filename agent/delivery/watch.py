"""`mask-agent watch`: subscribe to the events of every device and print a live tally.

A small, strict subscriber: payloads that are not valid events (bad JSON, wrong schema,
oversized) are skipped with a line on stderr, never crash the watcher. It checks each device's
stream by the events' `seq` (1, 2, 3, ... per device): a number skipped is a lost event
(a gap), a number seen again a redelivered duplicate, a lower one than the last arrived
out of order, a 1 with an id not seen before the device numbering anew (a new outbox);
the counts per device are printed at the end. `--share GROUP` joins an MQTT 5 shared
subscription (`$share/GROUP/...`): the group's members split the stream, so each one
sees gaps by design, and only the members' reports together tell.
"""

from __future__ import annotations

import json
import os
import queue
import ssl
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from ..errors import BrokerError
from .config import MqttConfig, mqtt_password
from .mqtt_client import V5, V311, make_client, session_taker
from .topics import all_devices

MAX_PAYLOAD = 64 * 1024
MAX_SEEN = 100_000
EVENT_KEYS = {"id", "type", "device_id", "track_id", "label"}


def parse_event(payload: bytes) -> dict:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes is too large")
    event = json.loads(payload)
    if not isinstance(event, dict) or not EVENT_KEYS.issubset(event):
        raise ValueError("not a maskwatch event")
    return event


class RecentIds:
    """Event ids seen lately, the oldest forgotten past `limit`. A redelivered duplicate
    comes soon after the first copy (the backlog sent at a reconnect), and a watch left
    running for months (`watch --json >> events.jsonl` as a fleet's log) must not grow
    without end: it kept every id."""

    def __init__(self, limit: int = MAX_SEEN) -> None:
        self.limit = limit
        self._ids: set[str] = set()
        self._order: deque[str] = deque()

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, event_id: str) -> None:
        if event_id in self._ids:
            return
        self._ids.add(event_id)
        self._order.append(event_id)
        if len(self._order) > self.limit:
            self._ids.discard(self._order.popleft())


@dataclass
class StreamCheck:
    """Gaps, duplicates and reordering in one device's event numbers."""

    last: int = 0
    seen: set[int] = field(default_factory=set)
    gaps: int = 0  # numbers never seen (so far) between the lowest and the highest
    duplicates: int = 0
    reordered: int = 0
    renumbered: int = 0  # times the device began again at 1 (a new outbox)

    def add(self, seq: int, new_id: bool = False) -> None:
        """One event's `seq`; `new_id`: its id was not seen before (so a 1 after higher
        numbers is a device numbering anew, a new outbox, not a duplicate)."""
        if seq == 1 and new_id and self.last > 1:
            self.renumbered += 1
            self.last, self.seen = 0, set()
        if seq in self.seen:
            self.duplicates += 1
            return
        if self.last and seq < self.last:
            self.reordered += 1
            self.gaps -= 1  # it fills a gap counted before
        elif self.last and seq > self.last + 1:
            self.gaps += seq - self.last - 1
        self.seen.add(seq)
        if len(self.seen) > MAX_SEEN:  # bounded memory on a long watch
            self.seen = set(sorted(self.seen)[-MAX_SEEN // 2:])
        self.last = max(self.last, seq)

    def summary(self) -> str:
        anew = f", numbered anew {self.renumbered} times" if self.renumbered else ""
        return (f"{len(self.seen)} events up to seq {self.last}, {self.gaps} missing, "
                f"{self.duplicates} duplicates, {self.reordered} out of order{anew}")


class SessionEnds:
    """The broker ending this watch's session, three times in a minute, is said (once a
    minute): another client takes it. On a broker that makes the user name the client id
    (deploy/mosquitto/fleet.conf) that is any client of the same user: a watch run with a
    device's config and that device knocked each other off once a second, and the watch
    said nothing of why its events came and went."""

    def __init__(self, client_id: str, username: str | None) -> None:
        self.client_id, self.username = client_id, username
        self._ends: list[float] = []
        self._said = -60.0

    def __call__(self, client, userdata, flags, reason_code, properties=None) -> None:
        now = time.monotonic()
        self._ends = [t for t in self._ends if now - t < 60] + [now]
        if len(self._ends) >= 3 and now - self._said >= 60:
            self._said = now
            who = session_taker(self.client_id, self.username)
            print(f"watch: the broker ended this watch's session {len(self._ends)} times in "
                  f"a minute: another client uses {who}; give the watch a user of its own "
                  "(README, Fleets)", file=sys.stderr, flush=True)


def connect(m: MqttConfig, on_message, share: str | None = None,
            on_ready=None) -> mqtt.Client:
    # 3.1.1 unless v5 is asked for: a subscriber needs nothing of v5, every broker speaks it.
    # Its own client id per process: two watches (two terminals) with one id knocked each
    # other off the broker every second, losing what came meanwhile, and said nothing
    client_id = f"{m.client_id}-watch-{os.getpid()}"
    client = make_client(m, client_id, mqtt_password(m), persistent_session=False,
                         protocol=V5 if m.protocol == V5 else V311)
    client.on_disconnect = SessionEnds(client_id, m.username)
    events = all_devices(m.topic_prefix, "events")
    client.on_connect = lambda c, *a: (
        c.subscribe(f"$share/{share}/{events}" if share else events, qos=1),
        c.subscribe(all_devices(m.topic_prefix, "status"), qos=1))
    client.on_subscribe = lambda *a: on_ready and on_ready()
    client.on_message = on_message
    try:
        client.connect(m.host, m.port, m.keepalive)
    except (OSError, ssl.SSLError) as exc:
        raise BrokerError(f"cannot connect to MQTT broker {m.host}:{m.port}: {exc}") from None
    return client


def watch(settings: MqttConfig, count: int = 0, timeout: float = 0, as_json: bool = False,
          share: str | None = None) -> int:
    inbox: queue.Queue = queue.Queue()
    ready = threading.Event()

    def subscribed() -> None:
        if not ready.is_set():
            ready.set()
            print("watch: subscribed", file=sys.stderr, flush=True)  # for scripts to wait on

    client = connect(settings, lambda c, u, msg: inbox.put((msg.topic, msg.payload)), share,
                     subscribed)
    streams: dict[str, StreamCheck] = defaultdict(StreamCheck)
    client.loop_start()
    tally: dict[str, Counter] = defaultdict(Counter)
    seen = RecentIds()
    deadline = time.monotonic() + timeout if timeout else None
    shown = 0
    try:
        while not count or shown < count:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                break
            try:
                topic, payload = inbox.get(timeout=wait if wait is not None else 1.0)
            except queue.Empty:
                continue
            if topic.endswith("/status"):
                if not as_json:
                    print(f"{topic.split('/')[-2]}: {payload.decode(errors='replace')}",
                          flush=True)
                continue
            try:
                event = parse_event(payload)
            except ValueError as exc:
                print(f"skipping message on {topic}: {exc}", file=sys.stderr)
                continue
            if isinstance(event.get("seq"), int):
                streams[str(event["device_id"])].add(event["seq"], event["id"] not in seen)
            if event["id"] in seen:  # at-least-once delivery: drop duplicates by id
                continue
            seen.add(event["id"])
            shown += 1
            if event["type"] == "new":
                tally[event["device_id"]][event["label"]] += 1
            if as_json:
                print(json.dumps(event), flush=True)
            else:
                counts = ", ".join(f"{k}={v}" for k, v in sorted(tally[event["device_id"]].items()))
                print(f"{event.get('ts', '')} {event['device_id']} #{event['track_id']} "
                      f"{event['type']:<6} {event['label']} ({event.get('confidence', 0):.2f})"
                      f"  | {counts}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        client.loop_stop()
        client.disconnect()
        for device, stream in sorted(streams.items()):
            print(f"watch: {device}: {stream.summary()}", file=sys.stderr, flush=True)
    return 0
