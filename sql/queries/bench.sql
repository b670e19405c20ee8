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
