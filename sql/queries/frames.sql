-- argus.frames: what the frame stage does (argus_embedder.gateways.frames).

-- name: video_has_frames
SELECT EXISTS (SELECT 1 FROM argus.frames WHERE video_id = %(video_id)s) AS found;

-- name: insert_frame
INSERT INTO argus.frames (video_id, project_id, frame_index, timestamp_ms, image_uri)
VALUES (%(video_id)s, %(project_id)s, %(frame_index)s, %(timestamp_ms)s, %(image_uri)s)
ON CONFLICT (video_id, frame_index) DO NOTHING;
