"""`mask-agent bench-soak`: the agent's memory over a long run, for a device left alone
for months.

The real agent (`mask-agent run`, a child process, its config and `--set`s) reads a clip
looped, as a camera never ends, and delivers to a Mosquitto started on loopback. Every
`every_s` the bench reads the agent's RSS from /proc (anonymous: its own heap, frames and
tensors; file-backed: library pages) and its `stats` message (frames, people, outbox
depth; sent twice a period): an agent that processed no frame since the last sample is
stuck, and the bench stops and says so. A leak shows as anonymous memory that keeps rising
after the first minutes: the bench fits a line through the second half of the samples and
prints its slope in MB an hour. The outbox depth shows whether delivery keeps up.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .brokers import Mosquitto
from .measure import machine, proc_status_mb, write_json

DEVICE = "soak"
MEMORY_KEYS = ("VmRSS", "RssAnon", "RssFile")


def _stats_listener(port: int) -> tuple[mqtt.Client, dict]:
    """A subscriber keeping the agent's latest `stats` message."""
    latest: dict = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-soak")
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"maskwatch/{DEVICE}/stats")
    client.on_message = lambda c, u, msg: latest.update(json.loads(msg.payload))
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client, latest


def _agent(video: str, port: int, work: Path, every_s: float,
           settings: list[str]) -> subprocess.Popen:
    """The agent, its log in `work`/agent.log (a pipe nobody reads while it runs would
    fill with its event lines and stop it)."""
    state = work / "state"
    overrides = ["source.loop=true", f"mqtt.port={port}", "mqtt.host=127.0.0.1",
                 f"state_dir={state}", f"device_id={DEVICE}",
                 f"mqtt.stats_interval_s={every_s / 2:g}", "homeassistant.enabled=false"]
    command = [sys.executable, "-m", "maskwatch.agent", "run", "--source", video,
               *settings, *(arg for o in overrides for arg in ("--set", o))]
    with open(work / "agent.log", "wb") as log:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)


def _sample(agent: subprocess.Popen, started: float, stats: dict) -> dict | None:
    memory = proc_status_mb(*MEMORY_KEYS, pid=agent.pid)
    if memory is None or agent.poll() is not None:
        return None
    people = stats.get("people", {})
    return {"minutes": round((time.monotonic() - started) / 60, 2),
            "rss_mb": memory["VmRSS"], "anon_mb": memory["RssAnon"],
            "file_mb": memory["RssFile"], "frames": stats.get("frames"),
            "people": sum(people.values()) if isinstance(people, dict) else None,
            "outbox_depth": stats.get("outbox_depth")}


def stalled(before: list[dict], sample: dict) -> bool:
    """No frame since the last sample (stats come twice a sample period): a stuck agent
    holds its memory flat, which must not pass for the absence of a leak."""
    return bool(before) and sample["frames"] is not None and \
        sample["frames"] == before[-1]["frames"]


def slope_mb_per_hour(samples: list[dict], key: str = "anon_mb") -> float | None:
    """Least-squares slope of `key` over the second half of the run (the first minutes
    fill caches, buffers and the tracker), MB an hour."""
    half = samples[len(samples) // 2:]
    if len(half) < 2:
        return None
    t = np.array([s["minutes"] / 60 for s in half])
    if np.ptp(t) == 0:
        return None
    return round(float(np.polyfit(t, np.array([s[key] for s in half]), 1)[0]), 2)


def bench_soak(video: str, minutes: float, every_s: float, out: str,
               settings: list[str]) -> int:
    """Run the agent for `minutes`, sample every `every_s`, print and write the results."""
    with tempfile.TemporaryDirectory(prefix="maskwatch-soak-") as work:
        broker = Mosquitto(Path(work)).start()
        listener, stats = _stats_listener(broker.nodes[0].port)
        agent = _agent(video, broker.nodes[0].port, Path(work), every_s, settings)
        started, samples = time.monotonic(), []
        try:
            print("minutes  frames  people  RSS MB  anon MB  file MB  outbox", flush=True)
            while time.monotonic() - started < minutes * 60:
                time.sleep(every_s)  # the sampling period itself, not a wait for readiness
                sample = _sample(agent, started, stats)
                if sample is None:
                    break
                samples.append(sample)
                print(f"{sample['minutes']:7.2f} {sample['frames'] or 0:7} "
                      f"{sample['people'] or 0:7} {sample['rss_mb']:7.1f} "
                      f"{sample['anon_mb']:8.1f} {sample['file_mb']:8.1f} "
                      f"{sample['outbox_depth'] if sample['outbox_depth'] is not None else '-':>7}",
                      flush=True)
                if stalled(samples[:-1], sample):  # said and exit 1 below
                    break
        finally:
            agent.terminate()
            agent.wait(timeout=60)
            listener.loop_stop()
            broker.stop()
            last_line = (Path(work) / "agent.log").read_text(errors="replace").strip()
            last_line = last_line.splitlines()[-1] if last_line else ""
    if samples and stalled(samples[:-1], samples[-1]):
        print(f"bench-soak: the agent processed no frame in {every_s:g} s: it is stuck, and "
              "its memory says nothing of a run", file=sys.stderr)
        return 1
    if agent.returncode not in (0, -15) or not samples:
        print(f"bench-soak: the agent ended (exit {agent.returncode}): {last_line}",
              file=sys.stderr)
        return 1
    result = {"video": video, "minutes": minutes, "every_s": every_s, "settings": settings,
              "machine": machine(), "samples": samples,
              "anon_slope_mb_per_hour": slope_mb_per_hour(samples),
              "rss_slope_mb_per_hour": slope_mb_per_hour(samples, "rss_mb")}
    print(f"anonymous memory over the second half: {result['anon_slope_mb_per_hour']} MB an "
          f"hour (RSS {result['rss_slope_mb_per_hour']}); peak RSS "
          f"{max(s['rss_mb'] for s in samples):.1f} MB")
    write_json(out, result)
    return 0
