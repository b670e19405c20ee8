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

-- name: moment_frames
-- `search --by video` (commands/moments.py): the candidate frames that search_frames
-- returned and the frames within %(reach)s frame_index steps of each in its video,
-- with the cosine similarity of each one's vector to the previous frame's (NULL
-- where that frame or its vector is missing). At most (2 reach + 1) rows per
-- candidate, fewer where windows overlap, never a scan of a video: per candidate one
-- range probe of frames' UNIQUE (video_id, frame_index) index, then per row a
-- primary-key probe of the model's partition for its vector and one (video_id,
-- frame_index) + primary-key probe for the previous frame's.
SELECT f.id AS frame_id, f.video_id, f.project_id, f.frame_index, f.timestamp_ms,
       f.image_uri, 1 - (e.embedding <=> previous_embedding.embedding) AS previous_similarity
FROM (
    SELECT DISTINCT neighbour.id
    FROM argus.frames candidate
    JOIN argus.frames neighbour
      ON neighbour.video_id = candidate.video_id
     AND neighbour.frame_index BETWEEN candidate.frame_index - %(reach)s::integer
                                   AND candidate.frame_index + %(reach)s::integer
    WHERE candidate.id = ANY(%(frame_ids)s::bigint[])
) AS wanted
JOIN argus.frames f ON f.id = wanted.id
JOIN argus.frame_embeddings e ON e.frame_id = f.id AND e.model = %(model)s
LEFT JOIN argus.frames previous_frame
  ON previous_frame.video_id = f.video_id AND previous_frame.frame_index = f.frame_index - 1
LEFT JOIN argus.frame_embeddings previous_embedding
  ON previous_embedding.frame_id = previous_frame.id AND previous_embedding.model = %(model)s
WHERE e.embedding IS NOT NULL
ORDER BY f.video_id, f.frame_index;

-- name: model_rows_estimate
-- status: the planner's count of a model's rows, the sum over its segments (each
-- reltuples scaled to the segment's current size): no scan.
EXPLAIN (FORMAT JSON) SELECT 1 FROM argus.frame_embeddings WHERE model = %(model)s;

-- name: model_failed_rows
-- status: a model's error rows, counted exactly up to `cap` + 1 from
-- frame_embeddings_failed_idx (error rows are few): cost bounded by the cap.
SELECT count(*) AS failed FROM (
    SELECT 1 FROM argus.frame_embeddings
    WHERE model = %(model)s AND error IS NOT NULL
    LIMIT %(cap)s + 1
) f;

-- name: model_failed_estimate
EXPLAIN (FORMAT JSON) SELECT 1 FROM argus.frame_embeddings
WHERE model = %(model)s AND error IS NOT NULL;
