"""`mask-agent demo`: the real pipeline on a short bundled street clip, events printed.

It needs no camera, no broker and no download, and it never touches the device's real
state: the outbox lives in a temporary folder that is deleted at the end. When a broker
answers at mqtt.host:mqtt.port the events are published there too, as a device of its own
(`<device_id>-demo`, client id `maskwatch-<device_id>-demo`, no Home Assistant
discovery): trying the demo on a live Pi must neither knock the running agent off the
broker nor touch its counters, alerts or entities.
"""

from __future__ import annotations

import datetime as dt
import socket
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from .config import Config
from .errors import EXIT_OK

DEMO_CLIP = Path(__file__).parent / "demo" / "street_demo.mp4"
PROBE_TIMEOUT_S = 1.0
DEMO_SUFFIX = "-demo"


def broker_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def demo_device_id(device_id: str) -> str:
    return f"{device_id[:64 - len(DEMO_SUFFIX)]}{DEMO_SUFFIX}"


def demo_config(cfg: Config, state_dir: str, clip: str) -> Config:
    """The user's config (broker, model, detector), with a throwaway state, the clip, and an
    identity of its own on the broker."""
    device_id = demo_device_id(cfg.device_id or "maskwatch")
    return cfg.replace(
        device_id=device_id,
        mqtt=replace(cfg.mqtt, client_id=f"maskwatch-{device_id}"),
        homeassistant=replace(cfg.homeassistant, enabled=False),
        state_dir=state_dir,
        outbox=replace(cfg.outbox, path=str(Path(state_dir) / "outbox.sqlite3")),
        source=replace(cfg.source, uri=clip, realtime=False, loop=False, wait=False),
        http=replace(cfg.http, enabled=False))


class EventPrinter:
    """One readable line per event: video time, person, type, label, confidence."""

    def __init__(self) -> None:
        self.start: float | None = None

    def __call__(self, event: dict) -> None:
        ts = dt.datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()
        first = dt.datetime.fromisoformat(event["first_seen"].replace("Z", "+00:00")).timestamp()
        if self.start is None:
            self.start = first
        at = max(0.0, ts - self.start)
        print(f"{int(at // 60):02d}:{at % 60:04.1f}  person #{event['track_id']:<3} "
              f"{event['type']:<6} {event['label']:<14} {event['confidence']:.2f}", flush=True)


def run_demo(cfg: Config, clip: str | None = None, publish: bool = True) -> int:
    from .service import Agent
    from .systemd import setup_logging, stop_on_signals

    clip = clip or str(DEMO_CLIP)
    broker = f"{cfg.mqtt.host}:{cfg.mqtt.port}"
    online = publish and broker_answers(cfg.mqtt.host, cfg.mqtt.port)
    if online:
        print(f"publishing events to the MQTT broker at {broker} as device "
              f"{demo_device_id(cfg.device_id or 'maskwatch')} (topic {cfg.mqtt.topic_prefix}/"
              f"{demo_device_id(cfg.device_id or 'maskwatch')}/events; the real device's "
              "topics are left alone)")
    else:
        print(f"no MQTT broker {'answers at ' + broker if publish else 'asked for'}: events "
              "are printed here only")
    print(f"demo: {Path(clip).name}, detector {cfg.detect.detector}, model bundled "
          "(time, person, event, label, confidence)", flush=True)
    setup_logging("WARNING")
    with tempfile.TemporaryDirectory(prefix="maskwatch-demo-") as state:
        agent = Agent(demo_config(cfg, state, clip), publish=online, outbox_kept=False)
        agent.on_event.append(EventPrinter())
        stop_on_signals(agent.stop_event)
        started = time.monotonic()
        code = agent.run(until_eof=True)
        seconds = time.monotonic() - started
        print_summary(agent, seconds, online)
    return code if code != EXIT_OK else 0


def print_summary(agent, seconds: float, online: bool) -> None:
    s = agent.pipeline.stats
    people = ", ".join(f"{k} {v}" for k, v in sorted(agent.health.people.items())) or "none"
    events = ", ".join(f"{k} {v}" for k, v in sorted(agent.health.events.items())) or "none"
    print(f"\n{s.frames} frames in {seconds:.1f} s ({s.frames / max(seconds, 1e-6):.0f} fps); "
          f"detector ran on {s.detections}, {s.faces} faces, {s.classified} classified",
          file=sys.stdout)
    print(f"people: {people}")
    print(f"events: {events}" + (f"; delivered {agent.publisher.published}" if online else ""))
