"""`argus-embedder serve [--port N] [--host H]`: the read-only search service.

The text encoder loads once, before the port opens, and stays warm; reads go
through a small pool (a login role holding only argus_reader suffices). The
HTTP side is commands/search_api.py.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from argus_embedder import __version__, db, errors
from argus_embedder.commands import common, search_api, serve_metrics
from argus_embedder.pipeline import embedder, storage
from argus_embedder.runtime import health, shutdown
from argus_embedder.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"  # behind a reverse proxy: TLS and auth are the proxy's
DEFAULT_PORT = 8478
POOL_SIZE = 4  # searches hold a connection for a few ms; more threads just queue
HEARTBEAT_TIMEOUT = 60.0  # unused by serve's /livez, required by HealthState


@contextlib.contextmanager
def running(
    config: Settings, host: str, port: int, **limits: Any
) -> Iterator[search_api.SearchServer]:
    """The server, answering in a thread while the block runs (port 0: any free port,
    read it from `server.server_address`). `limits`: SearchServer's max_connections and
    idle_seconds (tests make them small)."""
    url = db.resolve_read_url(config)  # a replica where ARGUS_READ_DATABASE_URL names one
    # Fails early, with the exit code 78 the CLI gives ConfigErrors, on an unmigrated schema.
    with common.connect_read(config) as connection:
        config = common.resolve_model(config, connection)
    encoder = embedder.load_text_encoder(config.model, config.device)
    encoder.embed_texts(["warm-up"])  # the first forward pays one-off costs; not a user

    # One encode at a time: a fast tokenizer shared between threads fails with "Already
    # borrowed", and torch already spreads one forward over every core.
    encoding = threading.Lock()

    def encode(text: str) -> npt.NDArray[np.float32]:
        with encoding:
            vector: npt.NDArray[np.float32] = encoder.embed_texts([text])[0]
        return vector

    state = health.HealthState(HEARTBEAT_TIMEOUT)
    with db.pool(url, size=POOL_SIZE, name="argus-serve") as pool:

        def ping() -> None:
            with pool.connection(timeout=5) as connection:
                connection.execute(db.queries()["ping"])

        state.set_db_check(ping)
        state.set_model_warm()
        state.set_detail("model", config.model)
        service = search_api.SearchService(
            model=config.model,
            encode=encode,
            pool=pool,
            fetch=storage.Storage(config).fetch,
            state=state,
        )
        try:
            server = search_api.SearchServer((host, port), service, **limits)
        except OSError as error:
            raise errors.ConfigError(
                f"cannot listen on {host}:{port} ({error.strerror or error}); pick --port"
            ) from error
        _say_file_roots(config)
        serve_metrics.set_build_info(__version__, config.model, encoder.device)
        serve_metrics.watch_connections(server.connections)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="argus-serve"
        )
        thread.start()
        try:
            yield server
        finally:
            state.set_draining()
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def _say_file_roots(config: Settings) -> None:
    if config.file_roots is None:
        log.warning(
            "ARGUS_FILE_ROOTS is unset: /frames/ID serves any image file this process can "
            "read that a frame row names; set it to the directories that hold local frames"
        )
    else:
        log.info("local frames are read only under %s", ", ".join(config.file_roots))


def main(args: argparse.Namespace, config: Settings) -> int:
    """Serve until SIGTERM or SIGINT, then exit 0."""
    stop = threading.Event()
    with shutdown.handle_signals(stop), running(config, args.host, args.port) as server:
        bound: tuple[Any, ...] = server.server_address
        # The one line that says where to connect (and, with --port 0, which port it got).
        log.info(
            "serving search on http://%s:%d (model %s)",
            args.host,
            bound[1],
            server.service.model,  # the demo's, when serve fell back to it
        )
        stop.wait()
    log.info("stopped")
    return 0
