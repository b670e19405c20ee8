-- A bounded error history per job (issue 16): a job that keeps failing (transient
-- faults give their attempt back, so they never run out) grew its `errors` array,
-- and its row, without end. `errors` keeps the newest entries; `errors_total`
-- counts every error, and is what the transient backoff grows with.

ALTER TABLE argus.embedding_jobs ADD COLUMN errors_total integer NOT NULL DEFAULT 0;
-- Only rows with a history: most finished jobs have none and stay untouched.
UPDATE argus.embedding_jobs SET errors_total = jsonb_array_length(errors)
WHERE errors <> '[]'::jsonb;

-- `p_errors` with `p_entry` appended, keeping the newest `c_kept` entries.
CREATE FUNCTION argus.job_errors_append(p_errors jsonb, p_entry jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- Entries of a job's error history kept: enough to see a pattern (the same
    -- error every attempt, or a lease expiring), small enough for the row to stay put.
    c_kept  CONSTANT integer := 20;
    v_kept  jsonb := p_errors || jsonb_build_array(p_entry);
BEGIN
    WHILE jsonb_array_length(v_kept) > c_kept LOOP
        v_kept := v_kept - 0;
    END LOOP;
    RETURN v_kept;
END;
$$;

REVOKE ALL ON FUNCTION argus.job_errors_append(jsonb, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION argus.job_errors_append(jsonb, jsonb) TO argus_worker;
