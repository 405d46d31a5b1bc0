"""Shared fixtures: ../shared data, a real Mosquitto broker, fetched detector models.

Tests that need ../shared fail loudly in CI (CI=true) when it is missing and skip with a
reason elsewhere. Set MASKWATCH_SHARED to point at another copy.
"""

from __future__ import annotations

import importlib.abc
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

import pytest

from maskwatch.agent.bench.brokers import free_port  # noqa: F401  (the tests' import point)

ROOT = Path(__file__).resolve().parent.parent


class _OldNamesBlocked(importlib.abc.MetaPathFinder):
    """From the repository root, `import agent` would find the folder and load a second copy
    of the package beside `maskwatch.agent` (two sets of exception classes, two configs).
    Tests must use the installed names; this makes the old ones an ImportError."""

    BLOCKED = ("agent", "convert")

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.BLOCKED:
            raise ImportError(f"import maskwatch.{fullname}, not {fullname} (the folder "
                              "installs as maskwatch.agent / maskwatch.convert)")
        return None


sys.meta_path.insert(0, _OldNamesBlocked())
SHARED = Path(os.environ.get("MASKWATCH_SHARED", ROOT.parent / "shared"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


_skipped: list[str] = []


def pytest_runtest_logreport(report) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus) -> None:
    """In CI every test must run: a skip there means a missing dependency or data."""
    if IN_CI and _skipped and session.exitstatus == 0:
        print(f"\nCI: {len(_skipped)} tests skipped (CI installs everything and must run "
              f"all): {', '.join(_skipped[:5])}")
        session.exitstatus = 1


def missing(message: str) -> NoReturn:
    """Fail in CI (it installs everything and must run every test), skip elsewhere."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def need(path: Path, what: str) -> Path:
    """The path, or fail (CI) / skip (elsewhere) when it is missing."""
    if not path.exists():
        missing(f"{what} not found at {path} (set MASKWATCH_SHARED)")
    return path


def need_tool(name: str, why: str) -> str:
    """A command on PATH or in /usr/sbin, /sbin (where Debian puts mosquitto, nats-server
    and rabbitmq-server, and which a user's PATH lacks: the suite run by a user with sudo
    said they were not installed), or fail (CI) / skip (elsewhere) naming what installs it."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not found:
        missing(f"{name} is not installed ({why})")
    return found


def need_module(name: str, why: str) -> None:
    """An importable module, or fail (CI) / skip (elsewhere): the device tests run without
    the [convert] extra."""
    import importlib.util

    if importlib.util.find_spec(name) is None:
        missing(f"{name} is not installed ({why})")


@pytest.fixture(scope="session")
def shared() -> Path:
    """The folder itself, for tests that read training photos, weights or detector models
    from it; the fixtures below name the one thing they need instead."""
    return need(SHARED, "../shared (training photos, MobileNetV2 weights, detector models)")


@pytest.fixture(scope="session")
def demo_clip() -> Path:
    """The 10-second street clip that ships in the package (no ../shared needed)."""
    from maskwatch.agent.demo import DEMO_CLIP

    return DEMO_CLIP


@pytest.fixture(scope="session")
def street_video() -> Path:
    return need(SHARED / "data" / "video" / "street_mixed.mp4", "the street video of ../shared")


@pytest.fixture(scope="session")
def dev_set() -> Path:
    return need(SHARED / "data" / "dev" / "andrewmvd", "the dev scene set of ../shared")


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory) -> Path:
    """A state folder with the detector models copied in, as `models fetch --from` does."""
    from maskwatch.agent.vision.models import DETECTOR_FILES, fetch

    state = tmp_path_factory.mktemp("state")
    fetch(state / "models", source_dir=need(SHARED / "models", "the detector models of ../shared"),
          names=list(DETECTOR_FILES))
    return state


def http_request(target: str, data: bytes | None = None, headers: dict | None = None):
    """(status, body) of a GET (or a POST of `data`), HTTP errors included."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(target, data=data, headers=headers or {},
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def mosquitto_binary() -> str:
    return need_tool("mosquitto", "apt-get install mosquitto")


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30) -> None:
    """Until a TCP connection to the loopback port is taken (or `proc` has exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the process serving port {port} exited") from None
            time.sleep(0.05)
    raise RuntimeError(f"nothing answers on port {port}")


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
        try:
            wait_for_port(self.port, self.proc, timeout=10)
        except RuntimeError:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited: {self.log.read_text()[-500:]}") from None
            raise RuntimeError("mosquitto did not start") from None
        return self

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


def mosquitto_persistent(workdir: Path) -> str:
    """Mosquitto settings that keep sessions and queued messages across a restart."""
    store = workdir / "broker-db"
    store.mkdir(exist_ok=True)
    return f"persistence true\npersistence_location {store}/\nautosave_interval 1\n"


BROKER_KINDS = ("mosquitto", "nats", "rabbitmq")
BROKER_PACKAGES = {"mosquitto": ("mosquitto", "mosquitto"),
                   "nats": ("nats-server", "nats-server, JetStream on"),
                   "rabbitmq": ("rabbitmq-server", "rabbitmq-server, plugin rabbitmq_mqtt")}


class MatrixBroker:
    """One broker of the matrix with Broker's face (port, start, stop), its state kept on
    disk so that a stop and a start are an outage, not a new broker: Mosquitto with
    persistence, one NATS node with JetStream, RabbitMQ with its MQTT plugin."""

    def __init__(self, kind: str, workdir: Path) -> None:
        tool, package = BROKER_PACKAGES[kind]
        need_tool(tool, f"Debian: {package}")
        from maskwatch.agent.bench.brokers import NatsCluster, RabbitMQ

        self.kind = kind
        workdir.mkdir(parents=True, exist_ok=True)
        if kind == "mosquitto":
            self._broker = Broker(workdir, free_port(), mosquitto_persistent(workdir))
            self.port = self._broker.port
        else:
            self._broker = NatsCluster(workdir, size=1) if kind == "nats" else RabbitMQ(workdir)
            self.port = self._broker.nodes[0].port

    def start(self) -> MatrixBroker:
        self._broker.start()
        return self

    def stop(self) -> None:
        self._broker.stop()


@pytest.fixture(params=BROKER_KINDS)
def matrix_broker(request, tmp_path):
    """The delivery tests' broker, once per kind: Mosquitto, NATS and RabbitMQ (a machine
    without one skips that kind with a reason; CI installs all three). Not started."""
    broker = MatrixBroker(request.param, tmp_path / request.param)
    yield broker
    broker.stop()


@pytest.fixture
def nats_broker(tmp_path):
    """One nats-server with JetStream and MQTT (3.1.1 only), as the fleet bench runs it."""
    need_tool("nats-server", "the NATS broker (Debian: nats-server)")
    from maskwatch.agent.bench.brokers import NatsCluster

    cluster = NatsCluster(tmp_path, size=1).start()
    yield cluster.nodes[0]
    cluster.stop()


def agent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "maskwatch.agent", *args]
