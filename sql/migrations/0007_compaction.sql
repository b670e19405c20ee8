-- Search stays fast as the corpus grows (issue 18, DESIGN §2): search indexes
-- are built off the write path into private tables ("units") and compacted in
-- tiers, and search switches between them in one MVCC commit.
--
-- argus.frame_embeddings stays the one table readers see and the only thing
-- writers touch: its segments carry no ANN index any more. A unit is a table
-- of its own, (frame_id, embedding halfvec(D)), holding a copy of the vectors
-- of a frame-id range with an ANN index, built while nobody can see it (so the
-- build is a plain bulk CREATE INDEX that blocks no one: not a writer, not a
-- straggler, not a reader) and then published: one UPDATE of argus.search_units
-- makes it live and retires the units it replaces. Search reads the live units
-- and scans exactly the segments no live unit covers; which units are live is
-- a row in the search's own snapshot, so a vector is found in exactly one place.
-- Retired units are dropped after a grace period, never under a running search.
--
-- Units come in tiers: tier 0 covers one sealed segment; FANOUT adjacent live
-- units of tier t (an aligned range) merge into one of tier t + 1. A corpus of N
-- frame ids is then covered by at most (FANOUT - 1) units per tier, log(N) tiers.
--
-- Stragglers (a late row for a frame in a covered or being-covered segment) are
-- kept by a row trigger that exists only on such segments (never on the segment
-- the fleet is writing): it inserts the vector into the live unit covering it and
-- logs the frame id in argus.unit_changes, which a unit being built replays when
-- it is published (under a SHARE lock on its source segments, which only a
-- straggler's write in flight can hold, for at most the lock_timeout).

CREATE TABLE argus.search_units (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model         text        NOT NULL REFERENCES argus.models (model) ON DELETE CASCADE,
    lower_bound   bigint      NOT NULL,
    upper_bound   bigint      NOT NULL,
    tier          integer     NOT NULL CHECK (tier >= 0),
    kind          text        NOT NULL CHECK (kind IN ('hnsw', 'ivfflat')),
    table_name    text        NOT NULL UNIQUE,
    -- building: table made, not filled; filled: copied and indexed; live: searched;
    -- retired: replaced, dropped once no search can still be using it
    state         text        NOT NULL DEFAULT 'building'
                  CHECK (state IN ('building', 'filled', 'live', 'retired')),
    rows          bigint      NULL,
    build_seconds double precision NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz NULL,
    retired_at    timestamptz NULL
);
CREATE INDEX search_units_model_idx ON argus.search_units (model, state, lower_bound);

CREATE TABLE argus.unit_changes (
    model    text   NOT NULL,
    frame_id bigint NOT NULL
);
CREATE INDEX unit_changes_idx ON argus.unit_changes (model, frame_id);

-- The straggler trigger (on covered segments only). SECURITY DEFINER: the worker
-- role writing the row has no rights on units or the log.
CREATE FUNCTION argus.unit_straggler() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET lock_timeout = '2s' AS $$
DECLARE
    v_row  argus.frame_embeddings%ROWTYPE;
    v_unit record;
BEGIN
    IF TG_OP = 'DELETE' THEN
        v_row := OLD;
    ELSE
        v_row := NEW;
    END IF;
    INSERT INTO argus.unit_changes (model, frame_id) VALUES (v_row.model, v_row.frame_id);
    FOR v_unit IN SELECT u.table_name, m.dimension
                  FROM argus.search_units u JOIN argus.models m ON m.model = u.model
                  WHERE u.model = v_row.model AND u.state = 'live'
                    AND v_row.frame_id >= u.lower_bound AND v_row.frame_id < u.upper_bound LOOP
        EXECUTE format('DELETE FROM argus.%I WHERE frame_id = $1', v_unit.table_name)
            USING v_row.frame_id;
        IF TG_OP = 'INSERT' AND v_row.embedding IS NOT NULL THEN
            EXECUTE format('INSERT INTO argus.%I (frame_id, embedding) VALUES ($1, $2::halfvec(%s))',
                           v_unit.table_name, v_unit.dimension)
                USING v_row.frame_id, v_row.embedding;
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;

-- The next unit to work on for p_model, one unit in the fleet at a time (the
-- indexer's transaction lock, as before): a unit already under way (its
-- builder stopped between steps), else a tier-0 unit for the first sealed,
-- uncovered segment, else (unless p_tier0_only) a merge of p_fanout live units
-- of the lowest tier that has an aligned full group, else the rebuild of a unit
-- of another kind than the model's (`migrate --index`). Creates the unit's table (empty) and the
-- straggler triggers on its source segments, and commits, so that the fill's
-- snapshot comes after every straggler the triggers miss. NULL: nothing to do,
-- or another daemon holds the lock.
CREATE FUNCTION argus.unit_next(
    p_model text, p_fanout integer, p_quiet interval, p_tier0_only boolean
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET lock_timeout = '2s' AS $$
DECLARE
    v_model   argus.models%ROWTYPE;
    v_unit    argus.search_units%ROWTYPE;
    v_lower   bigint;
    v_upper   bigint;
    v_tier    integer;
    v_table   text;
    v_segment text;
    v_id      bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('argus-embedder:indexer')) THEN
        RETURN NULL;
    END IF;
    SELECT * INTO v_model FROM argus.models WHERE model = p_model;
    IF NOT FOUND OR v_model.index_kind = 'none' THEN
        RETURN NULL;
    END IF;
    SELECT * INTO v_unit FROM argus.search_units
    WHERE model = p_model AND state IN ('building', 'filled') ORDER BY id LIMIT 1;
    IF FOUND THEN
        RETURN v_unit.id;
    END IF;
    -- A sealed segment no live unit covers: tier 0.
    SELECT s INTO v_lower FROM argus.sealed_segments(p_model, p_quiet) AS s
    WHERE NOT EXISTS (SELECT 1 FROM argus.search_units u
                      WHERE u.model = p_model AND u.state = 'live'
                        AND s >= u.lower_bound AND s < u.upper_bound)
    ORDER BY s LIMIT 1;
    IF v_lower IS NOT NULL THEN
        v_tier := 0;
        v_upper := v_lower + v_model.segment_rows;
    ELSIF NOT p_tier0_only THEN
        -- FANOUT live units of one tier filling an aligned range of the next.
        SELECT u.tier + 1, g.lower INTO v_tier, v_lower
        FROM argus.search_units u,
             LATERAL (SELECT v_model.segment_rows * power(p_fanout, u.tier + 1)::bigint AS span) sp,
             LATERAL (SELECT (u.lower_bound / sp.span) * sp.span AS lower) g
        WHERE u.model = p_model AND u.state = 'live'
          AND u.upper_bound - u.lower_bound = v_model.segment_rows * power(p_fanout, u.tier)::bigint
        GROUP BY u.tier, g.lower
        HAVING count(*) = p_fanout
        ORDER BY u.tier, g.lower LIMIT 1;
        IF v_lower IS NOT NULL THEN
            v_upper := v_lower + v_model.segment_rows * power(p_fanout, v_tier)::bigint;
        END IF;
    END IF;
    IF v_lower IS NULL THEN
        -- A unit of another kind than the model's (after `migrate --index`).
        SELECT tier, lower_bound, upper_bound INTO v_tier, v_lower, v_upper
        FROM argus.search_units
        WHERE model = p_model AND state = 'live' AND kind <> v_model.index_kind
        ORDER BY tier, lower_bound LIMIT 1;
    END IF;
    IF v_lower IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO argus.search_units (model, lower_bound, upper_bound, tier, kind, table_name)
    VALUES (p_model, v_lower, v_upper, v_tier, v_model.index_kind, '')
    RETURNING id INTO v_id;
    v_table := format('%s_%s_t%s_%s_%s', v_model.partition_name, v_lower, v_tier, v_id,
                      v_model.index_kind);
    UPDATE argus.search_units SET table_name = v_table WHERE id = v_id;
    EXECUTE format('CREATE TABLE argus.%I (frame_id bigint PRIMARY KEY, '
                   'embedding halfvec(%s) NOT NULL)', v_table, v_model.dimension);
    EXECUTE format('ALTER TABLE argus.%I SET (autovacuum_enabled = false)', v_table);
    EXECUTE format('GRANT SELECT ON argus.%I TO argus_worker, argus_reader', v_table);
    -- Straggler triggers on the source segments that lack one (tier 0's segment;
    -- a merge's segments got theirs at tier 0).
    FOR v_segment IN SELECT s.partition_name FROM argus.segments s
                     WHERE s.model = p_model AND s.lower_bound >= v_lower
                       AND s.lower_bound < v_upper
                       AND NOT EXISTS (SELECT 1 FROM pg_trigger t
                                       WHERE t.tgrelid = format('argus.%I', s.partition_name)::regclass
                                         AND t.tgname = 'argus_unit_straggler') LOOP
        EXECUTE format('CREATE TRIGGER argus_unit_straggler AFTER INSERT OR DELETE ON argus.%I '
                       'FOR EACH ROW EXECUTE FUNCTION argus.unit_straggler()', v_segment);
    END LOOP;
    RETURN v_id;
END;
$$;

-- Copy a unit's vectors (from its segment at tier 0, else from the live units it
-- merges) and bulk-build its index, in one transaction on a table nobody else
-- reads or writes. Returns the rows copied; NULL when another daemon holds the lock.
CREATE FUNCTION argus.unit_fill(p_unit bigint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET lock_timeout = '2s'
SET maintenance_work_mem = '512MB' AS $$
DECLARE
    v_unit    argus.search_units%ROWTYPE;
    v_model   argus.models%ROWTYPE;
    v_source  text;
    v_rows    bigint := 0;
    v_added   bigint;
    v_started timestamptz := clock_timestamp();
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('argus-embedder:indexer')) THEN
        RETURN NULL;
    END IF;
    SELECT * INTO v_unit FROM argus.search_units WHERE id = p_unit FOR UPDATE;
    IF NOT FOUND OR v_unit.state <> 'building' THEN
        RETURN coalesce(v_unit.rows, 0);
    END IF;
    SELECT * INTO v_model FROM argus.models WHERE model = v_unit.model;
    EXECUTE format('TRUNCATE argus.%I', v_unit.table_name);
    IF v_unit.tier = 0 AND NOT EXISTS (
            SELECT 1 FROM argus.search_units u
            WHERE u.model = v_unit.model AND u.state = 'live'
              AND u.lower_bound = v_unit.lower_bound AND u.upper_bound = v_unit.upper_bound) THEN
        SELECT partition_name INTO v_source FROM argus.segments
        WHERE model = v_unit.model AND lower_bound = v_unit.lower_bound;
        EXECUTE format('INSERT INTO argus.%I (frame_id, embedding) '
                       'SELECT frame_id, embedding::halfvec(%s) FROM argus.%I '
                       'WHERE embedding IS NOT NULL', v_unit.table_name, v_model.dimension, v_source);
        GET DIAGNOSTICS v_rows = ROW_COUNT;
    ELSE
        FOR v_source IN SELECT table_name FROM argus.search_units
                        WHERE model = v_unit.model AND state = 'live'
                          AND lower_bound >= v_unit.lower_bound
                          AND upper_bound <= v_unit.upper_bound ORDER BY lower_bound LOOP
            EXECUTE format('INSERT INTO argus.%I (frame_id, embedding) '
                           'SELECT frame_id, embedding FROM argus.%I', v_unit.table_name, v_source);
            GET DIAGNOSTICS v_added = ROW_COUNT;
            v_rows := v_rows + v_added;
        END LOOP;
    END IF;
    IF v_unit.kind = 'hnsw' THEN
        EXECUTE format(
            'CREATE INDEX ON argus.%I USING hnsw (embedding halfvec_cosine_ops) '
            -- ef_construction 128, not 64: measured recall@10 0.73 -> 0.96 on
            -- clustered 768-d data; affordable because the build is off the write path.
            'WITH (m = 16, ef_construction = 128)', v_unit.table_name);
    ELSE
        EXECUTE format(
            'CREATE INDEX ON argus.%I USING ivfflat (embedding halfvec_cosine_ops) '
            'WITH (lists = %s)', v_unit.table_name,
            greatest(1, least(4000, CASE WHEN v_rows <= 1000000 THEN v_rows / 1000
                                         ELSE sqrt(v_rows)::bigint END)));
    END IF;
    EXECUTE format('ANALYZE argus.%I', v_unit.table_name);
    UPDATE argus.search_units
    SET state = 'filled', rows = v_rows,
        build_seconds = extract(epoch FROM clock_timestamp() - v_started)
    WHERE id = p_unit;
    RETURN v_rows;
END;
$$;

-- Make a filled unit live and retire what it replaces, in one commit: replay the
-- stragglers logged for its range (under a SHARE lock on its source segments, so
-- none is in flight), flip the states, record the segments as indexed. False when
-- the lock or a straggler's lock is not free now (the caller retries).
CREATE FUNCTION argus.unit_publish(p_unit bigint)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET lock_timeout = '500ms' AS $$
DECLARE
    v_unit    argus.search_units%ROWTYPE;
    v_model   argus.models%ROWTYPE;
    v_segment text;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('argus-embedder:indexer')) THEN
        RETURN false;
    END IF;
    SELECT * INTO v_unit FROM argus.search_units WHERE id = p_unit FOR UPDATE;
    IF NOT FOUND OR v_unit.state <> 'filled' THEN
        RETURN NOT FOUND OR v_unit.state = 'live';
    END IF;
    SELECT * INTO v_model FROM argus.models WHERE model = v_unit.model;
    FOR v_segment IN SELECT partition_name FROM argus.segments
                     WHERE model = v_unit.model AND lower_bound >= v_unit.lower_bound
                       AND lower_bound < v_unit.upper_bound ORDER BY lower_bound LOOP
        EXECUTE format('LOCK TABLE argus.%I IN SHARE MODE', v_segment);
    END LOOP;
    EXECUTE format(
        'DELETE FROM argus.%I u USING argus.unit_changes c '
        'WHERE c.model = $1 AND c.frame_id >= $2 AND c.frame_id < $3 AND u.frame_id = c.frame_id',
        v_unit.table_name) USING v_unit.model, v_unit.lower_bound, v_unit.upper_bound;
    EXECUTE format(
        'INSERT INTO argus.%I (frame_id, embedding) '
        'SELECT e.frame_id, e.embedding::halfvec(%s) FROM argus.frame_embeddings e '
        'WHERE e.model = $1 AND e.embedding IS NOT NULL AND e.frame_id IN ('
        '  SELECT c.frame_id FROM argus.unit_changes c '
        '  WHERE c.model = $1 AND c.frame_id >= $2 AND c.frame_id < $3)',
        v_unit.table_name, v_model.dimension)
        USING v_unit.model, v_unit.lower_bound, v_unit.upper_bound;
    DELETE FROM argus.unit_changes
    WHERE model = v_unit.model AND frame_id >= v_unit.lower_bound
      AND frame_id < v_unit.upper_bound;
    UPDATE argus.search_units SET state = 'retired', retired_at = now()
    WHERE model = v_unit.model AND state = 'live'
      AND lower_bound >= v_unit.lower_bound AND upper_bound <= v_unit.upper_bound;
    UPDATE argus.search_units SET state = 'live', published_at = now() WHERE id = p_unit;
    UPDATE argus.segments SET index_name = v_unit.table_name, indexed_at = now()
    WHERE model = v_unit.model AND lower_bound >= v_unit.lower_bound
      AND lower_bound < v_unit.upper_bound;
    RETURN true;
