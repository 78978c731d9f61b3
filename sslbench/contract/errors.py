"""Errors that reach the user as one clear line (exit code 2), never as a traceback."""

from __future__ import annotations

import difflib
from typing import Iterable


class SSLBenchError(Exception):
    """Bad input or an impossible request: the message names the file or option and what is wrong.

    The command line prints ``error: <message>`` and exits with :attr:`exit_code`;
    the traceback is shown only with ``--debug``.
    """

    exit_code = 2


class DataError(SSLBenchError):
    """A dataset file is missing, unreadable or malformed."""


class CheckpointError(SSLBenchError):
    """A checkpoint is missing, corrupt, or was written for another model."""


class ConfigError(SSLBenchError):
    """An option, profile or spec value is impossible."""


def did_you_mean(name: str, known: Iterable[str], n: int = 1, cutoff: float = 0.5) -> str:
    """``" Did you mean 'x'?"``: the up to *n* closest of *known* to *name*, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), list(known), n=n, cutoff=cutoff)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
