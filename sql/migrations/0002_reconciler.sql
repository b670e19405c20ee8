-- The reconciler, fleet-wide periodic passes and the worker registry.

-- The reconciler reads frames in id order with their video and anti-joins the
-- model's primary key (frame_id, model) over the same id range: with this
-- covering index both sides are index-only scans, merged (no sort, no hash).
CREATE INDEX frames_id_video_idx ON argus.frames (id) INCLUDE (video_id);

-- Jobs finished recently (the fleet's recent rate behind status's ETA) without
-- reading every finished job. Set once per job, so progress updates stay HOT.
CREATE INDEX embedding_jobs_finished_idx
    ON argus.embedding_jobs (finished_at) WHERE finished_at IS NOT NULL;

-- One row per fleet-wide periodic pass ('reconcile:<model>', 'queue-stats').
-- A daemon claims the next pass by moving started_at forward only when the
-- last pass started at least an interval ago, so the whole fleet runs each
-- pass once per interval, whichever daemon gets there first; the result is
-- what that pass found, for status and for the other daemons' gauges.
CREATE TABLE argus.fleet_passes (
    name        text        PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz NULL,
    worker_id   text        NULL,
    result      jsonb       NOT NULL DEFAULT '{}'
);

-- Daemons that announced themselves: which model on which device, so status
-- can name the device behind each running job (a GPU host that fell back to
-- the CPU shows up here, not only in its logs).
CREATE TABLE argus.workers (
    worker_id  text        PRIMARY KEY,
    model      text        NOT NULL,
    device     text        NOT NULL,
    version    text        NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now(),
    stopped_at timestamptz NULL
);

GRANT SELECT, INSERT, UPDATE ON argus.fleet_passes TO argus_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON argus.workers TO argus_worker;
GRANT SELECT ON argus.fleet_passes, argus.workers TO argus_reader;
