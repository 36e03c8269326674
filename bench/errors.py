"""Errors the CLI turns into one line and an exit code: 2 for bad input a user can fix before
anything runs (config, data, weights, method name, refused files), 1 for a run that started and failed."""


class BenchError(Exception):
    """Bad input (config, data, weights, method name, ...): one sentence, exit code 2."""

    exit_code = 2


class RunFailed(BenchError):
    """A run or sweep that started and then failed (non-finite loss, failed trials): exit code 1."""

    exit_code = 1


class TrainingFailed(RunFailed):
    """Training stopped on its own evidence: `reason` is a short code (nonfinite | failure_rule), `step`
    the optimiser step it stopped at. The run is marked FAILED with tags failure.reason, failure.step and
    failure.message; a sweep records the trial as failed and goes on."""

    def __init__(self, message: str, *, step: int = -1, reason: str = "failed"):
        super().__init__(message)
        self.step, self.reason = step, reason


class NonFiniteLoss(TrainingFailed):
    """Training produced NaN/inf; the message carries the step and the loss parts."""

    def __init__(self, message: str, *, step: int = -1):
        super().__init__(message, step=step, reason="nonfinite")
