"""Repository identity: the same after a move or a clone, distinct for distinct repositories (real git)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dvcflow.api.artifacts import artifact_key
from dvcflow.api.tags import REPO_TAG, repo_tag
from dvcflow.core.errors import ConfigError
from dvcflow.core.identity import repo_identity
from tests.conftest import LiveServer
from tests.helpers import api_post, base_env, dvcflow, git


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return base_env(tmp_path / "home")


def committed(root: Path, env: dict[str, str], text: str = "a") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main", env=env)
    (root / "file.txt").write_text(text)
    git(root, "add", "-A", env=env)
    git(root, "commit", "-q", "-m", f"start {text}", env=env)
    return root


def ident(root: Path) -> str:
    return repo_identity(root).id


def test_a_move_and_a_clone_keep_the_identity(tmp_path: Path, env: dict[str, str]) -> None:
    original = committed(tmp_path / "original", env)
    before = ident(original)
    clone = tmp_path / "elsewhere" / "renamed-clone"
    git(tmp_path, "clone", "-q", str(original), str(clone), env=env)
    moved = Path(shutil.move(original, tmp_path / "moved"))
    assert ident(clone) == ident(moved) == before
    assert repo_identity(moved).basis.startswith("git root commit ")


def test_distinct_repositories_differ_even_with_the_same_content(tmp_path: Path, env: dict[str, str]) -> None:
    one = committed(tmp_path / "one", env, "same")
    (tmp_path / "two").mkdir()
    git(tmp_path / "two", "init", "-q", env=env)
    (tmp_path / "two" / "file.txt").write_text("same")
    git(tmp_path / "two", "add", "-A", env=env)
    git(tmp_path / "two", "commit", "-q", "-m", "another start", "--date", "2001-01-01T00:00:00", env=env)
    assert ident(one) != ident(tmp_path / "two")


def test_two_dvc_projects_in_one_git_repository_differ(tmp_path: Path, env: dict[str, str]) -> None:
    mono = committed(tmp_path / "mono", env)
    (mono / "a").mkdir()
    (mono / "b").mkdir()
    assert len({ident(mono), ident(mono / "a"), ident(mono / "b")}) == 3


def test_merging_an_unrelated_history_keeps_the_identity(tmp_path: Path, env: dict[str, str]) -> None:
    main = committed(tmp_path / "main", env, "main")
    other = committed(tmp_path / "other", env, "other")
    before = ident(main)
    git(main, "fetch", "-q", str(other), "main", env=env)
    git(
        main, "merge", "-q", "--allow-unrelated-histories", "-X", "ours", "-m", "merge", "FETCH_HEAD", env=env
    )
    assert len(git(main, "rev-list", "--max-parents=0", "HEAD").split()) == 2
    repo_identity.cache_clear()
    assert ident(main) == before


def test_without_a_commit_the_path_is_the_identity(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "fresh").mkdir()
    git(tmp_path / "fresh", "init", "-q", env=env)
    identity = repo_identity(tmp_path / "fresh")
    assert identity.basis == f"path {(tmp_path / 'fresh').resolve()} (no git commit yet)"
    assert ident(tmp_path / "plain-folder") != identity.id


def test_repo_id_in_pyproject_wins_and_is_validated(tmp_path: Path, env: dict[str, str]) -> None:
    copy = committed(tmp_path / "from-template", env)
    (copy / "pyproject.toml").write_text('[tool.dvcflow]\nrepo_id = "team-churn-model"\n')
    assert repo_identity(copy).id == "team-churn-model"
    bad = committed(tmp_path / "bad", env)
    (bad / "pyproject.toml").write_text('[tool.dvcflow]\nrepo_id = "Not Valid!"\n')
    with pytest.raises(ConfigError, match="repo_id must be 1-63 lowercase letters"):
        repo_identity(bad)


def test_tag_and_artifact_key_are_derived_from_the_identity(tmp_path: Path, env: dict[str, str]) -> None:
    repo = committed(tmp_path / "repo", env)
    assert repo_tag(repo) == f"{REPO_TAG}{ident(repo)}"
    assert artifact_key(repo) == f"dvcflow-metrics-{ident(repo)}"


@pytest.mark.integration
def test_history_still_reads_metrics_published_under_the_old_path_key(
    tmp_path: Path, live_server: LiveServer
) -> None:
    from dvcflow.api.artifacts import legacy_artifact_key

    env = dict(live_server.env)
    repo = committed(tmp_path / "repo", env)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, env=env, check=True)
    rows = [{"file": "m.json", "metric": "accuracy", "value": 0.5}]
    old = {"key": legacy_artifact_key(repo), "type": "table", "data": json.dumps(rows)}
    api_post(live_server.api_url, "/artifacts/", old)  # what an older dvcflow published
    history = dvcflow("metrics", "--history", "--json", cwd=repo, env=env)
    assert history.returncode == 0, history.stderr
    data = json.loads(history.stdout)
    assert data["key"] == artifact_key(repo)
    assert [run["metrics"] for run in data["runs"]] == [{"m.json": {"accuracy": 0.5}}]
