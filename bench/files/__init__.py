"""Files bench writes and fetches: atomic checkpoints and hashes, hash-checked downloads, figures."""