END;
$$;

-- Drop units retired more than p_grace ago (no search still reads them: a search
-- reads the live units and queries them within one call). Returns how many.
CREATE FUNCTION argus.drop_retired_units(p_model text, p_grace interval)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET lock_timeout = '500ms' AS $$
DECLARE
    v_unit    argus.search_units%ROWTYPE;
    v_dropped integer := 0;
BEGIN
    FOR v_unit IN SELECT * FROM argus.search_units
                  WHERE model = p_model AND state = 'retired'
                    AND retired_at <= now() - p_grace FOR UPDATE SKIP LOCKED LOOP
        EXECUTE format('DROP TABLE IF EXISTS argus.%I', v_unit.table_name);
        DELETE FROM argus.search_units WHERE id = v_unit.id;
        v_dropped := v_dropped + 1;
    END LOOP;
    RETURN v_dropped;
END;
$$;

-- Ranked search for one model: each live unit's ANN scan, plus an exact scan of
-- the segments no live unit covers (so a committed vector is found at once),
-- merged by distance. Which units are live is read once; a unit dropped between
-- that read and the scan (past its grace period: a very slow search) makes the
-- search read them again. The video filter, as before, scans that video's frames
-- exactly; the project filter rides iterative index scans per unit.
CREATE OR REPLACE FUNCTION argus.search_frames(
    p_model text, p_query vector, p_limit integer,
    p_video_id text DEFAULT NULL, p_project_id text DEFAULT NULL
) RETURNS TABLE (frame_id bigint, video_id text, frame_index integer,
                 timestamp_ms bigint, image_uri text, score double precision)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_model      argus.models%ROWTYPE;
    v_unit       record;
    v_branches   text[];
    v_uncovered  text;
    v_next       bigint;
    v_candidates text;
    v_try        integer := 0;
