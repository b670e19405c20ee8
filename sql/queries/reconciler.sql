-- The reconciler's reads: frames without a row for the model, slice by slice.

-- name: reconcile_bounds
SELECT min(id) AS first, max(id) AS last FROM argus.frames;

-- name: reconcile_next
-- Where the next slice starts: the first frame id at or past `after`, one probe
-- of the primary key, so a pass skips empty id ranges (ids need not be dense).
SELECT min(id) AS next FROM argus.frames WHERE id >= %(after)s;

-- name: reconcile_plan
-- For the slice's transaction only (set_config(..., true) is SET LOCAL). When
-- a slice covers a whole segment, the planner costs a seq scan of it plus a
-- hash anti join below the merge of the two ordered index-only scans; measured
-- on a million frames the merge is 4-8x faster (no hash table, no parallel
-- workers), so this pins it, independent of random_page_cost and friends.
SELECT set_config('enable_hashjoin', 'off', true),
       set_config('enable_seqscan', 'off', true),
       set_config('max_parallel_workers_per_gather', '0', true);

-- name: reconcile_missing
-- One bounded slice of the reconciler's scan: per video, its frames with ids
-- in [low, high) that have no row for the model. A merge anti join of two
-- index-only scans over the same id range: frames_id_video_idx, and the
-- model's primary key (the repeated range bounds that side and prunes the
-- model's partition to the segments it spans). Cost: the slice, not the table.
SELECT f.video_id, count(*) AS frames
FROM argus.frames f
WHERE f.id >= %(low)s AND f.id < %(high)s
  AND NOT EXISTS (
      SELECT 1 FROM argus.frame_embeddings e
      WHERE e.frame_id = f.id AND e.model = %(model)s
        AND e.frame_id >= %(low)s AND e.frame_id < %(high)s)
GROUP BY f.video_id
ORDER BY f.video_id;
