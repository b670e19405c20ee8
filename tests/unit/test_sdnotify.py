"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from argus_embedder.runtime import sdnotify


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def receive(self, timeout: float = 2.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def nothing_within(self, seconds: float) -> bool:
        self.sock.settimeout(seconds)
        try:
            self.sock.recv(4096)
        except TimeoutError:
            return True
        return False


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=["path", "abstract"])
def systemd(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeSystemd]:
    """A listening datagram socket, by path or in the abstract namespace ('@name')."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if request.param == "path":
            # AF_UNIX paths are limited to ~108 bytes: keep it short, not under tmp_path.
            directory = tempfile.mkdtemp(prefix="sdn-")
            address = str(Path(directory) / "notify")
            sock.bind(address)
            monkeypatch.setenv("NOTIFY_SOCKET", address)
        else:
            name = f"argus-test-{uuid.uuid4().hex}"
            sock.bind("\0" + name)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
            directory = None
        try:
            yield FakeSystemd(sock)
        finally:
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)


def test_without_notify_socket_nothing_is_sent() -> None:
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready("warm") is False
    assert sdnotify.watchdog() is False


def test_ready_with_status(systemd: FakeSystemd) -> None:
    assert sdnotify.ready("model warm on cuda:0")
    assert systemd.receive() == "READY=1\nSTATUS=model warm on cuda:0"


def test_ready_without_status(systemd: FakeSystemd) -> None:
    assert sdnotify.ready()
    assert systemd.receive() == "READY=1"


def test_each_message(systemd: FakeSystemd) -> None:
    assert sdnotify.status("loading model")
    assert systemd.receive() == "STATUS=loading model"
    assert sdnotify.watchdog()
    assert systemd.receive() == "WATCHDOG=1"
    assert sdnotify.extend_timeout(2.5)
    assert systemd.receive() == "EXTEND_TIMEOUT_USEC=2500000"
    assert sdnotify.stopping()
    assert systemd.receive() == "STOPPING=1"
    assert sdnotify.stopping("draining")
    assert systemd.receive() == "STOPPING=1\nSTATUS=draining"
    assert sdnotify.notify("READY=1", "MAINPID=1")
    assert systemd.receive() == "READY=1\nMAINPID=1"


def test_a_status_cannot_inject_another_assignment(systemd: FakeSystemd) -> None:
    sdnotify.status("line one\nREADY=1")
    assert systemd.receive() == "STATUS=line one READY=1"


def test_send_errors_are_swallowed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert sdnotify.ready("x") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "@argus-test-nobody-listens-" + uuid.uuid4().hex)
    assert sdnotify.watchdog() is False


def test_unsupported_addresses_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "@")
    assert sdnotify.ready() is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("60000000", None, 30.0),
        ("60000000", "own", 30.0),
        ("60000000", "1", None),  # watchdog meant for another process
        ("0", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "own" else pid)
    assert sdnotify.watchdog_interval() == expected


def test_pinger_pings_while_healthy(systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # ping every 0.05 s
    with sdnotify.watchdog_pinger(lambda: True) as interval:
        assert interval == 0.05
        assert systemd.receive() == "WATCHDOG=1"
        assert systemd.receive() == "WATCHDOG=1"


def test_pinger_withholds_pings_while_unhealthy(
    systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    with sdnotify.watchdog_pinger(lambda: False):
        assert systemd.nothing_within(0.3)


def test_pinger_without_watchdog_starts_nothing() -> None:
    with sdnotify.watchdog_pinger(lambda: True) as interval:
        assert interval is None
