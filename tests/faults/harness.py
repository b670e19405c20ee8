"""Real `argus-embedder run` processes for the fault suite: start, signal, scrape, measure.

Each daemon gets its own worker id, and libpq's PGAPPNAME set to it, so the write audit
(see invariants.install_write_audit) can name the process behind every committed row.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Daemon:
    """One `argus-embedder run` child process (or a harness wrapping the same entry point)."""

    def __init__(
        self, name: str, env: dict[str, str], log_path: Path, command: Sequence[str]
    ) -> None:
        self.name = name
        self.env = env
        self.port = int(env["ARGUS_METRICS_PORT"])
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            list(command), env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        try:
            url = f"http://127.0.0.1:{self.port}{path}"
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read().decode()

    def metrics(self) -> dict[str, float]:
        """`/metrics` as {"name{labels}": value}."""
        _, body = self.get("/metrics")
        samples = {}
        for line in body.splitlines():
            match = _SAMPLE.match(line)
            if match and not line.startswith("#"):
                samples[match[1] + (match[2] or "")] = float(match[3])
        return samples

    def metric(self, name: str, **labels: str) -> float:
        key = name
        if labels:
            key += "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
        return self.metrics().get(key, 0.0)

    def rss_mb(self) -> float:
        """Resident memory of the process, from /proc (MiB)."""
        text = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
        assert match is not None
        return int(match[1]) / 1024

    def peak_rss_mb(self) -> float:
        text = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
        assert match is not None
        return int(match[1]) / 1024

    def wait_ready(self, timeout: float = 120) -> Daemon:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(
                    f"{self.name} exited {self.process.returncode}:\n{self.log()[-4000:]}"
                )
            with contextlib.suppress(OSError):
                if self.get("/readyz", timeout=1)[0] == 200:
                    return self
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready after {timeout}s:\n{self.log()[-4000:]}")

    def signal(self, signum: int) -> None:
        if self.alive():
            self.process.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGCONT (in case it was paused), then SIGKILL; reaps the process."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)
                self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
        self._log.close()


class Fleet:
    """Starts daemons against one database and S3 endpoint; stops them all at the end."""

    def __init__(
        self, base_env: dict[str, str], log_dir: Path, rng: random.Random | None = None
    ) -> None:
        self.base_env = base_env
        self.log_dir = log_dir
        self.daemons: list[Daemon] = []
        self.rng = rng or random.Random(0)

    def start(
        self, *args: str, name: str | None = None, command: Sequence[str] | None = None, **env: str
    ) -> Daemon:
        """A daemon running `argus-embedder run ARGS` (or `command`), named uniquely."""
        name = name or f"worker-{len(self.daemons)}"
        worker_id = f"{name}#{len(self.daemons)}"
        variables = {
            **self.base_env,
            "ARGUS_METRICS_PORT": str(free_port()),
            "ARGUS_WORKER_ID": worker_id,
            "PGAPPNAME": worker_id,
            **env,
        }
        argv = list(command) if command else [sys.executable, "-m", "argus_embedder", "run"]
        daemon = Daemon(
            worker_id,
            variables,
            self.log_dir / f"{name}-{len(self.daemons)}.log",
            [*argv, *args],
        )
        self.daemons.append(daemon)
        return daemon

    def live(self) -> list[Daemon]:
        return [daemon for daemon in self.daemons if daemon.alive()]

    def logs(self) -> str:
        return "\n".join(f"--- {d.name}\n{d.log()[-3000:]}" for d in self.daemons)

    def drain(self, timeout: float = 60) -> None:
        """SIGTERM every live daemon and expect exit 0 (a graceful drain)."""
        live = self.live()
        for daemon in live:
            daemon.signal(signal.SIGTERM)
        for daemon in live:
            code = daemon.wait(timeout)
            assert code == 0, f"{daemon.name} exited {code} on SIGTERM:\n{daemon.log()[-3000:]}"

    def stop_all(self) -> None:
        for daemon in self.daemons:
            daemon.stop()


def daemon_env(
    database_url: str,
    model_dir: Path,
    s3_url: str,
    bucket: str,
    **extra: str,
) -> dict[str, str]:
    """The environment of a test daemon: tiny model, CPU, quick polls, one torch thread."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "ARGUS_DATABASE_URL": database_url,
        "ARGUS_MODEL": str(model_dir),
        "ARGUS_DEVICE": "cpu",
        "ARGUS_S3_BUCKET": bucket,
        "ARGUS_S3_ENDPOINT_URL": s3_url,
        "ARGUS_POLL_INTERVAL": "0.2",
        "ARGUS_BATCH_SIZE": "4",
        "ARGUS_LEASE_SECONDS": "3",
        "ARGUS_RECONCILE_INTERVAL": "0",
        # Two cores are shared by several daemons and the test: keep each to one thread.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        **extra,
    }
