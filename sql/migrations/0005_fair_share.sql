-- Fair share across projects (issue 17): `priority` first, strictly; within a
-- priority, projects take turns by weight (stride scheduling), and a project's
-- running jobs can be capped fleet-wide. See docs/design.md "Fair share".

-- 1. Every job knows its project: the frame stage may name it, and when it
-- does not (a plain INSERT (video_id), or argus.enqueue_embedding_job) it is
-- the project of the video's frames. A NULL project is one more project.
ALTER TABLE argus.embedding_jobs ADD COLUMN project_id text NULL;

UPDATE argus.embedding_jobs j
SET project_id = f.project_id
FROM (SELECT DISTINCT ON (video_id) video_id, project_id
      FROM argus.frames WHERE project_id IS NOT NULL
      ORDER BY video_id, frame_index) f
WHERE j.video_id = f.video_id AND j.project_id IS NULL;

CREATE FUNCTION argus.embedding_job_project() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET lock_timeout = '5s' AS $$
BEGIN
    IF NEW.project_id IS NULL THEN
        NEW.project_id := (SELECT f.project_id FROM argus.frames f
                           WHERE f.video_id = NEW.video_id AND f.project_id IS NOT NULL
                           ORDER BY f.frame_index LIMIT 1);
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER embedding_jobs_project
    BEFORE INSERT ON argus.embedding_jobs
    FOR EACH ROW EXECUTE FUNCTION argus.embedding_job_project();

GRANT INSERT (project_id) ON argus.embedding_jobs TO argus_frame_stage;

