-- argus.unit_changes stays as small as the stragglers of the units being built
-- (issue 27, suspicion c).
--
-- The straggler trigger (0007) logs every late write to a covered segment in
-- argus.unit_changes, for a unit being built over that range to replay at its
-- publish. Only a publish (or an ivfflat append) over the range removed them,
-- so a straggler in a range no unit was building again, such as an operator's
-- DELETE of frames in an old, top-tier unit, stayed logged for good: the log
-- grew without bound, and every publish over it read all of it.
--
-- A logged row is needed only while a building or filled unit covers its frame
-- id: a unit started later copies its rows from a snapshot after the straggler
-- committed. The compactor prunes the rest each pass, under the indexer's lock
-- (so no unit starts meanwhile); a straggler still in flight is pruned or
-- replayed the next pass.
CREATE FUNCTION argus.prune_unit_changes(p_model text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, argus
SET lock_timeout = '2s' AS $$
DECLARE
    v_pruned bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('argus-embedder:indexer')) THEN
        RETURN 0;
    END IF;
    DELETE FROM argus.unit_changes c
    WHERE c.model = p_model
      AND NOT EXISTS (SELECT 1 FROM argus.search_units u
                      WHERE u.model = p_model AND u.state IN ('building', 'filled')
                        AND c.frame_id >= u.lower_bound AND c.frame_id < u.upper_bound);
    GET DIAGNOSTICS v_pruned = ROW_COUNT;
    RETURN v_pruned;
END;
$$;

REVOKE ALL ON FUNCTION argus.prune_unit_changes(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION argus.prune_unit_changes(text) TO argus_worker;
