"""`argus-embedder status`: what the queue, the running jobs, the fleet and each model's
coverage look like now, read through the gateways.

Cheap at any size (DESIGN §2): nothing on its path counts a whole large table.
Queued and running jobs and failed frames are counted exactly from their partial
indexes up to counting.COUNT_CAP; a table the planner puts at or below counting.EXACT_ROWS rows
is counted; anything larger shows the planner's estimate (its statistics, no scan),
marked `~` in the text and `"estimated": true` (or an `..._estimated` member) in the
JSON. An estimate is never shown as exact.

Rates come from the vectors themselves (`frame_embeddings.created_at`), found
through the jobs that wrote them, so no scan of the whole table is needed:
a running job's rate is what it wrote in the last minute; the fleet's is what
jobs running or finished in the last five minutes wrote in that window. ETAs
divide what is left by those rates, and are None when nothing
was written lately (unknown, not zero).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import psycopg

from argus_embedder import db, errors
from argus_embedder.commands import common
from argus_embedder.gateways import frames, index, passes, projects, queue, store, workers
from argus_embedder.settings import Settings

FLEET_WINDOW_SECONDS = 300.0
FLEET_RATE_JOBS = 500  # at most this many finished jobs' videos are read for the rate


def collect(connection: psycopg.Connection[Any], *, model: str | None = None) -> dict[str, Any]:
    """A JSON-ready report. `model` is the configured one: NULL-model jobs count
    against it, and coverage marks it (None: such jobs count all their frames)."""
    stats = queue.stats(connection)
    writes = projects.recent_writes(connection, window=FLEET_WINDOW_SECONDS, jobs=FLEET_RATE_JOBS)
    return {
        "jobs": stats.jobs,
        "jobs_estimated": {state: state in stats.estimated for state in stats.jobs},
        "oldest_queued_seconds": stats.oldest_queued_seconds,
        "queue": _queue(connection, model, queued=stats.jobs["queued"], writes=writes),
        "running": [_running_job(job) for job in queue.running_progress(connection)],
        "coverage": coverage(connection, configured=model),
        "workers": [_worker(info) for info in workers.recent(connection)],
        "reconciler": [
            _reconciler(name, record)
            for name, record in passes.reconciler_records(connection).items()
        ],
        "replica": replica(connection),
        "projects": project_queue(connection, model=model, writes=writes),
    }


def replica(connection: psycopg.Connection[Any]) -> dict[str, Any] | None:
    """How far this server (a hot standby, ARGUS_READ_DATABASE_URL) trails its primary;
    None on a primary.

    `replay_lag_seconds`: 0 when all WAL received is replayed, else the age of the
    last replayed commit (which overstates the lag after an idle spell on the
    primary). Caught up means caught up with what arrived: with `streaming` false
    nothing arrives (the primary is down or unreachable), and reads are as of the
    last replayed commit.
    """
    standby = db.standby(connection)
    if standby is None:
        return None
    pending = standby.pending_bytes
    since = standby.last_replay_seconds_ago
    return {
        "streaming": standby.streaming,
        "replay_paused": standby.replay_paused,
        "received_lsn": standby.received_lsn,
        "replayed_lsn": standby.replayed_lsn,
        "replay_lag_bytes": pending,
        "replay_lag_seconds": 0.0 if pending == 0 else since,
        "last_replay_seconds_ago": since,
    }


def coverage(
    connection: psycopg.Connection[Any], *, configured: str | None
) -> list[dict[str, Any]]:
    """Per registered model: frames with a row (vector or error) of all frames.

    `estimated`: frames, with_row, embedded, missing and coverage are (or derive from)
    planner estimates; `failed_estimated` likewise for failed. The reconciler's
    last pass (in `reconciler`) has the exact missing frames of the configured model."""
    result = []
    total = frames.count(connection)
    for info in index.models(connection):
        rows = store.model_rows(connection, info.model)
        with_row, failed = rows.with_row.value, rows.failed.value
        result.append(
            {
                "model": info.model,
                "configured": info.model == configured,
                "dimension": info.dimension,
                "index_kind": info.index_kind,
                "frames": total.value,
                "with_row": with_row,
                "embedded": max(with_row - failed, 0),
                "failed": failed,
                "missing": max(total.value - with_row, 0),
                "coverage": min(with_row / total.value, 1.0) if total.value else 1.0,
                "estimated": total.estimated or rows.with_row.estimated,
                "failed_estimated": rows.failed.estimated,
            }
        )
    return result


def _queue(
    connection: psycopg.Connection[Any],
    model: str | None,
    *,
    queued: int,
    writes: projects.RecentWrites,
) -> dict[str, Any]:
    waiting = queue.frames_waiting(connection, model, queued=queued)
    rate = _rate(writes.total, writes.seconds)
    return {
        "frames_waiting": waiting.value,
        "frames_waiting_estimated": waiting.estimated,
        "frames_per_second": rate,
        "frames_written": writes.total,
        "rate_window_seconds": writes.seconds,
        "eta_seconds": _eta(waiting.value, rate),
    }


def _running_job(job: queue.RunningJob) -> dict[str, Any]:
    total, done = job.frames_total, job.frames_done
    rate = _rate(job.recent_frames, job.recent_seconds)
    return {
        "id": job.id,
        "video_id": job.video_id,
        "model": job.model,
        "worker_id": job.worker_id,
        "device": job.device,
        "attempts": job.attempts,
        "frames_total": total,
        "frames_done": done,
        "frames_failed": job.frames_failed,
        "progress": (done / total) if total else None,
        "frames_per_second": rate,
        "eta_seconds": _eta(max(total - done, 0), rate) if total is not None else None,
        "running_seconds": job.running_seconds,
        "lease_left_seconds": job.lease_left_seconds,
    }


def _worker(info: workers.WorkerInfo) -> dict[str, Any]:
    return {
        "worker_id": info.worker_id,
        "model": info.model,
        "device": info.device,
        "version": info.version,
        "running_jobs": info.running_jobs,
        "seen_seconds_ago": info.seen_seconds_ago,
        "stopped": info.stopped_at is not None,
    }


def _reconciler(model: str, record: passes.PassRecord) -> dict[str, Any]:
    return {
        "model": model,
        "worker_id": record.worker_id,
        "finished_seconds_ago": record.age_seconds,
        **record.result,
    }


def _rate(frames: int, seconds: float | None) -> float:
    """Frames per second over `seconds` (at least one second, so one batch is no spike)."""
    if frames <= 0 or seconds is None:
        return 0.0
    return frames / max(seconds, 1.0)


def _eta(left: int, rate: float) -> float | None:
    if left <= 0:
        return 0.0
    return left / rate if rate > 0 else None


# --- rendering ---------------------------------------------------------------------


def render(report: dict[str, Any]) -> str:
    jobs, estimated = report["jobs"], report.get("jobs_estimated", {})
    lines = [
        "jobs: "
        + ", ".join(
            f"{state} {_count(count, estimated.get(state, False))}" for state, count in jobs.items()
        )
    ]
    oldest = report["oldest_queued_seconds"]
    lines.append("oldest queued: " + ("none" if oldest is None else f"{_duration(oldest)} ago"))
    backlog = report["queue"]
    lines.append(
        f"queue: {_count(backlog['frames_waiting'], backlog['frames_waiting_estimated'])}"
        f" frame(s) waiting, fleet wrote {backlog['frames_written']} frame(s) in the last "
        f"{_duration(backlog['rate_window_seconds'])} "
        f"({backlog['frames_per_second']:.1f} frames/s), ETA {_eta_text(backlog['eta_seconds'])}"
    )
    if report["running"]:
        lines.append("running:")
    for job in report["running"]:
        total = job["frames_total"] or 0
        percent = f"{100 * job['progress']:.0f}%" if job["progress"] is not None else "?"
        lines.append(
            f"  job {job['id']} video {job['video_id']} on {job['worker_id']} "
            f"({job['device'] or 'device unknown'}): {job['frames_done']}/{total} frames "
            f"({percent}), {job['frames_failed']} failed, {job['frames_per_second']:.1f} "
            f"frames/s, ETA {_eta_text(job['eta_seconds'])}, attempt {job['attempts']}"
        )
    if report["coverage"]:
        lines.append("coverage:")
    for model in report["coverage"]:
        mark = " (configured)" if model["configured"] else ""
        rough = "~" if model["estimated"] else ""
        lines.append(
            f"  {model['model']}{mark}: {rough}{model['with_row']}/{rough}{model['frames']} "
            f"frames ({rough}{100 * model['coverage']:.1f}%), "
            f"{_count(model['failed'], model['failed_estimated'])} failed, "
            f"{rough}{model['missing']} missing, index {model['index_kind']}"
        )
    if report["workers"]:
        lines.append("workers:")
    for worker in report["workers"]:
        state = "stopped" if worker["stopped"] else f"{worker['running_jobs']} job(s) running"
        lines.append(
            f"  {worker['worker_id']}: {worker['model']} on {worker['device']}, {state}, "
            f"seen {_duration(worker['seen_seconds_ago'])} ago"
        )
    standby = report.get("replica")
    if standby is not None:
        lines.append(_replica_line(standby))
    for last in report["reconciler"]:
        when = last["finished_seconds_ago"]
        lines.append(
            f"reconciler ({last['model']}): "
            + (
                "pass running"
                if when is None
                else f"last pass {_duration(when)} ago found {last.get('missing_frames', 0)} "
                f"missing frame(s), enqueued {last.get('enqueued', 0)} job(s)"
            )
        )
    lines += render_projects(report["projects"])
    return "\n".join(lines)


def _replica_line(standby: dict[str, Any]) -> str:
    lag = standby["replay_lag_seconds"]
    pending = standby["replay_lag_bytes"]
    text = "replica (reads here trail the primary): replay lag " + (
        "unknown" if lag is None else _duration(lag)
    )
    if pending is not None:
        text += f", {pending} byte(s) of WAL not yet replayed"
    if standby["replay_paused"]:
        text += ", REPLAY PAUSED"
    if not standby["streaming"]:
        since = standby["last_replay_seconds_ago"]
        text += (
            ", NOT streaming from the primary (down or unreachable): data as of the last "
            "replayed commit" + ("" if since is None else f", {_duration(since)} ago")
        )
    return text


def _count(value: int, estimated: bool) -> str:
    """A count as status prints it: an estimate marked `~`, never shown as exact."""
    return f"~{value}" if estimated else str(value)


def _eta_text(seconds: float | None) -> str:
    return "unknown (nothing written lately)" if seconds is None else _duration(seconds)


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def watch(
    connect: Callable[[], psycopg.Connection[Any]],
    *,
    model: str | None,
    interval: float,
    as_json: bool,
    stream: TextIO | None = None,
) -> None:
    """Refresh the report every `interval` seconds until interrupted (Ctrl-C).

    On a terminal the screen is redrawn in place; otherwise (a pipe, a log)
    each refresh is appended, JSON as one object per line. A lost database
    connection shows as a line and is retried at the next refresh.
    """
    out = stream or sys.stdout
    in_place = out.isatty() and not as_json
    connection: psycopg.Connection[Any] | None = None
    try:
        while True:
            try:
                if connection is None or connection.closed:
                    connection = connect()
                report = collect(connection, model=model)
                text = json.dumps(report, default=str) if as_json else render(report)
            except (psycopg.OperationalError, errors.ArgusError) as error:
                if connection is not None:
                    connection.close()
                connection = None
                text = f"database unavailable: {errors.first_line(error)}"
            if as_json:
                out.write(text + "\n")
            else:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                header = f"{stamp}  (every {interval:g}s, Ctrl-C stops)"
                out.write(("\x1b[H\x1b[2J" if in_place else "") + header + "\n" + text + "\n\n")
            out.flush()
            time.sleep(interval)
    finally:
        if connection is not None:
            connection.close()


def main(args: argparse.Namespace, config: Settings) -> int:
    """`argus-embedder status [--json] [--watch]`."""
    if args.watch:
        if not args.interval > 0:
            raise errors.UserInputError("--interval must be a positive number of seconds")
        with common.connect_read(config) as connection:  # a bad URL or schema fails now
            config = common.resolve_model(config, connection, loads=False)
        try:
            watch(
                lambda: common.connect_read(config),
                model=config.model,
                interval=args.interval,
                as_json=args.json,
            )
        except KeyboardInterrupt:
            return 0  # Ctrl-C is how a watch ends
    with common.connect_read(config) as connection:
        config = common.resolve_model(config, connection, loads=False)
        report = collect(connection, model=config.model)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(render(report))
    return 0


# --- the per-project queue (fair share) -----------------------------------------------

TOP_PROJECTS = 10  # status shows the biggest backlogs; `project list` shows them all


def project_queue(
    connection: psycopg.Connection[Any],
    *,
    model: str | None,
    top: int | None = TOP_PROJECTS,
    include_idle: bool = False,
    writes: projects.RecentWrites | None = None,
) -> dict[str, Any]:
    """Projects by frames waiting, biggest first (`top` of them; None: all), each with
    its settings, jobs, rate and ETA, and how many more there are.

    A project's ETA is its frames waiting divided by the rate its own jobs wrote at
    over the fleet's rate window: its recent share of the fleet, which fair share
    keeps steady while its backlog lasts. None (unknown) when it wrote nothing lately.
    `writes`: the recent writes already read for the fleet's rate (else read here).
    """
    rows, total = projects.backlog(connection, model=model, limit=top, include_idle=include_idle)
    if writes is None:
        writes = projects.recent_writes(
            connection, window=FLEET_WINDOW_SECONDS, jobs=FLEET_RATE_JOBS
        )
    shown = []
    for row in rows:
        rate = _rate(writes.frames.get(row.project_id, 0), writes.seconds)
        shown.append(
            {
                **dataclasses.asdict(row),
                "frames_per_second": rate,
                "eta_seconds": _eta(row.frames_waiting, rate),
            }
        )
    return {
        "top": shown,
        "more": total - len(shown),
        "rate_window_seconds": FLEET_WINDOW_SECONDS,
    }


def project_name(project_id: str | None) -> str:
    """How a project is shown: jobs whose frames name none are "(none)"."""
    return "(none)" if project_id is None else project_id


def cap_text(max_running: int | None) -> str:
    if max_running is None:
        return "no cap"
    return "paused (cap 0)" if max_running == 0 else f"cap {max_running}"


def eta_text(seconds: float | None) -> str:
    """An ETA for a table cell: "—" when unknown."""
    return "—" if seconds is None else _duration(seconds)


def render_projects(section: dict[str, Any]) -> list[str]:
    if not section["top"]:
        return []
    lines = ["projects (biggest backlog first):"]
    for row in section["top"]:
        lines.append(
            f"  {project_name(row['project_id'])}: weight {row['weight']}, "
            f"{cap_text(row['max_running'])}, {row['queued']} queued, {row['running']} running, "
            f"{'~' if row['frames_waiting_estimated'] else ''}{row['frames_waiting']} frame(s) "
            f"waiting, {row['frames_per_second']:.1f} frames/s, ETA {eta_text(row['eta_seconds'])}"
        )
    if section["more"]:
        lines.append(f"  … and {section['more']} more project(s): `argus-embedder project list`")
    return lines
