-- `argus-embedder demo`: its own database on the embedded server.

-- name: demo_drop_database
DROP DATABASE IF EXISTS argus_demo WITH (FORCE);

-- name: demo_create_database
CREATE DATABASE argus_demo;
