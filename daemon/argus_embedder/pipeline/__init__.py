"""The hot path: the job ledger, the stream, fetch/decode, inference, the writer."""
