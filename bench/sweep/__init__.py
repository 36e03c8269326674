"""Sweeps on Ray Tune: sweep files, the trial plan, trials."""