BEGIN
    SELECT * INTO v_model FROM argus.models m WHERE m.model = p_model;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model % has no embeddings in this database', p_model
            USING ERRCODE = 'P0002';
    END IF;
    -- pgvector caps ef_search at 1000; past that, the iterative scan keeps
    -- fetching until the limit is met.
    PERFORM set_config('hnsw.ef_search', least(1000, greatest(100, 2 * p_limit))::text, true);
    PERFORM set_config('hnsw.iterative_scan', 'strict_order', true);
    PERFORM set_config('ivfflat.probes', '10', true);
    PERFORM set_config('ivfflat.iterative_scan', 'relaxed_order', true);
    LOOP
        v_try := v_try + 1;
        IF p_video_id IS NOT NULL THEN
            v_candidates :=
                'SELECT e.frame_id, e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) AS distance '
                'FROM argus.frames f JOIN argus.frame_embeddings e '
                '  ON e.frame_id = f.id AND e.model = $2 '
                'WHERE f.video_id = $3 AND e.embedding IS NOT NULL '
                '  AND ($4::text IS NULL OR f.project_id = $4) '
                'OFFSET 0';  -- an optimisation fence: the video's rows, exactly
        ELSE
            v_branches := ARRAY[]::text[];
            v_uncovered := '';
            v_next := 0;
            FOR v_unit IN SELECT u.table_name, u.lower_bound, u.upper_bound
                          FROM argus.search_units u
                          WHERE u.model = p_model AND u.state = 'live'
                          ORDER BY u.lower_bound LOOP
                v_branches := v_branches || format(
                    '(SELECT u.frame_id, u.embedding <=> $1::halfvec(%%1$s) AS distance '
                    'FROM argus.%I u %s ORDER BY distance LIMIT $5 * 2)',
                    v_unit.table_name,
                    CASE WHEN p_project_id IS NULL THEN ''
                         ELSE 'JOIN argus.frames f ON f.id = u.frame_id WHERE f.project_id = $4' END);
                IF v_unit.lower_bound > v_next THEN
                    v_uncovered := v_uncovered || format(' OR (e.frame_id >= %s AND e.frame_id < %s)',
                                                         v_next, v_unit.lower_bound);
                END IF;
                v_next := greatest(v_next, v_unit.upper_bound);
            END LOOP;
            v_uncovered := format('(e.frame_id >= %s%s)', v_next, v_uncovered);
            v_branches := v_branches || (
                '(SELECT e.frame_id, e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) AS distance '
                'FROM argus.frame_embeddings e '
                || CASE WHEN p_project_id IS NULL THEN ''
                        ELSE 'JOIN argus.frames f ON f.id = e.frame_id ' END ||
                'WHERE e.model = $2 AND e.embedding IS NOT NULL AND ' || v_uncovered
                || CASE WHEN p_project_id IS NULL THEN '' ELSE ' AND f.project_id = $4' END ||
                ' ORDER BY distance LIMIT $5 * 2)');
            v_candidates := 'SELECT * FROM (' || array_to_string(v_branches, ' UNION ALL ')
                            || ') AS branches ORDER BY distance LIMIT $5 * 2';
        END IF;
        BEGIN
            RETURN QUERY EXECUTE format(
                'WITH candidates AS MATERIALIZED (' || v_candidates || ') '
                'SELECT f.id, f.video_id, f.frame_index, f.timestamp_ms, f.image_uri, '
                '       1 - c.distance::double precision '
                'FROM candidates c JOIN argus.frames f ON f.id = c.frame_id '
                'ORDER BY c.distance, f.id LIMIT $5', v_model.dimension)
            USING p_query, p_model, p_video_id, p_project_id, p_limit;
            RETURN;
        EXCEPTION WHEN undefined_table THEN
            IF v_try >= 3 THEN
                RAISE;
            END IF;
        END;
    END LOOP;
