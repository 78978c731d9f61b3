"""Errors that reach the user as one clear line (exit code 2), never as a traceback."""

from __future__ import annotations


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
