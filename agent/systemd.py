"""systemd integration: readiness, watchdog, status text, journald logging.

Uses systemd-python when installed (the `systemd` extra); otherwise speaks the tiny
sd_notify datagram protocol itself, so `Type=notify` works on a minimal install too.
Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time


def _send(message: str) -> None:
    try:
        from systemd import daemon  # type: ignore[import-not-found]

        daemon.notify(message)
        return
    except ImportError:
        pass
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
        sock.sendto(message.encode(), address)


class Notifier:
    """READY=1, WATCHDOG=1 (rate-limited to half the watchdog period), STATUS=..."""

    def __init__(self) -> None:
        usec = os.environ.get("WATCHDOG_USEC")
        self.watchdog_interval = int(usec) / 2e6 if usec and usec.isdigit() else None
        self._last_ping = 0.0
        self._status = ""

    def ready(self, status: str) -> None:
        self._status = status
        _send(f"READY=1\nSTATUS={status}")

    def status(self, text: str) -> None:
        if text != self._status:
            self._status = text
            _send(f"STATUS={text}")

    def watchdog(self) -> None:
        """Called from the processing loop: a stalled loop stops the pings."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            _send("WATCHDOG=1")

    def stopping(self) -> None:
        _send("STOPPING=1")


def under_systemd() -> bool:
    return bool(os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"))


def setup_logging(level: str) -> None:
    """journald (structured, with priority) under systemd, else plain stderr lines."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level)
    handler: logging.Handler | None = None
    if under_systemd():
        try:
            from systemd.journal import JournalHandler  # type: ignore[import-not-found]

            handler = JournalHandler(SYSLOG_IDENTIFIER="maskwatch")
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        except ImportError:
            handler = None
    if handler is None:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    logging.getLogger("maskwatch").setLevel(level)


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM (systemd stop) and SIGINT (Ctrl-C) set `stop`: the loop ends cleanly."""

    def handler(signum, _frame) -> None:
        logging.getLogger("maskwatch").info("received %s: stopping",
                                            signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
