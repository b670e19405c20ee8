-- Hardening after a review of the write path (issue 16): nothing a frame stage
-- or a worker role can do should be able to crash-loop the fleet.

-- Notify only when a statement inserted jobs: an enqueue that ON CONFLICT DO
-- NOTHING absorbed has nothing new to claim, and a steady stream of those
-- would fill the NOTIFY queue behind a listener that is slow to read it.
CREATE OR REPLACE FUNCTION argus.notify_embedding_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted) THEN
        PERFORM pg_notify('argus_embedding_jobs', '');
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER embedding_jobs_notify ON argus.embedding_jobs;
CREATE TRIGGER embedding_jobs_notify
    AFTER INSERT ON argus.embedding_jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION argus.notify_embedding_jobs();
