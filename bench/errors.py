"""Errors a user can cause. The CLI prints their message as one line and exits with code 2."""


class BenchError(Exception):
    """Bad input (config, data, weights, method name, ...): one sentence, exit code 2."""


class NonFiniteLoss(BenchError):
    """Training produced NaN/inf; the message carries the step and the loss parts."""
