"""Real `argus-embedder run` processes, started and stopped with signals."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import S3Endpoint


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Daemon:
    """A running `argus-embedder run` child process."""

    def __init__(self, env: dict[str, str], log_path: Path, args: list[str]) -> None:
        self.port = int(env["ARGUS_METRICS_PORT"])
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "argus_embedder", "run", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                if self.get("/readyz")[0] == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"daemon not ready after {timeout}s:\n{self.log()}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture
def start_daemon(
    worker_url: str, s3: S3Endpoint, tiny_siglip_dir: Path, tmp_path: Path
) -> Iterator[Callable[..., Daemon]]:
    """start(ARGS, VAR=value) -> a real `argus-embedder run ARGS` as production runs it: a
    login holding only argus_worker (a variable given overrides, ARGUS_DATABASE_URL too)."""
    started: list[Daemon] = []

    def start(*args: str, **variables: str) -> Daemon:
        env = {
            **os.environ,
            "ARGUS_DATABASE_URL": worker_url,
            "ARGUS_MODEL": str(tiny_siglip_dir),
            "ARGUS_DEVICE": "cpu",
            "ARGUS_S3_BUCKET": s3.bucket,
            "ARGUS_S3_ENDPOINT_URL": s3.url,
            "ARGUS_METRICS_PORT": str(free_port()),
            "ARGUS_WORKER_ID": f"daemon-{len(started)}",
            **variables,
        }
        daemon = Daemon(env, tmp_path / f"daemon-{len(started)}.log", list(args))
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
