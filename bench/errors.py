"""Errors the CLI turns into one line and an exit code: 2 for bad input a user can fix before
anything runs (config, data, weights, method name, refused files), 1 for a run that started and failed."""


class BenchError(Exception):
    """Bad input (config, data, weights, method name, ...): one sentence, exit code 2."""

    exit_code = 2


class RunFailed(BenchError):
    """A run or sweep that started and then failed (non-finite loss, failed trials): exit code 1."""

    exit_code = 1


class NonFiniteLoss(RunFailed):
    """Training produced NaN/inf; the message carries the step and the loss parts."""
