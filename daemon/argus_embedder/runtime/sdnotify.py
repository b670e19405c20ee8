"""The systemd notification protocol (sd_notify) in a few lines of stdlib.

Under `Type=notify` systemd sets $NOTIFY_SOCKET; we send READY=1 after the
model is warm, WATCHDOG=1 while the loop is healthy and STOPPING=1 when the
drain begins. Outside systemd (a terminal, Docker) every call is a no-op that
returns False, so callers never need to know where they run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator

from argus_embedder import lifecycle

log = logging.getLogger(__name__)


def notify(*lines: str) -> bool:
    """Send `lines` (e.g. "READY=1", "STATUS=…") as one datagram to $NOTIFY_SOCKET.

    Returns True when sent; False when the variable is unset or unusable or the
    send failed. Never raises: a lost notification must not take the daemon down.
    """
    address = _socket_address(os.environ.get("NOTIFY_SOCKET", ""))
    if address is None:
        return False
    message = "\n".join(lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        log.debug("sd_notify to %r failed: %s", address, exc)
        return False
    return True


def _socket_address(value: str) -> str | None:
    """The AF_UNIX address for $NOTIFY_SOCKET: a path, or '@name' for the abstract namespace."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value:
        log.debug("NOTIFY_SOCKET=%r is not a supported AF_UNIX address; not notifying", value)
    return None


def _one_line(text: str) -> str:
    """A newline would start a new assignment in the datagram; keep STATUS one line."""
    return " ".join(text.splitlines())


def ready(status: str | None = None) -> bool:
    """Tell systemd start-up is over (the unit becomes active), with an optional status line."""
    if status is None:
        return notify("READY=1")
    return notify("READY=1", f"STATUS={_one_line(status)}")


def status(text: str) -> bool:
    """Set the one-line status `systemctl status` shows."""
    return notify(f"STATUS={_one_line(text)}")


def stopping(status: str | None = None) -> bool:
    """Tell systemd the drain began (the unit shows 'deactivating')."""
    if status is None:
        return notify("STOPPING=1")
    return notify("STOPPING=1", f"STATUS={_one_line(status)}")


def watchdog() -> bool:
    """Keep-alive for WatchdogSec=: systemd kills the service when these stop coming."""
    return notify("WATCHDOG=1")


def extend_timeout(seconds: float) -> bool:
    """Ask for `seconds` more before the start/stop timeout fires (slow model download, drain)."""
    return notify(f"EXTEND_TIMEOUT_USEC={max(int(seconds * 1_000_000), 0)}")


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC, or None when no watchdog is on.

    None too when $WATCHDOG_PID names another process (the variable was
    inherited from a parent that is the one being watched).
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


@contextlib.contextmanager
def watchdog_pinger(healthy: Callable[[], bool]) -> Iterator[float | None]:
    """Send WATCHDOG=1 every watchdog_interval() from a thread, but only while `healthy()`.

    Pass the loop's liveness (e.g. `lambda: state.live()[0]`): when the loop
    stalls the pings stop and systemd restarts the service, the same verdict
    /livez gives. Entering it early is harmless: systemd arms the watchdog
    only once READY=1 arrives, and liveness holds until the loop's first beat.
    Yields the interval, or None (no thread) when no watchdog is on.
    """
    interval = watchdog_interval()
    if interval is None:
        yield None
        return

    def ping() -> None:
        if healthy():
            watchdog()
        else:
            log.warning("worker loop unhealthy: withholding the systemd watchdog ping")

    with lifecycle.Service("watchdog", ping, interval=interval):
        yield interval
