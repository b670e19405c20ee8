"""One module per CLI command; `cli` only parses and dispatches."""
