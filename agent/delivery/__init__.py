"""Delivery: payloads to the broker, never lost.

Owns the durable SQLite outbox (`outbox`), the MQTT publisher that drains it at least once
(`publish`, over the client settings in `mqtt_client`), every topic name (`topics`), Home
Assistant discovery and the retained counts (`discovery`), and `mask-agent watch`
(`watch`). Its settings are `mqtt`, `mqtt.tls`, `outbox` and `homeassistant` (`config`).

May import: the base, `vision` and `people`. Not `site` (its sibling), `web` or the top.
"""
