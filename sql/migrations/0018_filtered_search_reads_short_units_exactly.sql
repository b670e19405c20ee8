-- A project-filtered search reads each short unit exactly (issue 27, suspicion a).
--
-- A unit's filtered ANN scan (hnsw.iterative_scan) stops at hnsw.max_scan_tuples
-- (20,000) or at its memory cap (work_mem x hnsw.scan_mem_multiplier), whichever
-- comes first. The planner takes that scan when it believes the project holds a fair
-- share of the unit; it judges from the project's share of all frames, but a
-- project's frames cluster in time, so it may hold a few rows of an old, large unit
-- while most of its frames are newer. Measured (60,000-row HNSW unit, 50 projects, a
-- project of 8 rows in it and 2,000 newer frames, limit 10): the scan walked ~16,000
-- of the unit's tuples and found 2 of the 8. 0012's second pass did not mend it:
--   * where the project's newer frames had vectors, the uncovered segment's exact
--     scan filled the limit, so no second pass ran: 10 hits, 4 of the true 10;
--   * where they had none (queued), the second pass (relaxed order, max_scan_tuples
--     = the unit's rows) still hit the memory cap: 4-5 of the 8, in ~300 ms.
--
-- Now, in a project-filtered search, every unit that gave fewer candidates than it
-- was asked for (least(2 * limit, its rows)) is read again exactly: the project's
-- frames in the unit's frame-id range, joined to the unit by its primary key and
-- sorted (no ANN index: the OFFSET 0 fence keeps the ORDER BY off it). That is the
-- true answer for that unit, at the cost of reading the project's frames there (the
-- planner picks frames' project index or its id range, whichever is smaller); ~1 ms
-- for the case above. A unit that gave what it was asked for keeps its ANN answer,
-- and one that was exact already (the planner's choice for a small project) costs
-- the same read again. Unfiltered searches keep 0012's second pass for dead entries.

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
    v_wanted     bigint[];  -- per unit branch (1-based): the candidates it should give
    v_tables     text[];    -- per unit branch: its unit's table
    v_exact      text[] := '{}';  -- the units a project-filtered second pass reads exactly
    v_uncovered  text;
    v_next       bigint;
    v_candidates text;
    v_try        integer := 0;
    v_pass       integer := 1;
    v_ids        bigint[];
    v_distances  double precision[];
    v_from       integer[];
    v_short      boolean;
    v_most       bigint;
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
    PERFORM set_config('ivfflat.probes', coalesce((
        SELECT max(ceil(10.0 * argus.ivfflat_lists(u.trained_rows)
                        / argus.ivfflat_lists(u.rows)))::integer
        FROM argus.search_units u
        WHERE u.model = p_model AND u.state = 'live' AND u.kind = 'ivfflat'), 10)::text, true);
    PERFORM set_config('ivfflat.iterative_scan', 'relaxed_order', true);
    LOOP
        v_try := v_try + 1;
        v_wanted := ARRAY[]::bigint[];
        v_tables := ARRAY[]::text[];
        IF p_video_id IS NOT NULL THEN
            v_candidates :=
                'SELECT 0 AS branch, e.frame_id, '
                '       e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) AS distance '
                'FROM argus.frames f JOIN argus.frame_embeddings e '
                '  ON e.frame_id = f.id AND e.model = $2 '
                'WHERE f.video_id = $3 AND e.embedding IS NOT NULL '
                '  AND ($4::text IS NULL OR f.project_id = $4) '
                'OFFSET 0';  -- an optimisation fence: the video's rows, exactly
        ELSE
            v_branches := ARRAY[]::text[];
            v_uncovered := '';
            v_next := 0;
            FOR v_unit IN SELECT u.table_name, u.lower_bound, u.upper_bound, u.rows
                          FROM argus.search_units u
                          WHERE u.model = p_model AND u.state = 'live'
                          ORDER BY u.lower_bound LOOP
                v_wanted := v_wanted || least(2 * p_limit, coalesce(v_unit.rows, 0));
                v_tables := v_tables || v_unit.table_name::text;
                IF v_unit.table_name::text = ANY (v_exact) THEN
                    -- Exact: the project's frames in the unit's range, by primary key.
                    v_branches := v_branches || format(
                        '(SELECT x.branch, x.frame_id, x.distance FROM ('
                        '  SELECT %s AS branch, u.frame_id, u.embedding <=> $1::halfvec(%%1$s) AS distance '
                        '  FROM argus.frames f JOIN argus.%I u ON u.frame_id = f.id '
                        '  WHERE f.project_id = $4 AND f.id >= %s AND f.id < %s '
                        '  OFFSET 0) x ORDER BY x.distance LIMIT $5 * 2)',
                        cardinality(v_wanted), v_unit.table_name,
                        v_unit.lower_bound, v_unit.upper_bound);
                ELSE
                    v_branches := v_branches || format(
                        '(SELECT %s AS branch, u.frame_id, u.embedding <=> $1::halfvec(%%1$s) AS distance '
                        'FROM argus.%I u %s ORDER BY distance LIMIT $5 * 2)',
                        cardinality(v_wanted), v_unit.table_name,
                        CASE WHEN p_project_id IS NULL THEN ''
                             ELSE 'JOIN argus.frames f ON f.id = u.frame_id WHERE f.project_id = $4' END);
                END IF;
                IF v_unit.lower_bound > v_next THEN
                    v_uncovered := v_uncovered || format(' OR (e.frame_id >= %s AND e.frame_id < %s)',
                                                         v_next, v_unit.lower_bound);
                END IF;
                v_next := greatest(v_next, v_unit.upper_bound);
            END LOOP;
            v_uncovered := format('(e.frame_id >= %s%s)', v_next, v_uncovered);
            v_branches := v_branches || (
                '(SELECT 0 AS branch, e.frame_id, '
                '        e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) AS distance '
                'FROM argus.frame_embeddings e '
                || CASE WHEN p_project_id IS NULL THEN ''
                        ELSE 'JOIN argus.frames f ON f.id = e.frame_id ' END ||
                'WHERE e.model = $2 AND e.embedding IS NOT NULL AND ' || v_uncovered
                || CASE WHEN p_project_id IS NULL THEN '' ELSE ' AND f.project_id = $4' END ||
                ' ORDER BY distance LIMIT $5 * 2)');
            v_candidates := array_to_string(v_branches, ' UNION ALL ');
        END IF;
        BEGIN
            -- Every branch's candidates, kept with the branch that gave them; the
            -- frames' rows are read once the pass is final.
            EXECUTE format(
                'WITH candidates AS MATERIALIZED (' || v_candidates || ') '
                'SELECT array_agg(c.frame_id ORDER BY c.distance, c.frame_id), '
                '       array_agg(c.distance::double precision ORDER BY c.distance, c.frame_id), '
                '       array_agg(c.branch ORDER BY c.distance, c.frame_id) '
                'FROM candidates c', v_model.dimension)
            INTO v_ids, v_distances, v_from
            USING p_query, p_model, p_video_id, p_project_id, p_limit;
        EXCEPTION WHEN undefined_table THEN
            IF v_try >= 3 THEN
                RAISE;
            END IF;
            CONTINUE;
        END;
        v_ids := coalesce(v_ids, '{}');
        v_distances := coalesce(v_distances, '{}');
        v_from := coalesce(v_from, '{}');
        EXIT WHEN v_pass > 1 OR p_video_id IS NOT NULL OR cardinality(v_wanted) = 0;
        IF p_project_id IS NULL THEN
            -- A unit short of what it was asked for returned dead entries.
            SELECT EXISTS (
                SELECT 1 FROM generate_subscripts(v_wanted, 1) AS b (i)
                WHERE (SELECT count(*) FROM unnest(v_from) AS g (branch) WHERE g.branch = b.i)
                      < v_wanted[b.i]) INTO v_short;
            EXIT WHEN NOT v_short;
            SELECT max(u.rows) INTO v_most FROM argus.search_units u
            WHERE u.model = p_model AND u.state = 'live';
            PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
            PERFORM set_config('hnsw.max_scan_tuples',
                               greatest(20000, coalesce(v_most, 0))::text, true);
        ELSE
            -- A unit short of what it was asked for either holds no more of the
            -- project or stopped its scan early (tuple or memory cap, dead entries):
            -- read those units exactly (keyed by table: a retry may list others).
            SELECT coalesce(array_agg(v_tables[b.i]), '{}') INTO v_exact
            FROM generate_subscripts(v_wanted, 1) AS b (i)
            WHERE (SELECT count(*) FROM unnest(v_from) AS g (branch) WHERE g.branch = b.i)
                  < v_wanted[b.i];
            EXIT WHEN cardinality(v_exact) = 0;
        END IF;
        v_pass := v_pass + 1;
        v_try := 0;
    END LOOP;
    RETURN QUERY
    SELECT f.id, f.video_id, f.frame_index, f.timestamp_ms, f.image_uri, 1 - h.distance
    FROM unnest(v_ids, v_distances) WITH ORDINALITY AS h (id, distance, ord)
    JOIN argus.frames f ON f.id = h.id
    ORDER BY h.ord
    LIMIT p_limit;
END;
$$;
