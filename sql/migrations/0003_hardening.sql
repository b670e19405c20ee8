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
