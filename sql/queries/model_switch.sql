-- Model switch: backfill a model's vectors, prune an old model.

-- name: backfill_count_videos
-- Distinct videos by a loose index scan: one probe of the frames unique index
-- per video instead of reading every frame.
WITH RECURSIVE videos (video_id) AS (
    (SELECT f.video_id FROM argus.frames f ORDER BY f.video_id LIMIT 1)
    UNION ALL
    SELECT (SELECT f.video_id FROM argus.frames f
            WHERE f.video_id > v.video_id ORDER BY f.video_id LIMIT 1)
    FROM videos v WHERE v.video_id IS NOT NULL
)
SELECT count(video_id) AS videos FROM videos;

-- name: backfill_count_project_videos
WITH RECURSIVE videos (video_id) AS (
    (SELECT f.video_id FROM argus.frames f
     WHERE f.project_id = %(project)s ORDER BY f.video_id LIMIT 1)
    UNION ALL
    SELECT (SELECT f.video_id FROM argus.frames f
            WHERE f.project_id = %(project)s AND f.video_id > v.video_id
            ORDER BY f.video_id LIMIT 1)
    FROM videos v WHERE v.video_id IS NOT NULL
)
SELECT count(video_id) AS videos FROM videos;

-- name: backfill_videos
-- The next `limit` videos after `after` (keyset on video_id, loose index
-- scan), each with whether any of its frames lacks a row for the model.
WITH RECURSIVE videos (video_id, position) AS (
    (SELECT f.video_id, 1 FROM argus.frames f
     WHERE f.video_id > %(after)s ORDER BY f.video_id LIMIT 1)
    UNION ALL
    SELECT (SELECT f.video_id FROM argus.frames f
            WHERE f.video_id > v.video_id ORDER BY f.video_id LIMIT 1), v.position + 1
    FROM videos v WHERE v.video_id IS NOT NULL AND v.position < %(limit)s
)
SELECT v.video_id,
       EXISTS (SELECT 1 FROM argus.frames f
               WHERE f.video_id = v.video_id
                 AND NOT EXISTS (SELECT 1 FROM argus.frame_embeddings e
                                 WHERE e.frame_id = f.id AND e.model = %(model)s)) AS lacking
FROM videos v WHERE v.video_id IS NOT NULL
ORDER BY v.video_id;

-- name: backfill_project_videos
-- backfill_videos over one project's videos (frames_project_idx).
WITH RECURSIVE videos (video_id, position) AS (
    (SELECT f.video_id, 1 FROM argus.frames f
     WHERE f.project_id = %(project)s AND f.video_id > %(after)s ORDER BY f.video_id LIMIT 1)
    UNION ALL
    SELECT (SELECT f.video_id FROM argus.frames f
            WHERE f.project_id = %(project)s AND f.video_id > v.video_id
            ORDER BY f.video_id LIMIT 1), v.position + 1
    FROM videos v WHERE v.video_id IS NOT NULL AND v.position < %(limit)s
)
SELECT v.video_id,
       EXISTS (SELECT 1 FROM argus.frames f
               WHERE f.video_id = v.video_id
                 AND NOT EXISTS (SELECT 1 FROM argus.frame_embeddings e
                                 WHERE e.frame_id = f.id AND e.model = %(model)s)) AS lacking
FROM videos v WHERE v.video_id IS NOT NULL
ORDER BY v.video_id;

-- name: prune_lock_timeout
-- Dropping a model's partition takes an ACCESS EXCLUSIVE lock on
-- argus.frame_embeddings for a moment: wait at most this long for it, so the
-- drop never queues in front of searches and writes behind a long query.
SELECT set_config('lock_timeout', %(timeout)s, true) AS lock_timeout;

-- name: unregister_model
-- The model's vectors and registration: its partition (all segments and their
-- indexes) goes at once, through the schema owner's definer function.
SELECT argus.drop_model(%(model)s) AS dropped;

-- name: model_rows
SELECT count(*) AS with_row FROM argus.frame_embeddings WHERE model = %(model)s;

-- name: cancel_queued_model_jobs
-- Queued jobs naming a pruned model would wait forever (and page someone).
UPDATE argus.embedding_jobs
SET status = 'cancelled', finished_at = now(), updated_at = now(),
    last_error = 'model pruned'
WHERE status = 'queued' AND model = %(model)s
RETURNING id;
