"""Small faults a new user meets first: each answer names what happened."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import ROOT, agent_command


def test_check_config_without_a_file_names_the_defaults():
    result = subprocess.run(agent_command("check-config"), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "built-in defaults: ok"


@pytest.mark.parametrize("command", [["bench", "/no/such/video.mp4"],
                                     ["bench-soak", "/no/such/video.mp4"],
                                     ["bench-detect", "/no/such/folder"]])
def test_a_missing_bench_input_is_66_before_any_work(command):
    result = subprocess.run(agent_command(*command), capture_output=True, text=True, timeout=60)
    assert result.returncode == 66
    assert result.stderr.strip().endswith(("no such video file", "no such folder"))
    assert "running" not in result.stderr  # no mode was started


@pytest.mark.parametrize("option, said", [(["--devices", "0"], "0: from 1 to 100000"),
                                          (["--per-process", "500"], "500: from 1 to 100"),
                                          (["--rate", "0"], "0: must be above 0")])
def test_a_fleet_bench_that_cannot_run_is_a_usage_error(option, said):
    """Before any broker starts: an empty fleet, a process past select()'s limit, no rate."""
    result = subprocess.run(agent_command("bench-fleet", *option), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.strip().endswith(said)


def test_install_help_is_the_usage_only():
    result = subprocess.run(["bash", str(ROOT / "deploy" / "install.sh"), "--help"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "set -euo" not in result.stdout
    assert result.stdout.splitlines()[0].startswith("maskwatch installer")


def test_readme_run_it_installs_the_client_its_example_uses():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Run it on a camera and a broker", 1)[1].split("\n## ", 1)[0]
    assert "mosquitto-clients" in section  # the README's mosquitto_sub examples need it
