"""`serve`'s own Prometheus series, on a registry of their own.

serve answers /metrics with this registry only: its build, its requests, how long a
search takes and the frames it sent, never the daemon's job, frame or queue series
(a serve host runs no daemon, and zeros under those names would read as a stalled
fleet). Labels take values from the fixed sets below only, each created at import so
every series exists (at 0) from the first scrape.
"""

from __future__ import annotations

from collections.abc import Callable

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# `_created` samples double the series count and no dashboard or alert uses them.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

# The endpoint label is a class of path, never the path (ids and queries vary without
# bound); the codes are the ones serve sends (others count as 400).
ENDPOINTS = ("search", "frames", "other")
CODES = ("200", "400", "404", "405", "414", "500", "503")
FRAME_SIZES = ("original", "scaled")
# A search: a few ms on a warm index up to seconds on a cold cache or a busy CPU.
SEARCH_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

REGISTRY = CollectorRegistry()
prometheus_client.ProcessCollector(registry=REGISTRY)
prometheus_client.PlatformCollector(registry=REGISTRY)
prometheus_client.GCCollector(registry=REGISTRY)

BUILD_INFO = Gauge(
    "argus_embedder_build_info",
    "Always 1; labels say which version runs which model on which device.",
    ["version", "model", "device"],
    registry=REGISTRY,
)
REQUESTS = Counter(
    "argus_embedder_search_requests_total",
    "HTTP requests `serve` answered, by endpoint (search, frames, other) and status code; "
    "a connection refused at the connection bound counts as other/503.",
    ["endpoint", "code"],
    registry=REGISTRY,
)
SEARCH_SECONDS = Histogram(
    "argus_embedder_search_seconds",
    "Seconds one successful /search took: validation, text encoding and database.",
    buckets=SEARCH_BUCKETS,
    registry=REGISTRY,
)
SEARCH_ENCODE_SECONDS = Histogram(
    "argus_embedder_search_encode_seconds",
    "Seconds one /search spent encoding its text (the rest of search_seconds is database).",
    buckets=SEARCH_BUCKETS,
    registry=REGISTRY,
)
FRAMES_SERVED = Counter(
    "argus_embedder_served_frames_total",
    "Frame images /frames/ID sent whole, as stored (original) or scaled down (?width=N).",
    ["size"],
    registry=REGISTRY,
)
CONNECTIONS = Gauge(
    "argus_embedder_search_connections",
    "Connections `serve` holds a thread for now (idle keep-alives included).",
    registry=REGISTRY,
)

for _endpoint in ENDPOINTS:
    for _code in CODES:
        REQUESTS.labels(_endpoint, _code)
for _size in FRAME_SIZES:
    FRAMES_SERVED.labels(_size)


def set_build_info(version: str, model: str, device: str) -> None:
    """Publish the one build-info series, replacing any earlier one."""
    BUILD_INFO.clear()
    BUILD_INFO.labels(version=version, model=model, device=device).set(1)


def count_request(endpoint: str, code: int) -> None:
    """One answer sent (or begun: a client that hangs up mid-answer is counted by the
    code it was sent, never as an error of ours)."""
    label = str(code) if str(code) in CODES else "400"
    REQUESTS.labels(endpoint, label).inc()


def watch_connections(count: Callable[[], int]) -> None:
    """Read the connection gauge from `count` at each scrape."""
    CONNECTIONS.set_function(count)


def render() -> bytes:
    """REGISTRY in the Prometheus text exposition format."""
    return prometheus_client.generate_latest(REGISTRY)


CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
