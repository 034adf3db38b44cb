"""One root error type and the exit-code table: the one place where an outcome becomes a number.

The CLI boundary (`dvcflow.cli.app`) turns any `DvcflowError` into one `Error: ...` line and the
`ExitCode` of its class; a finished flow run maps its final state through `exit_code_for_state`.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a script can branch on. The table in `dvcflow --help` and the README is generated from this."""

    OK = 0
    PIPELINE_FAILED = 1  # a stage or DVC command failed; the flow run ended Failed or Crashed
    USAGE = 2  # flags that contradict each other or name nothing (also Click's own usage errors)
    BAD_INPUT = 3  # not a DVC repository, bad params/config/environment, no metrics to show
    SERVER_UNREACHABLE = 4  # the Prefect API cannot be started, reached, or went away mid-run
    UNKNOWN = 5  # the command's outcome is unknown: the process that ran it was lost (a warm starter died)
    INTERNAL = 70  # an unexpected exception: a bug in dvcflow (EX_SOFTWARE)
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), or the flow run was Cancelled

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    ExitCode.OK: "success",
    ExitCode.PIPELINE_FAILED: "the pipeline failed (a stage or DVC command; the flow run is Failed)",
    ExitCode.USAGE: "usage: contradicting or unknown flags and arguments",
    ExitCode.BAD_INPUT: "bad input or configuration: not a DVC repo, bad params or settings",
    ExitCode.SERVER_UNREACHABLE: "the Prefect server could not be started or reached, or went away",
    ExitCode.UNKNOWN: "outcome unknown: the process running the command was lost (see dvcflow runs)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C) or the flow run was cancelled",
    ExitCode.INTERNAL: "an unexpected error: a bug in dvcflow (rerun with --debug and report it)",
}


def exit_code_for_state(state: str) -> ExitCode:
    """A finished flow run's exit code, from its state name."""
    if state == "Completed":
        return ExitCode.OK
    return ExitCode.INTERRUPTED if state == "Cancelled" else ExitCode.PIPELINE_FAILED


def exit_code_table() -> str:
    """`code  meaning` lines, for `--help` and the README."""
    return "\n".join(f"{int(code):>3}  {code.meaning}" for code in sorted(ExitCode))


class DvcflowError(Exception):
    """A problem the user can fix; the message is shown as is, without a traceback."""

    exit_code: ExitCode = ExitCode.PIPELINE_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(DvcflowError):
    """Flags that contradict each other or name things that do not exist."""

    exit_code = ExitCode.USAGE


class NotADvcRepoError(DvcflowError):
    """No `.dvc` directory at or above the given path."""

    exit_code = ExitCode.BAD_INPUT


class ConfigError(DvcflowError):
    """Bad `[tool.dvcflow]`, environment variable or params file."""

    exit_code = ExitCode.BAD_INPUT


class ServerError(DvcflowError):
    """The local Prefect server could not be started, stopped or reached."""

    exit_code = ExitCode.SERVER_UNREACHABLE


class ApiUnreachableError(ServerError):
    """The configured Prefect API does not answer."""


class ApiLostError(ApiUnreachableError):
    """The Prefect API went away during a run.

    Prefect's background workers would then spend minutes retrying to deliver logs and events at exit;
    with the API gone there is nothing left to deliver, so the CLI exits at once.
    """

    abandon_background_work = True


class PipelineError(DvcflowError):
    """A DVC command or a stage failed, in a way running it again would not change (missing data, an
    invalid `dvc.yaml`): not retried."""


class StageCommandError(PipelineError):
    """A stage's own command failed, or DVC could not take a lock: a retry may succeed."""


class DvcBusyError(PipelineError):
    """Another DVC process holds the repository lock, or works on a stage's files (DVC's "is busy"):
    the stage fails without a retry, and nothing it wrote is recorded or replaced from DVC's run cache."""


class MetricsError(DvcflowError):
    """Metrics are missing, unreadable or cannot be compared."""

    exit_code = ExitCode.BAD_INPUT
