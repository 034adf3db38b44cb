"""Unit tests of where the Prefect API lives: flags > environment > pyproject > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from dvcflow.core.errors import ConfigError, UsageError
from dvcflow.core.settings import ApiMode, ServerConfig, choose_api_mode, redact_url, resolve_server_config


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text('[tool.dvcflow]\nport = 4300\nhost = "localhost"\n')
    (tmp_path / "sub").mkdir()
    return tmp_path


def test_defaults_without_any_configuration(tmp_path: Path) -> None:
    config = resolve_server_config(start=tmp_path, environ={})
    assert (config.host, config.port) == ("127.0.0.1", 4200)
    assert config.api_url == "http://127.0.0.1:4200/api"
    assert config.home == Path.home() / ".dvcflow"


def test_pyproject_is_found_from_a_subfolder(project: Path) -> None:
    config = resolve_server_config(start=project / "sub", environ={})
    assert (config.host, config.port) == ("localhost", 4300)


def test_environment_beats_pyproject(project: Path) -> None:
    config = resolve_server_config(start=project, environ={"DVCFLOW_PORT": "4400"})
    assert config.port == 4400


def test_flag_beats_environment(project: Path) -> None:
    config = resolve_server_config(port=4500, start=project, environ={"DVCFLOW_PORT": "4400"})
    assert config.port == 4500


def test_bad_port_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="port must be a number, got 'abc'"):
        resolve_server_config(start=tmp_path, environ={"DVCFLOW_PORT": "abc"})


def test_non_loopback_host_needs_auth(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"non-loopback host 0\.0\.0\.0"):
        ServerConfig(host="0.0.0.0", home=tmp_path)
    config = ServerConfig(host="0.0.0.0", home=tmp_path, auth="u:p")
    assert config.client_environment()["PREFECT_API_AUTH_STRING"] == "u:p"
    assert "u:p" not in repr(config)


def test_client_and_server_agree_on_the_url(tmp_path: Path) -> None:
    config = ServerConfig(port=4321, home=tmp_path)
    assert config.client_environment()["PREFECT_API_URL"] == "http://127.0.0.1:4321/api"
    server_env = config.server_environment()
    assert server_env["PREFECT_SERVER_API_PORT"] == "4321"
    assert server_env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert server_env["PREFECT_HOME"] == config.client_environment()["PREFECT_HOME"]


def test_explicit_prefect_api_url_wins() -> None:
    assert choose_api_mode(ephemeral=False, environ={"PREFECT_API_URL": "http://x/api"}) is ApiMode.EXTERNAL
    assert choose_api_mode(ephemeral=False, environ={}) is ApiMode.LOCAL
    assert choose_api_mode(ephemeral=None, environ={"DVCFLOW_EPHEMERAL": "1"}) is ApiMode.EPHEMERAL
    assert choose_api_mode(ephemeral=False, environ={"DVCFLOW_EPHEMERAL": "1"}) is ApiMode.LOCAL
    assert (
        choose_api_mode(ephemeral=None, environ={"PREFECT_API_URL": "u", "DVCFLOW_EPHEMERAL": "1"})
        is ApiMode.EXTERNAL
    )
    assert choose_api_mode(ephemeral=True, environ={}) is ApiMode.EPHEMERAL
    with pytest.raises(UsageError, match="--ephemeral contradicts PREFECT_API_URL"):
        choose_api_mode(ephemeral=True, environ={"PREFECT_API_URL": "http://x/api"})


def test_database_password_is_redacted() -> None:
    assert redact_url("postgresql+asyncpg://bob:hunter2@db:5432/prefect") == (
        "postgresql+asyncpg://bob:***@db:5432/prefect"
    )
    assert redact_url("sqlite+aiosqlite:///x.db") == "sqlite+aiosqlite:///x.db"
