-- The database itself (argus_embedder.db): migrations, session settings, LISTEN.

-- name: migrations_bootstrap
CREATE SCHEMA IF NOT EXISTS argus;
CREATE TABLE IF NOT EXISTS argus.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_lock
SELECT pg_advisory_lock(hashtext('argus-embedder:migrate'));

-- name: migrations_unlock
SELECT pg_advisory_unlock(hashtext('argus-embedder:migrate'));

-- name: migrations_applied
SELECT version FROM argus.schema_migrations ORDER BY version;

-- name: migrations_record
INSERT INTO argus.schema_migrations (version, name) VALUES (%(version)s, %(name)s);

-- name: schema_version
SELECT coalesce(max(version), 0) AS version FROM argus.schema_migrations;

-- name: listen
LISTEN argus_embedding_jobs;

-- name: session_timeouts
-- A worker frozen inside a transaction (SIGSTOP, a hung host) must not keep a
-- job's row locked, or SKIP LOCKED would skip that job for as long as it lives.
SELECT set_config('idle_in_transaction_session_timeout', %(timeout)s, false);

-- name: ping
SELECT 1 AS ok;

-- name: embedded_shared_buffers
-- The embedded server's shared_buffers in MiB: in force, and as configured for its
-- next start (ALTER SYSTEM); the other client sessions a restart would drop.
SELECT s.setting::bigint * current_setting('block_size')::bigint / 1048576 AS mb,
       coalesce((SELECT pg_size_bytes(f.setting) FROM pg_file_settings f
                 WHERE f.name = 'shared_buffers' ORDER BY f.seqno DESC LIMIT 1),
                s.setting::bigint * current_setting('block_size')::bigint) / 1048576 AS configured_mb,
       (SELECT count(*) FROM pg_stat_activity a
        WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()) AS other_clients
FROM pg_settings s WHERE s.name = 'shared_buffers';

-- name: embedded_set_shared_buffers
-- Takes effect at the next start (ALTER SYSTEM takes no parameters: a literal).
ALTER SYSTEM SET shared_buffers = {size};
