-- argus.frames: what the frame stage does (argus_embedder.gateways.frames).

-- name: video_has_frames
SELECT EXISTS (SELECT 1 FROM argus.frames WHERE video_id = %(video_id)s) AS found;

-- name: insert_frame
INSERT INTO argus.frames (video_id, project_id, frame_index, timestamp_ms, image_uri)
VALUES (%(video_id)s, %(project_id)s, %(frame_index)s, %(timestamp_ms)s, %(image_uri)s)
ON CONFLICT (video_id, frame_index) DO NOTHING;

-- name: frame_image_uri
-- serve's /frames/ID: the only way a request reaches storage is through a row's URI.
SELECT image_uri FROM argus.frames WHERE id = %(frame_id)s;

-- name: project_has_frames
-- serve's /search: a project nobody has ingested is a typo, not an empty result (frames_project_idx).
SELECT EXISTS (SELECT 1 FROM argus.frames WHERE project_id = %(project_id)s) AS found;

-- name: frames_rows_estimate
-- status: the planner's row count (reltuples scaled to the table's current size), no scan.
EXPLAIN (FORMAT JSON) SELECT 1 FROM argus.frames;

-- name: frames_count
-- status, where the estimate is small enough to count exactly.
SELECT count(*) AS frames FROM argus.frames;
