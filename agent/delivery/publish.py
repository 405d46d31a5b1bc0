"""MQTT publishing (paho-mqtt 2, callback API v2) from the durable outbox.

What goes how (topic names: topics.py):
- queued through the outbox (at least once, in order, survives outages and restarts):
  person `events` and `unmasked` alerts: anything an automation acts on;
- retained state, re-sent on every connect: `status` (also the last will, `offline`),
  `counts`, Home Assistant discovery;
- best effort, QoS 0, replaced by the next one: `stats`.
A pump thread hands outbox messages to paho in seq order with a bounded number in flight
and deletes each one on its PUBACK. After every (re)connect it starts again from the
oldest unacknowledged message: a redelivered duplicate keeps its event id.

MQTT 5 by default: its PUBACK carries a reason code, so a publish the broker refuses (its
ACL, a quota) is not mistaken for a delivery. A refused event stays in the outbox, the
status becomes `unauthorized`, an error is logged once a minute, and the outbox is tried
again every REFUSED_RETRY_S (the ACL may be fixed meanwhile). MQTT 3.1.1 acknowledges a
denied publish like an accepted one; on a broker that speaks only 3.1.1 (`mqtt.protocol:
auto`) the publisher falls back to it and says that refusals cannot be seen there (for
good where the broker refused MQTT 5 in words; for one connection where it closed the
CONNECT unanswered, which a load balancer whose broker is down does too).
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import ssl
import threading
import time
import zlib
from typing import Callable

import paho.mqtt.client as mqtt

from ..throttle import Throttle
from .config import MqttConfig, TlsConfig, broker_addresses
from .mqtt_client import (
    V5,
    V311,
    connect_args,
    first_protocol,
    make_client,
    session_taker,
    unsupported_protocol,
)
from .outbox import ResilientOutbox
from .topics import Topics

log = logging.getLogger("maskwatch.publish")
throttle = Throttle(log)

IN_FLIGHT = 20
SESSION_TAKEN_OVER = 142  # MQTT 5 DISCONNECT reason: another client took our client id
SHORT_SESSION_S = 5.0
REFUSED_RETRY_S = 60.0  # a refused event is offered again this often
AUTH_FAILURES = {"Bad user name or password", "Not authorized"}


def diagnose_connect(host: str, port: int, tls: TlsConfig | None, timeout: float = 5.0) -> str:
    """Why a connection fails, in one line (paho only says that it failed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if tls is None:
                return "connection closed by the broker"
            context = ssl.create_default_context(cafile=tls.ca_file)
            if tls.cert_file:
                context.load_cert_chain(tls.cert_file, tls.key_file)
            if tls.insecure:
                context.check_hostname = False
            with context.wrap_socket(sock, server_hostname=host):
                return "TLS handshake succeeded; the broker closed the connection"
    except ssl.SSLError as exc:
        return f"TLS error: {exc.reason or exc} ({exc.verify_message or 'handshake failed'})" \
            if isinstance(exc, ssl.SSLCertVerificationError) else f"TLS error: {exc}"
    except OSError as exc:
        return exc.strerror or str(exc)


def backoff_s(attempt: int, brokers: int, min_s: float, max_s: float,
              jitter: random.Random) -> float:
    """Seconds before attempt `attempt` (1 = the first retry): within the first round of
    `brokers` a fraction of min_s, then min_s doubling per round up to max_s. The jitter
    only lengthens a delay (up to half again), never shortens it below the doubling, so a
    refusing broker is asked no more often than without it; at the cap it spreads below
    max_s instead."""
    if attempt < brokers:
        return jitter.uniform(0.05, 0.5) * min_s
    base = min(max_s, min_s * 2 ** ((attempt - brokers) // max(1, brokers)))
    delay = base * jitter.uniform(1.0, 1.5)
    return delay if delay <= max_s else max_s * jitter.uniform(2 / 3, 1.0)


def disconnect_reason(flags, reason_code) -> str:
    """What happened, in words: paho reports a closed socket as "Unspecified error"."""
    from_server = getattr(flags, "is_disconnect_packet_from_server", False)
    if from_server:
        return f"the broker ended the session: {reason_code}"  # e.g. Session taken over
    if getattr(reason_code, "value", None) == 128 or str(reason_code) == "Unspecified error":
        return ("the connection was closed (the broker stopped or restarted, or the network "
                "went away)")
    return str(reason_code)


class Publisher:
    def __init__(self, settings: MqttConfig, topics: Topics, outbox: ResilientOutbox,
                 password: str | None) -> None:
        self.topics = topics
        self.outbox = outbox
        self.settings, self.password = settings, password
        self.brokers = broker_addresses(settings)  # one logical cluster, tried in turn
        self._broker = 0
        self.host, self.port = self.brokers[0]
        self.keepalive = settings.keepalive
        self._attempts = 0  # failed attempts since the last connection
        self._jitter = random.Random(zlib.crc32((settings.client_id or "").encode()))
        self.protocol = first_protocol(settings)
        self.refused = 0  # events the broker refused (each time it refused them)
        self.refusing = False  # the latest answer to a publish was a refusal
        self._refused_mids: dict[int, str] = {}  # mid -> reason, from the network thread
        self._retry_refused_at: float | None = None
        # (protocol, when): the pump replaces the client with one speaking it (paho fixes
        # the protocol per client)
        self._switch: tuple[int, float] | None = None
        self._guessed_311 = False  # 3.1.1 because an MQTT 5 CONNECT went unanswered
        self._spoke_v5: set[str] = set()  # brokers that answered an MQTT 5 CONNECT of ours
        self._said_311: set[str] = set()  # brokers whose 3.1.1 warning was logged
        self._connecting_since: float | None = None
        self._connack = False  # the broker answered this attempt's CONNECT (any code)
        self._connected_at = 0.0
        self._short_sessions: list[float] = []
        self.takeovers = 0  # times the broker kept ending our session (a shared identity)
        self.connected = threading.Event()
        self.last_error: str | None = None
        self.published = 0
        self.ever_connected = False
        self.on_connected: list[Callable[[], None]] = []
        self._handlers: dict[str, Callable[[bytes], None]] = {}
        self._status = "online"
        self._cond = threading.Condition()
        self._inflight: list[tuple[mqtt.MQTTMessageInfo, int]] = []  # (paho info, seq)
        self._last_sent = 0
        self._stopping = False
        self._tls = settings.tls if settings.tls.enabled else None
        self._client = self._make_client()
        self._pump = threading.Thread(target=self._pump_loop, name="mqtt-pump", daemon=True)

    def _make_client(self) -> mqtt.Client:
        m = self.settings
        assert m.client_id, "config.load() resolves the client id"
        client = make_client(m, m.client_id, self.password, persistent_session=True,
                             protocol=self.protocol)
        client.will_set(self.topics.status, "offline", qos=1, retain=True)
        # the first retry; each later one is set by _next_attempt (rotation, jitter)
        first = self._jitter.uniform(1.0, 1.5) * m.reconnect_min_s
        client.reconnect_delay_set(min_delay=first, max_delay=first)  # type: ignore[arg-type]
        client.max_inflight_messages_set(IN_FLIGHT)
        client.connect_timeout = m.connect_timeout_s
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_pre_connect = self._on_pre_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self._connect()
        self._pump.start()

    def _connect(self) -> None:
        self._connecting_since = time.monotonic()
        self._client.connect_async(self.host, self.port, self.keepalive,
                                   **connect_args(self.settings, self.protocol, True))
        self._client.loop_start()

    @property
    def broker(self) -> str:
        """The broker in use (or being tried), host:port, for logs, stats and /healthz."""
        return f"{self.host}:{self.port}"

    def _next_attempt(self) -> None:
        """Network thread, after a failed or lost connection: the next attempt, with this
        client or, where its MQTT 3.1.1 was a guess, with one speaking MQTT 5 again
        (`_retry_in_v5`)."""
        if self.protocol == V311 and self._guessed_311:
            self._retry_in_v5()
            return
        delay = self._advance()
        if len(self.brokers) > 1:
            self._client.connect_async(self.host, self.port, self.keepalive,
                                       **connect_args(self.settings, self.protocol, True))
        self._client.reconnect_delay_set(min_delay=delay, max_delay=delay)  # type: ignore

    def _advance(self) -> float:
        """Move to the next broker of mqtt.hosts; returns how long to wait before trying
        it. A whole round of the list is tried quickly (a node is down: the next one is
        up); then the delay doubles up to reconnect_max_s, each one jittered and offset
        per device, so that a thousand devices that lost their broker at once do not
        knock on the next one in step."""
        self._attempts += 1
        if len(self.brokers) > 1:
            self._broker = (self._broker + 1) % len(self.brokers)
            self.host, self.port = self.brokers[self._broker]
        return backoff_s(self._attempts, len(self.brokers), self.settings.reconnect_min_s,
                         self.settings.reconnect_max_s, self._jitter)

    def _retry_in_v5(self) -> None:
        """Network thread: MQTT 3.1.1 taken because an MQTT 5 CONNECT was closed
        unanswered holds for one connection. That close is how RabbitMQ 3.10 says "no
        MQTT 5", but also what a load balancer whose broker is down does to every
        CONNECT, so a 3.1.1 attempt that fails too, or a 3.1.1 connection that ends,
        sends the next attempt back to MQTT 5: a device that first started while its
        broker was down would otherwise keep 3.1.1 (where refusals look delivered)
        until restarted. RabbitMQ 3.10 costs one unanswered MQTT 5 CONNECT a reconnect."""
        self._change_protocol(V5, self._advance())

    def _change_protocol(self, protocol: int, delay: float = 0.0,
                         guessed: bool = False) -> None:
        """Network thread: have the pump replace the client with one speaking
        `protocol`, in `delay` seconds."""
        with self._cond:
            self._switch = (protocol, time.monotonic() + delay)
            self._guessed_311 = guessed
            self._cond.notify_all()

    def _switch_when_due(self, protocol: int, due: float) -> None:
        """Pump thread: stop the client at once (its own retries would race the new
        one), and start one speaking `protocol` when due. Same client id, same session."""
        old = self._client
        if old.on_connect is not None:
            old.on_connect = old.on_disconnect = old.on_connect_fail = None
            with contextlib.suppress(Exception):
                old.disconnect()
            old.loop_stop()
        if time.monotonic() < due:
            return
        with self._cond:
            self._switch = None
        self.protocol = protocol
        if protocol == V5:
            log.info("MQTT broker %s did not answer MQTT 3.1.1 either, or that connection "
                     "ended: trying MQTT 5 again", self.broker)
        self._client = self._make_client()
        self._connect()

    def _say_311(self) -> None:
        """Once per broker, when it took our 3.1.1 after not taking MQTT 5 (said on the
        connection: a 3.1.1 attempt closed unanswered too proves nothing): what MQTT
        3.1.1 cannot tell."""
        if self.broker in self._said_311:
            return
        self._said_311.add(self.broker)
        log.warning("MQTT broker %s:%s speaks MQTT 3.1.1 only: using it. A publish its ACL "
                    "denies is acknowledged like a delivered one there, so check that user "
                    "%s may publish to %s/# (mqtt.protocol: v5 with a broker that has it "
                    "detects a refusal)", self.host, self.port, self.settings.username or
                    "(anonymous)", self.topics.base)

    def stop(self, drain_timeout_s: float = 5.0) -> int:
        """Drain what the broker will take in time, publish `offline`, disconnect.

        Returns the number of events left in the outbox for the next start.
        """
        deadline = time.monotonic() + drain_timeout_s
        while time.monotonic() < deadline and self.outbox.depth() and not self.refusing:
            self.wake()  # waits for a reconnect too: the broker may be back any moment
            time.sleep(0.05)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._pump.join(timeout=2.0)
        if self.connected.is_set():
            info = self._client.publish(self.topics.status, "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=max(0.5, deadline - time.monotonic()))
        self._client.disconnect()
        self._client.loop_stop()
        return self.outbox.depth()

    def is_connected(self) -> bool:
        return self.connected.is_set()

    @property
    def connected_since(self) -> float:
        """time.monotonic() of the last accepted connection (0: none yet)."""
        return self._connected_at

    # --- publishing ------------------------------------------------------------------
    def queue(self, topic: str, payload: bytes | str, qos: int = 1) -> int:
        """Queue a message through the outbox (at least once, in order, kept over outages)."""
        data = payload.encode() if isinstance(payload, str) else payload
        seq = self.outbox.put(topic, data, qos=qos)
        self.wake()
        return seq

    def queue_numbered(self, topic: str, build: Callable[[int], bytes]) -> int:
        """Queue `build(n)` through the outbox, n this device's next event number (the
        event's `seq`: consumers check it for gaps). Returns n."""
        number = self.outbox.put_numbered(topic, build)
        self.wake()
        return number

    def set_status(self, status: str) -> None:
        """Retained device status; re-sent on every connect."""
        if status == self._status:
            return
        self._status = status
        if self.connected.is_set():
            self._client.publish(self.topics.status, status, qos=1, retain=True)

    def publish_now(self, topic: str, payload: bytes | str, qos: int = 0,
                    retain: bool = False) -> bool:
        """Best-effort publish of state (stats, discovery); skipped while disconnected."""
        if not self.connected.is_set():
            return False
        return self._client.publish(topic, payload, qos=qos, retain=retain).rc == \
            mqtt.MQTT_ERR_SUCCESS

    def subscribe(self, topic: str, handler: Callable[[bytes], None]) -> None:
        self._handlers[topic] = handler
        if self.connected.is_set():
            self._client.subscribe(topic, qos=1)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _pump_loop(self) -> None:
        while True:
            self._sweep_acknowledged()
            with self._cond:
                self._cond.wait(timeout=0.5)
                if self._stopping:
                    return
                switch = self._switch
            if switch is not None:
                self._switch_when_due(*switch)
                continue
            self._check_answer()
            with self._cond:
                if not self.connected.is_set():
                    continue
                self._retry_refused_when_due()
                room = IN_FLIGHT - len(self._inflight)
                after = self._last_sent
            if room <= 0:
                continue
            try:
                batch = self.outbox.pending(after=after, limit=room)
            except Exception as exc:  # sqlite trouble must not kill the pump thread
                log.error("cannot read event outbox: %s", exc)
                continue
            for message in batch:
                # never hold our lock inside paho: its network thread holds paho's own
                # lock while it calls _on_publish, which takes ours
                if not self.connected.is_set() or self._stopping:
                    break
                info = self._client.publish(message.topic, message.payload,
                                            qos=message.qos, retain=message.retain)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    break
                with self._cond:
                    self._inflight.append((info, message.seq))
                    self._last_sent = message.seq
            self._sweep_acknowledged()

    def _check_answer(self) -> None:
        """Say so when a broker took the TCP connection but has not answered the MQTT
        CONNECT (a proxy or a half-dead broker): paho waits silently otherwise."""
        since = self._connecting_since
        limit = self.settings.connect_timeout_s
        if since is not None and not self.connected.is_set() and \
                time.monotonic() - since > limit:
            self._connecting_since = None
            self.last_error = (f"MQTT broker {self.host}:{self.port} accepted the connection "
                               f"but has not answered for {limit:g} s")
            log.warning("%s; still waiting, events are kept in the outbox", self.last_error)

    def _retry_refused_when_due(self) -> None:
        """Under self._cond: offer the refused events again, oldest first, once nothing
        else is in flight (no duplicates of what is)."""
        due = self._retry_refused_at
        if due is not None and time.monotonic() >= due and not self._inflight:
            self._retry_refused_at = None
            self._last_sent = 0

    def _sweep_acknowledged(self) -> None:
        """Delete from the outbox what the broker has acknowledged (PUBACK) as accepted;
        keep what it refused (an MQTT 5 reason code of 0x80 or more)."""
        with self._cond:
            done, refused, waiting = [], [], []
            for info, seq in self._inflight:
                try:
                    if not info.is_published():
                        waiting.append((info, seq))
                    elif info.mid in self._refused_mids:
                        refused.append((seq, self._refused_mids.pop(info.mid)))
                    else:
                        done.append(seq)
                except (RuntimeError, ValueError):
                    pass  # lost with the connection: resent from the outbox on reconnect
            self._inflight = waiting
            if refused and self._retry_refused_at is None:
                self._retry_refused_at = time.monotonic() + REFUSED_RETRY_S
        if done:
            self.refusing = False
        for seq in done:
            self._acked(seq)
        if refused:
            self._refusal(refused)

    def _refusal(self, refused: list[tuple[int, str]]) -> None:
        self.refused += len(refused)
        self.refusing = True
        reason = refused[-1][1]
        self.last_error = f"MQTT broker refused events: {reason}"
        throttle.log(logging.ERROR, "refused", "MQTT broker %s:%s refused %d events (%s): "
                     "check its ACL for user %s and topic %s/#; they stay in the outbox (%d "
                     "waiting) and are offered again every %.0f s", self.host, self.port,
                     len(refused), reason, self.settings.username or "(anonymous)",
                     self.topics.base, self.outbox.depth(), REFUSED_RETRY_S)

    def _acked(self, seq: int) -> None:
        try:
            self.outbox.ack(seq)
            self.published += 1
        except Exception as exc:
            log.error("cannot remove acknowledged event from the outbox: %s", exc)

    # --- paho callbacks (network thread) ---------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connecting_since = None
        self._connack = True
        if self.protocol == V5 and self.settings.protocol == "auto" and \
                unsupported_protocol(reason_code):
            self._change_protocol(V311)  # refused in words (code 132): for good
            return
        if self.protocol == V5:
            self._spoke_v5.add(self.broker)
        if reason_code.is_failure:
            self.last_error = f"broker refused connection: {reason_code}"
            if str(reason_code) in AUTH_FAILURES:
                log.error("MQTT broker %s:%s refused the credentials (%s); retrying with "
                          "backoff", self.host, self.port, reason_code)
            else:
                log.error("MQTT broker %s:%s refused the connection: %s", self.host,
                          self.port, reason_code)
            return
        self.last_error = None
        self.ever_connected = True
        self._attempts = 0
        self._connected_at = time.monotonic()
        log.info("connected to MQTT broker %s:%s (MQTT %s)", self.host, self.port,
                 "5" if self.protocol == V5 else "3.1.1")
        if self.protocol == V311 and self.settings.protocol == "auto":
            self._say_311()
        client.publish(self.topics.status, self._status, qos=1, retain=True)
        for topic in self._handlers:
            client.subscribe(topic, qos=1)
        with self._cond:
            self._inflight.clear()
            self._last_sent = 0  # resend everything not yet acknowledged, oldest first
            self.connected.set()
            self._cond.notify_all()
        for callback in self.on_connected:
            try:
                callback()
            except Exception:  # a bad announcement must not stop event delivery
                log.exception("on-connect callback failed")

    def _on_pre_connect(self, client, userdata) -> None:
        self._connecting_since = time.monotonic()
        self._connack = False

    def _on_connect_fail(self, client, userdata) -> None:
        reason = diagnose_connect(self.host, self.port, self._tls,
                                  timeout=min(5.0, self.settings.connect_timeout_s))
        self._attempt_failed(f"cannot connect to MQTT broker {self.host}:{self.port}: {reason}")
        if not self._stopping and self._switch is None:
            self._next_attempt()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if self._stopping:
            return
        if was_connected:
            why = disconnect_reason(flags, reason_code)
            self.last_error = f"disconnected from MQTT broker {self.broker}: {why}"
            log.warning("%s; events are kept in the outbox", self.last_error)
            self._watch_takeovers(reason_code)
        elif self.protocol == V5 and self.settings.protocol == "auto" and \
                not self._connack and self.broker not in self._spoke_v5:
            # closed before any CONNACK: a broker that does not speak MQTT 5 and says
            # nothing (RabbitMQ 3.10's MQTT plugin) rather than refusing it with code 132.
            # Not one that has answered MQTT 5 before: closed unanswered now, it is down
            # behind a load balancer, restarting or overloaded, and MQTT 5 stays
            log.info("MQTT broker %s closed the connection without answering an MQTT 5 "
                     "CONNECT: trying MQTT 3.1.1", self.broker)
            self._change_protocol(V311, guessed=True)  # the same broker, at once
            return
        elif not self._connack:
            self._closed_unanswered()
        if self._switch is None:  # else the pump starts a client in the other protocol
            self._next_attempt()

    def _closed_unanswered(self) -> None:
        """The broker took the connection and closed it without answering the CONNECT.
        Said, since nothing else would be: a load balancer whose broker is down does this
        at once, and a NATS node whose JetStream has lost the leader of the MQTT sessions'
        stream holds each CONNECT for 4 s and closes it, for as long as its nodes take to
        elect another (4-9 s; README, Fleets)."""
        held = time.monotonic() - (self._connecting_since or time.monotonic())
        self._attempt_failed(f"MQTT broker {self.broker} closed the connection after {held:.0f} "
                             "s without answering the CONNECT (down behind a load balancer, "
                             "overloaded, or a NATS node electing a new JetStream leader)")

    def _attempt_failed(self, error: str) -> None:
        """Network thread: why this attempt failed, in the status (/healthz, systemd)
        and in the log, once a minute per broker (a device retries every few seconds)."""
        self.last_error = error
        throttle.log(logging.WARNING, f"fail {self.broker}", "%s; retrying with backoff", error)

    def _watch_takeovers(self, reason_code) -> None:
        """Two devices with one client id (a cloned SD card) knock each other off the
        broker about once a second: MQTT 5 says "Session taken over"; 3.1.1 just closes
        sessions moments after they open. Three such ends in a minute are said, loudly."""
        now = time.monotonic()
        short = now - self._connected_at < SHORT_SESSION_S
        if getattr(reason_code, "value", None) == SESSION_TAKEN_OVER or short:
            self._short_sessions = [t for t in self._short_sessions if now - t < 60] + [now]
        if len(self._short_sessions) >= 3:
            self.takeovers += 1
            who = session_taker(self.settings.client_id, self.settings.username)
            throttle.log(logging.ERROR, "takeover", "the MQTT broker keeps ending this "
                         "device's session (%d times in a minute): another client uses %s. "
                         "Two devices from one SD card image, or a watch or script run with "
                         "this device's config? Give each device its own device_id, and every "
                         "other client a user of its own (README, Fleets)",
                         len(self._short_sessions), who)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # paho marks the message published after this returns, so a refusal recorded here
        # is seen by the sweep before it could delete the event
        if getattr(reason_code, "is_failure", False):
            with self._cond:
                self._refused_mids[mid] = str(reason_code)
        self.wake()  # the pump thread sweeps acknowledged messages

    def _on_message(self, client, userdata, message) -> None:
        handler = self._handlers.get(message.topic)
        if handler is None:
            throttle.log(logging.WARNING, "unexpected", "ignoring message on unexpected "
                         "topic %s", message.topic[:200])
            return
        try:
            handler(message.payload)
        except Exception as exc:  # a flood of these is said once a minute, with its count
            throttle.log(logging.WARNING, f"bad {message.topic}", "ignoring bad message on "
                         "%s: %s", message.topic, exc)
