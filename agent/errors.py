"""Error types and the documented process exit codes.

Every failure a user can cause (bad config, bad model, bad input) maps to one exception
class carrying a one-line message; the CLI prints that line and exits with the code below.
Configuration and model problems exit 78 (EX_CONFIG) so systemd's
`RestartPreventExitStatus=78` stops a restart loop that could never succeed.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path

EXIT_OK = 0
EXIT_FAILURE = 1  # unexpected internal error (a bug: please report it)
EXIT_USAGE = 2  # wrong command-line arguments
EXIT_NOT_ADAPTED = 3  # `adapt`: the new site head is not better; the current one stays
EXIT_DATA = 65  # an input image or payload could not be decoded
EXIT_NOINPUT = 66  # an input file or camera source does not exist / cannot be opened
EXIT_UNAVAILABLE = 69  # the MQTT broker could not be reached
EXIT_IOERR = 74  # the state directory was unwritable at the end: events only in memory
EXIT_TEMPFAIL = 75  # try again later: --until-eof ended with events not yet delivered (kept
# in the outbox), or another agent runs with this state directory
EXIT_NOPERM = 77  # --until-eof ended with events the broker refused (its ACL; kept), or
# root asked to write into the state directory of another user (the service's)
EXIT_CONFIG = 78  # invalid configuration or model file


def running_as() -> str:
    """This process's user, for a message about a file it may not read (on a device the
    commands run as the service's user, whom a 0700 home keeps out)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid with no name (a container's arbitrary user)
        return f"uid {os.getuid()}"


HIDDEN_FROM_THE_SERVICE = ("/home/", "/root/", "/run/user/")  # its unit's ProtectHome=yes
HIDDEN_NOTE = ("the maskwatch service sees no /home, /root or /run/user at all: keep what it "
               "reads under /etc/maskwatch or /var/lib/maskwatch")


def cannot_read(path: str | Path, reason: str | None, setting: str | None = None) -> str:
    """The line for a file or folder this user may not read, naming the user: on a device
    the commands run as the service's (`sudo -u maskwatch`), whom a 0700 home keeps out.
    A `setting` names the file for the service too, whose unit hides /home, /root and
    /run/user (ProtectHome): a bundle, a certificate or a clip copied to /home/pi and named
    in the device's config is one, and the line says so."""
    hint = (f"; {HIDDEN_NOTE}" if setting and str(path).startswith(HIDDEN_FROM_THE_SERVICE)
            else "")
    return (f"{setting + ': ' if setting else ''}cannot read {path}: "
            f"{reason or 'Permission denied'} (running as {running_as()}{hint})")


class MaskwatchError(Exception):
    """Base class: a problem with a one-line explanation and an exit code."""

    exit_code = EXIT_FAILURE


class UsageError(MaskwatchError):
    """A command-line argument that cannot work (e.g. --annotate pointing at a file)."""

    exit_code = EXIT_USAGE


class ConfigError(MaskwatchError):
    """The configuration is invalid; the message names the key."""

    exit_code = EXIT_CONFIG


class ModelError(MaskwatchError):
    """A model file is missing, corrupt or does not match its metadata."""

    exit_code = EXIT_CONFIG


class InputError(MaskwatchError):
    """An input image or payload could not be decoded."""

    exit_code = EXIT_DATA


class SourceError(MaskwatchError):
    """A camera or video source cannot be opened or has stopped delivering frames."""

    exit_code = EXIT_NOINPUT


class StateError(MaskwatchError):
    """The state directory (event outbox) cannot be written."""

    exit_code = EXIT_IOERR


class BusyError(MaskwatchError):
    """Another agent runs with this state directory."""

    exit_code = EXIT_TEMPFAIL


class WrongUserError(MaskwatchError):
    """Root asked to write into another user's state directory (the service's)."""

    exit_code = EXIT_NOPERM


class BrokerError(MaskwatchError):
    """The MQTT broker cannot be reached or refused the connection."""

    exit_code = EXIT_UNAVAILABLE
