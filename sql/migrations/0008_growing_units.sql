-- Search cost that stays flat as an ivfflat model's corpus grows (issue 18).
--
-- 0007's tiered merges leave up to FANOUT - 1 live units per tier, and each
-- probe costs the same few milliseconds, so hnsw search still grows with the
-- number of tiers (measured: 1 unit 2.2 ms p95, 7 units 30 ms at 10x the
-- vectors). An IVFFlat index, unlike HNSW, takes inserts at close to the COPY
-- rate (its lists are fixed; a row goes to its nearest centroid), so an
-- ivfflat model keeps one large unit and grows it in place:
--
--   * argus.unit_append copies the next sealed segment into the live unit just
--     below it (or folds the smaller of two adjacent live units into the larger),
--     in one commit that also moves the unit's upper bound: a search's snapshot
--     sees either the segment scanned exactly and the unit without its rows, or
--     the unit with them and the segment covered, never both, never neither;
--   * a unit that has grown to 2x the rows its lists were trained on is rebuilt
--     (argus.unit_next's first step for ivfflat), and search probes a grown unit
--     in proportion (10 probes at its build size, 5 at twice it), so a query
--     reads ~10 lists of ~1,000 rows (lists = rows / 1000 at the build) whatever
--     the corpus size, and each vector is built into an index ~2 + 1 times (a
--     geometric series of rebuilds plus its append).
--
-- hnsw models keep 0007's tiers: an HNSW insert costs ~1 ms, too slow to grow a
-- unit at a GPU's rate.
--
-- search_frames becomes STABLE: every statement in it shares the caller's
-- snapshot, so the live units it reads and the rows it then scans in them are
-- one moment's (a VOLATILE function took a new snapshot per statement, so a
-- unit published or grown between the two could show a vector twice, or a
-- straggler replayed into a new unit not at all).

-- The lists of an IVFFlat unit built over p_rows rows: pgvector's advice (rows / 1000
-- up to 1M rows, sqrt(rows) past it), at most 4000 (a probe scans every centroid).
CREATE FUNCTION argus.ivfflat_lists(p_rows bigint) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN greatest(1, least(4000, CASE WHEN p_rows <= 1000000 THEN p_rows / 1000
                                    ELSE sqrt(p_rows)::bigint END))::integer;

ALTER TABLE argus.search_units ADD COLUMN trained_rows bigint NULL;
UPDATE argus.search_units SET trained_rows = rows;
COMMENT ON COLUMN argus.search_units.trained_rows IS
    'rows when the unit''s index was built (ivfflat: its lists were trained on these); '
    'rows grows past it by unit_append';

