"""One-line errors for mask-convert (no tracebacks for user mistakes)."""

from __future__ import annotations


class ConvertError(Exception):
    """A user-facing problem: bad data folder, weights, output folder. Exit status 2."""

    exit_code = 2


class ParityError(ConvertError):
    """int8 export lost more accuracy than --max-drop allows. Exit status 3."""

    exit_code = 3
