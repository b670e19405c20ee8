"""Exception types shared by every module, each with the exit code it maps to."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 78  # EX_CONFIG: systemd's RestartPreventExitStatus=78 stops restart loops


class ArgusError(Exception):
    """Base class; `str(error)` is the one line a user sees."""

    exit_code = EXIT_FAILURE


class ConfigError(ArgusError):
    """Bad variable, model not loadable, schema not migrated: restarting will not help."""

    exit_code = EXIT_CONFIG


class UserInputError(ArgusError):
    """A command-line argument that names something that does not exist or is malformed."""


class FrameError(ArgusError):
    """A frame that can never succeed (missing object, undecodable image, bad URI).

    Recorded as that frame's error row; the job goes on.
    """


class TransientError(ArgusError):
    """A fault worth retrying (S3 5xx, timeouts, connection resets)."""


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first non-empty line of an error's message (its type name when it has none),
    cut to `limit` characters: what a log line or a message shows of a multi-line
    library error."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(error).__name__


def describe(error: BaseException, limit: int | None = None) -> str:
    """`Type: first line`, as a job's last_error or a ConfigError shows an exception."""
    return f"{type(error).__name__}: {first_line(error, limit)}"
