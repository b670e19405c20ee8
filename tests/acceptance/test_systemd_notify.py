"""A real daemon talks to systemd: READY after warm-up, WATCHDOG from the loop, STOPPING."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from tests.acceptance.conftest import Daemon


def test_ready_watchdog_and_stopping_reach_the_notify_socket(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(0.2)
    messages: list[str] = []

    def drain_until(predicate: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not predicate():
            try:
                messages.append(receiver.recv(4096).decode())
            except TimeoutError:
                continue

    try:
        daemon = start_daemon(NOTIFY_SOCKET=str(path), WATCHDOG_USEC="1000000")
        drain_until(lambda: any("READY=1" in m for m in messages), 90)
        assert any("READY=1" in m for m in messages), daemon.log()
        ready_at = next(i for i, m in enumerate(messages) if "READY=1" in m)
        assert any("STATUS=loading model" in m for m in messages[:ready_at])
        drain_until(lambda: sum("WATCHDOG=1" in m for m in messages) >= 3, 10)
        assert sum("WATCHDOG=1" in m for m in messages) >= 3
        daemon.signal(signal.SIGTERM)
        drain_until(lambda: any("STOPPING=1" in m for m in messages), 30)
        assert daemon.wait() == 0
        assert any("STOPPING=1" in m for m in messages)
    finally:
        receiver.close()
