-- A claim no longer walks the lanes with nothing claimable (issue 27, suspicion b).
--
-- 0005/0011's claim took lanes in pass order one plpgsql iteration at a time:
-- lock the lane, look for due jobs, try to close it, move its pass up to the
-- next lane's (keep_lane_in_step), add it to the call's skipped list. A lane
-- whose jobs were all in backoff, whose project was at its cap, whose jobs were
-- another model's or waiting for a running twin went through all of that on
-- every claim, and every later lane was read against the growing skipped list:
-- beside 1,000 such lanes one claim locked 1,000 lanes and took ~5 s (an S3
-- outage puts every project's jobs in backoff at once).
--
-- Now a claim locks and writes only the lanes it takes from. Which lanes have
-- something claimable is asked of the jobs' index (argus.lane_due_jobs, one
-- probe of embedding_jobs_lane_idx per lane, no lock), inside the statement that
-- picks the lane. A lane passed over is no longer moved up every claim; instead
-- the priority keeps its turn: `served_from`, the pass a lane stood at when it
-- last gave jobs. Lanes are served lowest pass first, so the highest
-- served_from of a priority is where its turn stands; a lane below it was passed
-- over (or just opened at an old pass), and when it has something claimable
-- again it rejoins beside the lowest lane past the turn, once, instead of catching up on
-- every turn it missed. That is what keep_lane_in_step did, done on the lane's
-- return instead of on every claim it missed.

ALTER TABLE argus.project_lanes ADD COLUMN served_from double precision NULL;
-- The turn of a priority: max(served_from), one index entry.
CREATE INDEX project_lanes_served_idx ON argus.project_lanes (priority, served_from);

-- The jobs of a lane that a claimer of p_model could take now: queued, due, of
-- its model (or any), without a running twin, in a project below its cap
-- (counted without the cap's lock, once per lane: the claim counts again under
-- it), not taken by this call already (p_taken: still queued to its snapshot).
-- The claim asks EXISTS of it for each lane it considers: one probe of
-- embedding_jobs_lane_idx, no lock. A NULL project is its own lane. No SET
-- clause, so the planner inlines it into the claim's statements (a function
-- call per lane cost 20 us); it runs under claim_jobs's pinned search_path.
CREATE FUNCTION argus.lane_due_jobs(
    p_priority integer, p_project_id text, p_model text, p_taken bigint[]
) RETURNS SETOF bigint
LANGUAGE sql STABLE AS $$
    SELECT j.id FROM argus.embedding_jobs j
    WHERE j.status = 'queued' AND j.project_id = p_project_id
      AND j.priority = p_priority AND j.run_at <= now()
      AND j.id <> ALL (p_taken)
      AND (j.model IS NULL OR j.model = p_model)
      AND NOT EXISTS (
          SELECT 1 FROM argus.embedding_jobs r
          WHERE r.status = 'running' AND r.video_id = j.video_id
            AND coalesce(r.model, p_model) = coalesce(j.model, p_model))
      AND NOT EXISTS (
          SELECT 1 FROM argus.projects p
          WHERE p.project_id = p_project_id AND p.max_running IS NOT NULL
            AND p.max_running <= (SELECT count(*) FROM (
                    SELECT 1 FROM argus.embedding_jobs c
                    WHERE c.project_id = p_project_id AND c.status = 'running'
                    LIMIT p.max_running) running))
    UNION ALL
    SELECT j.id FROM argus.embedding_jobs j
    WHERE p_project_id IS NULL AND j.status = 'queued' AND j.project_id IS NULL
      AND j.priority = p_priority AND j.run_at <= now()
      AND j.id <> ALL (p_taken)
      AND (j.model IS NULL OR j.model = p_model)
      AND NOT EXISTS (
          SELECT 1 FROM argus.embedding_jobs r
          WHERE r.status = 'running' AND r.video_id = j.video_id
            AND coalesce(r.model, p_model) = coalesce(j.model, p_model))
$$;

-- A lane's queued jobs, due or not (is it empty?), inlined the same way.
CREATE FUNCTION argus.lane_queued_jobs(p_priority integer, p_project_id text)
RETURNS SETOF bigint
LANGUAGE sql STABLE AS $$
    SELECT j.id FROM argus.embedding_jobs j
    WHERE j.status = 'queued' AND j.project_id = p_project_id AND j.priority = p_priority
    UNION ALL
    SELECT j.id FROM argus.embedding_jobs j
    WHERE p_project_id IS NULL AND j.status = 'queued' AND j.project_id IS NULL
      AND j.priority = p_priority
$$;

