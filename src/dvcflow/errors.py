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


class ApiLostError(ApiUnreachableError):
    """The Prefect API went away during a run.

    Prefect's background workers would then spend minutes retrying to deliver logs and events at exit;
    with the API gone there is nothing left to deliver, so the CLI exits at once.
    """

    abandon_background_work = True


class PipelineError(DvcflowError):
    """A DVC command or a stage failed."""


class MetricsError(DvcflowError):
    """Metrics are missing, unreadable or cannot be compared."""
