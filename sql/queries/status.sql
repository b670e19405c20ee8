-- status: running jobs with their rate, the queue's backlog and ETA, coverage
-- per model, and the registry's view of the fleet.

-- name: status_running
-- Running jobs with the device of their worker and the frames they wrote in
-- the last minute (or since they started, if later): the job's recent rate.
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

-- name: status_fleet_rate
-- Frames the fleet wrote lately, found through the jobs that wrote them (the
-- running ones and the last `jobs` finished within `window` seconds: both
-- index scans), never a scan of all vectors. If more than `jobs` jobs finished
-- in the window, the window shrinks to the oldest of those, so the cost stays
-- bounded however busy the fleet is. `seconds`: since the first such write.
WITH finished AS (
    SELECT j.video_id, j.model, j.finished_at FROM argus.embedding_jobs j
    WHERE j.finished_at > now() - make_interval(secs => %(window)s) AND j.model IS NOT NULL
    ORDER BY j.finished_at DESC
    LIMIT %(jobs)s
), since AS (
    SELECT CASE WHEN count(*) < %(jobs)s THEN now() - make_interval(secs => %(window)s)
                ELSE min(finished_at) END AS at
    FROM finished
), recent_jobs AS (
    SELECT video_id, model FROM finished
    UNION
    SELECT j.video_id, j.model FROM argus.embedding_jobs j WHERE j.status = 'running'
)
SELECT count(*) AS frames,
       extract(epoch FROM now() - min(e.created_at))::double precision AS seconds
FROM recent_jobs r
JOIN argus.frames f ON f.video_id = r.video_id
JOIN argus.frame_embeddings e ON e.frame_id = f.id AND e.model = r.model
WHERE e.created_at > (SELECT at FROM since);

-- name: status_frames_waiting
-- Frames still to embed for every (video, model) with a queued or running
-- job; a NULL-model job counts against `model`, the configured one. Counted
-- exactly on at most `sample` random pairs (all of them in a normal queue);
-- with more, the caller scales the count up: a huge backfill costs the same.
WITH pairs AS MATERIALIZED (
    SELECT j.video_id, coalesce(j.model, %(model)s) AS model FROM argus.embedding_jobs j
    WHERE j.status = 'queued'
    UNION
    SELECT j.video_id, j.model FROM argus.embedding_jobs j
    WHERE j.status = 'running'
), sampled AS MATERIALIZED (
    SELECT p.video_id, p.model FROM pairs p ORDER BY random() LIMIT %(sample)s
)
SELECT (SELECT count(*) FROM pairs) AS pairs,
       (SELECT count(*) FROM sampled) AS sampled,
       (SELECT count(*)
        FROM sampled s
        JOIN argus.frames f ON f.video_id = s.video_id
        WHERE NOT EXISTS (SELECT 1 FROM argus.frame_embeddings e
                          WHERE e.frame_id = f.id AND e.model = s.model)) AS frames;

-- name: status_coverage
-- Per registered model: frames with a row (a vector or an error) of all frames.
SELECT m.model, m.dimension, m.index_kind, total.frames, counted.with_row, counted.failed
FROM argus.models m
CROSS JOIN (SELECT count(*) AS frames FROM argus.frames) total
CROSS JOIN LATERAL (
    SELECT count(*) AS with_row, count(*) FILTER (WHERE e.error IS NOT NULL) AS failed
    FROM argus.frame_embeddings e WHERE e.model = m.model
) counted
ORDER BY m.model;

-- name: status_workers
-- Daemons seen within `seconds` (a stopped one says so), with their running jobs.
SELECT w.worker_id, w.model, w.device, w.version, w.started_at, w.stopped_at,
       extract(epoch FROM now() - w.seen_at)::double precision AS seen_seconds_ago,
       (SELECT count(*) FROM argus.embedding_jobs j
        WHERE j.status = 'running' AND j.worker_id = w.worker_id) AS running_jobs
FROM argus.workers w
WHERE w.seen_at > now() - make_interval(secs => %(seconds)s)
ORDER BY w.worker_id;

-- name: status_replica
-- This server's replay position when it is a hot standby (ARGUS_READ_DATABASE_URL);
-- in_recovery is false on a primary, where the rest means nothing. All of it is
-- readable by argus_reader: the functions are public, and pg_stat_wal_receiver
-- shows an unprivileged role the receiver's pid, enough to tell that WAL streams in.
-- pg_is_wal_replay_paused() raises outside recovery, hence the CASE.
SELECT pg_is_in_recovery() AS in_recovery,
       pg_last_wal_receive_lsn()::text AS received_lsn,
       pg_last_wal_replay_lsn()::text AS replayed_lsn,
       -- NULL before anything streamed in since the standby started; never negative
       -- (replay of WAL already on disk can run ahead of the stream after a restart)
       CASE WHEN pg_last_wal_receive_lsn() IS NOT NULL
            THEN greatest(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)
       END::bigint AS pending_bytes,
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::double precision
           AS last_replay_seconds_ago,
       EXISTS (SELECT 1 FROM pg_stat_wal_receiver) AS streaming,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END
           AS replay_paused;
