"""One root error type. The CLI turns any `DvcflowError` into one `Error: ...` line and its exit code."""

from __future__ import annotations


class DvcflowError(Exception):
    """A problem the user can fix; the message is shown as is, without a traceback."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(DvcflowError):
    """Flags that contradict each other or name things that do not exist."""

    exit_code = 2


class NotADvcRepoError(DvcflowError):
    """No `.dvc` directory at or above the given path."""


class ConfigError(DvcflowError):
    """Bad `[tool.dvcflow]`, environment variable or params file."""


class ServerError(DvcflowError):
    """The local Prefect server could not be started, stopped or reached."""


class ApiUnreachableError(ServerError):
    """The configured Prefect API does not answer."""


class PipelineError(DvcflowError):
    """A DVC command or a stage failed."""


class MetricsError(DvcflowError):
    """Metrics are missing, unreadable or cannot be compared."""
