"""`argus-embedder status`: what the queue and the running jobs look like now."""

from __future__ import annotations

from typing import Any

import psycopg

from argus_embedder import queue


def collect(connection: psycopg.Connection[Any]) -> dict[str, Any]:
    """A JSON-ready report: job counts by state, oldest queued age, running jobs."""
    stats = queue.stats(connection)
    running = []
    for row in queue.running(connection):
        total = row["frames_total"]
        done = row["frames_done"]
        running.append(
            {
                "id": row["id"],
                "video_id": row["video_id"],
                "model": row["model"],
                "worker_id": row["worker_id"],
                "attempts": row["attempts"],
                "frames_total": total,
                "frames_done": done,
                "frames_failed": row["frames_failed"],
                "progress": (done / total) if total else None,
                "running_seconds": row["running_seconds"],
                "lease_left_seconds": row["lease_left_seconds"],
            }
        )
    return {
        "jobs": stats.jobs,
        "oldest_queued_seconds": stats.oldest_queued_seconds,
        "running": running,
    }


def render(report: dict[str, Any]) -> str:
    jobs = report["jobs"]
    lines = [
        "jobs: " + ", ".join(f"{state} {count}" for state, count in jobs.items()),
    ]
    oldest = report["oldest_queued_seconds"]
    lines.append("oldest queued: " + ("none" if oldest is None else f"{oldest:.0f}s ago"))
    if report["running"]:
        lines.append("running:")
    for job in report["running"]:
        total = job["frames_total"] or 0
        percent = f"{100 * job['progress']:.0f}%" if job["progress"] is not None else "?"
        lines.append(
            f"  job {job['id']} video {job['video_id']} on {job['worker_id']}: "
            f"{job['frames_done']}/{total} frames ({percent}), "
            f"{job['frames_failed']} failed, attempt {job['attempts']}"
        )
    return "\n".join(lines)