-- 0005's close, which now looks before it locks: the claim calls it for lanes it
-- only read (to close the empty ones among them), and a lane with queued jobs
-- costs it one probe, no lock. Otherwise as before: closed only when no enqueue
-- holds it, checked again in a statement after the lock.
CREATE OR REPLACE FUNCTION argus.close_project_lane(p_lane_id bigint) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_lane argus.project_lanes%ROWTYPE;
BEGIN
    FOR i IN 1 .. 2 LOOP
        IF i = 1 THEN
            SELECT * INTO v_lane FROM argus.project_lanes l WHERE l.lane_id = p_lane_id;
        ELSE
            SELECT * INTO v_lane FROM argus.project_lanes l WHERE l.lane_id = p_lane_id
            FOR UPDATE SKIP LOCKED;
        END IF;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        IF v_lane.project_id IS NULL THEN
            PERFORM 1 FROM argus.embedding_jobs j
            WHERE j.status = 'queued' AND j.project_id IS NULL AND j.priority = v_lane.priority
            LIMIT 1;
        ELSE
            PERFORM 1 FROM argus.embedding_jobs j
            WHERE j.status = 'queued' AND j.project_id = v_lane.project_id
              AND j.priority = v_lane.priority
            LIMIT 1;
        END IF;
        IF FOUND THEN
            RETURN;
        END IF;
    END LOOP;
    DELETE FROM argus.project_lanes l WHERE l.lane_id = p_lane_id;
END;
$$;

-- The claim. As in 0005/0011 (expired leases first; the highest priority, and in
-- it the lane with the lowest pass that no other claimer holds; a lane alone at
-- its priority shared, unlocked; caps counted under the project's lock; busy,
-- then wait; a lower priority only once the higher has nothing claimable), but
-- the lanes considered are only those with something claimable for this model
-- (argus.lane_due_jobs, inside the picking statement): a lane with nothing
-- claimable is read, not locked, not written. Per priority visited, once per
-- call: lanes behind the turn (pass below the highest served_from) that have
-- something claimable again rejoin beside the lowest lane past it, and those with no queued job at
-- all are closed. Lanes the call took its last jobs from are closed at its end,
-- after its jobs turned running.
CREATE OR REPLACE FUNCTION argus.claim_jobs(
    p_model text, p_worker_id text, p_limit integer, p_lease_seconds double precision,
    p_wait boolean DEFAULT false
) RETURNS TABLE (id bigint, video_id text, model text, status text, priority integer,
                 attempts integer, max_attempts integer, failures integer, lease_token uuid,
                 run_at timestamptz, queue_wait interval, busy boolean)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
