-- argus.embedding_jobs: every statement that writes it, and the queue's reads.
-- Its one gateway is argus_embedder.gateways.queue.

-- name: enqueue_job
SELECT argus.enqueue_embedding_job(%(video_id)s, model => %(model)s, priority => %(priority)s) AS id;

-- name: claim_jobs
-- Fair share across projects, expired leases first, SKIP LOCKED: see
-- argus.claim_jobs in migrations 0005, 0011 and 0017 (only lanes with something
-- claimable are locked). With `wait`, the first claimable lane may wait.
SELECT * FROM argus.claim_jobs(%(model)s, %(worker_id)s, %(limit)s, %(lease_seconds)s, %(wait)s);

-- name: commit_lazily
-- Bookkeeping transactions (claim, lease renewal) commit without waiting
-- for their WAL flush: see queue._commit_lazily for why losing one is harmless.
SET LOCAL synchronous_commit = off;

-- name: list_missing_frames
-- For each claimed job (parallel arrays), every frame of its video without a row
-- for the model, in order. The same statement counts the video's frames, those
-- already finished (a row: vector or error) and failed, into the job's progress
-- columns, fenced. A held job with nothing missing returns one row with a NULL
-- frame id; a job whose lease is gone returns no row.
WITH claimed AS (
    SELECT *
    FROM unnest(%(job_ids)s::bigint[], %(video_ids)s::text[], %(lease_tokens)s::uuid[])
         AS c(job_id, video_id, lease_token)
), listed AS (
    SELECT c.job_id, f.id, f.frame_index, f.image_uri,
           e.frame_id IS NOT NULL AS finished, e.error IS NOT NULL AS failed
    FROM claimed c
    JOIN argus.frames f ON f.video_id = c.video_id
    LEFT JOIN argus.frame_embeddings e ON e.frame_id = f.id AND e.model = %(model)s
), counts AS (
    SELECT job_id, count(*) AS total, count(*) FILTER (WHERE finished) AS done,
           count(*) FILTER (WHERE failed) AS failed
    FROM listed GROUP BY job_id
), fenced AS (
    UPDATE argus.embedding_jobs j
    SET frames_total  = coalesce(n.total, 0),
        frames_done   = coalesce(n.done, 0),
        frames_failed = coalesce(n.failed, 0),
        updated_at    = now()
    FROM claimed c LEFT JOIN counts n ON n.job_id = c.job_id
    WHERE j.id = c.job_id AND j.lease_token = c.lease_token AND j.status = 'running'
    RETURNING j.id
)
SELECT fenced.id AS job_id, m.id, m.image_uri
FROM fenced LEFT JOIN listed m ON m.job_id = fenced.id AND NOT m.finished
ORDER BY fenced.id, m.frame_index;

-- name: record_progress
-- Fences a batch write: locks each job's row and proves we still hold its lease
-- (parallel arrays, one entry per claim in the batch); returns the claims still held
-- (a job claimed again under the same id has a new token, the old claim is not held).
UPDATE argus.embedding_jobs j
SET frames_done      = j.frames_done + p.done,
    frames_failed    = j.frames_failed + p.failed,
    lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
    updated_at       = now()
FROM unnest(%(job_ids)s::bigint[], %(lease_tokens)s::uuid[],
            %(done)s::integer[], %(failed)s::integer[]) AS p (id, token, done, failed)
WHERE j.id = p.id AND j.lease_token = p.token AND j.status = 'running'
RETURNING j.id, j.lease_token;

-- name: renew_leases
UPDATE argus.embedding_jobs
SET lease_expires_at = now() + make_interval(secs => %(lease_seconds)s), updated_at = now()
WHERE id = ANY(%(job_ids)s) AND lease_token = ANY(%(lease_tokens)s) AND status = 'running'
RETURNING id, lease_token;

-- name: complete_job
UPDATE argus.embedding_jobs
SET status = 'succeeded', finished_at = now(), lease_token = NULL, lease_expires_at = NULL,
    updated_at = now()
WHERE id = %(job_id)s AND lease_token = %(lease_token)s AND status = 'running'
RETURNING id, frames_total, frames_done, frames_failed, (now() - started_at) AS duration;

-- name: complete_jobs
-- Several jobs at once (each still fenced by its own token).
UPDATE argus.embedding_jobs j
SET status = 'succeeded', finished_at = now(), lease_token = NULL, lease_expires_at = NULL,
    updated_at = now()
FROM unnest(%(job_ids)s::bigint[], %(lease_tokens)s::uuid[]) AS f (id, token)
WHERE j.id = f.id AND j.lease_token = f.token AND j.status = 'running'
RETURNING j.id;

