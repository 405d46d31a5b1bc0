"""Deployment: the systemd unit, the installer in a temporary root, the container files."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import IN_CI, ROOT, need_tool

UNIT = ROOT / "deploy" / "maskwatch.service"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_has_the_required_settings():
    s = unit_settings()
    assert s["Type"] == ["notify"] and s["Restart"] == ["on-failure"]
    assert s["RestartPreventExitStatus"] == ["78"] and int(s["WatchdogSec"][0]) > 0
    assert s["StateDirectory"] == ["maskwatch"] and s["ConfigurationDirectory"] == ["maskwatch"]
    assert "video" in s["SupplementaryGroups"][0] and s["User"] == ["maskwatch"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"]
    assert "PrivateDevices" not in s  # it would hide the cameras
    assert "char-video4linux rw" in s["DeviceAllow"]  # classes: /dev globs are not expanded
    assert s["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert s["UMask"] == ["0077"] and s["ProtectProc"] == ["invisible"]
    assert s["MemoryMax"] and s["TasksMax"] and s["LimitNOFILE"]
    assert "source.wait=true" in s["ExecStart"][0]  # the service waits for its camera
    assert "AF_INET" in s["RestrictAddressFamilies"][0]
    assert "time-sync.target" in s["After"][0].split()  # ordered, never required
    assert "time-sync.target" not in " ".join(s.get("Wants", []) + s.get("Requires", []))


# what a clone holds beside its tracked files once used: none of it is the installer's input
MADE_IN_A_CLONE = {".git", ".venv", ".cache", "build", "bench", "test-artifacts"}
MADE_ANYWHERE = shutil.ignore_patterns("__pycache__", "*.egg-info", ".*_cache")


def not_the_source(folder: str, names: list[str]) -> set[str]:
    top = set(names) & MADE_IN_A_CLONE if Path(folder) == ROOT else set()
    return top | MADE_ANYWHERE(folder, names)


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory, shared):
    """The installer run from a fresh copy of the checkout into a temporary root."""
    checkout = tmp_path_factory.mktemp("checkout") / "maskwatch"
    shutil.copytree(ROOT, checkout, ignore=not_the_source)
    before = files_under(checkout)
    root = tmp_path_factory.mktemp("root")
    cmd = ["bash", str(checkout / "deploy" / "install.sh"), "--root", str(root), "--no-apt",
           "--no-systemctl", "--models-from", str(shared / "models")]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    return root, cmd, checkout, before


def test_a_32_bit_system_is_told_in_one_line_before_any_work(tmp_path):
    """This machine is 64-bit: a `getconf` that says 32, as on 32-bit Raspberry Pi OS (whose
    kernel is often 64-bit), stands in for a 32-bit system."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "getconf").write_text("#!/bin/sh\necho 32\n")
    (fake / "getconf").chmod(0o755)
    root = tmp_path / "root"
    result = subprocess.run(
        ["bash", str(ROOT / "deploy" / "install.sh"), "--root", str(root), "--no-apt",
         "--no-systemctl"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"})
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "needs a 64-bit system (arm64 or x86_64): this one is 32-bit" in result.stderr
    assert not (root / "opt").exists()  # no apt, no virtualenv


def test_installer_leaves_the_checkout_as_it_was(installed):
    """`sudo deploy/install.sh` from a user's clone: pip's in-tree build left a root-owned
    maskwatch.egg-info/ and build/ there, and the user's own `pip install -e .` then
    failed ("Cannot update time stamp of directory 'maskwatch.egg-info'")."""
    *_, checkout, before = installed
    assert files_under(checkout) == before


def test_root_scripts_give_what_they_make_to_the_checkouts_owner(tmp_path):
    """deploy/checkout.sh, sourced by the scripts run with sudo: a .cache/ or bench/ they
    make in a user's checkout is the user's (Home Assistant's test installs into .cache/,
    the benches write bench/), and a wheel is built from a copy of the sources."""
    # root hands the checkout to another user; a user may give only to itself
    owner = (4321, 4321) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    checkout, copy = tmp_path / "checkout", tmp_path / "copy"
    checkout.mkdir()
    os.chown(checkout, *owner)
    script = (f'SRC={ROOT}; . deploy/checkout.sh; build_copy {copy}; '
              f'SRC={checkout}; checkout_dir "$SRC/.cache"; checkout_dir "$SRC/bench"')
    subprocess.run(["bash", "-c", script], cwd=ROOT, check=True, timeout=60)
    for made in (checkout / ".cache", checkout / "bench"):
        assert (made.stat().st_uid, made.stat().st_gid) == owner, made
    assert (copy / "pyproject.toml").is_file() and (copy / "agent" / "cli.py").is_file()
    assert not list(copy.rglob("__pycache__")) and not (copy / "tests").exists()


def test_installer_lays_down_a_working_install(installed):
    root, *_ = installed
    venv = root / "opt" / "maskwatch" / "venv"
    agent = venv / "bin" / "mask-agent"
    config = root / "etc" / "maskwatch" / "config.yaml"
    unit = root / "etc" / "systemd" / "system" / "maskwatch.service"
    models = root / "var" / "lib" / "maskwatch" / "models"
    assert agent.is_file() and config.is_file() and unit.is_file()
    assert not (models / "face_detection_yunet_2023mar.onnx").exists()  # bundled instead
    assert (models / "face_detection_short_range.tflite").is_file()  # --models-from
    demo = subprocess.run([str(agent), "demo", "--no-broker"], capture_output=True, text=True,
                          timeout=120, env={"HOME": str(root), "PATH": "/usr/bin:/bin"})
    assert demo.returncode == 0 and "people: with_mask" in demo.stdout, demo.stderr
    assert yaml.safe_load(config.read_text())["state_dir"] == "/var/lib/maskwatch"
    assert f"ExecStart={agent} run --config {config}" in unit.read_text()
    # systemd does not expand globs in DeviceAllow's /dev paths: classes, which it does read
    device_rules = [line for line in unit.read_text().splitlines()
                    if line.startswith("DeviceAllow=")]
    assert device_rules and not any("*" in line for line in device_rules)
    assert {"DeviceAllow=char-video4linux rw", "DeviceAllow=char-media rw",
            "DeviceAllow=char-dma_heap rw"} <= set(device_rules)
    # the device install has no TensorFlow
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import tensorflow"],
                           capture_output=True)
    assert probe.returncode != 0
    check = subprocess.run([str(agent), "check-config", str(config), "--set",
                            f"state_dir={root}/var/lib/maskwatch"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                                text=True)
        problems = [line for line in verify.stderr.splitlines()
                    if "maskwatch.service" in line and "User" not in line]
        assert not problems, verify.stderr
    elif IN_CI:
        pytest.fail("systemd-analyze is not installed (apt-get install systemd)")


def test_installer_is_idempotent_and_keeps_config(installed):
    """Run again over an install: the operator's config stays, and so does a
    /usr/local/bin/mask-agent the installer did not write (it says which to use)."""
    root, cmd, *_ = installed
    config = root / "etc" / "maskwatch" / "config.yaml"
    config.write_text(config.read_text() + "\n# operator edit\n")
    command = root / "usr" / "local" / "bin" / "mask-agent"
    ours = command.read_text()
    foreign = "#!/bin/sh\n# someone else's mask-agent\n"
    command.write_text(foreign)
    try:
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert command.read_text() == foreign
    finally:
        command.write_text(ours)  # the tests after this one use the installer's
    assert again.returncode == 0, again.stderr[-2000:]
    assert "kept the existing config" in again.stdout
    assert config.read_text().endswith("# operator edit\n")
    assert f"left {command} as it is (not the installer's)" in again.stdout


def test_the_installed_command_uses_the_service_config(installed):
    """`mask-agent` on the device reads the service's config (its state dir), where the
    venv's own read the built-in defaults and a state dir in the caller's home."""
    root, *_ = installed
    command = root / "usr" / "local" / "bin" / "mask-agent"
    result = subprocess.run([str(command), "check-config"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{root}/etc/maskwatch/config.yaml: ok"
    other = subprocess.run([str(command), "check-config", "--config", str(ROOT / "config.yaml")],
                           capture_output=True, text=True, timeout=60)
    assert other.stdout.strip() == f"{ROOT / 'config.yaml'}: ok"  # --config still wins


def test_uninstall_then_purge(installed, tmp_path):
    """Without --no-systemctl too: an uninstall from a --root leaves this machine's
    systemd alone (it ran `systemctl disable --now maskwatch` on the host before)."""
    root, cmd, *_ = installed
    copy = tmp_path / "r"
    shutil.copytree(root, copy, symlinks=True)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "systemctl").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/systemctl.called\n")
    (shim / "systemctl").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"}
    base = ["bash", str(ROOT / "deploy" / "install.sh"), "--root", str(copy)]
    out = subprocess.run(base + ["--uninstall"], capture_output=True, text=True, timeout=60,
                         env=env)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "systemctl.called").exists()
    assert not (copy / "opt" / "maskwatch").exists()
    assert not (copy / "etc" / "systemd" / "system" / "maskwatch.service").exists()
    assert not (copy / "usr" / "local" / "bin" / "mask-agent").exists()
    assert (copy / "etc" / "maskwatch" / "config.yaml").exists()
    foreign = copy / "usr" / "local" / "bin" / "mask-agent"
    foreign.write_text("#!/bin/sh\n# someone else's\n")  # not the installer's: stays
    subprocess.run(base + ["--uninstall", "--purge"], check=True, capture_output=True, env=env)
    assert not (copy / "etc" / "maskwatch").exists()
    assert not (copy / "var" / "lib" / "maskwatch").exists()
    assert foreign.exists() and not (tmp_path / "systemctl.called").exists()


def test_unit_security_exposure_at_most_1_5():
    analyze = need_tool("systemd-analyze", "apt-get install systemd")
    result = subprocess.run([analyze, "security", "--offline=true", str(UNIT)],
                            capture_output=True, text=True, timeout=60)
    line = [x for x in result.stdout.splitlines() if "Overall exposure level" in x][0]
    score = float(line.split(":")[1].split()[0])
    print(f"\nsystemd-analyze security: {score}")
    assert score <= 1.5, result.stdout[-3000:]


def test_container_files_mirror_the_install():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "USER maskwatch" in dockerfile and "[convert]" not in dockerfile
    assert "pip install -q --no-compile ." in dockerfile and "models fetch" not in dockerfile
    assert "ARG BASE=python:3.11-slim-bookworm" in dockerfile  # CI builds on a local base
    assert not any("tensorflow" in line.lower() for line in dockerfile.splitlines()
                   if not line.startswith("#"))
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    assert {"mosquitto", "maskwatch"} <= set(compose["services"])
    # the broker is anonymous: reachable from this host only, never from the LAN
    assert compose["services"]["mosquitto"]["ports"] == ["127.0.0.1:1883:1883"]
    assert "/dev/video0:/dev/video0" in compose["services"]["maskwatch"]["devices"]
    # its command replaces the image's: it must wait for a late camera as the image's does
    assert "source.wait=true" in compose["services"]["maskwatch"]["command"]
    assert "source.wait=true" in dockerfile


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(line for line in readme.splitlines()
                        if line.startswith("sh -c 'S=") and "pytest -ra" in line)
    assert test_command in ci.splitlines()
    assert "deploy/arm64-check.sh" in ci and "deploy/container-check.sh" in ci
    assert "deploy/python-versions-check.sh" in ci  # 3.9 and 3.13 beside 3.11
    assert "deploy/systemd-check.sh" in ci  # the unit under systemd as PID 1
    assert "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/mask-agent demo" \
        in readme  # the first command: works with no camera, broker or ../shared


@pytest.mark.parametrize("platform,machine,tensorflow", [
    ("linux", "x86_64", "tensorflow-cpu"), ("win32", "AMD64", "tensorflow-cpu"),
    ("darwin", "arm64", "tensorflow"), ("darwin", "x86_64", "tensorflow"),
    ("linux", "aarch64", "tensorflow"),  # tensorflow-cpu has no wheel on these
])
def test_the_convert_extra_asks_for_a_tensorflow_that_has_wheels_there(platform, machine,
                                                                       tensorflow):
    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    asked = [Requirement(line) for line in project["optional-dependencies"]["convert"]]
    env = {"sys_platform": platform, "platform_machine": machine, "extra": "convert"}
    names = [r.name for r in asked if r.marker is None or r.marker.evaluate(env)]
    assert [n for n in names if n.startswith("tensorflow")] == [tensorflow]
    assert not any("tensorflow" in line for line in project["dependencies"])  # the device
