-- Writers never wait on DDL (issue 18, DESIGN §2).
--
-- A new segment used to be made with CREATE TABLE ... PARTITION OF, which takes
-- an ACCESS EXCLUSIVE lock on the model's partition: a reader holding a
-- transaction open on argus.frame_embeddings (a slow status count, a long
-- search) stalled every write of that model, fleet-wide, behind the creating
-- writer. Now a segment is created as a standalone table and then ATTACHed,
-- which takes SHARE UPDATE EXCLUSIVE on the model's partition (it conflicts
-- with no read and no write, only with another attach), plus a moment of
-- SHARE ROW EXCLUSIVE on argus.frames for the foreign key (which only a
-- frame-stage INSERT in flight can hold up). The daemon's indexer service
-- creates segments ahead of the write frontier (argus.precreate_segments), so
-- a write finds its segment there; when it does not, it creates it itself, and
-- every definer function waits at most its lock_timeout for a lock: a write
-- that cannot get one fails as a transient error (retried), never a stall.

-- One segment of a model: [p_lower, p_lower + segment_rows) of frame ids. Not
-- granted to anyone: the definer functions below call it.
CREATE FUNCTION argus.attach_segment(p_model text, p_lower bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET lock_timeout = '2s' AS $$
DECLARE
    v_model argus.models%ROWTYPE;
    v_name  text;
    v_upper bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM argus.segments WHERE model = p_model AND lower_bound = p_lower) THEN
        RETURN;
    END IF;
    -- Creators of the same model's segments take turns (a transaction lock:
    -- PgBouncer-safe); the check is repeated under it.
    PERFORM pg_advisory_xact_lock(hashtext('argus-embedder:model:' || p_model));
    IF EXISTS (SELECT 1 FROM argus.segments WHERE model = p_model AND lower_bound = p_lower) THEN
        RETURN;
    END IF;
    SELECT * INTO v_model FROM argus.models WHERE model = p_model;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model % is not registered (run migrate --model)', p_model
            USING ERRCODE = 'P0002';
    END IF;
    IF p_lower < 0 OR p_lower % v_model.segment_rows <> 0 THEN
        RAISE EXCEPTION 'no segment of % starts at %', p_model, p_lower USING ERRCODE = '22023';
    END IF;
    v_name := v_model.partition_name || '_' || p_lower;
    v_upper := p_lower + v_model.segment_rows;
    -- Same columns, storage and CHECKs as the parent (ATTACH requires them);
    -- the primary key and the foreign key come with the ATTACH.
    EXECUTE format(
        'CREATE TABLE argus.%I (LIKE argus.frame_embeddings '
        'INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)', v_name);
    EXECUTE format(
        'ALTER TABLE argus.%I ATTACH PARTITION argus.%I FOR VALUES FROM (%s) TO (%s)',
        v_model.partition_name, v_name, p_lower, v_upper);
    INSERT INTO argus.segments (model, lower_bound, upper_bound, partition_name)
    VALUES (p_model, p_lower, v_upper, v_name);
END;
$$;

-- The write path's fallback: make sure the segments holding these frame ids
-- exist (only for segments the worker has not seen; normally already there).
CREATE OR REPLACE FUNCTION argus.ensure_segments(p_model text, p_frame_ids bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET lock_timeout = '2s' AS $$
DECLARE
    v_rows  bigint;
    v_lower bigint;
BEGIN
    SELECT segment_rows INTO v_rows FROM argus.models WHERE model = p_model;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model % is not registered (run migrate --model)', p_model
            USING ERRCODE = 'P0002';
    END IF;
    FOR v_lower IN SELECT DISTINCT (id / v_rows) * v_rows FROM unnest(p_frame_ids) AS id LOOP
        PERFORM argus.attach_segment(p_model, v_lower);
        RETURN NEXT v_lower;
    END LOOP;
END;
$$;

-- The indexer service's pass: the segment holding the newest frame and
-- p_ahead segments past it, so writes find their segment already attached.
-- Returns the segments it created.
CREATE FUNCTION argus.precreate_segments(p_model text, p_ahead integer)
RETURNS SETOF bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET lock_timeout = '2s' AS $$
DECLARE
    v_rows     bigint;
    v_frontier bigint := (SELECT coalesce(max(id), 0) FROM argus.frames);
    v_lower    bigint;
BEGIN
    SELECT segment_rows INTO v_rows FROM argus.models WHERE model = p_model;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    FOR v_lower IN SELECT (v_frontier / v_rows + step) * v_rows
                   FROM generate_series(0, greatest(0, p_ahead)) AS step LOOP
        IF NOT EXISTS (SELECT 1 FROM argus.segments
                       WHERE model = p_model AND lower_bound = v_lower) THEN
            PERFORM argus.attach_segment(p_model, v_lower);
            RETURN NEXT v_lower;
        END IF;
    END LOOP;
END;
$$;

-- Every definer function waits a bounded time for a lock, so none can queue
-- behind a long reader (and have the writers queue behind it) without end.
ALTER FUNCTION argus.enqueue_embedding_job(text, text, integer) SET lock_timeout = '5s';
ALTER FUNCTION argus.register_model(text, integer) SET lock_timeout = '5s';
ALTER FUNCTION argus.sealed_segments(text, interval) SET lock_timeout = '2s';
ALTER FUNCTION argus.index_segment(text, bigint) SET lock_timeout = '2s';
ALTER FUNCTION argus.drop_model(text) SET lock_timeout = '2s';
-- The schema owner's (migrate): a kind change waits for a running build, bounded.
ALTER FUNCTION argus.ensure_model_index(text, integer, text, bigint) SET lock_timeout = '5min';

REVOKE ALL ON FUNCTION argus.attach_segment(text, bigint),
                       argus.precreate_segments(text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION argus.precreate_segments(text, integer) TO argus_worker;