-- name: fail_job
-- A job-level failure: back to queued with backoff, or failed once attempts
-- are used up. A transient fault (S3 or network down) gives the attempt back:
-- an outage longer than the backoffs must not fail jobs; its backoff grows
-- with the count of errors instead. Both keep the error in the history (the
-- newest entries: argus.job_errors_append) and count it in errors_total.
UPDATE argus.embedding_jobs
SET status           = CASE WHEN NOT %(transient)s AND attempts >= max_attempts
                            THEN 'failed' ELSE 'queued' END,
    attempts         = CASE WHEN %(transient)s THEN greatest(attempts - 1, 0) ELSE attempts END,
    model            = CASE WHEN model_resolved
                             AND (%(transient)s OR attempts < max_attempts)
                            THEN NULL ELSE model END,
    model_resolved   = model_resolved AND NOT (%(transient)s OR attempts < max_attempts),
    run_at           = now() + make_interval(secs => %(backoff_seconds)s),
    finished_at      = CASE WHEN NOT %(transient)s AND attempts >= max_attempts
                            THEN now() END,
    lease_token      = NULL,
    lease_expires_at = NULL,
    last_error       = %(error)s,
    errors           = argus.job_errors_append(errors, jsonb_build_object(
                           'attempt', attempts, 'worker', worker_id,
                           'error', %(error)s::text, 'at', now())),
    errors_total     = errors_total + 1,
    updated_at       = now()
WHERE id = %(job_id)s AND lease_token = %(lease_token)s AND status = 'running'
RETURNING id, status, attempts;

-- name: release_job
-- Graceful shutdown: give the lease back without burning the attempt.
UPDATE argus.embedding_jobs
SET status = 'queued', attempts = greatest(attempts - 1, 0), lease_token = NULL,
    model = CASE WHEN model_resolved THEN NULL ELSE model END, model_resolved = false,
    lease_expires_at = NULL, updated_at = now()
WHERE id = %(job_id)s AND lease_token = %(lease_token)s AND status = 'running'
RETURNING id;

-- name: absorb_queued_duplicate
-- Before a running job goes back to queued, fold a queued duplicate of the
-- same (video, model) into it (one queued job per pair is the rule); the job
-- takes the higher priority of the two. Only when it does go back: a job out
-- of attempts (not `transient`, as in fail_job; release gives its attempt
-- back, so passes true) ends failed, and the duplicate, queued for frames that
-- arrived since, must still run.
WITH absorbed AS (
    UPDATE argus.embedding_jobs d
    SET status = 'cancelled', finished_at = now(), updated_at = now(),
        last_error = 'superseded by job ' || %(job_id)s::text
    FROM argus.embedding_jobs j
    WHERE j.id = %(job_id)s AND j.lease_token = %(lease_token)s AND j.status = 'running'
      AND (%(transient)s OR j.attempts < j.max_attempts)
      AND d.status = 'queued' AND d.id <> j.id AND d.video_id = j.video_id
      AND coalesce(d.model, %(model)s) = coalesce(j.model, %(model)s)
    RETURNING d.priority
)
UPDATE argus.embedding_jobs j
SET priority = a.priority
FROM (SELECT max(priority) AS priority FROM absorbed) a
WHERE j.id = %(job_id)s AND j.lease_token = %(lease_token)s AND a.priority > j.priority
RETURNING j.id, j.priority;

-- name: cancel_job
UPDATE argus.embedding_jobs
SET status = 'cancelled', finished_at = now(), lease_token = NULL, lease_expires_at = NULL,
    updated_at = now()
WHERE id = %(job_id)s AND status IN ('queued', 'running')
RETURNING id;

-- name: retry_job
-- Operator retry of a finished job: queued again with fresh attempts.
UPDATE argus.embedding_jobs
SET status = 'queued', run_at = now(), attempts = 0, finished_at = NULL, worker_id = NULL,
    model = CASE WHEN model_resolved THEN NULL ELSE model END, model_resolved = false,
    updated_at = now()
WHERE id = %(job_id)s AND status IN ('failed', 'cancelled', 'succeeded')
RETURNING id;

-- name: job_status
SELECT id, status FROM argus.embedding_jobs WHERE id = %(job_id)s;

-- name: queue_counts
SELECT status AS state, count(*) AS jobs FROM argus.embedding_jobs GROUP BY status;

-- name: oldest_queued
SELECT extract(epoch FROM now() - min(run_at))::double precision AS age_seconds
FROM argus.embedding_jobs WHERE status = 'queued' AND run_at <= now();

-- name: running_jobs
SELECT id, video_id, model, worker_id, attempts, frames_total, frames_done, frames_failed,
       extract(epoch FROM now() - started_at)::double precision AS running_seconds,
       extract(epoch FROM lease_expires_at - now())::double precision AS lease_left_seconds
FROM argus.embedding_jobs WHERE status = 'running' ORDER BY started_at, id;

-- name: cancel_queued_model_jobs
-- Queued jobs naming a pruned model would wait forever (and page someone).
UPDATE argus.embedding_jobs
SET status = 'cancelled', finished_at = now(), updated_at = now(),
    last_error = 'model pruned'
WHERE status = 'queued' AND model = %(model)s
RETURNING id;

