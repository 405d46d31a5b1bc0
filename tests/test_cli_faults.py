"""Small faults a new user meets first: each answer names what happened."""

from __future__ import annotations

import getpass
import os
import subprocess
import tempfile
from pathlib import Path

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


@pytest.mark.parametrize("command", [["samples", "list"], ["adapt"], ["run", "--until-eof"],
                                     ["models", "fetch"]])
def test_root_in_the_services_state_dir_is_refused_before_writing(tmp_path, command):
    """`sudo mask-agent samples list` on an installed device made the service's samples
    folder root's, 0700: the service (user maskwatch) could not open it and collection
    stopped; `sudo mask-agent run` would make its outbox root's. Refused now (exit 77),
    one line naming the user to run as, and nothing is written."""
    if os.geteuid() != 0:
        pytest.skip("needs root (CI runs as root): a user cannot own another's folder")
    state = tmp_path / "state"
    state.mkdir(mode=0o750)
    os.chown(state, 65534, 65534)  # nobody, standing in for the service's user
    result = subprocess.run(agent_command(*command, "--set", f"state_dir={state}"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 77, result.stderr
    assert result.stderr.count("\n") == 1 and "belongs to nobody: run this as nobody " \
        "(sudo -u nobody mask-agent ...)" in result.stderr
    assert list(state.iterdir()) == []


def test_the_config_comes_from_maskwatch_config_when_not_given(tmp_path):
    """The installer's `mask-agent` sets MASKWATCH_CONFIG to the service's config."""
    config = tmp_path / "device.yaml"
    config.write_text("device_id: door-7\n")
    env = {**os.environ, "MASKWATCH_CONFIG": str(config)}
    result = subprocess.run(agent_command("check-config", "--print"), capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 0 and '"device_id": "door-7"' in result.stdout


def test_a_model_path_that_cannot_be_read_is_one_line_and_78(tmp_path):
    """A bundle copied to /home/pi and named in the device's config: the service (its unit
    hides /home) ended in `internal error: PermissionError` and exit 1, which systemd
    restarted every 5 s for ever (seen under systemd as PID 1). Root reads anything, so a
    symlink loop stands in for the unreadable path: the same branch, another errno."""
    loop = tmp_path / "bundle"
    loop.symlink_to(loop)
    result = subprocess.run(agent_command("run", "--set", f"classify.model={loop}", "--set",
                                          f"state_dir={tmp_path}"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 78
    assert result.stderr.strip().splitlines() == [
        f"mask-agent: error: config: classify.model: cannot read {loop}: Too many levels of "
        f"symbolic links (running as {getpass.getuser()})"]


def test_check_config_notes_a_model_the_service_cannot_see():
    """The maskwatch unit hides /home (ProtectHome): a model there passes check-config run
    by hand and fails the service, so check-config says so."""
    try:
        folder = Path(tempfile.mkdtemp(dir="/home"))
    except OSError:
        pytest.skip("/home is not writable here (CI runs as root)")
    try:
        result = subprocess.run(agent_command("check-config", "--set",
                                              f"classify.model={folder}"),
                                capture_output=True, text=True, timeout=60)
    finally:
        folder.rmdir()
    assert result.returncode == 0
    assert result.stderr.strip() == (
        f"mask-agent: note: classify.model: {folder} is fine here, but the maskwatch service "
        "sees no /home, /root or /run/user at all: keep what it reads under /etc/maskwatch or "
        "/var/lib/maskwatch")


def test_an_export_that_cannot_be_written_is_one_line(tmp_path):
    """`sudo -u maskwatch mask-agent samples export ~/labels` (a 0700 home) was an internal
    error; a file where a folder should be stands in for it (root writes anywhere else)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = subprocess.run(agent_command("samples", "export", str(blocker / "labels"),
                                          "--set", f"state_dir={tmp_path / 'state'}"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"mask-agent: error: cannot export to {blocker / 'labels'}: Not a directory "
        f"({blocker / 'labels'}; running as {getpass.getuser()})"]
