"""`argus-embedder run`: start-up checks, model warm-up, health, systemd, then the loop."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import psycopg

from argus_embedder import __version__, db, errors, metrics
from argus_embedder.pipeline import preparing
from argus_embedder.runtime import health, sdnotify, shutdown
from argus_embedder.services import (
    compactor,
    indexer,
    periodic,
    queue_gauges,
    reconciler,
    registry,
)
from argus_embedder.settings import Settings

if TYPE_CHECKING:
    from argus_embedder.pipeline.embedder import Embedder

log = logging.getLogger(__name__)


def run(config: Settings, *, burst: bool = False) -> int:
    """Run the daemon until SIGTERM/SIGINT (or, with `burst`, until the queue is empty)."""
    from argus_embedder.pipeline import worker

    stop = threading.Event()
    # A loop silent for this long is hung: /livez fails and the systemd watchdog
    # pings stop (WatchdogSec=60 in the units), so it is restarted.
    state = health.HealthState(heartbeat_timeout=max(60.0, config.lease_seconds))
    with (
        shutdown.handle_signals(stop, on_first=lambda: _draining(state)),
        sdnotify.watchdog_pinger(lambda: state.live()[0]),
    ):
        sdnotify.status("connecting to PostgreSQL")
        url = db.resolve_url(config)
        with db.connect_with_retry(url, autocommit=True, attempts=6) as connection:
            db.check_schema(connection)
        state.set_db_check(lambda: _ping(url))

        with health.serve(config.metrics_port, state, config.metrics_host) as port:
            # Serve /livez and /metrics during a long first model download too.
            model = _load_model(config, state)
            with (
                worker.Worker(
                    config,
                    url,
                    model,
                    shutdown=stop,
                    on_beat=state.beat,
                    decode_processes=preparing.processes(config.decode_processes),
                ) as loop,
                periodic.service(url, [indexer.task(config.model)], stop=stop) as indexing,
                periodic.service(url, [compactor.task(config.model)], stop=stop) as compacting,
                periodic.service(url, _background(config, model), stop=stop) as background,
            ):
                state.watch(loop.keeper, indexing, compacting, background)
                state.set_model_warm()
                state.beat()
                log.info(
                    "ready: model %s on %s, batch %d, worker %s%s",
                    config.model,
                    describe_device(config.device, model.device),
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
    from argus_embedder.pipeline import embedder

    sdnotify.status(f"loading model {config.model}")
    started = time.monotonic()
    model = embedder.load_embedder(
        config.model, config.device, config.batch_size, decode=config.decode
    )
    state.beat()
    model.warm_up()
    metrics.MODEL_LOAD.set(time.monotonic() - started)
    device = describe_device(config.device, model.device)
    metrics.set_build_info(__version__, config.model, device)
    state.set_detail("device", device)
    return model


def describe_device(requested: str, actual: str) -> str:
    """The device as build_info, /readyz and the worker registry show it: a CPU
    that `auto` fell back to says so, since it runs ~100x slower than the GPU meant."""
    if requested == "auto" and actual == "cpu":
        return "cpu (no CUDA device found)"
    return actual


def _background(config: Settings, model: Embedder) -> list[periodic.Task]:
    """The daemon's periodic work beside the loop: its registry row, the queue
    gauges, segments ahead of the writes and, unless ARGUS_RECONCILE_INTERVAL=0,
    the reconciler."""
    tasks = [
        registry.task(
            config.worker_id,
            model=config.model,
            device=describe_device(config.device, model.device),
            version=__version__,
        ),
        queue_gauges.task(config),
        indexer.segments_task(config.model),
    ]
    if config.reconcile_interval > 0:
        tasks.append(reconciler.task(config))
    return tasks


def _draining(state: health.HealthState) -> None:
    state.set_draining()
    sdnotify.stopping("draining: finishing the current batch")


def _ping(url: str) -> None:
    with psycopg.connect(url, connect_timeout=3) as connection:
        connection.execute(db.queries()["ping"])