-- Grow an ivfflat model's live unit by the sealed segment just above it, else
-- fold the smaller of two adjacent live units into the larger; one step per call,
-- one compactor in the fleet (the indexer's lock). Nothing while a unit is being
-- built (its copy must not miss an append) or for a unit due for its rebuild.
-- Returns the grown unit, its new range and the rows added; no row: nothing to do.
CREATE FUNCTION argus.unit_append(p_model text, p_quiet interval)
RETURNS TABLE (unit_id bigint, table_name text, lower_bound bigint, upper_bound bigint,
               appended bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
SET lock_timeout = '2s' AS $$
DECLARE
    v_model   argus.models%ROWTYPE;
    v_unit    argus.search_units%ROWTYPE;
    v_small   argus.search_units%ROWTYPE;
    v_segment argus.segments%ROWTYPE;
    v_rows    bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('argus-embedder:indexer')) THEN
        RETURN;
    END IF;
    SELECT * INTO v_model FROM argus.models m WHERE m.model = p_model;
    IF NOT FOUND OR v_model.index_kind <> 'ivfflat' OR EXISTS (
            SELECT 1 FROM argus.search_units u
            WHERE u.model = p_model AND u.state IN ('building', 'filled')) THEN
        RETURN;
    END IF;
    -- A sealed segment no live unit covers, right above a live unit.
    SELECT u.* INTO v_unit
    FROM argus.search_units u
    WHERE u.model = p_model AND u.state = 'live' AND u.kind = 'ivfflat'
      AND u.rows < 2 * greatest(u.trained_rows, 1)
      AND u.upper_bound IN (SELECT s FROM argus.sealed_segments(p_model, p_quiet) AS s)
      AND NOT EXISTS (SELECT 1 FROM argus.search_units c
                      WHERE c.model = p_model AND c.state = 'live'
                        AND u.upper_bound >= c.lower_bound AND u.upper_bound < c.upper_bound)
    ORDER BY u.lower_bound LIMIT 1;
    IF FOUND THEN
        SELECT * INTO v_segment FROM argus.segments s
        WHERE s.model = p_model AND s.lower_bound = v_unit.upper_bound;
        -- No straggler in flight, none until commit; after it, the trigger keeps the
        -- unit up to date.
        EXECUTE format('LOCK TABLE argus.%I IN SHARE MODE', v_segment.partition_name);
        IF NOT EXISTS (SELECT 1 FROM pg_trigger t
                       WHERE t.tgrelid = format('argus.%I', v_segment.partition_name)::regclass
                         AND t.tgname = 'argus_unit_straggler') THEN
            EXECUTE format('CREATE TRIGGER argus_unit_straggler AFTER INSERT OR DELETE ON argus.%I '
                           'FOR EACH ROW EXECUTE FUNCTION argus.unit_straggler()',
                           v_segment.partition_name);
        END IF;
        EXECUTE format('INSERT INTO argus.%I (frame_id, embedding) '
                       'SELECT frame_id, embedding::halfvec(%s) FROM argus.%I '
                       'WHERE embedding IS NOT NULL',
                       v_unit.table_name, v_model.dimension, v_segment.partition_name);
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        -- Stragglers logged for an earlier, abandoned unit: this copy already has them.
        DELETE FROM argus.unit_changes c
        WHERE c.model = p_model AND c.frame_id >= v_segment.lower_bound
          AND c.frame_id < v_segment.upper_bound;
        UPDATE argus.search_units u SET upper_bound = v_segment.upper_bound, rows = u.rows + v_rows
        WHERE u.id = v_unit.id;
        UPDATE argus.segments s SET index_name = v_unit.table_name, indexed_at = now()
        WHERE s.model = p_model AND s.lower_bound = v_segment.lower_bound;
        RETURN QUERY SELECT v_unit.id, v_unit.table_name, v_unit.lower_bound, v_segment.upper_bound,
                            v_rows;
        RETURN;
    END IF;
    -- Two adjacent live units (a segment that sealed out of order got its own):
    -- the smaller goes into the larger, and is retired in the same commit.
    SELECT CASE WHEN a.rows >= b.rows THEN a.id ELSE b.id END,
           CASE WHEN a.rows >= b.rows THEN b.id ELSE a.id END
    INTO v_unit.id, v_small.id
    FROM argus.search_units a
    JOIN argus.search_units b
      ON b.model = a.model AND b.state = 'live' AND b.kind = 'ivfflat'
     AND b.lower_bound = a.upper_bound
    WHERE a.model = p_model AND a.state = 'live' AND a.kind = 'ivfflat'
      AND greatest(a.rows, b.rows) < 2 * greatest(
            CASE WHEN a.rows >= b.rows THEN a.trained_rows ELSE b.trained_rows END, 1)
    ORDER BY a.lower_bound LIMIT 1;
    IF v_small.id IS NULL THEN
        RETURN;
    END IF;
    SELECT * INTO v_unit FROM argus.search_units u WHERE u.id = v_unit.id;
    SELECT * INTO v_small FROM argus.search_units u WHERE u.id = v_small.id;
    FOR v_segment IN SELECT * FROM argus.segments s
                     WHERE s.model = p_model AND s.lower_bound >= v_small.lower_bound
                       AND s.lower_bound < v_small.upper_bound ORDER BY s.lower_bound LOOP
        EXECUTE format('LOCK TABLE argus.%I IN SHARE MODE', v_segment.partition_name);
    END LOOP;
    EXECUTE format('INSERT INTO argus.%I (frame_id, embedding) SELECT frame_id, embedding '
                   'FROM argus.%I', v_unit.table_name, v_small.table_name);
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    UPDATE argus.search_units u SET state = 'retired', retired_at = now() WHERE u.id = v_small.id;
    UPDATE argus.search_units u
    SET lower_bound = least(u.lower_bound, v_small.lower_bound),
        upper_bound = greatest(u.upper_bound, v_small.upper_bound),
        rows = u.rows + v_rows
    WHERE u.id = v_unit.id
    RETURNING u.lower_bound, u.upper_bound INTO v_unit.lower_bound, v_unit.upper_bound;
    UPDATE argus.segments s SET index_name = v_unit.table_name, indexed_at = now()
    WHERE s.model = p_model AND s.lower_bound >= v_small.lower_bound
      AND s.lower_bound < v_small.upper_bound;
    RETURN QUERY SELECT v_unit.id, v_unit.table_name, v_unit.lower_bound, v_unit.upper_bound,
                        v_rows;
END;
$$;

CREATE OR REPLACE FUNCTION argus.unit_next(
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
    -- ivfflat: a live unit grown to RETRAIN_GROWTH (2) times the rows its lists
    -- were trained on is rebuilt first (same range, next tier), before its
    -- appends make every probe read more rows.
    IF v_model.index_kind = 'ivfflat' AND NOT p_tier0_only THEN
        SELECT tier + 1, lower_bound, upper_bound INTO v_tier, v_lower, v_upper
        FROM argus.search_units
        WHERE model = p_model AND state = 'live' AND kind = 'ivfflat'
          AND rows >= 2 * greatest(trained_rows, 1)
        ORDER BY rows DESC LIMIT 1;
    END IF;
    -- A sealed segment no live unit covers: tier 0.
    IF v_lower IS NULL THEN
        SELECT s INTO v_lower FROM argus.sealed_segments(p_model, p_quiet) AS s
        WHERE NOT EXISTS (SELECT 1 FROM argus.search_units u
                          WHERE u.model = p_model AND u.state = 'live'
                            AND s >= u.lower_bound AND s < u.upper_bound)
        ORDER BY s LIMIT 1;
        IF v_lower IS NOT NULL THEN
            v_tier := 0;
            v_upper := v_lower + v_model.segment_rows;
        END IF;
    END IF;
    -- hnsw: FANOUT live units of one tier filling an aligned range of the next
    -- (ivfflat units grow by argus.unit_append instead).
    IF v_lower IS NULL AND NOT p_tier0_only AND v_model.index_kind <> 'ivfflat' THEN
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

CREATE OR REPLACE FUNCTION argus.unit_fill(p_unit bigint)
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
            'WITH (lists = %s)', v_unit.table_name, argus.ivfflat_lists(v_rows));
    END IF;
    EXECUTE format('ANALYZE argus.%I', v_unit.table_name);
    UPDATE argus.search_units
    SET state = 'filled', rows = v_rows, trained_rows = v_rows,
        build_seconds = extract(epoch FROM clock_timestamp() - v_started)
    WHERE id = p_unit;
    RETURN v_rows;
END;
$$;

CREATE OR REPLACE FUNCTION argus.search_frames(
    p_model text, p_query vector, p_limit integer,
    p_video_id text DEFAULT NULL, p_project_id text DEFAULT NULL
) RETURNS TABLE (frame_id bigint, video_id text, frame_index integer,
                 timestamp_ms bigint, image_uri text, score double precision)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, public, pg_temp AS $$
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
    -- Iterative scans only where a filter or a limit past ef_search needs more than
    -- the first ef_search candidates: measured ~25 % slower per unit otherwise.
    PERFORM set_config('hnsw.iterative_scan',
                       CASE WHEN p_project_id IS NOT NULL OR 2 * p_limit > 1000
                            THEN 'strict_order' ELSE 'off' END, true);
    -- 10 probes of a unit built at its size; a unit grown by appends since its build
    -- has fewer, fuller lists (the same cells, denser), so it is probed in proportion:
    -- the same share of the space, the same ~10 lists' worth of rows, whatever its size.
    PERFORM set_config('ivfflat.probes', coalesce((
        SELECT max(ceil(10.0 * argus.ivfflat_lists(u.trained_rows)
                        / argus.ivfflat_lists(u.rows)))::integer
        FROM argus.search_units u
        WHERE u.model = p_model AND u.state = 'live' AND u.kind = 'ivfflat'), 10)::text, true);
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

REVOKE ALL ON FUNCTION argus.unit_append(text, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION argus.unit_append(text, interval) TO argus_worker;
GRANT EXECUTE ON FUNCTION argus.ivfflat_lists(bigint) TO argus_worker, argus_reader;
