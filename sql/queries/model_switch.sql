-- Model switch: which videos a backfill must enqueue.

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