-- 2. The operator's settings: a larger share (weight) or a fleet-wide cap on
-- running jobs (max_running; 0 pauses the project). No row: weight 1, no cap.
CREATE TABLE argus.projects (
    project_id  text    PRIMARY KEY,
    weight      integer NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 10000),
    max_running integer NULL CHECK (max_running >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- 3. The scheduler's state: one lane per (priority, project) that has queued
-- jobs. `pass` is the lane's virtual time: a claim takes from the lane with
-- the lowest pass at the highest priority and adds 1/weight per job taken, so
-- lanes take turns in proportion to their weights. A lane opens at the lowest
-- pass of its priority: a project arriving behind a long backlog is next.
--
-- Locks, so no claim ever waits on a frame stage's open transaction: an
-- enqueue holds its lanes FOR KEY SHARE until it commits; a claimer takes a
-- lane FOR NO KEY UPDATE (compatible with that) to take jobs and move its
-- pass, and closes (deletes) a lane it found empty only when it can lock it
-- FOR UPDATE with SKIP LOCKED, i.e. when no enqueue still holds it.
CREATE TABLE argus.project_lanes (
    lane_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    priority   integer          NOT NULL,
    project_id text             NULL,
    pass       double precision NOT NULL DEFAULT 0,
    CONSTRAINT project_lanes_key UNIQUE NULLS NOT DISTINCT (priority, project_id)
);
-- Ties go to the newer lane: a project that just arrived is served first.
CREATE INDEX project_lanes_turn_idx ON argus.project_lanes (priority, pass, lane_id DESC);

-- A lane's queued jobs in claim order, and a project's running jobs (its cap).
CREATE INDEX embedding_jobs_lane_idx
    ON argus.embedding_jobs (project_id, priority, run_at, id) WHERE status = 'queued';
CREATE INDEX embedding_jobs_project_running_idx
    ON argus.embedding_jobs (project_id) WHERE status = 'running';

-- Open (or keep open) the lanes of queued jobs; held FOR KEY SHARE until the
-- caller commits, so no claimer closes them under a job it cannot see yet.
CREATE FUNCTION argus.open_project_lanes(p_priorities integer[], p_projects text[])
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET lock_timeout = '5s' AS $$
DECLARE
    wanted integer;
    held   integer;
BEGIN
    SELECT count(*) INTO wanted
    FROM (SELECT DISTINCT p, pr FROM unnest(p_priorities, p_projects) AS k (p, pr)) k;
    LOOP
        INSERT INTO argus.project_lanes (priority, project_id, pass)
        SELECT k.p, k.pr,
               coalesce((SELECT min(l.pass) FROM argus.project_lanes l
                         WHERE l.priority = k.p), 0)
        FROM (SELECT DISTINCT p, pr FROM unnest(p_priorities, p_projects) AS k (p, pr)) k
        ON CONFLICT DO NOTHING;
        -- A claimer may have closed a lane between the insert and the lock:
        -- then it is missing here, and the next round opens it again.
        PERFORM 1
        FROM argus.project_lanes l
        JOIN (SELECT DISTINCT p, pr FROM unnest(p_priorities, p_projects) AS k (p, pr)) k
          ON l.priority = k.p AND l.project_id IS NOT DISTINCT FROM k.pr
        FOR KEY SHARE OF l;
        GET DIAGNOSTICS held = ROW_COUNT;
        EXIT WHEN held >= wanted;
    END LOOP;
END;
$$;

CREATE FUNCTION argus.embedding_jobs_open_lanes() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM argus.open_project_lanes(array_agg(k.priority), array_agg(k.project_id))
    FROM (SELECT DISTINCT priority, project_id FROM inserted WHERE status = 'queued') k
    HAVING count(*) > 0;
    RETURN NULL;
END;
$$;

CREATE TRIGGER embedding_jobs_open_lanes
    AFTER INSERT ON argus.embedding_jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION argus.embedding_jobs_open_lanes();

-- A job going back to queued (release, retry, a failed attempt) or changing
-- priority needs its lane open too.
CREATE FUNCTION argus.embedding_job_requeued() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM argus.open_project_lanes(ARRAY[NEW.priority], ARRAY[NEW.project_id]);
    RETURN NULL;
END;
$$;

CREATE TRIGGER embedding_jobs_requeued
    AFTER UPDATE OF status, priority, project_id ON argus.embedding_jobs
    FOR EACH ROW
    WHEN (NEW.status = 'queued' AND (OLD.status <> 'queued' OR OLD.priority <> NEW.priority
                                     OR OLD.project_id IS DISTINCT FROM NEW.project_id))
    EXECUTE FUNCTION argus.embedding_job_requeued();

-- Lanes for the jobs already queued.
INSERT INTO argus.project_lanes (priority, project_id)
SELECT DISTINCT priority, project_id FROM argus.embedding_jobs WHERE status = 'queued'
ON CONFLICT DO NOTHING;

-- 4. The claim. One call, run by the worker itself (SECURITY INVOKER): expired
-- leases first (their worker died; that attempt already counted), then queued
-- jobs that are due, lane by lane: the highest priority that has lanes, and in
-- it the lane with the lowest pass that no other claimer holds. A lane gives
-- at most as many jobs as keep its pass within one turn of the next lane's,
-- and no more than its project's cap leaves (counted under the project's row
-- lock, in a statement after the lock, so concurrent claimers never exceed
-- it). A lane alone at its priority is not locked at all: claimers share it
-- as the claim always shared jobs, with SKIP LOCKED on the job rows, so the
-- common one-project queue claims in parallel. Never two running jobs for one
-- (video, model). Nothing here waits on a
-- lock except, with p_wait, the first lane of the call (holding nothing a lane
-- holder could wait for): a caller told `busy` (the only claimable lanes were
-- held by other claimers) calls again with p_wait, so one busy lane
-- serializes claimers instead of sending them idle. A lower priority is
-- served only once every lane above it was found to have nothing claimable.
CREATE FUNCTION argus.claim_jobs(
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
            PERFORM 1 FROM argus.projects p WHERE p.project_id = v_lane.project_id
            FOR NO KEY UPDATE SKIP LOCKED;
            IF NOT FOUND THEN
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

-- A lane passed over (capped, paused, or with nothing due) keeps up with the
-- turn it missed: its pass moves up to the next lane's, so when its jobs can
-- run again it takes its share from then on instead of catching up on every
-- turn it missed. A lane alone (p_next NULL) has no one to keep step with.
-- Only a lane this call holds is moved: the caller holds it unless alone.
CREATE FUNCTION argus.keep_lane_in_step(p_lane_id bigint, p_next double precision)
RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    UPDATE argus.project_lanes l SET pass = p_next
    WHERE l.lane_id = p_lane_id AND p_next IS NOT NULL AND l.pass < p_next;
$$;

-- Close a lane with no queued job, unless an enqueue still holds it (its job,
-- not committed yet, is invisible here). The check runs in a statement after
-- the lock, so it sees every enqueue that held the lane before.
CREATE FUNCTION argus.close_project_lane(p_lane_id bigint) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_lane argus.project_lanes%ROWTYPE;
BEGIN
    SELECT * INTO v_lane FROM argus.project_lanes l WHERE l.lane_id = p_lane_id
    FOR UPDATE SKIP LOCKED;
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
    IF NOT FOUND THEN
        DELETE FROM argus.project_lanes l WHERE l.lane_id = p_lane_id;
    END IF;
END;
$$;

REVOKE ALL ON FUNCTION argus.embedding_job_project(), argus.open_project_lanes(integer[], text[]),
    argus.embedding_jobs_open_lanes(), argus.embedding_job_requeued(),
    argus.claim_jobs(text, text, integer, double precision, boolean),
    argus.close_project_lane(bigint), argus.keep_lane_in_step(bigint, double precision)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION argus.claim_jobs(text, text, integer, double precision, boolean),
    argus.close_project_lane(bigint), argus.keep_lane_in_step(bigint, double precision)
    TO argus_worker;
GRANT SELECT, UPDATE, DELETE ON argus.project_lanes TO argus_worker;
GRANT SELECT ON argus.projects TO argus_worker, argus_reader;
GRANT SELECT ON argus.project_lanes TO argus_reader;
