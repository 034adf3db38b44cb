"""`deploy`, `notify`, `runs` bad input refused at the CLI boundary before any Prefect API is contacted
(Typer's CliRunner, in process, no server: a check that came after connecting would fail here)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from typer.testing import CliRunner

from dvcflow.cli.app import app
from dvcflow.core.errors import UsageError
from dvcflow.services.notify import redact

runner = CliRunner()

CASES = {
    "interval-zero": (["deploy", "--interval", "0"], "Error: --interval must be more than 0 seconds, got 0"),
    "interval-negative": (
        ["deploy", "--interval", "-5"],
        "Error: --interval must be more than 0 seconds, got -5",
    ),
    "cron-and-interval": (
        ["deploy", "--cron", "0 3 * * *", "--interval", "60"],
        "Error: --cron and --interval exclude each other: give one schedule",
    ),
    "jobs-without-per-stage": (["deploy", "--jobs", "2"], "Error: --jobs needs --per-stage"),
    "jobs-zero": (["deploy", "--per-stage", "--jobs", "0"], "Error: --jobs must be at least 1, got 0"),
    "webhook-not-http": (
        ["notify", "--webhook", "ftp://example.com/hook"],
        "Error: --webhook must be an http(s) URL such as https://host/path, got 'ftp://example.com/***'",
    ),
    "webhook-no-scheme": (
        ["notify", "--webhook", "example.com/hook"],
        "Error: --webhook must be an http(s) URL such as https://host/path, got a value without scheme://host",
    ),
    "slack-not-http": (
        ["notify", "--slack", "hooks.slack.com"],
        "Error: --slack must be an http(s) URL such as https://host/path, got a value without scheme://host",
    ),
    "on-unknown-state": (
        ["notify", "--webhook", "https://example.com/hook", "--on", "failed,exploded"],
        "Error: unknown --on state 'exploded' (choose from failed, crashed, completed, cancelled)",
    ),
    "notify-nothing": (
        ["notify"],
        "Error: give exactly one of --webhook URL, --slack URL, --list or --remove NAME",
    ),
    "notify-webhook-and-slack": (
        ["notify", "--webhook", "https://a.example/x", "--slack", "https://b.example/y"],
        "Error: give exactly one of --webhook URL, --slack URL, --list or --remove NAME",
    ),
    "notify-list-with-webhook": (
        ["notify", "--list", "--webhook", "https://a.example/x"],
        "Error: --list takes no --webhook",
    ),
    "runs-limit-zero": (["runs", "--limit", "0"], "Error: --limit must be between 1 and 200, got 0"),
    "runs-limit-too-many": (["runs", "-n", "201"], "Error: --limit must be between 1 and 200, got 201"),
    "notify-list-and-remove": (["notify", "--list", "--remove", "x"], "Error: --list takes no --remove"),
    "notify-remove-with-on": (["notify", "--remove", "x", "--on", "failed"], "Error: --remove takes no --on"),
    "debounce-zero": (
        ["deploy", "--on-change", "--debounce", "0"],
        "Error: --debounce must be more than 0 seconds, got 0",
    ),
    "debounce-negative": (
        ["deploy", "--on-change", "--debounce", "-2"],
        "Error: --debounce must be more than 0 seconds, got -2",
    ),
    "watch-debounce-zero": (
        ["watch", "--debounce", "0"],
        "Error: --debounce must be more than 0 seconds, got 0",
    ),
    "debounce-without-on-change": (["deploy", "--debounce", "5"], "Error: --debounce needs --on-change"),
    "watch-branch-without-on-change": (
        ["deploy", "--watch-branch", "main"],
        "Error: --watch-branch needs --on-change",
    ),
    "watch-imports-zero": (
        ["deploy", "--on-change", "--watch-imports", "0"],
        "Error: --watch-imports must be more than 0 seconds, got 0",
    ),
    "watch-branch-empty": (
        ["watch", "--watch-branch", ""],
        "Error: --watch-branch needs a branch name, got ''",
    ),
    "resource-without-per-stage": (
        ["deploy", "--resource", "gpu=1"],
        "Error: --resource needs --per-stage: each stage holds what it declares",
    ),
    "resource-not-a-number": (
        ["deploy", "--per-stage", "--resource", "gpu=abc"],
        "Error: --resource gpu=abc: the amount must be a whole number, got 'abc'",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_error_line(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # not even a DVC repository: the flags are refused first
    args, expected = CASES[case]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert [line for line in result.output.splitlines() if line.startswith("Error:")] == [expected]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T000/B000/XXXX", "https://hooks.slack.com/***"),
        ("http://127.0.0.1:8080/hook?token=abc", "http://127.0.0.1:8080/***"),
        ("https://user:secret@example.com", "https://example.com/***"),
        ("https://example.com/", "https://example.com/"),
    ],
)
def test_a_webhook_url_is_shown_without_its_token(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize("flag", ["--webhook", "--slack"])
@pytest.mark.parametrize(
    "url",
    [
        "hooks.example.com/services/T0/B0/SECRETTOKEN",
        "//SECRETTOKEN@hooks.example.com/x",
        "ftp://hooks.example.com/SECRETTOKEN",
        "https:///SECRETTOKEN",
        "SECRETTOKEN",
    ],
)
def test_a_refused_url_never_shows_its_token(
    flag: str, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["notify", flag, url])
    assert result.exit_code == 2 and "Error: " + flag in result.output, result.output
    assert "SECRETTOKEN" not in result.output


@pytest.mark.parametrize("command", ["deploy", "trigger", "runs", "notify", "watch"])
def test_every_new_command_has_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output
    assert "Example:" in result.output


def _run(run_id: str, kind: str, attempt: int, message: str | None = None) -> SimpleNamespace:
    state = SimpleNamespace(type=SimpleNamespace(value=kind), name=kind.title(), message=message)
    return SimpleNamespace(
        id=run_id,
        name=f"run-{run_id}",
        run_count=attempt,
        state=state,
        start_time=datetime(2026, 1, 1, tzinfo=UTC),
        total_run_time=timedelta(seconds=3),
    )


def test_the_serving_watcher_reports_each_attempt_once_and_not_the_past() -> None:
    """What `dvcflow deploy` prints as runs start and end, from successive reads of the API."""
    from dvcflow.services.deploy import RunEvent, _RunWatcher

    reads = [
        [_run("old", "COMPLETED", 1)],  # before serving began: history, not news
        [_run("old", "COMPLETED", 1), _run("new", "RUNNING", 1)],
        [_run("old", "COMPLETED", 1), _run("new", "RUNNING", 1)],
        [_run("old", "COMPLETED", 1), _run("new", "FAILED", 1, "b failed")],
        [_run("old", "COMPLETED", 1), _run("new", "FAILED", 1, "b failed")],
        [
            _run("old", "COMPLETED", 1),
            _run("new", "COMPLETED", 2),
        ],  # retried; started and ended between reads
    ]
    from prefect.settings import PREFECT_UI_URL, temporary_settings

    events: list[RunEvent] = []
    watcher = _RunWatcher(uuid.uuid4(), events.append)
    client = SimpleNamespace(read_flow_runs=lambda **_: list(reversed(reads.pop(0))))
    with temporary_settings(updates={PREFECT_UI_URL: "http://ui"}):
        for first in (True, False, False, False, False, False):
            watcher._poll(client, report=not first)
    assert [(event.run_name, event.ended, event.state, event.message) for event in events] == [
        ("run-new", False, "Running", None),
        ("run-new", True, "Failed", "b failed"),
        ("run-new", False, "Running", None),
        ("run-new", True, "Completed", None),
    ]
    assert events[-1].ui_link == "http://ui/runs/flow-run/new"


DEPLOY = {
    "name": None,
    "cron": None,
    "interval": None,
    "per_stage": False,
    "jobs": None,
    "keep_going": False,
    "pool": None,
    "on_change": False,
    "debounce": None,
    "watch_branch": None,
    "watch_imports": None,
    "targets": (),
    "resources": None,
}
NOTIFY = {"webhook": None, "slack": None, "on": None, "name": None}
MAPPING: list[tuple[list[str], str, dict[str, Any]]] = [
    (["deploy"], "dvcflow.services.deploy.check_request", DEPLOY),
    (
        ["deploy", "--name", "n", "--cron", "0 3 * * *"],
        "dvcflow.services.deploy.check_request",
        {**DEPLOY, "name": "n", "cron": "0 3 * * *"},
    ),
    (["deploy", "--interval", "600"], "dvcflow.services.deploy.check_request", {**DEPLOY, "interval": 600.0}),
    (
        ["deploy", "--per-stage", "-j", "2", "--keep-going"],
        "dvcflow.services.deploy.check_request",
        {**DEPLOY, "per_stage": True, "jobs": 2, "keep_going": True},
    ),
    (["deploy", "--pool", "p"], "dvcflow.services.deploy.check_request", {**DEPLOY, "pool": "p"}),
    (
        ["deploy", "train", "evaluate", "--per-stage", "--resource", "gpu=2"],
        "dvcflow.services.deploy.check_request",
        {**DEPLOY, "targets": ("train", "evaluate"), "per_stage": True, "resources": {"gpu": 2}},
    ),
    (
        ["deploy", "--on-change", "--debounce", "5", "--watch-branch", "main", "--watch-imports", "600"],
        "dvcflow.services.deploy.check_request",
        {**DEPLOY, "on_change": True, "debounce": 5.0, "watch_branch": "main", "watch_imports": 600.0},
    ),
    (
        ["notify", "--webhook", "https://h/x"],
        "dvcflow.services.notify.check_request",
        {**NOTIFY, "webhook": "https://h/x"},
    ),
    (
        ["notify", "--slack", "https://h/y", "--on", "completed", "--name", "n"],
        "dvcflow.services.notify.check_request",
        {**NOTIFY, "slack": "https://h/y", "on": "completed", "name": "n"},
    ),
]


class _Stop(UsageError):
    def __init__(self, *_: object, **__: object) -> None:
        super().__init__("stopped at the library call")


@pytest.mark.parametrize(("args", "target", "kwargs"), MAPPING, ids=[" ".join(row[0]) for row in MAPPING])
def test_each_option_reaches_the_library(args: list[str], target: str, kwargs: dict[str, Any]) -> None:
    """Command line -> the checked request, as keyword arguments (the call is stopped there)."""
    with mock.patch(target, autospec=True, side_effect=_Stop) as checked:
        result = runner.invoke(app, args)
    assert "Error: stopped at the library call" in result.output, result.output
    checked.assert_called_once_with(None, **kwargs)


def test_a_deployment_run_refuses_a_repo_root_other_than_its_own(tmp_path: Path) -> None:
    """A custom run (`--param repo_root=/elsewhere`) would run stage commands anywhere: refused."""
    from dvcflow.api.tags import repo_tag
    from dvcflow.flows.deployed import check_repo_root

    served, other = tmp_path / "served", tmp_path / "other"
    for root in (served, other):  # identities from `repo_id`: no git to ask
        root.mkdir()
        (root / "pyproject.toml").write_text(f'[tool.dvcflow]\nrepo_id = "{root.name}-repo"\n')
    tags = [repo_tag(served), "other-tag"]
    assert tags[0].endswith(":served-repo")
    assert check_repo_root(str(served), str(served), tags) == served
    with pytest.raises(UsageError, match="is not the repository this deployment serves"):
        check_repo_root(str(other), str(served), tags)
    with pytest.raises(UsageError, match="is not the repository this deployment serves"):
        check_repo_root(str(other), None, tags)  # no deployment defaults: the run's tag decides


@pytest.mark.parametrize(
    ("state", "code"),
    [("Completed", 0), ("Scheduled", 0), ("Failed", 1), ("Crashed", 1), ("Cancelled", 130)],
)
def test_trigger_exits_by_the_one_exit_code_table(state: str, code: int) -> None:
    from dvcflow.services.deploy import TriggeredRun

    assert TriggeredRun("id", "run", "flow/dep", state, None).exit_code == code


class _FakeClient:
    """The few Prefect client calls `deploy.trigger` makes, for a deployment nobody serves."""

    def __init__(self) -> None:
        self.reads = 0
        scheduled = SimpleNamespace(name="Scheduled", is_final=lambda: False)
        self.run = SimpleNamespace(id="r1", name="quiet-run", state=scheduled, parameters={})

    def __enter__(self) -> _FakeClient:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def read_deployment_by_name(self, name: str) -> Any:
        return SimpleNamespace(id="d1", status=SimpleNamespace(value="NOT_READY"))

    def create_flow_run_from_deployment(self, *_: object, **__: object) -> Any:
        return self.run

    def read_flow_run(self, _: object) -> Any:
        self.reads += 1
        return self.run


def test_trigger_wait_gives_up_after_its_timeout_and_says_nobody_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dvcflow.core.errors import DvcflowError
    from dvcflow.services import deploy

    client = _FakeClient()
    monkeypatch.setattr("prefect.client.orchestration.get_client", lambda **_: client)
    monkeypatch.setattr(deploy, "TRIGGER_POLL_S", 0.01)
    notes: list[str] = []
    with pytest.raises(DvcflowError, match=r"'quiet-run' still Scheduled after 0.05 s: is `dvcflow deploy`"):
        deploy.trigger("nightly", wait=True, timeout=0.05, announce=notes.append)
    assert client.reads >= 1
    assert notes and "NOT_READY" in notes[0]


def test_trigger_timeout_must_be_positive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["trigger", "x", "--wait", "--timeout", "0"])
    assert result.exit_code == 2
    assert "Error: --timeout must be more than 0 seconds, got 0" in result.output


def test_stopping_after_the_server_is_gone_is_a_server_error_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import httpx

    from dvcflow.core.errors import ApiLostError, ExitCode
    from dvcflow.services import deploy

    class Gone(_FakeClient):
        def request(self, *_: object, **__: object) -> Any:
            raise httpx.ConnectError("All connection attempts failed")

    monkeypatch.setattr("prefect.client.orchestration.get_client", lambda **_: Gone())
    with pytest.raises(ApiLostError, match="deployment 'nightly' could not be paused") as raised:
        deploy._pause_at_stop("d1", "nightly")
    assert raised.value.exit_code == ExitCode.SERVER_UNREACHABLE


@pytest.mark.parametrize(("old_block", "deleted"), [("old-block", ["old-block"]), ("new-block", [])])
def test_switching_webhook_and_slack_deletes_the_old_url_block(
    old_block: str, deleted: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same name, other kind: the previous block (a Webhook, now a SlackWebhook) goes; the same one stays."""
    from dvcflow.services import notify

    existing = SimpleNamespace(id="a1", actions=[SimpleNamespace(block_document_id=old_block)])
    gone: list[str] = []
    client = SimpleNamespace(
        update_automation=lambda *_: None,
        delete_block_document=gone.append,
    )

    class Client:
        def __enter__(self) -> Any:
            return client

        def __exit__(self, *_: object) -> None:
            pass

    monkeypatch.setattr("prefect.client.orchestration.get_client", lambda **_: Client())
    monkeypatch.setattr(notify, "_save_block", lambda _: "new-block")
    monkeypatch.setattr(notify, "_automation", lambda *_: "automation")
    monkeypatch.setattr(notify, "_find", lambda *_: existing)
    request = notify.NotifyRequest(tmp_path, "n", notify.SLACK, "https://hooks.example/x", ("Failed",))
    assert notify.set_notification(request).created is False
    assert gone == deleted


