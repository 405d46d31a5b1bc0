"""Shared fixtures: ../shared data, a real Mosquitto broker, fetched detector models.

Tests that need ../shared fail loudly in CI (CI=true) when it is missing and skip with a
reason elsewhere. Set MASKWATCH_SHARED to point at another copy.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MASKWATCH_SHARED", ROOT.parent / "shared"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(path: Path, what: str) -> Path:
    """The path, or fail (CI) / skip (elsewhere) when it is missing."""
    if path.exists():
        return path
    message = f"{what} not found at {path} (set MASKWATCH_SHARED)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared() -> Path:
    return need(SHARED, "../shared data")


@pytest.fixture(scope="session")
def street_video(shared) -> Path:
    return need(shared / "data" / "video" / "street_mixed.mp4", "street video")


@pytest.fixture(scope="session")
def dev_set(shared) -> Path:
    return need(shared / "data" / "dev" / "andrewmvd", "development scene set")


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory, shared) -> Path:
    """A state folder with the detector models copied in, as `models fetch --from` does."""
    from agent.models import fetch

    state = tmp_path_factory.mktemp("state")
    fetch(state / "models", source_dir=need(shared / "models", "detector models"))
    return state


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found is None:
        if IN_CI:
            pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
        pytest.skip("mosquitto is not installed")
    return found


class Broker:
    """A real Mosquitto on a loopback port; stop() and start() simulate outages."""

    def __init__(self, workdir: Path, port: int, extra: str = "") -> None:
        self.port = port
        self.conf = workdir / f"mosquitto-{port}.conf"
        user = "user root\n" if os.geteuid() == 0 else ""  # else it drops to 'mosquitto'
        self.conf.write_text(f"{user}listener {port} 127.0.0.1\nallow_anonymous true\n"
                             f"{extra or 'persistence false'}\n")
        self.log = workdir / f"mosquitto-{port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)],
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"mosquitto exited: {self.log.read_text()[-500:]}") from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path, free_port()).start()
    yield b
    b.stop()


@pytest.fixture
def make_broker(tmp_path):
    made: list[Broker] = []

    def make(extra: str = "", port: int | None = None) -> Broker:
        b = Broker(tmp_path, port or free_port(), extra)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


def agent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]
