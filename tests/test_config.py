"""Config: documented defaults, overrides, strict validation with exit 78, secrets."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from maskwatch.agent import config
from maskwatch.agent.errors import ConfigError

from .conftest import ROOT, agent_command


def test_config_yaml_documents_every_default():
    text = (ROOT / "config.yaml").read_text()
    assert text == config.documented_yaml(), \
        "regenerate: python -m maskwatch.agent.config > config.yaml"
    assert yaml.safe_load(text) == config.as_dict(config.defaults())


def test_overrides_parse_yaml_scalars():
    cfg = config.load(None, ["mqtt.port=1884", "detect.roi=[0, 0.2, 1, 0.5]",
                             "mqtt.tls.insecure=true", "device_id=door-2"])
    assert cfg.mqtt.port == 1884
    assert cfg.detect.roi == (0.0, 0.2, 1.0, 0.5)
    assert cfg.mqtt.tls.insecure is True
    assert cfg.mqtt.client_id == config.default_client_id("door-2", config.machine_fingerprint())
    assert cfg.mqtt.client_id.startswith("maskwatch-door-2")


def test_two_machines_with_one_device_id_get_two_client_ids(tmp_path):
    """A cloned SD card: same host name, same machine id, another board serial."""
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("0123456789abcdef0123456789abcdef\n")
    ids = set()
    for serial in ("10000000a1b2c3d4", "10000000e5f6a7b8"):
        board = tmp_path / f"serial-{serial}"
        board.write_bytes(serial.encode() + b"\0")
        fingerprint = config.machine_fingerprint((str(board), str(machine_id)))
        assert fingerprint == config.machine_fingerprint((str(board), str(machine_id)))
        ids.add(config.default_client_id("raspberrypi", fingerprint))
    assert len(ids) == 2 and all(i.startswith("maskwatch-raspberrypi-") for i in ids)
    assert config.default_client_id("door", "") == "maskwatch-door"


def test_state_dir_from_systemd(monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/maskwatch")
    cfg = config.load(None)
    assert cfg.outbox.path == "/var/lib/maskwatch/outbox.sqlite3"


BAD_CONFIGS = [
    ("mqtt: {port: abc}", "mqtt.port"),
    ("mqtt: {port: 70000}", "mqtt.port"),
    ("mqtt: {port: 1883.5}", "mqtt.port"),
    ("mqtt: {prot: 1883}", "mqtt.prot"),
    ("mqttt: {}", "mqttt"),
    ("mqtt: {host: 'bad host!'}", "mqtt.host"),
    ("mqtt: {host: 'broker.local:1884'}", "mqtt.host"),  # the port goes in mqtt.port
    ("mqtt: {hosts: ['broker:18830x']}", "mqtt.hosts"),
    ("mqtt: {keepalive: -1}", "mqtt.keepalive"),
    ("mqtt: {topic_prefix: 'a/#'}", "mqtt.topic_prefix"),
    ("mqtt: {require_tls: true}", "mqtt.require_tls"),
    ("mqtt: {tls: {enabled: true, ca_file: /nonexistent/ca.pem}}", "mqtt.tls.ca_file"),
    ("mqtt: {tls: {cert_file: /etc/hostname}}", "mqtt.tls.cert_file"),
    ("mqtt: {password_env: MASKWATCH_TEST_UNSET_VAR}", "mqtt.password_env"),
    ("mqtt: {password_file: /nonexistent/pw}", "mqtt.password_file"),
    ("mqtt: 5", "mqtt"),
    ("source: {uri: 'rtsp://'}", "source.uri"),
    ("source: {uri: 'ftp://cam/stream'}", "source.uri"),
    ("source: {uri: ''}", "source.uri"),
    ("source: {retry_initial_s: -1}", "source.retry_initial_s"),
    ("source: {retry_initial_s: 10, retry_max_s: 5}", "source.retry_max_s"),
    ("source: {realtime: 'yes'}", "source.realtime"),
    ("detect: {fps: -5}", "detect.fps"),
    ("detect: {fps: 0}", "detect.fps"),
    ("detect: {detector: ssd}", "detect.detector"),
    ("detect: {roi: [0.5, 0.5, 0.8, 0.2]}", "detect.roi"),
    ("detect: {roi: [0, 0]}", "detect.roi"),
    ("detect: {model: /nonexistent/yunet.onnx}", "detect.model"),
    ("classify: {model: /nonexistent/bundle}", "classify.model"),
    ("classify: {threads: 0}", "classify.threads"),
    ("classify: {no_mask_threshold: 1.5}", "classify.no_mask_threshold"),
    ("track: {min_votes: 20, window: 5}", "track.min_votes"),
    ("track: {agreement: 0.2}", "track.agreement"),
    ("device_id: 'door/1'", "device_id"),
    ("log_level: LOUD", "log_level"),
    ("outbox: {max_events: 0}", "outbox.max_events"),
    ("http: {port: 0}", "http.port"),
    ("homeassistant: {enabled: 1}", "homeassistant.enabled"),
]


@pytest.mark.parametrize("text,key", BAD_CONFIGS)
def test_bad_config_is_one_line_naming_the_key(text, key):
    with pytest.raises(ConfigError) as err:
        config.validate(yaml.safe_load(text))
    message = str(err.value)
    assert message.startswith(f"config: {key}:"), message
    assert "\n" not in message


def test_check_config_cli_exit_78_one_line(tmp_path):
    assert len(BAD_CONFIGS) >= 20
    for text, key in BAD_CONFIGS[:22]:
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        result = subprocess.run(agent_command("check-config", str(path)), capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 78, (text, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and key in lines[0], result.stderr


@pytest.mark.parametrize("text,where", [
    ("mqtt: {port: 1883\n", "line"),  # broken YAML
    ("- just\n- a list\n", "mapping"),
])
def test_unparseable_config(tmp_path, text, where):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=where):
        config.load(path)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="file not found"):
        config.load(Path("/nonexistent/config.yaml"))


def test_secrets_never_printed(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("mqtt: {username: cam, password: hunter2-secret}\n")
    result = subprocess.run(agent_command("check-config", str(path), "--print"),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "hunter2-secret" not in result.stdout + result.stderr
    assert '"password": "***"' in result.stdout


def test_password_from_env_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MW_PW", "from-env")
    cfg = config.load(None, ["mqtt.password_env=MW_PW"])
    assert config.mqtt_password(cfg.mqtt) == "from-env"
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    pw.chmod(0o600)
    cfg = config.load(None, [f"mqtt.password_file={pw}"])
    assert config.mqtt_password(cfg.mqtt) == "from-file"


def test_set_override_errors():
    with pytest.raises(ConfigError, match="key.path=value"):
        config.load(None, ["mqtt.port"])
    with pytest.raises(ConfigError, match="not a section"):
        config.load(None, ["mqtt.port=1", "mqtt.port.x=2"])


@pytest.mark.faults
@pytest.mark.parametrize("text,key", [
    ("detect: {score_threshold: .nan}", "detect.score_threshold"),
    ("classify: {no_mask_threshold: .nan}", "classify.no_mask_threshold"),
    ("track: {max_missed_s: .inf}", "track.max_missed_s"),
    ("mqtt: {stats_interval_s: -.inf}", "mqtt.stats_interval_s"),
    ("detect: {roi: [0, 0, .nan, 1]}", "detect.roi"),
])
def test_non_finite_numbers_are_refused(text, key):
    with pytest.raises(ConfigError, match=f"^config: {key}: expected"):
        config.validate(yaml.safe_load(text))


@pytest.mark.faults
@pytest.mark.parametrize("written,expected", [
    ("0123", "0123"), ("yes", "yes"), ("1e3", "1e3"), ("'ab #cd'", "ab #cd"), ("null", None)])
def test_password_in_the_file_is_taken_as_written(tmp_path, written, expected):
    path = tmp_path / "c.yaml"
    path.write_text(f"mqtt:\n  password: {written}\n")
    assert config.load(path).mqtt.password == expected


@pytest.mark.faults
def test_password_from_set_is_verbatim_and_never_echoed(tmp_path):
    cfg = config.load(None, ["mqtt.password=ab #cd", "mqtt.username=u"])
    assert cfg.mqtt.password == "ab #cd"
    assert config.load(None, ["mqtt.password=0123"]).mqtt.password == "0123"
    path = tmp_path / "c.yaml"
    path.write_text("mqtt:\n  password: [hunter2, swordfish]\n")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert "hunter2" not in str(err.value) and "value hidden" in str(err.value)


@pytest.mark.faults
def test_print_hides_credentials_in_the_source_uri():
    cfg = config.load(None, ["source.uri=rtsp://admin:pa55@cam.local:554/s1",
                             "mqtt.password=pw"])
    shown = json.dumps(config.redacted(cfg))
    assert "pa55" not in shown and "admin" not in shown and '"password": "***"' in shown
    assert "rtsp://***@cam.local:554/s1" in shown
    with pytest.raises(ConfigError) as err:
        config.load(None, ["source.uri=rtsp://admin:pa55@"])
    assert "pa55" not in str(err.value)


@pytest.mark.faults
def test_tls_files_that_are_not_pem_are_config_errors(tmp_path):
    junk = tmp_path / "ca.pem"
    junk.write_text("this is not a certificate\n")
    with pytest.raises(ConfigError, match="^config: mqtt.tls.ca_file: not a valid PEM file"):
        config.load(None, ["mqtt.tls.enabled=true", f"mqtt.tls.ca_file={junk}"])
    with pytest.raises(ConfigError, match="^config: mqtt.tls.cert_file: not a valid PEM"):
        config.load(None, [f"mqtt.tls.cert_file={junk}", f"mqtt.tls.key_file={junk}"])


@pytest.mark.faults
def test_check_config_refuses_what_run_would(tmp_path):
    unreadable = tmp_path / "pw-dir"
    unreadable.mkdir()  # exists, but cannot be read as a file (root reads any 0600 file)
    result = subprocess.run(agent_command("check-config", "--set",
                                          f"mqtt.password_file={unreadable}"),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 78
    assert result.stderr.startswith("mask-agent: error: config: mqtt.password_file: cannot read")


@pytest.mark.faults
def test_reading_a_config_is_bounded():
    result = subprocess.run(agent_command("check-config", "/dev/zero"), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 78 and "larger than" in result.stderr


@pytest.mark.parametrize("host", ["::1", "[::1]", "fe80::1", "192.168.1.5", "broker.local"])
def test_ipv6_addresses_and_names_are_hosts(host):
    """A colon in mqtt.host is IPv6's; one colon alone is a port that belongs in mqtt.port
    (BAD_CONFIGS)."""
    assert config.validate({"mqtt": {"host": host}}).mqtt.host == host


def test_broker_list_entries_may_carry_ports():
    entries = ["[::1]:1884", "a:1883", "b", "fe80::2"]
    assert config.validate({"mqtt": {"hosts": entries}}).mqtt.hosts == tuple(entries)
