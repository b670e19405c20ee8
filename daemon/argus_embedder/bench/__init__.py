"""`argus-embedder bench` (DESIGN §7): nothing in the daemon imports this package."""
