-- `argus-embedder bench` (argus_embedder.bench*): scratch database, bulk set-up and
-- checks, and the first-draft loop it is measured against. Runtime code never uses these.

-- name: bench_drop_database
DROP DATABASE IF EXISTS argus_bench WITH (FORCE);

-- name: bench_create_database
CREATE DATABASE argus_bench;

-- name: bench_server_versions
SELECT current_setting('server_version') AS postgres,
       (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS pgvector;

-- name: bench_backend_pid
SELECT pg_backend_pid() AS pid;

-- name: bench_copy_frames
COPY argus.frames (video_id, frame_index, image_uri) FROM STDIN;

-- name: bench_frame_ids
SELECT id FROM argus.frames WHERE video_id = %(video_id)s ORDER BY frame_index;

-- name: bench_outcome
-- What a run left behind for these videos: rows by kind, and jobs not succeeded.
SELECT count(e.frame_id) FILTER (WHERE e.embedding IS NOT NULL) AS embedded,
       count(e.frame_id) FILTER (WHERE e.error IS NOT NULL) AS failed,
       (SELECT count(*) FROM argus.embedding_jobs j
        WHERE j.video_id = ANY(%(video_ids)s) AND j.status <> 'succeeded') AS unfinished_jobs
FROM argus.frames f
LEFT JOIN argus.frame_embeddings e ON e.frame_id = f.id AND e.model = %(model)s
WHERE f.video_id = ANY(%(video_ids)s);

-- name: bench_naive_frames
-- The first draft's get_frames(video_id).
SELECT id, image_uri FROM argus.frames WHERE video_id = %(video_id)s ORDER BY frame_index;

-- name: bench_naive_insert
-- The first draft's update_frame_embedding(frame_id, embedding): one statement, autocommit.
INSERT INTO argus.frame_embeddings (frame_id, model, embedding)
VALUES (%(frame_id)s, %(model)s, %(embedding)s);

-- name: bench_index_bytes
-- A model's vectors on disk: its segment tables and the ANN indexes built on them.
SELECT coalesce(sum(pg_total_relation_size(format('argus.%%I', s.partition_name)::regclass)), 0)
           AS table_bytes,
       coalesce(sum(CASE WHEN s.index_name IS NOT NULL
                         THEN pg_relation_size(format('argus.%%I', s.index_name)::regclass) END), 0)
           AS index_bytes
FROM argus.segments s WHERE s.model = %(model)s;

-- name: bench_fair_jobs
-- The fairness scenario's jobs and their times (epoch seconds, the database's clock).
SELECT j.id, j.video_id, j.status,
       extract(epoch FROM j.created_at)::double precision AS created,
       extract(epoch FROM j.started_at)::double precision AS started,
       extract(epoch FROM j.finished_at)::double precision AS finished
FROM argus.embedding_jobs j WHERE j.video_id = ANY(%(video_ids)s)
ORDER BY j.id;
-- name: bench_align_frame_ids
-- Skip frame ids so the next frame inserted starts a segment of %(rows)s ids (search_growth).
SELECT setval(pg_get_serial_sequence('argus.frames', 'id'),
              ((SELECT coalesce(max(id), 0) FROM argus.frames) + %(rows)s) / %(rows)s * %(rows)s,
              false) AS next_id;

-- name: bench_drop_argus_bench_status_1x
DROP DATABASE IF EXISTS argus_bench_status_1x WITH (FORCE);

-- name: bench_create_argus_bench_status_1x
CREATE DATABASE argus_bench_status_1x;

-- name: bench_drop_argus_bench_status_10x
DROP DATABASE IF EXISTS argus_bench_status_10x WITH (FORCE);

-- name: bench_create_argus_bench_status_10x
CREATE DATABASE argus_bench_status_10x;

-- name: bench_status_frames
-- status_growth: videos `first` .. `first + videos - 1` of `frames` frames each, named
-- `prefix` || number, over `projects` projects; generated in the server, no round trips.
INSERT INTO argus.frames (video_id, project_id, frame_index, image_uri)
SELECT %(prefix)s || v, 'project-' || (v %% %(projects)s), i, 's3://argus-bench/unused.jpg'
FROM generate_series(%(first)s::bigint, %(first)s::bigint + %(videos)s - 1) AS v
CROSS JOIN generate_series(0, %(frames)s - 1) AS i
ORDER BY v, i;

-- name: bench_status_jobs
-- status_growth: one job per video `prefix` || number in that range, in `state`
-- (succeeded: the job that embedded it a day ago; queued: waiting).
INSERT INTO argus.embedding_jobs (video_id, project_id, model, status, attempts, frames_total,
                                  frames_done, created_at, started_at, finished_at, run_at)
SELECT %(prefix)s || v, 'project-' || (v %% %(projects)s),
       CASE WHEN %(state)s = 'queued' THEN NULL ELSE %(model)s END, %(state)s,
       CASE WHEN %(state)s = 'queued' THEN 0 ELSE 1 END,
       CASE WHEN %(state)s = 'queued' THEN NULL ELSE %(frames)s END,
       CASE WHEN %(state)s = 'queued' THEN 0 ELSE %(frames)s END,
       now() - interval '1 day',
       CASE WHEN %(state)s = 'queued' THEN NULL ELSE now() - interval '1 day' END,
       CASE WHEN %(state)s = 'queued' THEN NULL ELSE now() - interval '1 day' END,
       now() - interval '1 hour'
FROM generate_series(%(first)s::bigint, %(first)s::bigint + %(videos)s - 1) AS v;

-- name: bench_status_embeddings
-- status_growth: the model's row for every frame with an id in [low, high), one vector.
INSERT INTO argus.frame_embeddings (frame_id, model, embedding, preprocessing)
SELECT f.id, %(model)s, %(vector)s::vector, 'argus-bench-synthetic'
FROM argus.frames f WHERE f.id >= %(low)s AND f.id < %(high)s;

-- name: bench_status_frame_bounds
SELECT coalesce(max(id), 0) AS last FROM argus.frames;

-- name: bench_vacuum_analyze
VACUUM (ANALYZE);