def test_the_repository_path_is_not_jinja_to_the_server(tmp_path: Path) -> None:
    """The server renders the message as a Jinja template; a folder named like a template stays a name."""
    import json

    import jinja2
    from prefect.settings import PREFECT_UI_URL, temporary_settings

    from dvcflow.services import notify

    root = tmp_path / "{{ 7 * 7 }}{% if 1 %}x{% endif %}"
    with temporary_settings(updates={PREFECT_UI_URL: "http://ui"}):
        payload = notify._payload(root)
    state = SimpleNamespace(name="Failed", message="stage b is broken")
    context = {
        "flow": SimpleNamespace(name="f"),
        "flow_run": SimpleNamespace(name="r", id="i1", state=state),
        "deployment": None,
    }
    message = json.loads(jinja2.Environment().from_string(payload).render(**context))
    assert message["repository"] == str(root)
    assert message["reason"] == "stage b is broken" and message["link"] == "http://ui/runs/flow-run/i1"
    server = jinja2.Environment()
    server.filters["ui_url"] = lambda run: f"http://ui/runs/flow-run/{run.id}"  # Prefect's own filter
    body = server.from_string(notify.SLACK_BODY.format(repo=notify._verbatim(str(root))))
    assert body.render(**context).startswith(f"Repository: {root}\nFlow run r of f ended Failed.")


def test_list_or_remove_alone_is_the_library_s_check() -> None:
    from dvcflow.services.notify import check_list_or_remove

    settings = {"webhook": None, "slack": None, "on": None, "name": None}
    check_list_or_remove(True, None, **settings)
    check_list_or_remove(False, "n", **settings)
    with pytest.raises(UsageError, match="--remove takes no --name"):
        check_list_or_remove(False, "n", **{**settings, "name": "m"})
