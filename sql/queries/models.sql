-- argus.models, argus.segments and argus.search_units: registration, segments,
-- search units (builds, merges, publishing) and drops, all through SECURITY
-- DEFINER functions (argus_embedder.gateways.index).

-- name: ensure_model_index
-- The schema owner's (migrate): the index kind, the segment size.
SELECT argus.ensure_model_index(%(model)s, %(dimension)s, %(kind)s, %(segment_rows)s)
    AS partition_name;

-- name: register_model
-- What a daemon may call: registers a missing model, checks a registered one's dimension.
SELECT argus.register_model(%(model)s, %(dimension)s) AS partition_name;

-- name: model_info
SELECT model, dimension, index_kind, partition_name, segment_rows
FROM argus.models WHERE model = %(model)s;

-- name: known_segments
SELECT lower_bound FROM argus.segments
WHERE model = %(model)s AND lower_bound = ANY(%(lower_bounds)s);

-- name: ensure_segments
SELECT lower_bound FROM argus.ensure_segments(%(model)s, %(frame_ids)s) AS lower_bound;

-- name: precreate_segments
SELECT lower_bound FROM argus.precreate_segments(%(model)s, %(ahead)s) AS lower_bound;

-- name: unit_next
SELECT argus.unit_next(%(model)s, %(fanout)s, make_interval(secs => %(quiet_seconds)s),
                       %(tier0_only)s) AS unit_id;

-- name: unit_append
SELECT unit_id, table_name, lower_bound, upper_bound, appended
FROM argus.unit_append(%(model)s, make_interval(secs => %(quiet_seconds)s));

-- name: unit_fill
SELECT argus.unit_fill(%(unit_id)s) AS rows;

-- name: unit_prewarm
SELECT argus.unit_prewarm(%(unit_id)s) AS blocks;

-- name: unit_publish
SELECT argus.unit_publish(%(unit_id)s) AS published;

-- name: drop_retired_units
SELECT argus.drop_retired_units(%(model)s, make_interval(secs => %(grace_seconds)s)) AS dropped;

-- name: prune_unit_changes
-- Stragglers logged for ranges no unit is building (migration 0014).
SELECT argus.prune_unit_changes(%(model)s) AS pruned;

-- name: unit
SELECT id, model, lower_bound, upper_bound, tier, kind, table_name, state, rows,
       trained_rows, build_seconds
FROM argus.search_units WHERE id = %(unit_id)s;

-- name: units
SELECT id, model, lower_bound, upper_bound, tier, kind, table_name, state, rows,
       trained_rows, build_seconds
FROM argus.search_units WHERE model = %(model)s ORDER BY lower_bound, tier, id;

-- name: segment_report
SELECT s.lower_bound, s.upper_bound, s.index_name, s.indexed_at
FROM argus.segments s WHERE s.model = %(model)s ORDER BY s.lower_bound;

-- name: models
SELECT model, dimension, index_kind, partition_name, segment_rows FROM argus.models ORDER BY model;

-- name: prune_lock_timeout
-- Dropping a model's partition takes an ACCESS EXCLUSIVE lock on
-- argus.frame_embeddings for a moment: wait at most this long for it, so the
-- drop never queues in front of searches and writes behind a long query.
SELECT set_config('lock_timeout', %(timeout)s, true) AS lock_timeout;

-- name: unregister_model
-- The model's vectors and registration: its partition (all segments and their
-- indexes) goes at once, through the schema owner's definer function.
SELECT argus.drop_model(%(model)s) AS dropped;
