-- argus.workers: the daemon registry (argus_embedder.gateways.workers).

-- name: worker_announce
INSERT INTO argus.workers AS w (worker_id, model, device, version)
VALUES (%(worker_id)s, %(model)s, %(device)s, %(version)s)
ON CONFLICT (worker_id) DO UPDATE
SET model = excluded.model, device = excluded.device, version = excluded.version,
    started_at = now(), seen_at = now(), stopped_at = NULL;

-- name: worker_seen
UPDATE argus.workers SET seen_at = now(), stopped_at = NULL WHERE worker_id = %(worker_id)s
RETURNING worker_id;

-- name: worker_stopped
UPDATE argus.workers SET seen_at = now(), stopped_at = now() WHERE worker_id = %(worker_id)s;

-- name: workers_forget
-- Registry rows of daemons gone for long (hostname:pid ids pile up otherwise).
DELETE FROM argus.workers WHERE seen_at < now() - make_interval(secs => %(seconds)s);

-- name: workers_recent
-- status: daemons seen within `seconds` (a stopped one says so), with their running jobs.
SELECT w.worker_id, w.model, w.device, w.version, w.started_at, w.stopped_at,
       extract(epoch FROM now() - w.seen_at)::double precision AS seen_seconds_ago,
       (SELECT count(*) FROM argus.embedding_jobs j
        WHERE j.status = 'running' AND j.worker_id = w.worker_id) AS running_jobs
FROM argus.workers w
WHERE w.seen_at > now() - make_interval(secs => %(seconds)s)
ORDER BY w.worker_id;
