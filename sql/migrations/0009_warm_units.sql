-- A new search unit goes live with its index in shared buffers (issue 18).
--
-- A bulk-built index is written around the buffer pool, so the first queries after
-- a unit is published read every page they touch from the operating system (or the
-- disk). Measured here on a 1M-vector ivfflat unit with shared_buffers holding it:
-- 1,259-2,067 of ~2,300 pages a query read from outside the pool before a prewarm,
-- 10 (the heap rows it returns) after; median 11.9 -> 7.6 ms. Like Milvus loading a
-- segment before it serves, the compactor now loads a filled unit's index into
-- shared buffers between its build and its publish (argus.unit_prewarm).
--
-- Only where it helps: pg_prewarm (contrib) must be installed, which this migration
-- does where it may (it needs CREATE on the database; a role that lacks it keeps
-- searching, cold), and the index must fit in half of shared_buffers: a larger one
-- would only push other hot pages out and then itself.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_prewarm')
       AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_prewarm') THEN
        CREATE EXTENSION pg_prewarm;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'pg_prewarm not installed (%): new search units will start cold', SQLERRM;
END;
$$;

-- Load a unit's indexes into shared buffers; returns the blocks loaded, 0 where
-- pg_prewarm is absent or the indexes would take more than half of the pool.
CREATE FUNCTION argus.unit_prewarm(p_unit bigint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_schema  name;
    v_table   regclass;
    v_indexes regclass[];
    v_bytes   bigint;
    v_pool    bigint;
    v_index   regclass;
    v_blocks  bigint := 0;
    v_loaded  bigint;
BEGIN
    SELECT n.nspname INTO v_schema
    FROM pg_extension x JOIN pg_namespace n ON n.oid = x.extnamespace
    WHERE x.extname = 'pg_prewarm';
    SELECT to_regclass(format('argus.%I', u.table_name)) INTO v_table
    FROM argus.search_units u WHERE u.id = p_unit;
    IF v_schema IS NULL OR v_table IS NULL THEN
        RETURN 0;
    END IF;
    SELECT array_agg(i.indexrelid::regclass), sum(pg_relation_size(i.indexrelid))
    INTO v_indexes, v_bytes
    FROM pg_index i WHERE i.indrelid = v_table AND NOT i.indisprimary;
    SELECT s.setting::bigint * current_setting('block_size')::bigint INTO v_pool
    FROM pg_settings s WHERE s.name = 'shared_buffers';
    IF v_bytes > v_pool / 2 THEN
        RETURN 0;
    END IF;
    FOREACH v_index IN ARRAY coalesce(v_indexes, '{}') LOOP
        EXECUTE format('SELECT %I.pg_prewarm($1)', v_schema) INTO STRICT v_loaded USING v_index;
        v_blocks := v_blocks + v_loaded;
    END LOOP;
    RETURN v_blocks;
END;
$$;

REVOKE ALL ON FUNCTION argus.unit_prewarm(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION argus.unit_prewarm(bigint) TO argus_worker;
