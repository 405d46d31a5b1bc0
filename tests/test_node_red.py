"""A real Node-RED (4.1, from npm) wired as the README's "Reading events from a script or
Node-RED" says, against the real agent and a real Mosquitto.

Node-RED is installed once into .cache/ (about 15 s from npm with the machine's Node.js).
The flow is the README's: an `mqtt in` node on `maskwatch/+/events` (QoS 1, "a parsed JSON
object"), a `switch` on `msg.payload.type == "new"`, here a `file` node that writes each
`new` event as a line. Its broker node has a client ID of its own and, as the README
asks, "Use clean session" and "Automatically unsubscribe when disconnecting" unticked:
events published while Node-RED is down reach it when it is back; with either ticked
(both are by default), they are lost. Fails in CI when it cannot be installed, skips
elsewhere.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import paho.mqtt.publish as mqtt_publish
import pytest

from maskwatch.agent.demo import DEMO_CLIP

from .conftest import ROOT, agent_command, free_port, missing, need_tool

NODE_RED_VERSION = "4.1.15"
NODE_RED_DIR = ROOT / ".cache" / f"node-red-{NODE_RED_VERSION}"
PROBE_DEVICE = "probe"


def install_node_red() -> Path:
    """Node-RED's start script, installed into .cache/ once."""
    red = NODE_RED_DIR / "node_modules" / "node-red" / "red.js"
    if red.exists():
        return red
    npm = need_tool("npm", "Node.js 20 with npm, to install Node-RED")
    NODE_RED_DIR.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix",
                        str(NODE_RED_DIR), f"node-red@{NODE_RED_VERSION}"], check=True,
                       capture_output=True, timeout=600)
    except (subprocess.SubprocessError, OSError) as exc:
        missing(f"Node-RED {NODE_RED_VERSION} could not be installed: {exc}")
    return red


def readme_flow(broker_port: int, out: Path, clean_session: bool,
                auto_unsubscribe: bool) -> list[dict]:
    """The README's flow: mqtt in (QoS 1, parsed JSON) -> switch type == new -> a file."""
    return [
        {"id": "mw-tab", "type": "tab", "label": "maskwatch"},
        {"id": "mw-broker", "type": "mqtt-broker", "name": "maskwatch", "broker": "127.0.0.1",
         "port": str(broker_port), "clientid": "door-flow", "autoConnect": True,
         "usetls": False, "protocolVersion": "4", "keepalive": "60",
         "cleansession": clean_session, "autoUnsubscribe": auto_unsubscribe},
        {"id": "mw-events", "type": "mqtt in", "z": "mw-tab", "topic": "maskwatch/+/events",
         "qos": "1", "datatype": "json", "broker": "mw-broker", "nl": False, "rap": True,
         "rh": 0, "inputs": 0, "wires": [["mw-new"]]},
        {"id": "mw-new", "type": "switch", "z": "mw-tab", "property": "payload.type",
         "propertyType": "msg", "rules": [{"t": "eq", "v": "new", "vt": "str"}],
         "checkall": "true", "outputs": 1, "wires": [["mw-file"]]},
        {"id": "mw-file", "type": "file", "z": "mw-tab", "filename": str(out),
         "filenameType": "str", "appendNewline": True, "createDir": False,
         "overwriteFile": "false", "encoding": "none", "wires": []},
    ]


class NodeRed:
    """One Node-RED process running a flow file; start() waits until its flow hears."""

    def __init__(self, red: Path, workdir: Path, flow: list[dict], broker_port: int,
                 out: Path) -> None:
        self.red, self.workdir, self.out = red, workdir, out
        self.broker_port = broker_port
        self.flows = workdir / "flows.json"
        self.flows.write_text(json.dumps(flow))
        self.log = workdir / "node-red.log"
        self.proc: subprocess.Popen | None = None
        self.probes = 0

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["node", str(self.red), "--userDir", str(self.workdir / "user"), "--port",
                 str(free_port()), str(self.flows)], stdout=log, stderr=subprocess.STDOUT)
        self.probe()

    def probe(self, timeout: float = 60) -> None:
        """A `new` event of the probe device, published until the flow writes it: its
        subscription is in place (Node-RED does not log the broker's acknowledgement)."""
        self.probes += 1
        marker = {"id": f"probe-{self.probes}", "type": "new", "device_id": PROBE_DEVICE,
                  "track_id": 0, "label": "with_mask"}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"Node-RED exited: {self.log.read_text()[-2000:]}")
            mqtt_publish.single(f"maskwatch/{PROBE_DEVICE}/events", json.dumps(marker),
                                qos=1, hostname="127.0.0.1", port=self.broker_port)
            if marker["id"] in {e["id"] for e in self.events(PROBE_DEVICE)}:
                return
            time.sleep(0.2)
        pytest.fail(f"Node-RED's flow never heard the probe: {self.log.read_text()[-2000:]}")

    def events(self, device: str) -> list[dict]:
        lines = self.out.read_text().splitlines() if self.out.exists() else []
        return [e for e in map(json.loads, lines) if e["device_id"] == device]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def run_agent(tmp_path: Path, broker_port: int) -> int:
    """The agent on the demo clip, delivering as device door5; the number of `new` events."""
    result = subprocess.run(agent_command(
        "run", "--source", str(DEMO_CLIP), "--until-eof", "--set", f"state_dir={tmp_path}",
        "--set", "device_id=door5", "--set", "mqtt.host=127.0.0.1",
        "--set", f"mqtt.port={broker_port}"), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(re.search(r"events .*new (\d+)", result.stderr).group(1))


@pytest.mark.parametrize(("clean_session", "auto_unsubscribe", "keeps"), [
    (False, False, True),  # the README's: both boxes unticked
    (True, True, False),  # Node-RED's defaults
], ids=["readme", "defaults"])
def test_node_red_wired_as_the_readme_says_gets_what_was_sent_while_it_was_down(
        broker, tmp_path, clean_session, auto_unsubscribe, keeps):
    """Before, the README said to untick "Use clean session" only: Node-RED 4.1 then still
    sent UNSUBSCRIBE as it stopped ("Automatically unsubscribe when disconnecting", ticked
    by default), and what the doorway published during its restart was lost (tried three
    times, not kept as a case: whether the UNSUBSCRIBE leaves before the connection
    closes is up to Node-RED's shutdown order)."""
    red = install_node_red()
    out = tmp_path / "new.jsonl"
    flow = readme_flow(broker.port, out, clean_session, auto_unsubscribe)
    node_red = NodeRed(red, tmp_path, flow, broker.port, out)
    try:
        node_red.start()
        first = run_agent(tmp_path / "state", broker.port)
        node_red.probe()  # the broker hands a session its messages in order
        assert first > 20 and len({e["id"] for e in node_red.events("door5")}) == first
        node_red.stop()
        second = run_agent(tmp_path / "state", broker.port)  # Node-RED is down
        node_red.start()  # its probe comes after whatever the broker kept for it
        got = len({e["id"] for e in node_red.events("door5")})
    finally:
        node_red.stop()
    assert got == (first + second if keeps else first)
