"""maskwatch device agent: camera -> faces -> int8 classifier -> tracker/vote -> MQTT."""

__version__ = "0.1.0"
