-- The retired definer argus.index_segment is dropped (issue 27, finding 4).
--
-- 0001 built each sealed segment's ANN index in place with it; 0007 moved
-- search indexes into units built off the write path and stopped calling it,
-- but neither dropped nor revoked it. argus_worker could still execute it:
-- it built HNSW on the live write segment (the write-path cost DESIGN §2
-- forbids) and set segments.index_name, after which sealed_segments() skipped
-- that segment and the compactor never covered it. Nothing calls it now.
DROP FUNCTION IF EXISTS argus.index_segment(text, bigint);
