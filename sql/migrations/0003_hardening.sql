-- Hardening after a review of the write path (issue 16): nothing a frame stage
-- or a worker role can do should be able to crash-loop the fleet.

-- Notify only when a statement inserted jobs: an enqueue that ON CONFLICT DO
-- NOTHING absorbed has nothing new to claim, and a steady stream of those
-- would fill the NOTIFY queue behind a listener that is slow to read it.
CREATE OR REPLACE FUNCTION argus.notify_embedding_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted) THEN
        PERFORM pg_notify('argus_embedding_jobs', '');
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER embedding_jobs_notify ON argus.embedding_jobs;
CREATE TRIGGER embedding_jobs_notify
    AFTER INSERT ON argus.embedding_jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION argus.notify_embedding_jobs();

-- search --limit 501..1000 failed: ef_search was set to 2 x limit, past
-- pgvector's maximum (1000). Unchanged otherwise.
CREATE OR REPLACE FUNCTION argus.search_frames(
    p_model text, p_query vector, p_limit integer,
    p_video_id text DEFAULT NULL, p_project_id text DEFAULT NULL
) RETURNS TABLE (frame_id bigint, video_id text, frame_index integer,
                 timestamp_ms bigint, image_uri text, score double precision)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_model      argus.models%ROWTYPE;
    v_candidates text;
BEGIN
    SELECT * INTO v_model FROM argus.models m WHERE m.model = p_model;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model % has no embeddings in this database', p_model
            USING ERRCODE = 'P0002';
    END IF;
    -- pgvector caps ef_search at 1000; past that, the iterative scan below keeps
    -- fetching until the limit is met.
    PERFORM set_config('hnsw.ef_search', least(1000, greatest(100, 2 * p_limit))::text, true);
    PERFORM set_config('hnsw.iterative_scan', 'strict_order', true);
    PERFORM set_config('ivfflat.probes', '10', true);
    PERFORM set_config('ivfflat.iterative_scan', 'relaxed_order', true);
    IF p_video_id IS NOT NULL THEN
        v_candidates :=
            'SELECT e.frame_id, e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) AS distance '
            'FROM argus.frames f JOIN argus.frame_embeddings e '
            '  ON e.frame_id = f.id AND e.model = $2 '
            'WHERE f.video_id = $3 AND e.embedding IS NOT NULL '
            '  AND ($4::text IS NULL OR f.project_id = $4) '
            'OFFSET 0';  -- an optimisation fence: the video's rows, exactly
    ELSIF p_project_id IS NOT NULL THEN
        v_candidates :=
            'SELECT e.frame_id, e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) AS distance '
            'FROM argus.frame_embeddings e JOIN argus.frames f ON f.id = e.frame_id '
            'WHERE e.model = $2 AND e.embedding IS NOT NULL AND f.project_id = $4 '
            'ORDER BY e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) LIMIT $5 * 2';
    ELSE
        v_candidates :=
            'SELECT e.frame_id, e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) AS distance '
            'FROM argus.frame_embeddings e '
            'WHERE e.model = $2 AND e.embedding IS NOT NULL '
            'ORDER BY e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) LIMIT $5 * 2';
    END IF;
    RETURN QUERY EXECUTE format(
        'WITH candidates AS MATERIALIZED (' || v_candidates || ') '
        'SELECT f.id, f.video_id, f.frame_index, f.timestamp_ms, f.image_uri, '
        '       1 - c.distance::double precision '
        'FROM candidates c JOIN argus.frames f ON f.id = c.frame_id '
        'ORDER BY c.distance, f.id LIMIT $5', v_model.dimension)
    USING p_query, p_model, p_video_id, p_project_id, p_limit;
END;
$$;

