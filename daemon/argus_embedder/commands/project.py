"""`argus-embedder project set|list`: fair-share settings per project and each project's
part of the queue.

Within a priority, projects take turns at the claim in proportion to their weights;
`max_running` caps a project's running jobs across the fleet (0 pauses it). A project
with no settings row has weight 1 and no cap, as has the NULL project (jobs whose
frames name no project), which has no row to set.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import psycopg

from argus_embedder import errors
from argus_embedder.commands import common, status
from argus_embedder.gateways import frames, projects
from argus_embedder.settings import Settings

NO_CAP = "none"  # --max-running none: remove the cap
PROJECT_ID_SHOWN = 40  # characters of a project id in the table (JSON has them whole)


def main(args: argparse.Namespace, config: Settings) -> int:
    if args.project_command == "set":
        return set_project(args, config)
    return list_projects(args, config)


# --- project set ------------------------------------------------------------------


def set_project(args: argparse.Namespace, config: Settings) -> int:
    """`project set P [--weight W] [--max-running N|none]`."""
    project_id = _project_id(args.project_id)
    weight = None if args.weight is None else _weight(args.weight)
    set_cap = args.max_running is not None
    max_running = _max_running(args.max_running) if set_cap else None
    if weight is None and not set_cap:
        raise errors.UserInputError("nothing to set: give --weight W and/or --max-running N")
    with common.connect(config) as connection:
        try:
            saved = projects.save(
                connection, project_id, weight=weight, max_running=max_running, set_cap=set_cap
            )
        except psycopg.errors.InsufficientPrivilege as error:
            raise errors.UserInputError(
                "project set needs the schema owner's role (the one that runs migrate): "
                + errors.first_line(error)
            ) from error
        known = frames.project_exists(connection, project_id)
    print(_saved_text(saved))
    if not known:
        print(
            f"note: no frames name project {common.short(project_id)} yet; "
            "its settings apply once they do",
            file=sys.stderr,
        )
    return 0


def _project_id(text: str) -> str:
    if not text:
        raise errors.UserInputError("the project id must not be empty")
    if "\x00" in text:
        raise errors.UserInputError("the project id must not contain a NUL byte")
    return text


def _weight(text: str) -> int:
    value = _integer(text)
    if value is None or not 1 <= value <= projects.MAX_WEIGHT:
        raise errors.UserInputError(
            f"--weight must be a whole number from 1 to {projects.MAX_WEIGHT:,}, "
            f"not {common.short(text, 40)}"
        )
    return value


def _max_running(text: str) -> int | None:
    if text.strip().lower() == NO_CAP:
        return None
    value = _integer(text)
    if value is None or not 0 <= value <= projects.MAX_RUNNING_LIMIT:
        raise errors.UserInputError(
            "--max-running must be a whole number of jobs (0 pauses the project) or "
            f"'{NO_CAP}' (no cap), not {common.short(text, 40)}"
        )
    return value


def _integer(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def _saved_text(saved: projects.Saved) -> str:
    weight = f"weight {saved.weight}"
    cap = status.cap_text(saved.max_running)
    if saved.created:
        return f"project {_shown(saved.project_id)}: {weight}, {cap} (new)"
    if saved.previous_weight != saved.weight:
        weight += f" (was {saved.previous_weight})"
    if saved.previous_max_running != saved.max_running:
        cap += f" (was {status.cap_text(saved.previous_max_running)})"
    return f"project {_shown(saved.project_id)}: {weight}, {cap}"


# --- project list -----------------------------------------------------------------


def list_projects(args: argparse.Namespace, config: Settings) -> int:
    """`project list [--json]`: every project with a settings row or jobs waiting."""
    with common.connect(config) as connection:
        section = status.project_queue(connection, model=config.model, top=None, include_idle=True)
    listed = section["top"]
    if args.json:
        report = {"projects": listed, "rate_window_seconds": section["rate_window_seconds"]}
        print(json.dumps(report, indent=2, default=str))
    elif not listed:
        print("no projects: none has settings or jobs waiting")
    else:
        print(render(listed))
    return 0


COLUMNS = ("PROJECT", "WEIGHT", "CAP", "QUEUED", "RUNNING", "FRAMES WAITING", "FRAMES/S", "ETA")


def render(listed: list[dict[str, Any]]) -> str:
    """The projects as an aligned table; `~` marks frames waiting scaled up from a sample."""
    cells = [
        (
            _shown(status.project_name(row["project_id"]), PROJECT_ID_SHOWN),
            str(row["weight"]),
            "—" if row["max_running"] is None else str(row["max_running"]),
            f"{row['queued']:,}",
            f"{row['running']:,}",
            ("~" if row["frames_waiting_estimated"] else "") + f"{row['frames_waiting']:,}",
            f"{row['frames_per_second']:.1f}",
            status.eta_text(row["eta_seconds"]),
        )
        for row in listed
    ]
    widths = [max(len(line[i]) for line in [COLUMNS, *cells]) for i in range(len(COLUMNS))]
    lines = []
    for line in [COLUMNS, *cells]:
        first = line[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        lines.append("  ".join([first, *rest]).rstrip())
    return "\n".join(lines)


def _shown(project_id: str, limit: int | None = None) -> str:
    """A project id as printed: quoted when it holds what a terminal would interpret."""
    text = project_id if project_id.isprintable() else repr(project_id)
    if limit is not None and len(text) > limit:
        return text[: limit - 1] + "…"
    return text
