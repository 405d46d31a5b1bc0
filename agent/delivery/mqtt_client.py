"""One builder for paho-mqtt clients (callback API v2), shared by the publisher and the
watcher so that TLS, credentials and protocol settings cannot drift apart."""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .config import MqttConfig

V5, V311 = "v5", "v311"
UNSUPPORTED_PROTOCOL = {1, 132}  # CONNACK: 3.1.1's "unacceptable protocol version", v5's


def first_protocol(settings: MqttConfig) -> str:
    """The version to try first (`auto` tries 5, then falls back)."""
    return V311 if settings.protocol == V311 else V5


def session_taker(client_id: str, username: str | None) -> str:
    """Who may be taking a session the broker keeps ending: a client with its id, or, on a
    broker that makes the user name the client id (deploy/mosquitto/fleet.conf), any client
    of its user."""
    who = f"the client id {client_id}"
    if username:
        who += (f", or the MQTT user {username} on a broker that makes the user name the "
                "client id (deploy/mosquitto/fleet.conf)")
    return who


def make_client(settings: MqttConfig, client_id: str, password: str | None,
                persistent_session: bool, protocol: str = V5) -> mqtt.Client:
    """A configured, unconnected client speaking MQTT 5 or 3.1.1."""
    if protocol == V5:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
    else:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=not persistent_session, protocol=mqtt.MQTTv311)
    if settings.username:
        client.username_pw_set(settings.username, password)
    tls = settings.tls
    if tls.enabled:
        client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file,
                       cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.tls_insecure_set(tls.insecure)
    return client


def connect_args(settings: MqttConfig, protocol: str, persistent_session: bool) -> dict:
    """Keyword arguments for `connect`/`connect_async`: on MQTT 5 the session is kept
    (clean_start off) for `session_expiry_s` after the device goes away."""
    if protocol != V5:
        return {}
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = settings.session_expiry_s if persistent_session else 0
    return {"clean_start": not persistent_session, "properties": properties}


def unsupported_protocol(reason_code) -> bool:
    """The broker refused the protocol version (it speaks an older MQTT)."""
    return getattr(reason_code, "value", reason_code) in UNSUPPORTED_PROTOCOL
