"""Evaluation: the n-step sampler, metrics (FID, KID, ...), the evaluator and the per-level diagnostics."""
