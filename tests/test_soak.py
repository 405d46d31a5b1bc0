"""`mask-agent bench-soak`: the real agent on a looped clip, its memory sampled over time."""

from __future__ import annotations

import json
import subprocess

from maskwatch.agent.bench.soak import slope_mb_per_hour, stalled
from maskwatch.agent.demo import DEMO_CLIP

from .conftest import agent_command, mosquitto_binary


def test_bench_soak_samples_the_agents_memory_and_delivery(tmp_path):
    mosquitto_binary()  # the bench starts its own: fail in CI, skip elsewhere without it
    out = tmp_path / "soak.json"
    result = subprocess.run(agent_command("bench-soak", str(DEMO_CLIP), "--minutes", "0.4",
                                          "--every", "2", "--out", str(out)),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    samples = data["samples"]
    assert len(samples) >= 5
    frames = [s["frames"] for s in samples if s["frames"] is not None]
    assert len(frames) >= 3 and frames == sorted(frames) and frames[-1] > frames[0]
    assert samples[-1]["people"] > 0  # the clip's people, counted again on every loop
    assert all(s["anon_mb"] > 5 and s["file_mb"] > 5 for s in samples)
    assert all(s["rss_mb"] >= max(s["anon_mb"], s["file_mb"]) for s in samples)
    assert any(s["outbox_depth"] is not None for s in samples)  # stats came over MQTT
    assert data["anon_slope_mb_per_hour"] is not None
    assert "MB an hour" in result.stdout


def test_a_leak_is_a_rising_slope_and_a_flat_line_none():
    steady = [{"minutes": m, "anon_mb": 60.0} for m in range(0, 60, 5)]
    leaking = [{"minutes": m, "anon_mb": 60.0 + m / 10} for m in range(0, 60, 5)]
    assert slope_mb_per_hour(steady) == 0.0
    assert slope_mb_per_hour(leaking) == 6.0  # 0.1 MB a minute
    assert slope_mb_per_hour(steady[:1]) is None


def test_an_agent_that_processes_no_frame_is_stuck_not_steady():
    """A stuck agent's memory is flat too (its stderr pipe once filled and stopped it)."""
    first, moving, frozen = ({"frames": n} for n in (4435, 9000, 9000))
    assert not stalled([], first) and not stalled([first], moving)
    assert stalled([first, moving], frozen)
    assert not stalled([first], {"frames": None})  # no stats yet: nothing to judge by
