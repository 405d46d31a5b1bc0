"""Log lines that cannot flood the journal: at most one per key and interval.

Months unattended means a fault that repeats every frame (a full disk, a refused publish,
a flood of bad messages) must be said once in a while with a count, not thousands of
times: the journal on an SD card is small, and a flood hides the first, useful line.
"""

from __future__ import annotations

import logging
import threading
import time


class Throttle:
    """`log(...)` writes the first line at once, then at most one per `interval_s` per
    key, saying how many were held back meanwhile."""

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0) -> None:
        self.logger, self.interval_s = logger, interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def log(self, level: int, key: str, message: str, *args: object) -> bool:
        """True when the line was written (False: counted and held back)."""
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -1e18) < self.interval_s:
                self._held[key] = self._held.get(key, 0) + 1
                return False
            self._last[key] = now
            held = self._held.pop(key, 0)
        if held:
            message += f" ({held} more like this in the last {self.interval_s:.0f} s)"
        self.logger.log(level, message, *args)
        return True
