"""The delivery part's settings: `mqtt` (with `mqtt.tls`), `outbox`, `homeassistant`."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..settings import read_secret_file, section, setting


@dataclass(frozen=True)
class TlsConfig:
    enabled: bool = setting(False, "bool", "connect with TLS")
    ca_file: str | None = setting(None, "path", "CA certificate (PEM); null: system CAs",
                                  nullable=True)
    cert_file: str | None = setting(None, "path", "client certificate (PEM)", nullable=True)
    key_file: str | None = setting(None, "path", "client key (PEM)", nullable=True)
    insecure: bool = setting(False, "bool", "skip host name verification (testing only)")


@dataclass(frozen=True)
class MqttConfig:
    host: str = setting("localhost", "host", "broker host name or address (its port: mqtt.port)")
    port: int = setting(1883, "int", "broker port", low=1, high=65535)
    hosts: tuple[str, ...] = setting((), "hosts", "the nodes of one broker cluster, as "
                                     "host or host:port (port: mqtt.port); when set, used "
                                     "instead of host, tried in turn on failure (a host "
                                     "name resolving to several addresses works too)")
    client_id: str | None = setting(None, "str", "MQTT client id; null: maskwatch-<device_id>-"
                                    "<8 hex digits of this machine's id> (unique even for "
                                    "two devices cloned from one SD card)", nullable=True)
    topic_prefix: str = setting("maskwatch", "str", "topics are <prefix>/<device_id>/...",
                                pattern=r"^[^#+\s]+$")
    keepalive: int = setting(30, "int", "keepalive seconds", low=5, high=3600)
    connect_timeout_s: float = setting(10.0, "float", "a broker that has not answered a "
                                       "connection attempt by then is reported (and the TCP "
                                       "connect given up)", low=0.5, high=600)
    username: str | None = setting(None, "str", "user name", nullable=True)
    password: str | None = setting(None, "secret", "password, taken verbatim (prefer "
                                   "password_env or password_file)", nullable=True)
    password_env: str | None = setting(None, "str", "environment variable holding the "
                                       "password", nullable=True)
    password_file: str | None = setting(None, "path", "file holding the password (mode 0600)",
                                        nullable=True)
    require_tls: bool = setting(False, "bool", "refuse to connect without TLS")
    protocol: str = setting("auto", "enum", "MQTT version: v5 (a broker's refusal of a "
                            "publish, e.g. by its ACL, is seen and the event kept), v311, or "
                            "auto: v5, and v311 with a warning when the broker speaks only "
                            "that (NATS, RabbitMQ before 3.13)", choices=("auto", "v5", "v311"))
    session_expiry_s: int = setting(259200, "int", "MQTT 5: the broker forgets this device's "
                                    "session this long after it goes away (3 days; a "
                                    "decommissioned device's session does not stay forever)",
                                    low=60, high=4_294_967_294)
    tls: TlsConfig = section(TlsConfig)
    stats_interval_s: float = setting(30.0, "float", "seconds between stats messages", low=1,
                                      high=86400)
    reconnect_min_s: float = setting(1.0, "float", "first reconnect delay (after every broker "
                                     "of mqtt.hosts was tried once; each delay is jittered "
                                     "so a fleet does not reconnect in step)", low=0.1,
                                     high=600)
    reconnect_max_s: float = setting(60.0, "float", "longest reconnect delay", low=0.1,
                                     high=3600)


@dataclass(frozen=True)
class OutboxConfig:
    path: str | None = setting(None, "path", "SQLite outbox file; null: "
                               "<state_dir>/outbox.sqlite3", nullable=True)
    max_events: int = setting(10000, "int", "events kept while the broker is away", low=1,
                              high=10_000_000)
    max_bytes: int = setting(20_000_000, "int", "bytes of events kept", low=1024, high=10**11)


@dataclass(frozen=True)
class HomeAssistantConfig:
    enabled: bool = setting(True, "bool", "publish Home Assistant MQTT discovery")
    discovery_prefix: str = setting("homeassistant", "str", "Home Assistant discovery prefix",
                                    pattern=r"^[^#+\s]+$")
    off_delay_s: int = setting(30, "int", "unmasked-person sensor turns off after this long",
                               low=1, high=86400)


def broker_addresses(mqtt: MqttConfig) -> list[tuple[str, int]]:
    """(host, port) of each broker to try, in order: mqtt.hosts, else mqtt.host."""
    if not mqtt.hosts:
        return [(mqtt.host, mqtt.port)]
    found = []
    for entry in mqtt.hosts:
        bare_ipv6 = entry.count(":") > 1 and not entry.startswith("[")
        host, sep, port = ("", "", "") if bare_ipv6 or entry.endswith("]") else \
            entry.rpartition(":")
        if sep and port.isdigit():
            found.append((host.strip("[]"), int(port)))
        else:
            found.append((entry.strip("[]"), mqtt.port))
    return found


def read_password_file(path: str) -> str:
    return read_secret_file("mqtt.password_file", path)


def mqtt_password(mqtt: MqttConfig) -> str | None:
    """The MQTT password from the config, an environment variable or a file."""
    if mqtt.password_env:
        return os.environ.get(mqtt.password_env)
    if mqtt.password_file:
        return read_password_file(mqtt.password_file)
    return mqtt.password
