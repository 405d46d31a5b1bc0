"""The README's Python reader of events, run as an integrator would copy it, against a real
Mosquitto that restarts: it must go on receiving, and drop the duplicates that
at-least-once delivery brings."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
import time

import paho.mqtt.publish as mqtt_publish

from .conftest import ROOT, Broker, free_port, mosquitto_persistent

WAIT_S = 60.0  # a generous bound for a loaded CI machine; the test waits for lines, not time


def readme_reader(port: int) -> str:
    """The Python block of the README's "Reading events from a script" section, pointed at
    the test's broker."""
    section = (ROOT / "README.md").read_text().split("### Reading events from a script")[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'client.connect("broker")' in code
    return code.replace('client.connect("broker")', f'client.connect("127.0.0.1", {port})')


def unmasked_event(event_id: str) -> bytes:
    return json.dumps({"id": event_id, "type": "new", "label": "without_mask",
                       "device_id": event_id}).encode()


class Lines:
    """A child's stdout lines, read on a thread, so a test can wait for the next one."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self._lines.put(line.strip())

    def next(self, timeout: float) -> str | None:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None


def publish(port: int, event_id: str) -> None:
    """One event at QoS 1, acknowledged by the broker."""
    mqtt_publish.single("maskwatch/door1/events", unmasked_event(event_id), qos=1,
                        hostname="127.0.0.1", port=port)


def first_line_once_subscribed(port: int, lines: Lines) -> str:
    """Publish the same event until the reader prints it: its subscription is then in place
    (the repeats are duplicates it must drop)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        publish(port, "e1")
        line = lines.next(timeout=0.5)
        if line is not None:
            return line
    raise AssertionError("the README's reader printed nothing")


def test_the_readme_reader_survives_a_broker_restart_and_drops_duplicates(tmp_path):
    broker = Broker(tmp_path, free_port(), mosquitto_persistent(tmp_path)).start()
    script = tmp_path / "reader.py"
    script.write_text(readme_reader(broker.port))
    proc = subprocess.Popen([sys.executable, "-u", str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = Lines(proc)
        assert first_line_once_subscribed(broker.port, lines) == "unmasked person at e1"
        broker.stop()  # the broker restarts (an upgrade, a power cut on its host)
        broker.start()
        publish(broker.port, "e2")  # sent before the reader is back: kept for its session
        publish(broker.port, "e1")  # a duplicate, redelivered
        publish(broker.port, "e3")
        got = [lines.next(timeout=WAIT_S), lines.next(timeout=WAIT_S)]
        assert got == ["unmasked person at e2", "unmasked person at e3"]
    finally:
        proc.kill()
        broker.stop()
