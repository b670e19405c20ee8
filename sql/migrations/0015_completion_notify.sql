-- Completion is announced (DESIGN §2, issue 29): when a job's status becomes
-- succeeded, failed or cancelled, the transaction that makes it so NOTIFYs channel
-- argus_embedding_done with the job as JSON, so an application marks a video
-- searchable without polling. A row trigger, so every path is covered the same way:
-- the daemon's completion and failure, the claim that fails a job out of attempts,
-- `cancel`, prune, a superseded duplicate, and an operator's plain
-- `UPDATE argus.embedding_jobs SET status = 'cancelled'` on a job no daemon claimed.
--
-- Two limits of PostgreSQL's NOTIFY shape it:
-- * A payload must be shorter than 8000 bytes, or pg_notify raises and the UPDATE
--   fails. Ids are the frame stage's text of any length, so each text field is cut
--   (halving its characters until the JSON fits: escapes make a character up to 6
--   bytes) and the payload then says "truncated": true; job_id is always exact, and
--   the row is the truth.
-- * The queue is shared by the whole cluster and is only emptied as fast as its
--   slowest listener reads. A session that LISTENs and never reads (or sits in a
--   transaction) pins it; once full, every transaction that NOTIFYs fails at COMMIT
--   ("too many notifications in the NOTIFY queue"): the job's last vectors and its
--   completion would roll back, over and over. So past half full (where PostgreSQL
--   starts warning in its log) neither trigger notifies: a completion is then
--   announced only by its row (a listener reads finished_at), a new job wakes the
--   daemons at their next poll, and the completion raises a WARNING that the daemon
--   logs once. The check and the COMMIT are not atomic, but the half left over is
--   4 GB at the default max_notify_queue_pages, more than any race can write.

CREATE FUNCTION argus.notify_embedding_done() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_keep      integer := 8000;  -- characters kept of each text field
    v_truncated boolean;
    v_payload   text;
BEGIN
    IF pg_notification_queue_usage() >= 0.5 THEN
        RAISE WARNING USING
            MESSAGE = format('argus_embedding_done: the NOTIFY queue is %s%% full; '
                             'job %s (%s) is not announced',
                             round(100 * pg_notification_queue_usage()), NEW.id, NEW.status),
            HINT = 'A session LISTENs without reading (or sits in a transaction); '
                   'the server log names its pid. Listeners can read finished_at.';
        RETURN NULL;
    END IF;
    LOOP
        v_truncated := length(NEW.video_id) > v_keep OR length(NEW.project_id) > v_keep
                       OR length(NEW.model) > v_keep;
        v_payload := CASE WHEN v_truncated THEN
            json_build_object(
                'job_id', NEW.id, 'video_id', left(NEW.video_id, v_keep),
                'project_id', left(NEW.project_id, v_keep), 'model', left(NEW.model, v_keep),
                'status', NEW.status, 'frames_total', NEW.frames_total,
                'frames_done', NEW.frames_done, 'frames_failed', NEW.frames_failed,
                'truncated', true)::text
        ELSE
            json_build_object(
                'job_id', NEW.id, 'video_id', NEW.video_id, 'project_id', NEW.project_id,
                'model', NEW.model, 'status', NEW.status, 'frames_total', NEW.frames_total,
                'frames_done', NEW.frames_done, 'frames_failed', NEW.frames_failed)::text
        END;
        EXIT WHEN octet_length(v_payload) < 8000;
        v_keep := v_keep / 2;  -- 125 characters of three fields fit whatever they hold
    END LOOP;
    PERFORM pg_notify('argus_embedding_done', v_payload);
    RETURN NULL;
END;
$$;

CREATE TRIGGER embedding_jobs_done_notify
    AFTER UPDATE OF status ON argus.embedding_jobs
    FOR EACH ROW
    WHEN (NEW.status IN ('succeeded', 'failed', 'cancelled')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION argus.notify_embedding_done();

-- The enqueue wake-up, as in 0003, but quiet past half a queue: a listener that never
-- reads must not make the frame stage's INSERTs fail at COMMIT. Daemons also poll.
CREATE OR REPLACE FUNCTION argus.notify_embedding_jobs() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted) AND pg_notification_queue_usage() < 0.5 THEN
        PERFORM pg_notify('argus_embedding_jobs', '');
    END IF;
    RETURN NULL;
END;
$$;

-- Trigger functions: fired for whoever writes the row (no EXECUTE check), never called.
REVOKE ALL ON FUNCTION argus.notify_embedding_done() FROM PUBLIC;
REVOKE ALL ON FUNCTION argus.notify_embedding_jobs() FROM PUBLIC;
