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

-- name: standby_position
-- This server's replay position when it is a hot standby (ARGUS_READ_DATABASE_URL);
-- in_recovery is false on a primary, where the rest means nothing. All of it is
-- readable by argus_reader: the functions are public, and pg_stat_wal_receiver
-- shows an unprivileged role the receiver's pid, enough to tell that WAL streams in.
-- pg_is_wal_replay_paused() raises outside recovery, hence the CASE.
SELECT pg_is_in_recovery() AS in_recovery,
       pg_last_wal_receive_lsn()::text AS received_lsn,
       pg_last_wal_replay_lsn()::text AS replayed_lsn,
       -- NULL before anything streamed in since the standby started; never negative
       -- (replay of WAL already on disk can run ahead of the stream after a restart)
       CASE WHEN pg_last_wal_receive_lsn() IS NOT NULL
            THEN greatest(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)
       END::bigint AS pending_bytes,
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::double precision
           AS last_replay_seconds_ago,
       EXISTS (SELECT 1 FROM pg_stat_wal_receiver) AS streaming,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END
           AS replay_paused;
