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


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (its type name when it has none):
    what a log line or a job's last_error shows of a multi-line library error."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__
