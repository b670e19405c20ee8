-- The reconciler and the fleet-wide periodic passes (argus.fleet_passes).
-- Loaded with sql/queries.sql; block names are unique across the files.

-- name: pass_try_lock
-- Non-blocking: a daemon that finds another one inside the same pass's
-- transaction skips instead of queueing behind it.
SELECT pg_try_advisory_xact_lock(hashtext('argus-embedder:pass:' || %(name)s)) AS locked;

-- name: pass_due
-- A plain read first, so the many daemons that are not due write nothing.
SELECT p.started_at <= now() - make_interval(secs => %(interval)s) AS due
FROM argus.fleet_passes p WHERE p.name = %(name)s;

-- name: pass_claim
-- Claims the next run of a fleet-wide pass: returns a row only when the last
-- run started at least `interval` seconds ago (or never ran). Concurrent
-- claimers serialize on the row, and the loser sees the winner's started_at.
INSERT INTO argus.fleet_passes AS p (name, started_at, worker_id)
VALUES (%(name)s, now(), %(worker_id)s)
ON CONFLICT (name) DO UPDATE
SET started_at = now(), finished_at = NULL, worker_id = excluded.worker_id
WHERE p.started_at <= now() - make_interval(secs => %(interval)s)
RETURNING name;

-- name: pass_record
UPDATE argus.fleet_passes SET finished_at = now(), result = %(result)s
WHERE name = %(name)s AND worker_id = %(worker_id)s
RETURNING name;

-- name: pass_latest
SELECT name, started_at, finished_at, worker_id, result,
       extract(epoch FROM now() - finished_at)::double precision AS age_seconds
FROM argus.fleet_passes WHERE name = %(name)s;

-- name: passes_like
SELECT name, started_at, finished_at, worker_id, result,
       extract(epoch FROM now() - finished_at)::double precision AS age_seconds
FROM argus.fleet_passes WHERE name LIKE %(pattern)s ORDER BY name;

-- name: reconcile_bounds
SELECT min(id) AS first, max(id) AS last FROM argus.frames;

-- name: reconcile_next
-- Where the next slice starts: the first frame id at or past `after`, one probe
-- of the primary key, so a pass skips empty id ranges (ids need not be dense).
SELECT min(id) AS next FROM argus.frames WHERE id >= %(after)s;

-- name: reconcile_plan
-- For the slice's transaction only (set_config(..., true) is SET LOCAL). When
-- a slice covers a whole segment, the planner costs a seq scan of it plus a
-- hash anti join below the merge of the two ordered index-only scans; measured
-- on a million frames the merge is 4-8x faster (no hash table, no parallel
-- workers), so this pins it, independent of random_page_cost and friends.
SELECT set_config('enable_hashjoin', 'off', true),
       set_config('enable_seqscan', 'off', true),
       set_config('max_parallel_workers_per_gather', '0', true);

-- name: reconcile_missing
-- One bounded slice of the reconciler's scan: per video, its frames with ids
-- in [low, high) that have no row for the model. A merge anti join of two
-- index-only scans over the same id range: frames_id_video_idx, and the
-- model's primary key (the repeated range bounds that side and prunes the
-- model's partition to the segments it spans). Cost: the slice, not the table.
SELECT f.video_id, count(*) AS frames
FROM argus.frames f
WHERE f.id >= %(low)s AND f.id < %(high)s
  AND NOT EXISTS (
      SELECT 1 FROM argus.frame_embeddings e
      WHERE e.frame_id = f.id AND e.model = %(model)s
        AND e.frame_id >= %(low)s AND e.frame_id < %(high)s)
GROUP BY f.video_id
ORDER BY f.video_id;

-- name: enqueue_missing
-- A job naming `model` for each of `video_ids`, except videos that already
-- have a queued or running job covering the model (a NULL-model job covers
-- the daemons' configured model) and, with `respect_failures`, videos whose
-- latest finished job for the model failed or was cancelled and that got no
-- frame since that job started: those wait for `retry ID` or new frames, so a
-- video that always fails is not re-enqueued every pass. A video with a frame
-- younger than `settle_seconds` is left for later: its frame stage is most
-- likely still inserting it, and will enqueue it itself. The video must still
-- lack a row in this statement's snapshot: a job completes in the same
-- transaction as its last rows, so one that finished since the caller looked
-- is seen here either as running or with its rows, never as neither.
INSERT INTO argus.embedding_jobs (video_id, model, priority)
SELECT v.video_id, %(model)s, %(priority)s
FROM unnest(%(video_ids)s::text[]) AS v (video_id)
WHERE EXISTS (
        SELECT 1 FROM argus.frames f
        WHERE f.video_id = v.video_id
          AND NOT EXISTS (SELECT 1 FROM argus.frame_embeddings e
                          WHERE e.frame_id = f.id AND e.model = %(model)s))
  AND NOT EXISTS (
        SELECT 1 FROM argus.embedding_jobs j
        WHERE j.video_id = v.video_id AND j.status IN ('queued', 'running')
          AND (j.model = %(model)s OR (j.model IS NULL AND %(model)s = %(configured_model)s)))
  AND NOT EXISTS (
        SELECT 1 FROM argus.frames f
        WHERE f.video_id = v.video_id
          AND f.created_at > now() - make_interval(secs => %(settle_seconds)s))
  AND NOT (%(respect_failures)s AND EXISTS (
        SELECT 1
        FROM (SELECT j.status, coalesce(j.started_at, j.created_at) AS since
              FROM argus.embedding_jobs j
              WHERE j.video_id = v.video_id AND j.finished_at IS NOT NULL
                AND (j.model = %(model)s
                     OR (j.model IS NULL AND %(model)s = %(configured_model)s))
              ORDER BY j.finished_at DESC, j.id DESC
              LIMIT 1) latest
        WHERE latest.status IN ('failed', 'cancelled')
          AND NOT EXISTS (SELECT 1 FROM argus.frames f
                          WHERE f.video_id = v.video_id AND f.created_at > latest.since)))
ORDER BY v.video_id
ON CONFLICT DO NOTHING
RETURNING id, video_id;