END;
$$;

-- Register a model or change its index kind (the schema owner's). As in 0003,
-- plus units: a kind change keeps the live units serving until the compactor
-- has rebuilt each in the new kind; 'none' drops them at once (and search
-- falls back to exact scans, as the owner asked).
CREATE OR REPLACE FUNCTION argus.ensure_model_index(
    p_model text, p_dimension integer, p_kind text, p_segment_rows bigint DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET lock_timeout = '5min' AS $$
DECLARE
    v_partition text := 'frame_embeddings_' || left(md5(p_model), 16);
    v_old       argus.models%ROWTYPE;
    v_index     text;
    v_unit      argus.search_units%ROWTYPE;
BEGIN
    IF p_kind NOT IN ('hnsw', 'ivfflat', 'none') THEN
        RAISE EXCEPTION 'unknown index kind % (use hnsw, ivfflat or none)', p_kind
            USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM argus.models WHERE model = p_model) THEN
        PERFORM pg_advisory_xact_lock(hashtext('argus-embedder:indexer'));
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('argus-embedder:model:' || p_model));
    SELECT * INTO v_old FROM argus.models WHERE model = p_model FOR UPDATE;
    IF FOUND AND v_old.dimension <> p_dimension THEN
        RAISE EXCEPTION 'model % is registered with dimension %, not %',
            p_model, v_old.dimension, p_dimension USING ERRCODE = '22023';
    END IF;
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
    -- Units under way or of another kind: dropped at once for 'none'; a unit being
    -- built in the old kind is abandoned (the next pass starts it in the new kind).
    FOR v_unit IN SELECT * FROM argus.search_units
                  WHERE model = p_model AND kind <> p_kind
                    AND (p_kind = 'none' OR state IN ('building', 'filled', 'retired')) LOOP
        EXECUTE format('DROP TABLE IF EXISTS argus.%I', v_unit.table_name);
        DELETE FROM argus.search_units WHERE id = v_unit.id;
    END LOOP;
    IF p_kind = 'none' THEN
        UPDATE argus.segments SET index_name = NULL, indexed_at = NULL WHERE model = p_model;
    END IF;
    -- In-place segment indexes (before units) that argus.segments does not record.
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