-- Register a model or change its index kind (the schema owner's, via `migrate
-- --model M --index K`). A kind change waits for a running build: the build
-- holds the indexer lock inside its transaction, and a change that looked
-- before the build committed would miss its index, then clear the segment's
-- index_name once the build committed, leaving the index orphaned. Any ANN
-- index on the model's segments that is not the recorded one (such an orphan,
-- or the indexes of the old kind) is dropped, found from the catalog rather
-- than from argus.segments, which is what lost track of it.
CREATE OR REPLACE FUNCTION argus.ensure_model_index(
    p_model text, p_dimension integer, p_kind text, p_segment_rows bigint DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_partition text := 'frame_embeddings_' || left(md5(p_model), 16);
    v_old       argus.models%ROWTYPE;
    v_index     text;
BEGIN
    IF p_kind NOT IN ('hnsw', 'ivfflat', 'none') THEN
        RAISE EXCEPTION 'unknown index kind % (use hnsw, ivfflat or none)', p_kind
            USING ERRCODE = '22023';
    END IF;
    -- The indexer lock first: a model lock held while waiting for a build would
    -- stall every writer that needs a new segment (argus.ensure_segments).
    IF EXISTS (SELECT 1 FROM argus.models WHERE model = p_model) THEN
        PERFORM pg_advisory_xact_lock(hashtext('argus-embedder:indexer'));
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('argus-embedder:model:' || p_model));
    SELECT * INTO v_old FROM argus.models WHERE model = p_model FOR UPDATE;
    IF FOUND AND v_old.dimension <> p_dimension THEN
        RAISE EXCEPTION 'model % is registered with dimension %, not %',
            p_model, v_old.dimension, p_dimension USING ERRCODE = '22023';
    END IF;
    -- Segments are ranges of segment_rows frame ids: another size would make new
    -- segments overlap the existing ones, and every write into them fail.
    IF FOUND AND p_segment_rows <> v_old.segment_rows
       AND EXISTS (SELECT 1 FROM argus.segments WHERE model = p_model) THEN
        RAISE EXCEPTION 'model % already has segments of % frame ids; its segment size '
            'cannot change to %', p_model, v_old.segment_rows, p_segment_rows
            USING ERRCODE = '22023';
    END IF;
    IF NOT FOUND THEN
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS argus.%I PARTITION OF argus.frame_embeddings '
            'FOR VALUES IN (%L) PARTITION BY RANGE (frame_id)', v_partition, p_model);
        INSERT INTO argus.models (model, dimension, index_kind, partition_name, segment_rows)
        VALUES (p_model, p_dimension, p_kind, v_partition, coalesce(p_segment_rows, 100000));
        RETURN v_partition;
    END IF;
    IF v_old.index_kind <> p_kind THEN
        UPDATE argus.segments SET index_name = NULL, indexed_at = NULL WHERE model = p_model;
    END IF;
    FOR v_index IN
        SELECT i.relname
        FROM pg_inherits h
        JOIN pg_class t ON t.oid = h.inhrelid
        JOIN pg_index x ON x.indrelid = t.oid
        JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_am a ON a.oid = i.relam
        WHERE h.inhparent = format('argus.%I', v_old.partition_name)::regclass
          AND a.amname IN ('hnsw', 'ivfflat')
          AND NOT EXISTS (SELECT 1 FROM argus.segments s
                          WHERE s.model = p_model AND s.partition_name = t.relname
                            AND s.index_name = i.relname)
    LOOP
        EXECUTE format('DROP INDEX argus.%I', v_index);
    END LOOP;
    UPDATE argus.models
    SET index_kind = p_kind, segment_rows = coalesce(p_segment_rows, segment_rows)
    WHERE model = p_model;
    RETURN v_old.partition_name;
END;
$$;

-- Frame ids are the identity's, always > 0: an id <= 0 or near 2^63 fits no
-- segment and failed every write of its video, and a huge one stretched every
-- reconciler pass. The frame stage may insert every column but id, so it cannot
-- choose one (OVERRIDING SYSTEM VALUE needs INSERT on id); the CHECK holds
-- for the owner too.
ALTER TABLE argus.frames ADD CONSTRAINT frames_id_positive CHECK (id > 0);
REVOKE INSERT ON argus.frames FROM argus_frame_stage;
GRANT INSERT (video_id, project_id, frame_index, timestamp_ms, image_uri, created_at)
    ON argus.frames TO argus_frame_stage;

-- What a daemon may do to models: register one that is missing (with the
-- column defaults), nothing else. A kind change drops indexes and a segment
-- size is fixed once used, so both stay the schema owner's (`migrate --model`).
CREATE FUNCTION argus.register_model(p_model text, p_dimension integer)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_model argus.models%ROWTYPE;
BEGIN
    -- Under the model lock, so a concurrent registration is seen here and
    -- ensure_model_index below only ever takes its creating path.
    PERFORM pg_advisory_xact_lock(hashtext('argus-embedder:model:' || p_model));
    SELECT * INTO v_model FROM argus.models WHERE model = p_model;
    IF NOT FOUND THEN
        RETURN argus.ensure_model_index(p_model, p_dimension, 'hnsw');
    END IF;
    IF v_model.dimension <> p_dimension THEN
        RAISE EXCEPTION 'model % is registered with dimension %, not %',
            p_model, v_model.dimension, p_dimension USING ERRCODE = '22023';
    END IF;
    RETURN v_model.partition_name;
END;
$$;

REVOKE ALL ON FUNCTION argus.register_model(text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION argus.register_model(text, integer) TO argus_worker;
REVOKE EXECUTE ON FUNCTION argus.ensure_model_index(text, integer, text, bigint)
    FROM argus_worker;
