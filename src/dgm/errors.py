"""dgm's own exceptions: each carries a one-line message meant for the user, and its exit code.

The CLI prints ``dgm: error: <message>`` and exits with the class's ``exit_code``; nothing else
is caught but an OSError (a file dgm had to read or write) and an interrupt, so a traceback
always means a bug in dgm. The exit codes, one per kind of fault (README, "Exit codes"):

====  =========================================================================================
0     success
1     an unexpected fault: a bug in dgm (Python's own code for an uncaught exception)
2     usage and bad input: a flag, config file, key or value (argparse's code for usage); a
      file or directory that cannot be read or written; a run directory taken, locked or not
      a run; a run too large for the memory
3     data: a dataset file missing, truncated, corrupted or failing its checksum
4     checkpoint: a run's checkpoint or weights missing, incomplete, corrupted or not matching
5     numerical: training kept producing non-finite values after its recoveries
128+N stopped by signal N after the epoch's checkpoint (130: Ctrl-C, 143: SIGTERM)
====  =========================================================================================
"""

from __future__ import annotations

#: exit code -> what it means (the table above; README and ``dgm --help`` show it)
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected fault (a bug in dgm: please report the traceback)",
    2: "usage or bad input: flags, config, values, paths, run directories, memory",
    3: "data: a dataset file is missing, truncated, corrupted or fails its checksum",
    4: "checkpoint: missing, incomplete, corrupted or not matching the run",
    5: "numerical: training diverged (non-finite values after its recoveries)",
    130: "interrupted (128 + N: stopped by signal N after writing its checkpoint)",
}

USAGE, DATA, CHECKPOINT, NUMERICAL, INTERRUPTED = 2, 3, 4, 5, 130


class DGMError(Exception):
    """Base class: a clear, one-line error about something outside dgm (input, files, config).
    Raised as such it is bad input (the model cannot be fitted as configured on these data)."""

    exit_code: int = USAGE


class UsageError(DGMError):
    """The user asked for something impossible: a bad flag, key or value, an occupied run dir."""

    exit_code = USAGE


class ConfigError(UsageError):
    """A configuration file or ``--set`` override is invalid."""


class MemoryLimitError(UsageError):
    """The configuration needs more memory than the machine (or ``train.max_memory``) allows;
    raised before anything is allocated (see :mod:`dgm.sizes`)."""


class DataError(DGMError):
    """A dataset file is missing, truncated, corrupted or fails its checksum."""

    exit_code = DATA


class CheckpointError(DGMError):
    """A checkpoint is missing, incomplete or does not match the run's configuration."""

    exit_code = CHECKPOINT


class NumericalError(DGMError):
    """Training kept producing non-finite values; the run directory holds the last good state."""

    exit_code = NUMERICAL


def shorten(text: object, limit: int = 80) -> str:
    """``text`` (a value echoed in a message) cut to ``limit`` characters with an ellipsis."""
    s = str(text)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def one_line(message: object, limit: int = 1000) -> str:
    """A message as one line of at most ``limit`` characters (what the CLI prints)."""
    return shorten(" ".join(str(message).split()), limit)
