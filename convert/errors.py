"""One-line errors for mask-convert (no tracebacks for user mistakes)."""

from __future__ import annotations


class ConvertError(Exception):
    """A user-facing problem: bad data folder, weights, output folder. Exit status 2."""

    exit_code = 2


class ParityError(ConvertError):
    """int8 export lost more accuracy than --max-drop allows. Exit status 3."""

    exit_code = 3


class DownloadError(ConvertError):
    """Something to download (the ImageNet weights) could not be fetched. Exit status 69,
    as `mask-agent` uses for a download that is unavailable."""

    exit_code = 69
