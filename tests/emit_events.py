"""Test helper process: queue N numbered events through the agent's outbox and publisher.

python -m tests.emit_events --outbox PATH --port PORT --count N [--delay S] [--hold S]
Each event's `id` is a UUID and `track_id` its number, so a subscriber can check order.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

from maskwatch.agent.config import load, mqtt_password
from maskwatch.agent.delivery.outbox import ResilientOutbox
from maskwatch.agent.delivery.publish import Publisher
from maskwatch.agent.factory import topics_from


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--outbox", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--start", type=int, default=1)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--hold", type=float, default=0.0, help="seconds to wait after queuing")
    parser.add_argument("--drain", type=float, default=30.0)
    args = parser.parse_args()
    cfg = load(None, [f"mqtt.port={args.port}", "mqtt.host=127.0.0.1", "device_id=emitter",
                      "mqtt.reconnect_min_s=0.2", "mqtt.reconnect_max_s=1"])
    publisher = Publisher(cfg.mqtt, topics_from(cfg), ResilientOutbox(args.outbox),
                          mqtt_password(cfg.mqtt))
    publisher.start()
    for n in range(args.start, args.start + args.count):
        event = json.dumps({"id": str(uuid.uuid4()), "n": n}).encode()
        publisher.queue(publisher.topics.events, event)
        print(n, flush=True)
        if args.delay:
            time.sleep(args.delay)
    time.sleep(args.hold)
    left = publisher.stop(drain_timeout_s=args.drain)
    print(f"left {left}", flush=True)


if __name__ == "__main__":
    main()
