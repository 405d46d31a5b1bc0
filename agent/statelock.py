"""One agent per state directory, and only its owner writing there.

Two agents on one state dir (the service, and the README's camera check run by hand while
it runs) share one outbox, one samples store and one MQTT client id: the broker then
knocks each session off in turn as the other reconnects, and Home Assistant sees the
device go offline and back. So `run` holds an exclusive lock on `<state_dir>/agent.lock`
while it runs (the kernel drops it when the process ends, however it ends) and a second
agent stops at once with one line naming the first one's pid (exit 75: try again later;
systemd's Restart=on-failure does).

The service's state dir belongs to its user (`maskwatch`). A command run there as root
(`sudo mask-agent samples list`, `sudo mask-agent adapt`) made its files root's: a samples
folder 0700 that the service then cannot open (collection off), an outbox it cannot write
(events in memory only). `check_owner` refuses that with one line naming the user to run
as (exit 77).
"""

from __future__ import annotations

import fcntl
import logging
import os
import pwd
from pathlib import Path
from typing import IO

from .errors import BusyError, WrongUserError

LOCK_NAME = "agent.lock"

log = logging.getLogger("maskwatch")


def check_owner(state_dir: str | Path) -> None:
    """WrongUserError when root is about to write into a state dir another user owns."""
    if os.geteuid() != 0:
        return  # a user writes only where it may, and what it writes is its own
    try:
        owner = Path(state_dir).stat().st_uid
    except OSError:
        return  # not there yet: whatever root makes there is root's own
    if owner == 0:
        return
    try:
        name = pwd.getpwuid(owner).pw_name
    except KeyError:
        name = str(owner)
    raise WrongUserError(
        f"the state dir {state_dir} belongs to {name}: run this as {name} (sudo -u {name} "
        f"mask-agent ...), or the files root made there would lock that user's agent out")


class StateDirLock:
    """The exclusive lock of one state directory, held from `acquire` until `release`."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock, or BusyError when another agent holds it. A state dir this user
        cannot write is not guarded (the outbox says what that means: exit 74)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+", encoding="ascii")  # noqa: SIM115 (held: the lock)
        except OSError as exc:
            log.debug("state dir lock %s not taken: %s", self.path, exc)
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise BusyError(
                f"another mask-agent (pid {holder}) runs with the state dir "
                f"{self.path.parent}: stop it first (the service: sudo systemctl stop "
                "maskwatch), or give this one another state_dir") from None
        except OSError as exc:  # a file system without locks (some network mounts)
            handle.close()
            log.debug("state dir lock %s not taken: %s", self.path, exc)
            return
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # the lock goes with the file; the file stays (no race)
            self._handle = None

    def __enter__(self) -> StateDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