-- Its statements' plans are planned once per session: custom plans, which the
-- plan cache kept choosing for the probing statements, replanned them on every
-- claim (1M queued over 1,000 projects: 2.5 ms a claim, 0.76 with this).
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_expired  bigint[];
    v_taken    bigint[] := '{}';
    v_skipped  bigint[] := '{}';  -- lanes this call is done with (few: it took from them)
    v_drained  bigint[] := '{}';  -- lanes that gave fewer jobs than asked: maybe empty
    v_back     bigint[];          -- lanes behind the turn that can give jobs again
    v_empty    bigint[];          -- lanes behind the turn with no queued job
    v_busy     boolean := false;
    v_block    boolean := p_wait;  -- only the first pick may wait
    v_top      integer;
    v_below    integer;           -- priorities at or above it are done
    v_turn     double precision;  -- the priority's turn: max(served_from)
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
        IF v_top IS NULL THEN
            SELECT max(l.priority) INTO v_top
            FROM argus.project_lanes l WHERE v_below IS NULL OR l.priority < v_below;
            EXIT WHEN v_top IS NULL;
            v_turn := NULL;
        END IF;
        -- The two lowest lanes of the priority, read without a lock.
        SELECT array_agg(f.lane_id ORDER BY f.pass, f.lane_id DESC) INTO v_front
        FROM (SELECT l.lane_id, l.pass FROM argus.project_lanes l
              WHERE l.priority = v_top AND l.lane_id <> ALL (v_skipped)
              ORDER BY l.pass, l.lane_id DESC LIMIT 2) f;
        IF v_front IS NULL THEN
            v_below := v_top;  -- every lane here gave what it had: the next priority
            v_top := NULL;
            CONTINUE;
        END IF;
        v_alone := cardinality(v_front) = 1;
        IF v_alone THEN
            -- Nobody to take turns with: claimers share the lane as they share
            -- the jobs (SKIP LOCKED), and its pass stays where it is, which is
            -- where a lane opening beside it starts (and, on the tie, goes first).
            SELECT * INTO v_lane FROM argus.project_lanes l WHERE l.lane_id = v_front[1];
            IF NOT FOUND THEN
                CONTINUE;  -- closed since: read the lanes again
            END IF;
        ELSE
            IF v_turn IS NULL THEN
                -- Once per priority: lanes passed over that can give jobs again
                -- rejoin; the empty ones among them close.
                SELECT coalesce(max(l.served_from), '-Infinity') INTO v_turn
                FROM argus.project_lanes l WHERE l.priority = v_top;
                SELECT coalesce(array_agg(b.lane_id ORDER BY b.pass, b.lane_id DESC)
                                    FILTER (WHERE b.work = 'due'), '{}'),
                       coalesce(array_agg(b.lane_id) FILTER (WHERE b.work = 'none'), '{}')
                INTO v_back, v_empty
                FROM (SELECT b.lane_id, b.pass,
                             CASE WHEN EXISTS (SELECT FROM argus.lane_due_jobs(
                                                   b.priority, b.project_id, p_model, v_taken))
                                  THEN 'due'
                                  WHEN EXISTS (SELECT FROM argus.lane_queued_jobs(
                                                   b.priority, b.project_id))
                                  THEN 'later'
                                  ELSE 'none' END AS work
                      FROM argus.project_lanes b
                      WHERE b.priority = v_top AND b.pass < v_turn
                        AND b.lane_id <> ALL (v_skipped)
                      OFFSET 0) b;  -- each lane probed once, not once per FILTER
                -- They rejoin beside the lowest lane past the turn (as keep_lane_in_step
                -- moved them up to the next lane's pass), and take turns from there.
                UPDATE argus.project_lanes l
                SET pass = coalesce((SELECT min(n.pass) FROM argus.project_lanes n
                                     WHERE n.priority = v_top AND n.pass >= v_turn), v_turn)
                WHERE l.lane_id IN (
                    SELECT b.lane_id FROM argus.project_lanes b
                    WHERE b.lane_id = ANY (v_back[1:v_left]) AND b.pass < v_turn
                    FOR NO KEY UPDATE SKIP LOCKED);
                PERFORM argus.close_project_lane(e.lane_id) FROM unnest(v_empty) AS e (lane_id);
            END IF;
            -- The lowest lane at or past the turn with something claimable.
            IF v_block THEN
                SELECT * INTO v_lane FROM argus.project_lanes l
                WHERE l.priority = v_top AND l.pass >= v_turn AND l.lane_id <> ALL (v_skipped)
                  AND EXISTS (SELECT FROM argus.lane_due_jobs(l.priority, l.project_id, p_model, v_taken))
                ORDER BY l.pass, l.lane_id DESC LIMIT 1
                FOR NO KEY UPDATE;
                v_block := false;
            ELSE
                SELECT * INTO v_lane FROM argus.project_lanes l
                WHERE l.priority = v_top AND l.pass >= v_turn AND l.lane_id <> ALL (v_skipped)
                  AND EXISTS (SELECT FROM argus.lane_due_jobs(l.priority, l.project_id, p_model, v_taken))
                ORDER BY l.pass, l.lane_id DESC LIMIT 1
                FOR NO KEY UPDATE SKIP LOCKED;
            END IF;
            IF NOT FOUND THEN
                PERFORM 1 FROM argus.project_lanes l
                WHERE l.priority = v_top AND l.lane_id <> ALL (v_skipped)
                  AND EXISTS (SELECT FROM argus.lane_due_jobs(l.priority, l.project_id, p_model, v_taken))
                LIMIT 1;
                IF FOUND THEN
                    -- Other claimers hold the lanes with claimable work here: a lower
                    -- priority must not start while they may still have due work.
                    v_busy := true;
                    EXIT;
                END IF;
                -- Nothing claimable at this priority: close its empty lanes, go below.
                PERFORM argus.close_project_lane(l.lane_id) FROM argus.project_lanes l
                WHERE l.priority = v_top AND l.lane_id <> ALL (v_skipped)
                  AND NOT EXISTS (SELECT FROM argus.lane_queued_jobs(l.priority, l.project_id));
                v_below := v_top;
                v_top := NULL;
                CONTINUE;
            END IF;
        END IF;

        SELECT p.weight, p.max_running INTO v_weight, v_cap
        FROM argus.projects p WHERE p.project_id = v_lane.project_id;
        v_weight := coalesce(v_weight, 1);
        v_want := v_left;
        v_next := NULL;
        IF NOT v_alone THEN
            SELECT min(l.pass) INTO v_next FROM argus.project_lanes l
            WHERE l.priority = v_top AND l.pass >= v_turn AND l.lane_id <> v_lane.lane_id
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
            UPDATE argus.project_lanes l
            SET pass = l.pass + cardinality(v_got)::float8 / v_weight, served_from = l.pass
            WHERE l.lane_id = v_lane.lane_id;
        ELSIF cardinality(v_got) = 0 THEN
            -- Nothing claimable after all (taken by a claimer that committed since
            -- the pick, or nothing queued at all): close it then.
            PERFORM argus.close_project_lane(v_lane.lane_id);
            PERFORM argus.keep_lane_in_step(v_lane.lane_id, v_next);
        END IF;
        IF cardinality(v_got) < v_want THEN
            v_skipped := v_skipped || v_lane.lane_id;
            IF cardinality(v_got) > 0 THEN
                v_drained := v_drained || v_lane.lane_id;
            END IF;
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

    -- Its jobs are running now, so a lane it emptied is seen empty: close it.
    PERFORM argus.close_project_lane(d.lane_id) FROM unnest(v_drained) AS d (lane_id);
END;
$$;

REVOKE ALL ON FUNCTION argus.lane_due_jobs(integer, text, text, bigint[]),
    argus.lane_queued_jobs(integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION argus.lane_due_jobs(integer, text, text, bigint[]),
    argus.lane_queued_jobs(integer, text) TO argus_worker;
