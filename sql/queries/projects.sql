-- argus.projects: the operator's fair-share settings per project
-- (argus_embedder.gateways.projects), and each project's part of the queue.

-- name: project_set
-- Upsert one project's settings: a NULL weight keeps the current one (1 for a
-- new row); the cap changes only with `set_cap` (NULL then removes it). The
-- previous values come back for the message ("was ...").
WITH previous AS (
    SELECT p.weight, p.max_running FROM argus.projects p WHERE p.project_id = %(project_id)s
), saved AS (
    INSERT INTO argus.projects AS p (project_id, weight, max_running)
    VALUES (%(project_id)s, coalesce(%(weight)s, 1),
            CASE WHEN %(set_cap)s THEN %(max_running)s::integer END)
    ON CONFLICT (project_id) DO UPDATE
    SET weight      = coalesce(%(weight)s, p.weight),
        max_running = CASE WHEN %(set_cap)s THEN %(max_running)s::integer ELSE p.max_running END,
        updated_at  = now()
    RETURNING p.project_id, p.weight, p.max_running, p.updated_at
)
SELECT s.project_id, s.weight, s.max_running, s.updated_at,
       pr.weight AS previous_weight, pr.max_running AS previous_max_running,
       pr.weight IS NULL AS created
FROM saved s LEFT JOIN previous pr ON true;

-- name: project_backlog
-- Each project's part of the queue: its settings, queued and running jobs and
-- the frames they still have to embed, biggest backlog first, at most `limit`
-- rows (NULL: all) and `projects`, the count before the limit. `all` lists
-- projects with a settings row and nothing waiting too. A NULL project is one
-- more project.
--
-- Cost: counting each project's queued jobs is one pass over the queued jobs
-- (a parallel scan, or embedding_jobs_lane_idx index-only: the planner picks);
-- ~0.65 s of the ~0.7 s this takes with 1,000,000 queued jobs over 1,000
-- projects (2 busy cores). The rest does not grow with the backlog: running
-- jobs come from embedding_jobs_one_running_idx with the frames they have left
-- in their rows (frames_total - frames_done), and the frames of queued jobs
-- are counted exactly on a sample of each project's queued jobs (`sample` in
-- all, shared out, at least one per project; an index scan of the lane index
-- each) and scaled up to the project's count.
WITH queued AS MATERIALIZED (
    SELECT j.project_id, count(*) AS jobs
    FROM argus.embedding_jobs j WHERE j.status = 'queued'
    GROUP BY j.project_id
), running AS MATERIALIZED (
    SELECT j.project_id, count(*) AS jobs,
           sum(greatest(coalesce(j.frames_total, 0) - j.frames_done, 0)) AS frames_left
    FROM argus.embedding_jobs j WHERE j.status = 'running'
    GROUP BY j.project_id
), share AS (
    SELECT greatest(1, %(sample)s / greatest(count(*), 1))::integer AS per_project FROM queued
), sampled AS MATERIALIZED (
    SELECT q.project_id, s.video_id, s.model
    FROM queued q
    CROSS JOIN LATERAL (
        SELECT j.video_id, coalesce(j.model, %(model)s) AS model
        FROM argus.embedding_jobs j
        WHERE j.status = 'queued' AND j.project_id = q.project_id
        LIMIT (SELECT per_project FROM share)
    ) s
    WHERE q.project_id IS NOT NULL
    UNION ALL
    (SELECT NULL, j.video_id, coalesce(j.model, %(model)s)
     FROM argus.embedding_jobs j
     WHERE j.status = 'queued' AND j.project_id IS NULL
     LIMIT (SELECT per_project FROM share))
), counted AS (
    SELECT s.project_id, count(*) AS jobs, sum(m.frames) AS frames
    FROM sampled s
    CROSS JOIN LATERAL (
        SELECT count(*) AS frames FROM argus.frames f
        WHERE f.video_id = s.video_id
          AND NOT EXISTS (SELECT 1 FROM argus.frame_embeddings e
                          WHERE e.frame_id = f.id AND e.model = s.model)
    ) m
    GROUP BY s.project_id
), per_project AS (
    -- One row per project from every source (GROUP BY puts NULL projects together).
    SELECT x.project_id, sum(x.queued) AS queued, sum(x.running) AS running,
           sum(x.frames_left) AS frames_left, sum(x.sampled) AS sampled,
           sum(x.sampled_frames) AS sampled_frames
    FROM (
        SELECT project_id, jobs AS queued, 0 AS running, 0 AS frames_left, 0 AS sampled,
               0 AS sampled_frames FROM queued
        UNION ALL
        SELECT project_id, 0, jobs, frames_left, 0, 0 FROM running
        UNION ALL
        SELECT project_id, 0, 0, 0, jobs, frames FROM counted
        UNION ALL
        SELECT p.project_id, 0, 0, 0, 0, 0 FROM argus.projects p WHERE %(all)s
    ) x
    GROUP BY x.project_id
), backlog AS (
    SELECT b.project_id,
           p.project_id IS NOT NULL AS configured,
           coalesce(p.weight, 1) AS weight,
           p.max_running,
           b.queued::bigint AS queued,
           b.running::bigint AS running,
           (b.frames_left
            + coalesce(round(b.sampled_frames * b.queued / nullif(b.sampled, 0)), 0))::bigint
               AS frames_waiting,
           b.queued > b.sampled AS frames_waiting_estimated
    FROM per_project b
    LEFT JOIN argus.projects p ON p.project_id = b.project_id
)
SELECT b.*, count(*) OVER () AS projects
FROM backlog b
ORDER BY b.frames_waiting DESC, b.queued DESC, b.project_id NULLS FIRST
LIMIT %(limit)s;

-- name: recent_writes
-- Frames the fleet wrote lately, per project, found through the jobs that wrote
-- them (the running ones and the last `jobs` finished within `window` seconds:
-- both index scans), never a scan of all vectors. If more than `jobs` jobs
-- finished in the window, the window shrinks to the oldest of those, so the cost
-- stays bounded however busy the fleet is. `seconds` is the window the frames
-- were counted over (its start to now), the rates' divisor: `window`, or less
-- when it shrank. The fleet's figure is the sum over projects; with nothing
-- written, one row of NULL frames still gives `seconds`.
WITH finished AS (
    SELECT j.video_id, j.model, j.project_id, j.finished_at FROM argus.embedding_jobs j
    WHERE j.finished_at > now() - make_interval(secs => %(window)s) AND j.model IS NOT NULL
    ORDER BY j.finished_at DESC
    LIMIT %(jobs)s
), since AS (
    SELECT CASE WHEN count(*) < %(jobs)s THEN now() - make_interval(secs => %(window)s)
                ELSE min(finished_at) END AS at
    FROM finished
), recent_jobs AS (
    SELECT video_id, model, project_id FROM finished
    UNION
    SELECT j.video_id, j.model, j.project_id FROM argus.embedding_jobs j
    WHERE j.status = 'running'
)
SELECT w.project_id, w.frames,
       extract(epoch FROM now() - s.at)::double precision AS seconds
FROM since s
LEFT JOIN (
    SELECT r.project_id, count(*) AS frames
    FROM recent_jobs r
    JOIN argus.frames f ON f.video_id = r.video_id
    JOIN argus.frame_embeddings e ON e.frame_id = f.id AND e.model = r.model
    WHERE e.created_at > (SELECT at FROM since)
    GROUP BY r.project_id
) w ON true;
