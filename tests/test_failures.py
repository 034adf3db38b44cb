"""A failed stage says why in its own words, whichever way it ran (issue 20, "A failed run does not say
why"): the pieces, without a server. The runs themselves: tests/test_run_a.py, test_run_b.py,
test_per_stage.py, test_sweep.py, test_deploy.py."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from dvcflow.core.errors import MetricsError, PipelineError, StageCommandError
from dvcflow.core.failures import NO_TERMINAL_NOTE, exit_cause, retry_note, stage_failure
from dvcflow.core.metrics import MetricsSnapshot, require_metrics
from dvcflow.core.records import StagesReport
from dvcflow.dvc.commands import StageLog, failure
from dvcflow.engine.executor import _call
from dvcflow.engine.plugins import StageFunction
from dvcflow.proc import children
from dvcflow.proc.children import CommandResult

TRACEBACK = [
    "working",
    "Traceback (most recent call last):",
    '  File "/x/fill.py", line 3, in <module>',
    "    json.loads('{')",
    "    ^^^^^^^^^^^^^^^",
    "json.decoder.JSONDecodeError: Expecting property name: line 1 column 2 (char 1)",
]


@pytest.mark.parametrize(
    "said",
    [
        ["<string>:1: GetPassWarning: Can not control echo on the terminal.", "EOFError"],
        ["fatal: could not read Username for 'https://example.com': No such device or address"],
        ["ssh_askpass: exec(/usr/bin/ssh-askpass): No such file", "read_passphrase: can't open /dev/tty: x"],
    ],
)
def test_a_prompt_without_a_terminal_says_how_to_give_it_one(said: list[str]) -> None:
    message = stage_failure(said, "exit code 1")
    assert message.endswith(f"(exit code 1; {NO_TERMINAL_NOTE})"), message
    assert NO_TERMINAL_NOTE not in stage_failure(["EOFError"], "exit code 1")


def test_a_failure_carries_the_stages_last_lines_that_say_something() -> None:
    assert stage_failure(TRACEBACK, "exit code 1") == (
        'File "/x/fill.py", line 3, in <module>\n'
        "json.loads('{')\n"
        "json.decoder.JSONDecodeError: Expecting property name: line 1 column 2 (char 1) (exit code 1)"
    )
    assert stage_failure(["", "  "], "`sh -c 'exit 3'`: exit code 3") == "`sh -c 'exit 3'`: exit code 3"
    assert exit_cause(2) == "exit code 2"
    assert exit_cause(-9) == "killed by SIGKILL"


@pytest.mark.parametrize(
    ("earlier", "note"),
    [
        ([], None),
        (["boom"], "the retry failed the same way"),
        (["boom", "boom"], "all 3 attempts failed the same way"),
        (["other", "boom"], "the last 2 of 3 attempts failed the same way"),
        (["other"], "attempt 2; the earlier attempts failed otherwise"),
    ],
)
def test_a_retry_says_whether_it_failed_the_same_way(earlier: list[str], note: str | None) -> None:
    assert retry_note(earlier, "boom") == note


DVC_TAIL = (
    "'data/raw/iris.csv.dvc' didn't change, skipping",
    "Running stage 'prepare':",
    "> python -m mltoy.cli prepare --params params.yaml",
    "Error: params.yaml: split.test_size: input should be less than 1 (got 1.5)",
    "ERROR: failed to reproduce 'prepare': failed to run: python -m mltoy.cli prepare --params params.yaml, "
    "exited with 1",
)


def test_run_a_names_the_failed_stage_with_its_own_words_not_dvcs_log() -> None:
    error = failure(CommandResult(("repro",), 1, DVC_TAIL))
    assert isinstance(error, StageCommandError)  # a command failed: worth a retry
    assert error.message == (
        "failed to reproduce 'prepare': Error: params.yaml: split.test_size: input should be less than 1 "
        "(got 1.5) (exit code 1)"
    )
    quiet = failure(CommandResult(("repro",), 1, (*DVC_TAIL[:3], DVC_TAIL[-1])))
    assert quiet.message == "failed to reproduce 'prepare': exit code 1"
    missing = failure(CommandResult(("repro",), 1, ("ERROR: failed to reproduce 'train': [Errno 2] x",)))
    assert type(missing) is PipelineError and missing.message == "failed to reproduce 'train': [Errno 2] x"
    killed = failure(CommandResult(("repro",), -9, ("Running stage 'train':", "epoch 1")))
    assert killed.message == "epoch 1 (`dvc repro`: killed by SIGKILL)"


def test_the_stage_dvc_stopped_at_failed_it_did_not_run() -> None:
    log = StageLog()
    for line in DVC_TAIL:
        log.feed(line)
    assert log.report() == StagesReport(skipped=("data/raw/iris.csv.dvc",), failed=("prepare",))
    # A retry that gets past it: it ran; what failed is what the last attempt failed.
    first = StagesReport(ran=("fill",), failed=("train",))
    retried = StagesReport(ran=("train",), skipped=("fill",))
    assert first.merged(retried) == StagesReport(ran=("fill", "train"))
    assert first.merged(StagesReport(skipped=("fill",), failed=("train",))) == StagesReport(
        ran=("fill",), failed=("train",)
    )


def loud_and_failing(argv: list[str]) -> int:
    print("reading", argv[0])
    print(f"Error: {argv[0]} is wrong", file=sys.stderr)
    return 1


def raising(argv: list[str]) -> int:
    print("started")
    raise ValueError(f"bad value {argv[0]}")


def exiting(argv: list[str]) -> int:
    sys.exit(f"cannot go on with {argv[0]}")


def quiet_thread_and_loud_other(argv: list[str]) -> int:
    other = threading.Thread(target=print, args=("from another thread",))
    other.start()
    other.join()
    return 2


@pytest.mark.parametrize(
    ("name", "message", "logged"),
    [
        (
            "loud_and_failing",
            "reading x\nError: x is wrong ({target} returned 1)",
            ["reading x", "Error: x is wrong"],
        ),
        ("raising", "started\nValueError: bad value x (raised by {target})", ["started"]),
        ("exiting", "cannot go on with x ({target} returned 1)", ["cannot go on with x"]),
        ("quiet_thread_and_loud_other", "{target} returned 2", []),
    ],
)
def test_an_in_process_function_fails_with_what_it_printed_and_raised(
    tmp_path: Path, name: str, message: str, logged: list[str]
) -> None:
    function = StageFunction("stage", f"tests.test_failures:{name}")
    log: list[str] = []
    with pytest.raises(PipelineError) as raised:
        _call(function, ("python -m tool x",), tmp_path, log.append)
    assert raised.value.message == message.format(target=function.target)
    assert log[1:] == logged  # after `> tests.test_failures:...(['x'])`: what it printed, line by line


def test_a_task_state_says_dvcflows_words_and_crashed_after_ctrl_c() -> None:
    from prefect.states import Failed

    from dvcflow.api.failures import failed, state_message

    state = failed(PipelineError("Error: x is wrong (exit code 1)"))
    assert state.is_failed() and state.message == "Error: x is wrong (exit code 1)"
    assert isinstance(state.result(raise_on_failure=False), PipelineError)  # retry_condition_fn sees it
    assert failed(ValueError("boom")).message == "ValueError: boom"
    children.interrupt_commands(grace=0)
    crashed = failed(PipelineError("exit code -2"))
    assert crashed.is_crashed() and crashed.message == "interrupted (Ctrl-C): exit code -2"

    raised = Failed(message="Task run encountered an exception StageCommandError: failed to reproduce 'b'")
    assert state_message(raised) == "failed to reproduce 'b'"
    flow = Failed(message="Flow run encountered an exception: ValueError: boom")
    assert state_message(flow) == "ValueError: boom"
    assert state_message(Failed(message="1 stage(s) failed: b")) == "1 stage(s) failed: b"


def test_a_metrics_file_that_exists_but_cannot_be_read_is_not_missing() -> None:
    unreadable = MetricsSnapshot((), (("m.json", "JSON file structure is corrupted"),))
    with pytest.raises(MetricsError, match=r"^m.json: the metrics file cannot be read \(JSON file"):
        require_metrics(unreadable)
    with pytest.raises(MetricsError, match=r"^no metrics yet \(m.json\)$"):
        require_metrics(MetricsSnapshot((), (("m.json", "no such file"),)))
