"""CPU seconds spent by the processes a scenario involves: the bench (and its decode
processes), S3, PostgreSQL.

On a 2-core machine the S3 server and PostgreSQL run on the same cores as the worker, so a
frame's cost is the sum of the three; reporting each share says where time goes (and which
share a production deployment, with S3 and the database elsewhere, would not pay here).
Linux only (/proc); elsewhere the other processes read as unknown.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import psycopg

from argus_embedder import db

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclasses.dataclass(frozen=True)
class Sample:
    """Cumulative CPU seconds at one instant (None: not measurable here)."""

    bench: float
    decode: float | None  # the worker's decode processes (and their forkserver)
    s3: float | None
    postgres: float | None

    def minus(self, earlier: Sample) -> Sample:
        return Sample(
            self.bench - earlier.bench,
            _difference(self.decode, earlier.decode),
            _difference(self.s3, earlier.s3),
            _difference(self.postgres, earlier.postgres),
        )


def _difference(later: float | None, earlier: float | None) -> float | None:
    return None if later is None or earlier is None else later - earlier


class Meter:
    """Reads the CPU time of this process, the S3 server and a local PostgreSQL."""

    def __init__(self, s3_pid: int | None, postmaster_pid: int | None) -> None:
        self._s3 = s3_pid
        self._postmaster = postmaster_pid

    def sample(self) -> Sample:
        s3 = _process_seconds(self._s3, children=False) if self._s3 else None
        postgres = _tree_seconds(self._postmaster) if self._postmaster else None
        return Sample(time.process_time(), _descendants_seconds(self.others), s3, postgres)

    @property
    def others(self) -> set[int]:
        """The processes that are not the worker's: the S3 server, PostgreSQL."""
        return {pid for pid in (self._s3, self._postmaster) if pid}

    def worker_rss(self) -> int:
        """Resident bytes of this process plus its decode processes."""
        return rss_bytes("self") + sum(rss_bytes(pid) for pid in descendants(self.others) or [])


def postmaster_pid(connection: psycopg.Connection[Any]) -> int | None:
    """The server's postmaster, if it runs on this machine (its backend is our /proc's)."""
    row = connection.execute(db.queries()["bench_backend_pid"]).fetchone()
    if row is None:
        return None
    backend = int(row["pid"])
    try:
        comm = Path(f"/proc/{backend}/comm").read_text(encoding="utf-8").strip()
        parent = int(_stat(backend)[1])
    except (OSError, ValueError, IndexError):
        return None
    return parent if comm.startswith("postgres") else None


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat fields after the command name (state is [0], ppid [1], utime [11])."""
    text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    return text[text.rindex(")") + 2 :].split()


def _process_seconds(pid: int, *, children: bool) -> float | None:
    """utime+stime of `pid` (+ its reaped children's, with `children`)."""
    try:
        fields = _stat(pid)
    except (OSError, ValueError):
        return None
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICKS


def _tree_seconds(postmaster: int) -> float | None:
    """The postmaster, its live backends, and backends that already exited (reaped)."""
    total = _process_seconds(postmaster, children=True)
    if total is None:
        return None
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                fields = _stat(int(entry.name))
            except (OSError, ValueError):
                continue
            if int(fields[1]) == postmaster:
                total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def _descendants_seconds(skip: set[int]) -> float | None:
    """CPU of this process's descendants but `skip` (and theirs), reaped children included."""
    pids = descendants(skip)
    if pids is None:
        return None
    return sum(_process_seconds(pid, children=True) or 0.0 for pid in pids)


def descendants(skip: set[int]) -> list[int] | None:
    """This process's descendants, less `skip` and theirs (None: no /proc here)."""
    children: dict[int, list[int]] = {}
    try:
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    children.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
    except OSError:
        return None
    found: list[int] = []
    waiting = list(children.get(os.getpid(), []))
    while waiting:
        pid = waiting.pop()
        if pid not in skip:
            found.append(pid)
            waiting.extend(children.get(pid, []))
    return found


def rss_bytes(pid: int | str = "self") -> int:
    """A process's resident set size (0 when it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
