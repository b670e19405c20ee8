-- argus.fleet_passes: fleet-wide periodic passes (argus_embedder.gateways.passes).

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
