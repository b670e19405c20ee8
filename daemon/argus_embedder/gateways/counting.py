"""Counts that stay cheap at any size, for status and the queue gauges: exact up to a
cap over a partial index, or for a small table; beyond, the planner's estimate, marked
as such (never shown as exact)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from argus_embedder import db

# A count over a partial index (queued, running jobs; failed frames) is exact up to this
# many entries and read no further; beyond, it is the planner's estimate. Measured
# here: counting 100,000 queued jobs' index entries took 16 ms and listing them for
# the frames-waiting sample 175 ms, where 10,000 take about a tenth of that.
COUNT_CAP = 10_000
# A table the planner puts at or below this many rows is counted exactly: at most a
# few milliseconds. A larger one shows the planner's estimate.
EXACT_ROWS = 20_000


@dataclass(frozen=True)
class Count:
    """A count and whether it is the planner's estimate rather than exact."""

    value: int
    estimated: bool = False


def planned_rows(connection: psycopg.Connection[Any], block: str, **parameters: Any) -> int:
    """The row count the planner expects from an `EXPLAIN (FORMAT JSON)` block: its
    statistics (reltuples scaled to the relation's current size, pg_stats' shares),
    read without scanning anything."""
    row = connection.execute(db.queries()[block], parameters).fetchone()
    assert row is not None
    plan = next(iter(row.values()))
    return max(int(plan[0]["Plan"]["Plan Rows"]), 0)


def capped(exact: int, estimate: int, cap: int = COUNT_CAP) -> Count:
    """A count read up to `cap` + 1 entries: exact below that, else the planner's
    `estimate` (never less than what was seen), marked as such."""
    if exact <= cap:
        return Count(exact)
    return Count(max(estimate, exact), estimated=True)
