"""One builder for paho-mqtt clients (callback API v2), shared by the publisher and the
watcher so that TLS, credentials and protocol settings cannot drift apart."""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .config import MqttConfig


def make_client(settings: MqttConfig, client_id: str, password: str | None,
                persistent_session: bool) -> mqtt.Client:
    """A configured, unconnected client (MQTT 3.1.1)."""
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
