"""`argus-embedder run`: start-up checks, model warm-up, health, systemd, then the loop."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import psycopg

from argus_embedder import __version__, db, errors, health, index, metrics, sdnotify, shutdown
from argus_embedder.settings import Settings

if TYPE_CHECKING:
    from argus_embedder.embedder import Embedder

log = logging.getLogger(__name__)


def run(config: Settings, *, burst: bool = False) -> int:
    """Run the daemon until SIGTERM/SIGINT (or, with `burst`, until the queue is empty)."""
    from argus_embedder import worker

    stop = threading.Event()
    state = health.HealthState(heartbeat_timeout=max(60.0, 2 * config.lease_seconds))
    with (
        shutdown.handle_signals(stop, on_first=lambda: _draining(state)),
        sdnotify.watchdog_pinger(lambda: state.live()[0]),
    ):
        sdnotify.status("connecting to PostgreSQL")
        url = db.resolve_url(config)
        with db.connect_with_retry(url, autocommit=True, attempts=6) as connection:
            db.check_schema(connection)
        state.set_db_check(lambda: _ping(url))

        with health.serve(config.metrics_port, state) as port:
            # Serve /livez and /metrics during a long first model download too.
            model = _load_model(config, state)
            with (
                worker.Worker(config, url, model, shutdown=stop, on_beat=state.beat) as loop,
                index.indexer(url, config.model, stop),  # bulk-builds sealed segments
            ):
                state.set_model_warm()
                state.beat()
                log.info(
                    "ready: model %s on %s, batch %d, worker %s%s",
                    config.model,
                    model.device,
                    model.batch_size,
                    config.worker_id,
                    f", metrics on :{port}" if port else "",
                )
                sdnotify.ready(f"ready: {config.model} on {model.device}")
                loop.run(burst=burst)
        sdnotify.stopping("stopped")
    log.info("stopped after %d job(s)", loop.jobs_finished)
    return errors.EXIT_OK


def _load_model(config: Settings, state: health.HealthState) -> Embedder:
    from argus_embedder import embedder

    sdnotify.status(f"loading model {config.model}")
    started = time.monotonic()
    model = embedder.load_embedder(config.model, config.device, config.batch_size)
    state.beat()
    model.warm_up()
    metrics.MODEL_LOAD.set(time.monotonic() - started)
    metrics.set_build_info(__version__, config.model, model.device)
    state.set_detail("device", model.device)
    return model


def _draining(state: health.HealthState) -> None:
    state.set_draining()
    sdnotify.stopping("draining: finishing the current batch")


def _ping(url: str) -> None:
    with psycopg.connect(url, connect_timeout=3) as connection:
        connection.execute(db.queries()["ping"])
