-- status stays cheap at any size (issue 29, DESIGN §2 "Operator reads stay cheap").
--
-- The oldest claimable queued job: min(run_at) over the queued jobs. The claim index
-- orders by priority first, so that minimum read every queued entry (2.5 ms at 10k
-- queued, growing with the queue); with run_at first it is the index's first entry.
-- Only a queued job's insert touches it: a job leaving the queue adds no entry.
CREATE INDEX embedding_jobs_queued_run_at_idx
    ON argus.embedding_jobs (run_at) WHERE status = 'queued';

-- Frames that failed (an error row): few, so status counts them exactly from this
-- index instead of reading every row of the model (the coverage line's "N failed").
-- Created on the partitioned table, so every segment has it, present and future
-- (ATTACH PARTITION builds it on a new, empty segment). A vector's insert only
-- evaluates the predicate.
CREATE INDEX frame_embeddings_failed_idx
    ON argus.frame_embeddings (model, frame_id) WHERE error IS NOT NULL;