-- name: enqueue_missing
-- A job naming `model` for each of `video_ids`, except videos that already
-- have a queued or running job covering the model (a NULL-model job covers
-- the daemons' configured model) and, with `respect_failures`, videos whose
-- latest finished job for the model failed or was cancelled and that got no
-- frame since that job started: those wait for `retry ID` or new frames, so a
-- video that always fails is not re-enqueued every pass. A video with a frame
-- younger than `settle_seconds` is left for later: its frame stage is most
-- likely still inserting it, and will enqueue it itself. Young means within
-- settle_seconds of now() on either side: a created_at further in the future
-- (a skewed clock, or 'infinity', which the frame stage may write) is no
-- arrival in progress, and would otherwise keep the video young forever
-- (issue 27, finding 5); the server's clock decides. The video must still
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
          AND f.created_at > now() - make_interval(secs => %(settle_seconds)s)
          AND f.created_at <= now() + make_interval(secs => %(settle_seconds)s))
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

-- --- status and the queue gauges: reads that stay cheap at any size -----------------

-- name: jobs_rows_estimate
-- The planner's row count for the whole table (reltuples scaled to its current size):
-- no scan. At or below status's exact limit the table is counted (queue_counts).
EXPLAIN (FORMAT JSON) SELECT 1 FROM argus.embedding_jobs;

-- name: jobs_state_estimate
-- The planner's estimate of one state's jobs (its share in pg_stats): no scan.
EXPLAIN (FORMAT JSON) SELECT 1 FROM argus.embedding_jobs WHERE status = %(state)s;

-- name: queue_active_counts
-- Queued and running jobs, each counted exactly up to `cap` + 1 entries of its partial
-- index (embedding_jobs_claim_idx, embedding_jobs_lease_idx): cost bounded by the cap.
SELECT (SELECT count(*) FROM (SELECT 1 FROM argus.embedding_jobs
                              WHERE status = 'queued' LIMIT %(cap)s + 1) q) AS queued,
       (SELECT count(*) FROM (SELECT 1 FROM argus.embedding_jobs
                              WHERE status = 'running' LIMIT %(cap)s + 1) r) AS running;

-- name: running_progress
-- Running jobs with the device of their worker and the frames they wrote in
-- the last minute (or since they started, if later): the job's recent rate.
-- Per running job one range probe of frames' (video_id, frame_index) index and a
-- primary-key probe per frame: it grows with the running videos, not the tables.
SELECT j.id, j.video_id, j.model, j.worker_id, j.attempts,
       j.frames_total, j.frames_done, j.frames_failed,
       extract(epoch FROM now() - j.started_at)::double precision AS running_seconds,
       extract(epoch FROM j.lease_expires_at - now())::double precision AS lease_left_seconds,
       w.device,
       recent.frames AS recent_frames,
       extract(epoch FROM now() - greatest(j.started_at, now() - interval '60 seconds'))
           ::double precision AS recent_seconds
FROM argus.embedding_jobs j
LEFT JOIN argus.workers w ON w.worker_id = j.worker_id
CROSS JOIN LATERAL (
    SELECT count(*) AS frames
    FROM argus.frames f
    JOIN argus.frame_embeddings e ON e.frame_id = f.id AND e.model = j.model
    WHERE f.video_id = j.video_id
      AND e.created_at >= greatest(j.started_at, now() - interval '60 seconds')
) recent
WHERE j.status = 'running'
ORDER BY j.started_at, j.id;

-- name: frames_waiting
-- Frames still to embed for every (video, model) with a queued or running
-- job; a NULL-model job counts against `model`, the configured one. At most
-- `cap` queued jobs are listed (an index scan that stops there) and `sample`
-- random pairs of those are counted exactly, each one range probe of frames'
-- (video_id, frame_index) index and a primary-key probe per frame (the LATERAL
-- keeps the planner from hashing the model's every row); with more pairs, the
-- caller scales the count up: a huge backfill costs the same.
WITH queued AS MATERIALIZED (
    SELECT j.video_id, coalesce(j.model, %(model)s) AS model FROM argus.embedding_jobs j
    WHERE j.status = 'queued'
    LIMIT %(cap)s
), pairs AS MATERIALIZED (
    SELECT video_id, model FROM queued
    UNION
    SELECT j.video_id, j.model FROM argus.embedding_jobs j
    WHERE j.status = 'running'
), sampled AS MATERIALIZED (
    SELECT p.video_id, p.model FROM pairs p ORDER BY random() LIMIT %(sample)s
)
SELECT (SELECT count(*) FROM queued) AS queued_listed,
       (SELECT count(*) FROM pairs) AS pairs,
       (SELECT count(*) FROM sampled) AS sampled,
       (SELECT coalesce(sum(m.frames), 0)
        FROM sampled s
        CROSS JOIN LATERAL (
            SELECT count(*) AS frames FROM argus.frames f
            WHERE f.video_id = s.video_id
              AND NOT EXISTS (SELECT 1 FROM argus.frame_embeddings e
                              WHERE e.frame_id = f.id AND e.model = s.model)
        ) m) AS frames;
