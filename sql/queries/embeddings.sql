-- argus.frame_embeddings: the vector writes (argus_embedder.gateways.store),
-- search and counts.

-- name: copy_embeddings
COPY argus.frame_embeddings (frame_id, model, embedding, error, preprocessing)
FROM STDIN (FORMAT BINARY);

-- name: search_frames
SELECT frame_id, video_id, frame_index, timestamp_ms, image_uri, score
FROM argus.search_frames(%(model)s, %(query)s, %(limit)s, %(video_id)s, %(project_id)s);

-- name: existing_embeddings
SELECT frame_id FROM argus.frame_embeddings
WHERE model = %(model)s AND frame_id = ANY(%(frame_ids)s);

-- name: frames_embedded
SELECT count(*) AS done FROM argus.frame_embeddings WHERE model = %(model)s;

-- name: model_rows
SELECT count(*) AS with_row FROM argus.frame_embeddings WHERE model = %(model)s;
