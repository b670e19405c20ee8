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
