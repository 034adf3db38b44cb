"""The warm starter serves callers with their own Prefect settings (issue 21): a user-set PREFECT_HOME,
PREFECT_API_URL, logging level, profile or prefect.toml is rebuilt in the forked child
(`dvcflow.api.prefect_settings`), and the command behaves as with the starter off. What a child cannot
bring up to date is declined, with the reason docs/server.md gives."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dvcflow.api import prefect_settings
from dvcflow.proc import zygote
from tests.conftest import LiveServer
from tests.helpers import dvcflow, make_tiny_repo
from tests.test_warm import (  # noqa: F401 - the fixtures `starter` and `own_starter`
    flow_run,
    normalized,
    own_starter,
    refusals,
    run_pid,
    served,
    starter,
    warm_version,
)

integration = pytest.mark.integration


def run_pids(api_url: str, *runs: subprocess.CompletedProcess[str]) -> list[int]:
    return [run_pid(flow_run(api_url, run.stdout)) for run in runs]


def served_and_cold(
    repo: Path, env: dict[str, str], live_server: LiveServer
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """A run-a served by the starter, then the same with it off; asserts that the first was served (its
    flow run's process is a child the starter forked) and the second not."""
    warm_run = dvcflow("run-a", cwd=repo, env=env)
    cold_run = dvcflow("run-a", cwd=repo, env={**env, "DVCFLOW_WARM": "0"})
    assert (warm_run.returncode, cold_run.returncode) == (0, 0), warm_run.stderr + cold_run.stderr
    warm_pid, cold_pid = run_pids(live_server.api_url, warm_run, cold_run)
    assert served(live_server.home).get(warm_pid) == ["run-a"], refusals(live_server.home)
    assert cold_pid not in served(live_server.home)
    return warm_run, cold_run


def assert_same_output(
    warm_run: subprocess.CompletedProcess[str], cold_run: subprocess.CompletedProcess[str]
) -> None:
    assert normalized(warm_run.stdout) == normalized(cold_run.stdout)
    assert normalized(warm_run.stderr) == normalized(cold_run.stderr)


@integration
def test_a_user_set_prefect_home_is_served_and_used_as_without_the_starter(
    tmp_path: Path,
    live_server: LiveServer,
    starter: int,  # noqa: F811
) -> None:
    """PREFECT_HOME exported, as Prefect users and CI set-ups do. With PREFECT_API_URL too, dvcflow uses
    that API and Prefect that home: its profile (WARNING) applies and a missing home is made, served or
    not. Without it, dvcflow's local server and its own Prefect home are used, served or not."""
    repo = make_tiny_repo(tmp_path / "repo", live_server.env)
    assert dvcflow("run-a", cwd=repo, env=live_server.env).returncode == 0  # the runs below: no-ops
    user_home = tmp_path / "user-prefect-home"
    user_home.mkdir()
    (user_home / "profiles.toml").write_text(
        'active = "quiet"\n[profiles.quiet]\nPREFECT_LOGGING_LEVEL = "WARNING"\n'
    )
    env = {**live_server.env, "PREFECT_HOME": str(user_home), "PREFECT_API_URL": live_server.api_url}
    warm_run, cold_run = served_and_cold(repo, env, live_server)
    assert "(from PREFECT_API_URL)" in warm_run.stderr
    assert "Beginning flow run" not in warm_run.stderr  # the profile's WARNING level
    assert_same_output(warm_run, cold_run)

    fresh_home = tmp_path / "not-made-yet"  # Prefect makes its home when it builds its settings
    served_and_cold(repo, {**env, "PREFECT_HOME": str(fresh_home)}, live_server)
    assert fresh_home.is_dir()

    local = {**live_server.env, "PREFECT_HOME": str(user_home)}
    warm_run, cold_run = served_and_cold(repo, local, live_server)
    assert "Beginning flow run" in warm_run.stderr  # dvcflow's Prefect home: no such profile there
    assert_same_output(warm_run, cold_run)
    assert not any("run-a" in line for line in refusals(live_server.home))


@integration
def test_a_warning_logging_level_is_served_at_that_level(
    tmp_path: Path,
    live_server: LiveServer,
    starter: int,  # noqa: F811
) -> None:
    repo = make_tiny_repo(tmp_path / "repo", live_server.env)
    assert dvcflow("run-a", cwd=repo, env=live_server.env).returncode == 0
    env = {**live_server.env, "PREFECT_LOGGING_LEVEL": "WARNING"}
    warm_run, cold_run = served_and_cold(repo, env, live_server)
    assert "| INFO " not in warm_run.stderr and "Beginning flow run" not in warm_run.stderr
    assert_same_output(warm_run, cold_run)
    default = dvcflow("run-a", cwd=repo, env=live_server.env)  # the next caller: the starter's INFO again
    assert "Beginning flow run" in default.stderr
    assert served(live_server.home).get(run_pids(live_server.api_url, default)[0]) == ["run-a"]


@integration
def test_a_repository_with_prefect_toml_is_served_with_its_settings(
    tmp_path: Path,
    live_server: LiveServer,
    starter: int,  # noqa: F811
) -> None:
    """Prefect's settings also come from the working directory's prefect.toml (and .env, pyproject.toml):
    the child rebuilds them there, as a process of its own would have read them importing Prefect."""
    repo = make_tiny_repo(tmp_path / "repo", live_server.env)
    (repo / "prefect.toml").write_text('[logging]\nlevel = "WARNING"\n')
    first = dvcflow("run-a", cwd=repo, env=live_server.env)
    assert first.returncode == 0, first.stderr
    assert served(live_server.home).get(run_pids(live_server.api_url, first)[0]) == ["run-a"]
    assert "Beginning flow run" not in first.stderr + first.stdout  # as prefect.toml says: no INFO lines
    warm_run, cold_run = served_and_cold(repo, live_server.env, live_server)
    assert "Beginning flow run" not in warm_run.stderr
    assert_same_output(warm_run, cold_run)


@integration
def test_what_a_child_cannot_bring_up_to_date_is_declined_with_its_reason(
    tmp_path: Path,
    own_starter: tuple[Path, dict[str, str], int],  # noqa: F811
) -> None:
    """Each decline docs/server.md lists, with the reason warm.log gives; the command then runs in its
    own process, as with the starter off."""
    home, env, pid = own_starter
    cases = {
        "plugins": (
            {"PREFECT_PLUGINS_ENABLED": "true"},
            "Prefect's plugins may be enabled (PREFECT_PLUGINS_ENABLED): their start-up hooks run when "
            "Prefect is imported",
        ),
        "SSL_CERT_FILE": ({"SSL_CERT_FILE": str(tmp_path / "ca.pem")}, "SSL_CERT_FILE differs"),
        "PYTHONHASHSEED": ({"PYTHONHASHSEED": "7"}, "other interpreter start-up options"),
        "PYTHONWARNINGS": ({"PYTHONWARNINGS": "ignore::ResourceWarning"}, "start-up options"),
    }
    for name, (extra, reason) in cases.items():
        before = len(refusals(home))
        result = dvcflow("--version", cwd=tmp_path, env={**env, **extra})
        assert (result.returncode, result.stdout) == (0, f"dvcflow {warm_version()}\n"), name
        assert reason in "\n".join(refusals(home)[before:]), (name, refusals(home))
    declined = len(refusals(home))
    for extra in ({"PREFECT_LOGGING_LEVEL": "DEBUG"}, {"PREFECT_HOME": str(tmp_path / "h")}):
        result = dvcflow("--version", cwd=tmp_path, env={**env, **extra})
        assert result.stdout == f"dvcflow {warm_version()}\n"
    assert len(refusals(home)) == declined  # those two were served
    assert zygote.ping(home) == pid


def test_prefect_settings_files_in_the_working_directory_are_seen(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DATABASE=x\n")
    (tmp_path / "pyproject.toml").write_text("[tool.black]\nline-length = 100\n# prefect\n")
    assert prefect_settings.prefect_files(str(tmp_path)) == []
    (tmp_path / ".env").write_text("prefect_logging_level=DEBUG\n")
    (tmp_path / "pyproject.toml").write_text('[tool.prefect.logging]\nlevel = "DEBUG"\n')
    assert prefect_settings.prefect_files(str(tmp_path)) == [".env", "pyproject.toml"]
    (tmp_path / "prefect.toml").write_text("")
    assert prefect_settings.prefect_files(str(tmp_path)) == [".env", "prefect.toml", "pyproject.toml"]


def test_settings_inputs_change_with_what_prefects_settings_are_built_from(tmp_path: Path) -> None:
    home = tmp_path / "prefect-home"
    home.mkdir()
    env = {"PREFECT_HOME": str(home), "PATH": "/bin"}
    first = prefect_settings.settings_inputs(env, str(tmp_path))
    assert prefect_settings.settings_inputs({**env, "OTHER": "1"}, str(tmp_path)) == first
    assert prefect_settings.settings_inputs({**env, "prefect_logging_level": "DEBUG"}, str(tmp_path)) != first
    (home / "profiles.toml").write_text('active = "x"\n')
    with_profiles = prefect_settings.settings_inputs(env, str(tmp_path))
    assert with_profiles != first
    (tmp_path / "prefect.toml").write_text("")
    with_toml = prefect_settings.settings_inputs(env, str(tmp_path))
    assert with_toml != with_profiles
    (home / "logging.yml").write_text("version: 1\n")
    assert prefect_settings.settings_inputs(env, str(tmp_path)) != with_toml


def test_declined_names_only_what_a_child_cannot_rebuild(tmp_path: Path) -> None:
    starter_env = {"PREFECT_HOME": str(tmp_path / "starter-home")}
    cwd = str(tmp_path)
    assert prefect_settings.declined({"PREFECT_LOGGING_LEVEL": "DEBUG"}, cwd, starter_env) is None
    assert prefect_settings.declined({"PREFECT_HOME": str(tmp_path)}, cwd, starter_env) is None
    reason = prefect_settings.declined({"prefect_plugins_enabled": "1"}, cwd, starter_env)
    assert reason is not None and "PREFECT_PLUGINS_ENABLED" in reason
    (tmp_path / "prefect.toml").write_text("[plugins]\nenabled = true\n")
    reason = prefect_settings.declined({}, cwd, starter_env)
    assert reason is not None and "prefect.toml" in reason
    (tmp_path / "prefect.toml").unlink()
    reason = prefect_settings.declined({"SSL_CERT_FILE": "/x.pem"}, cwd, starter_env)
    assert reason is not None and reason.startswith("SSL_CERT_FILE differs")