-- prune: the model's units go with its partition.
CREATE OR REPLACE FUNCTION argus.drop_model(p_model text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET lock_timeout = '2s' AS $$
DECLARE
    v_model argus.models%ROWTYPE;
    v_unit  text;
BEGIN
    SELECT * INTO v_model FROM argus.models WHERE model = p_model FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    FOR v_unit IN SELECT table_name FROM argus.search_units WHERE model = p_model LOOP
        EXECUTE format('DROP TABLE IF EXISTS argus.%I', v_unit);
    END LOOP;
    EXECUTE format('DROP TABLE IF EXISTS argus.%I', v_model.partition_name);
    DELETE FROM argus.unit_changes WHERE model = p_model;
    DELETE FROM argus.models WHERE model = p_model;
    RETURN true;
END;
$$;

REVOKE ALL ON FUNCTION argus.unit_straggler(),
                       argus.unit_next(text, integer, interval, boolean),
                       argus.unit_fill(bigint),
                       argus.unit_publish(bigint),
                       argus.drop_retired_units(text, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION argus.unit_next(text, integer, interval, boolean),
                          argus.unit_fill(bigint),
                          argus.unit_publish(bigint),
                          argus.drop_retired_units(text, interval) TO argus_worker;
GRANT SELECT ON argus.search_units TO argus_worker, argus_reader;
