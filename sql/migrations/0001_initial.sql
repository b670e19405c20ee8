-- argus-embedder initial schema (DESIGN §2). Applied once, in one transaction,
-- under the migration advisory lock; recorded in argus.schema_migrations.

CREATE EXTENSION IF NOT EXISTS vector;
CREATE SCHEMA IF NOT EXISTS argus;

CREATE TABLE argus.frames (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    video_id      text        NOT NULL,
    project_id    text        NULL,
    frame_index   integer     NOT NULL CHECK (frame_index >= 0),
    timestamp_ms  bigint      NULL,
    image_uri     text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (video_id, frame_index)
);
CREATE INDEX frames_project_idx ON argus.frames (project_id, video_id) WHERE project_id IS NOT NULL;

-- One row per (frame, model). The daemon is the only writer.
CREATE TABLE argus.frame_embeddings (
    frame_id      bigint      NOT NULL REFERENCES argus.frames (id) ON DELETE CASCADE,
    model         text        NOT NULL,
    embedding     vector      NULL,
    error         text        NULL,
    -- which preprocessing recipe produced the vector, so a change can re-embed selectively
    preprocessing text        NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (frame_id, model),
    CHECK ((embedding IS NULL) <> (error IS NULL))
);

-- Models known to this database: the dimension sizes the per-model index cast.
CREATE TABLE argus.models (
    model       text        PRIMARY KEY,
    dimension   integer     NOT NULL CHECK (dimension BETWEEN 1 AND 4000),
    index_kind  text        NOT NULL DEFAULT 'hnsw' CHECK (index_kind IN ('hnsw', 'ivfflat', 'none')),
    index_name  text        NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE argus.embedding_jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    video_id         text        NOT NULL,
    model            text        NULL,
    status           text        NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    priority         integer     NOT NULL DEFAULT 0,
    run_at           timestamptz NOT NULL DEFAULT now(),
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    worker_id        text        NULL,
    lease_token      uuid        NULL,
    lease_expires_at timestamptz NULL,
    frames_total     integer     NULL,
    frames_done      integer     NOT NULL DEFAULT 0,
    frames_failed    integer     NOT NULL DEFAULT 0,
    last_error       text        NULL,
    errors           jsonb       NOT NULL DEFAULT '[]',
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz NULL,
    finished_at      timestamptz NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Claim paths stay index scans however many finished jobs pile up:
-- queued jobs in claim order, and running jobs by lease expiry (reclaim).
CREATE INDEX embedding_jobs_claim_idx
    ON argus.embedding_jobs (priority DESC, run_at, id) WHERE status = 'queued';
CREATE INDEX embedding_jobs_lease_idx
    ON argus.embedding_jobs (lease_expires_at) WHERE status = 'running';
-- At most one queued and one running job per (video, model); NULL model means
-- "the daemon's configured model" and is resolved on claim.
CREATE UNIQUE INDEX embedding_jobs_one_queued_idx
    ON argus.embedding_jobs (video_id, coalesce(model, '')) WHERE status = 'queued';
CREATE UNIQUE INDEX embedding_jobs_one_running_idx
    ON argus.embedding_jobs (video_id, coalesce(model, '')) WHERE status = 'running';
CREATE INDEX embedding_jobs_video_idx ON argus.embedding_jobs (video_id, model);

CREATE FUNCTION argus.notify_embedding_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('argus_embedding_jobs', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER embedding_jobs_notify
    AFTER INSERT ON argus.embedding_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION argus.notify_embedding_jobs();

-- Enqueue with options; returns the new job id, or NULL when a queued job for
-- the same (video, model) already absorbed it.
CREATE FUNCTION argus.enqueue_embedding_job(
    video_id text, model text DEFAULT NULL, priority integer DEFAULT 0
) RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO argus.embedding_jobs (video_id, model, priority)
    VALUES (enqueue_embedding_job.video_id, enqueue_embedding_job.model,
            enqueue_embedding_job.priority)
    ON CONFLICT DO NOTHING
    RETURNING id;
$$;

-- The daemon's role owns no table: DDL it needs runs through this definer
-- function. Creates (or replaces) the per-model ANN index on the halfvec cast.
CREATE FUNCTION argus.ensure_model_index(p_model text, p_dimension integer, p_kind text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_name text := 'frame_embeddings_' || left(md5(p_model), 12) || '_' || p_kind;
    v_old  argus.models%ROWTYPE;
BEGIN
    IF p_kind NOT IN ('hnsw', 'ivfflat', 'none') THEN
        RAISE EXCEPTION 'unknown index kind %', p_kind USING ERRCODE = '22023';
    END IF;
    SELECT * INTO v_old FROM argus.models WHERE model = p_model FOR UPDATE;
    IF FOUND AND v_old.dimension <> p_dimension THEN
        RAISE EXCEPTION 'model % is registered with dimension %, not %',
            p_model, v_old.dimension, p_dimension USING ERRCODE = '22023';
    END IF;
    IF FOUND AND v_old.index_name IS NOT NULL AND v_old.index_kind <> p_kind THEN
        EXECUTE format('DROP INDEX IF EXISTS argus.%I', v_old.index_name);
    END IF;
    IF p_kind = 'hnsw' THEN
        EXECUTE format(
            'CREATE INDEX IF NOT EXISTS %I ON argus.frame_embeddings '
            'USING hnsw ((embedding::halfvec(%s)) halfvec_cosine_ops) WHERE model = %L',
            v_name, p_dimension, p_model);
    ELSIF p_kind = 'ivfflat' THEN
        EXECUTE format(
            'CREATE INDEX IF NOT EXISTS %I ON argus.frame_embeddings '
            'USING ivfflat ((embedding::halfvec(%s)) halfvec_cosine_ops) WITH (lists = 100) '
            'WHERE model = %L',
            v_name, p_dimension, p_model);
    ELSE
        v_name := NULL;
    END IF;
    INSERT INTO argus.models AS m (model, dimension, index_kind, index_name)
    VALUES (p_model, p_dimension, p_kind, v_name)
    ON CONFLICT (model) DO UPDATE SET index_kind = excluded.index_kind,
                                      index_name = excluded.index_name;
    RETURN v_name;
END;
$$;

-- Ranked search for one model; the dimension (a type modifier, so not a bind
-- parameter) comes from argus.models, and the expression matches the index.
CREATE FUNCTION argus.search_frames(
    p_model text, p_query vector, p_limit integer,
    p_video_id text DEFAULT NULL, p_project_id text DEFAULT NULL
) RETURNS TABLE (frame_id bigint, video_id text, frame_index integer,
                 timestamp_ms bigint, image_uri text, score double precision)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_dimension integer;
BEGIN
    SELECT m.dimension INTO v_dimension FROM argus.models m WHERE m.model = p_model;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model % has no embeddings in this database', p_model
            USING ERRCODE = 'P0002';
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT f.id, f.video_id, f.frame_index, f.timestamp_ms, f.image_uri, '
        '       1 - (e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s))::double precision '
        'FROM argus.frame_embeddings e JOIN argus.frames f ON f.id = e.frame_id '
        'WHERE e.model = $2 AND e.embedding IS NOT NULL '
        '  AND ($3::text IS NULL OR f.video_id = $3) '
        '  AND ($4::text IS NULL OR f.project_id = $4) '
        'ORDER BY e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) '
        'LIMIT $5', v_dimension)
    USING p_query, p_model, p_video_id, p_project_id, p_limit;
END;
$$;

-- Least-privilege roles (cluster-wide, so created only when missing).
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['argus_frame_stage', 'argus_worker', 'argus_reader'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END;
$$;

REVOKE ALL ON SCHEMA argus FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA argus FROM PUBLIC;
GRANT USAGE ON SCHEMA argus TO argus_frame_stage, argus_worker, argus_reader;

GRANT INSERT ON argus.frames, argus.embedding_jobs TO argus_frame_stage;
GRANT EXECUTE ON FUNCTION argus.enqueue_embedding_job(text, text, integer) TO argus_frame_stage, argus_worker;

GRANT SELECT ON argus.frames, argus.models TO argus_worker;
GRANT SELECT, INSERT ON argus.frame_embeddings TO argus_worker;
GRANT SELECT, INSERT, UPDATE ON argus.embedding_jobs TO argus_worker;
GRANT EXECUTE ON FUNCTION argus.ensure_model_index(text, integer, text) TO argus_worker;
GRANT EXECUTE ON FUNCTION argus.search_frames(text, vector, integer, text, text) TO argus_worker, argus_reader;

GRANT SELECT ON argus.frames, argus.frame_embeddings, argus.embedding_jobs, argus.models TO argus_reader;

GRANT SELECT ON argus.schema_migrations TO argus_frame_stage, argus_worker, argus_reader;
