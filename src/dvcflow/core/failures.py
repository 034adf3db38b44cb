"""How a failed stage says why, in every run mode: its own last error lines, then what failed, in one
message.

Why here: run-a (DVC's log of `dvc repro`, `dvcflow.dvc.commands`), the stage engine under run-b and
`--per-stage` (`dvcflow.engine.executor`) and the Prefect task that ends in the failure
(`dvcflow.api.failures`) word the same thing; the summary, `dvcflow runs --json`, a notification and the
Prefect UI then show the same text. Pure text: no DVC, no Prefect.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence

ERROR_LINES = 3  # of a stage's output, the last ones a failure message carries (a traceback's end)


def last_lines(lines: Sequence[str], count: int = ERROR_LINES) -> tuple[str, ...]:
    """The last `count` lines that say something, stripped: not blank, not the `^^^^` a traceback puts
    under the code it quotes."""
    kept = [line.strip() for line in lines if line.strip(" \t^~")]
    return tuple(kept[-count:]) if count > 0 else ()


# What a command prints when it wanted to prompt on a terminal and there was none: Python's `getpass`,
# ssh's and git's prompts.
_NO_TERMINAL = (
    "Can not control echo on the terminal",
    "in fallback_getpass",  # the traceback's frame, when the warning above scrolled out of the tail
    "can't open /dev/tty",
    "could not read Username",
    "could not read Password",
    "/dev/tty: No such device or address",
)
NO_TERMINAL_NOTE = (
    "it wanted to prompt on a terminal and had none: give it credentials that need no prompt, or, at a "
    "terminal, run the command with DVCFLOW_WARM=0 (a command dvcflow's warm starter serves has no terminal; "
    "docs/server.md)"
)


def stage_failure(lines: Sequence[str], cause: str) -> str:
    """`<the stage's last error lines> (<cause>)`, or the cause alone when the stage said nothing, e.g.
    `Error: params.yaml: split.test_size: input should be less than 1 (got 1.5) (exit code 1)`; with
    `NO_TERMINAL_NOTE` after the cause when the stage could not prompt for lack of a terminal."""
    if any(marker in line for line in lines for marker in _NO_TERMINAL):
        cause = f"{cause}; {NO_TERMINAL_NOTE}"
    shown = last_lines(lines)
    return "\n".join(shown) + f" ({cause})" if shown else cause


def exit_cause(returncode: int) -> str:
    """`exit code 1`, or `killed by SIGKILL` for a command a signal ended."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def retry_note(earlier: Sequence[str], message: str) -> str | None:
    """What the attempts before this one say about it: `the retry failed the same way` (2 attempts),
    `all 3 attempts failed the same way`, `the last 2 of 3 attempts failed the same way`, or that they
    failed otherwise; None for a first attempt."""
    if not earlier:
        return None
    attempts = len(earlier) + 1
    same = 1
    for previous in reversed(earlier):
        if previous != message:
            break
        same += 1
    if same == attempts:
        return (
            "the retry failed the same way"
            if attempts == 2
            else f"all {attempts} attempts failed the same way"
        )
    if same > 1:
        return f"the last {same} of {attempts} attempts failed the same way"
    return f"attempt {attempts}; the earlier attempts failed otherwise"
