"""dgm's own exceptions: each carries a one-line message meant for the user.

The CLI prints ``dgm: error: <message>`` and exits with ``exit_code``; nothing else is caught,
so a traceback always means a bug in dgm.
"""

from __future__ import annotations


class DGMError(Exception):
    """Base class: a clear, one-line error about something outside dgm (input, files, config)."""

    exit_code: int = 1


class UsageError(DGMError):
    """The user asked for something impossible: a bad flag, key or value, an occupied run dir."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration file or ``--set`` override is invalid."""


class DataError(DGMError):
    """A dataset file is missing, truncated, corrupted or fails its checksum."""


class CheckpointError(DGMError):
    """A checkpoint is missing, incomplete or does not match the run's configuration."""
