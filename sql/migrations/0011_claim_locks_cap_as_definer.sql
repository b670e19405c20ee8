-- A capped project no longer stops the fleet's claims (issue 27, finding 1).
--
-- claim_jobs (0005) runs with the caller's rights and, for a project with
-- max_running, locked its argus.projects row FOR NO KEY UPDATE SKIP LOCKED to
-- count its running jobs under that lock. A row lock needs UPDATE on the table,
-- and argus_worker holds only SELECT on argus.projects (the operator's
-- settings, which the daemon must not change): as an argus_worker login every
-- claim that reached a capped lane failed with "permission denied for table
-- projects" and rolled back, uncapped projects' jobs included. Only a superuser
-- or the schema's owner could claim, which is how the tests ran.
--
-- The lock now goes through a definer that does that and nothing else: it
-- takes the row lock (SKIP LOCKED, as before) and says whether it got it; the
-- lock is held to the end of the caller's transaction, as before. argus_worker
-- gets EXECUTE on it, no right on the table.

CREATE FUNCTION argus.lock_project_cap(p_project_id text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, argus AS $$
BEGIN
    PERFORM 1 FROM argus.projects p WHERE p.project_id = p_project_id
    FOR NO KEY UPDATE SKIP LOCKED;
    RETURN FOUND;
END;
$$;

REVOKE ALL ON FUNCTION argus.lock_project_cap(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION argus.lock_project_cap(text) TO argus_worker;

-- 0005's claim, with the cap's lock taken by the definer above; nothing else changes.
CREATE OR REPLACE FUNCTION argus.claim_jobs(
    p_model text, p_worker_id text, p_limit integer, p_lease_seconds double precision,
    p_wait boolean DEFAULT false
) RETURNS TABLE (id bigint, video_id text, model text, status text, priority integer,
                 attempts integer, max_attempts integer, failures integer, lease_token uuid,
                 run_at timestamptz, queue_wait interval, busy boolean)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_expired  bigint[];
    v_taken    bigint[] := '{}';
    v_skipped  bigint[] := '{}';
    v_busy     boolean := false;
    v_block    boolean := p_wait;  -- only the first pick may wait
    v_top      integer;
    v_lane     argus.project_lanes%ROWTYPE;
    v_front    bigint[];
    v_alone    boolean;
    v_weight   integer;
    v_cap      integer;
    v_running  integer;
    v_next     double precision;
    v_want     integer;
    v_got      bigint[];
    v_left     integer;
BEGIN
    SELECT coalesce(array_agg(e.id ORDER BY e.lease_expires_at), '{}') INTO v_expired
    FROM (SELECT j.id, j.lease_expires_at
          FROM argus.embedding_jobs j
          WHERE j.status = 'running' AND j.lease_expires_at < now()
            -- a crash loop backs off too: the next attempt waits 2^attempts s past expiry
            AND j.lease_expires_at + make_interval(secs => least(600, 2 ^ least(j.attempts, 10)))
                < now()
            AND (j.model IS NULL OR j.model = p_model)
          ORDER BY j.lease_expires_at
          LIMIT p_limit
          FOR UPDATE OF j SKIP LOCKED) e;

    LOOP
        v_left := p_limit - cardinality(v_expired) - cardinality(v_taken);
        EXIT WHEN v_left <= 0;
        -- The two lowest lanes of the highest priority, read without a lock.
        SELECT max(l.priority) INTO v_top
        FROM argus.project_lanes l WHERE l.lane_id <> ALL (v_skipped);
        EXIT WHEN v_top IS NULL;
        SELECT array_agg(f.lane_id ORDER BY f.pass, f.lane_id DESC) INTO v_front
        FROM (SELECT l.lane_id, l.pass FROM argus.project_lanes l
              WHERE l.priority = v_top AND l.lane_id <> ALL (v_skipped)
              ORDER BY l.pass, l.lane_id DESC LIMIT 2) f;
        v_alone := cardinality(v_front) = 1;
        IF v_alone THEN
            -- Nobody to take turns with: claimers share the lane as they share
            -- the jobs (SKIP LOCKED), and its pass stays where it is, which is
            -- where a lane opening beside it starts (and, on the tie, goes first).
            SELECT * INTO v_lane FROM argus.project_lanes l WHERE l.lane_id = v_front[1];
            IF NOT FOUND THEN
                CONTINUE;  -- closed since: read the lanes again
            END IF;
        ELSIF v_block THEN
            SELECT * INTO v_lane FROM argus.project_lanes l
            WHERE l.priority = v_top AND l.lane_id <> ALL (v_skipped)
            ORDER BY l.pass, l.lane_id DESC LIMIT 1
            FOR NO KEY UPDATE;
            v_block := false;
        ELSE
            SELECT * INTO v_lane FROM argus.project_lanes l
            WHERE l.priority = v_top AND l.lane_id <> ALL (v_skipped)
            ORDER BY l.pass, l.lane_id DESC LIMIT 1
            FOR NO KEY UPDATE SKIP LOCKED;
        END IF;
        IF NOT FOUND THEN
            -- Lanes at this priority exist but other claimers hold them: a lower
            -- priority must not start while they may still have due work.
            v_busy := true;
            EXIT;
        END IF;

        SELECT p.weight, p.max_running INTO v_weight, v_cap
        FROM argus.projects p WHERE p.project_id = v_lane.project_id;
        v_weight := coalesce(v_weight, 1);
        v_want := v_left;
        v_next := NULL;
        IF NOT v_alone THEN
            SELECT min(l.pass) INTO v_next FROM argus.project_lanes l
            WHERE l.priority = v_top AND l.lane_id <> v_lane.lane_id
              AND l.lane_id <> ALL (v_skipped);
        END IF;
        IF v_next IS NOT NULL THEN
            v_want := least(v_want, greatest(1, ceil((v_next - v_lane.pass) * v_weight)::integer));
        END IF;

        IF v_cap IS NOT NULL THEN
            -- The definer takes the row lock: argus_worker may only read the settings.
            IF NOT argus.lock_project_cap(v_lane.project_id) THEN
                v_busy := true;
                v_skipped := v_skipped || v_lane.lane_id;
                CONTINUE;
            END IF;
            -- A statement after the lock: it sees every claim committed before it.
            -- This call's own takes count too: they turn running only at its end.
            SELECT count(*) INTO v_running FROM argus.embedding_jobs j
            WHERE j.project_id = v_lane.project_id
              AND (j.status = 'running' OR j.id = ANY (v_taken));
            v_want := least(v_want, v_cap - v_running);
            IF v_want <= 0 THEN
                PERFORM argus.keep_lane_in_step(v_lane.lane_id, v_next);
                v_skipped := v_skipped || v_lane.lane_id;
                CONTINUE;
            END IF;
        END IF;

        IF v_lane.project_id IS NULL THEN
            SELECT coalesce(array_agg(q.id), '{}') INTO v_got FROM (
                SELECT j.id FROM argus.embedding_jobs j
                WHERE j.status = 'queued' AND j.project_id IS NULL
                  AND j.priority = v_lane.priority AND j.run_at <= now()
                  AND j.id <> ALL (v_taken)  -- still queued to this call's snapshot
                  AND (j.model IS NULL OR j.model = p_model)
                  AND NOT EXISTS (
                      SELECT 1 FROM argus.embedding_jobs r
                      WHERE r.status = 'running' AND r.video_id = j.video_id
                        AND coalesce(r.model, p_model) = coalesce(j.model, p_model))
                ORDER BY j.run_at, j.id LIMIT v_want
                FOR UPDATE OF j SKIP LOCKED) q;
        ELSE
            SELECT coalesce(array_agg(q.id), '{}') INTO v_got FROM (
                SELECT j.id FROM argus.embedding_jobs j
                WHERE j.status = 'queued' AND j.project_id = v_lane.project_id
                  AND j.priority = v_lane.priority AND j.run_at <= now()
                  AND j.id <> ALL (v_taken)  -- still queued to this call's snapshot
                  AND (j.model IS NULL OR j.model = p_model)
                  AND NOT EXISTS (
                      SELECT 1 FROM argus.embedding_jobs r
                      WHERE r.status = 'running' AND r.video_id = j.video_id
                        AND coalesce(r.model, p_model) = coalesce(j.model, p_model))
                ORDER BY j.run_at, j.id LIMIT v_want
                FOR UPDATE OF j SKIP LOCKED) q;
        END IF;

        IF cardinality(v_got) > 0 THEN
            v_taken := v_taken || v_got;
        END IF;
        IF cardinality(v_got) > 0 AND NOT v_alone THEN
            UPDATE argus.project_lanes l SET pass = l.pass + cardinality(v_got)::float8 / v_weight
            WHERE l.lane_id = v_lane.lane_id;
        ELSIF cardinality(v_got) = 0 THEN
            -- Nothing claimable here now (jobs not due, of another model, or
            -- waiting for a running twin) or nothing queued at all: close it then.
            PERFORM argus.close_project_lane(v_lane.lane_id);
            PERFORM argus.keep_lane_in_step(v_lane.lane_id, v_next);
        END IF;
        IF cardinality(v_got) < v_want THEN
            v_skipped := v_skipped || v_lane.lane_id;
        END IF;
    END LOOP;

    IF cardinality(v_expired) = 0 AND cardinality(v_taken) = 0 THEN
        IF v_busy THEN
            RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::text, NULL::text,
                NULL::integer, NULL::integer, NULL::integer, NULL::integer, NULL::uuid,
                NULL::timestamptz, NULL::interval, true;
        END IF;
        RETURN;
    END IF;

    RETURN QUERY
    WITH candidate AS (
        SELECT c.id, c.ord, c.ord <= cardinality(v_expired) AS reclaimed
        FROM unnest(v_expired || v_taken) WITH ORDINALITY AS c (id, ord)
    ), progress AS (
        SELECT c.id, c.ord, c.reclaimed AND j.attempts >= j.max_attempts AS exhausted
        FROM candidate c JOIN argus.embedding_jobs j ON j.id = c.id
    ), claimed AS (
        UPDATE argus.embedding_jobs j SET
            status           = CASE WHEN p.exhausted THEN 'failed' ELSE 'running' END,
            model            = coalesce(j.model, p_model),
            model_resolved   = j.model_resolved OR j.model IS NULL,
            attempts         = CASE WHEN p.exhausted THEN j.attempts ELSE j.attempts + 1 END,
            worker_id        = p_worker_id,
            lease_token      = CASE WHEN p.exhausted THEN NULL ELSE gen_random_uuid() END,
            lease_expires_at = CASE WHEN p.exhausted THEN NULL
                                    ELSE now() + make_interval(secs => p_lease_seconds) END,
            started_at       = coalesce(j.started_at, now()),
            finished_at      = CASE WHEN p.exhausted THEN now() END,
            last_error       = CASE WHEN p.exhausted OR j.status = 'running'
                                    THEN 'lease expired (worker ' || coalesce(j.worker_id, '?')
                                         || ' stopped)'
                                    ELSE j.last_error END,
            errors           = CASE WHEN j.status = 'running' THEN argus.job_errors_append(
                                   j.errors, jsonb_build_object(
                                       'attempt', j.attempts, 'worker', j.worker_id,
                                       'error', 'lease expired', 'at', now()))
                                    ELSE j.errors END,
            errors_total     = j.errors_total + (j.status = 'running')::integer,
            updated_at       = now()
        FROM progress p
        WHERE j.id = p.id
        RETURNING j.id, p.ord, j.video_id, j.model, j.status, j.priority, j.attempts,
                  j.max_attempts, j.errors_total, j.lease_token, j.run_at,
                  now() - j.run_at AS queue_wait
    )
    SELECT c.id, c.video_id, c.model, c.status, c.priority, c.attempts, c.max_attempts,
           c.errors_total, c.lease_token, c.run_at, c.queue_wait, false
    FROM claimed c ORDER BY c.ord;
END;
$$;
