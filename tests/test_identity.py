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
from tests.conftest import LiveServer, Repos
from tests.helpers import api_post, dvcflow
from tests.test_metrics import released_legacy_key


def committed(repos: Repos, root: Path, text: str = "a") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    repos.git(root, "init", "-q", "-b", "main")
    (root / "file.txt").write_text(text)
    repos.git(root, "add", "-A")
    repos.git(root, "commit", "-q", "-m", f"start {text}")
    return root


def ident(root: Path) -> str:
    return repo_identity(root).id


def test_a_move_and_a_clone_keep_the_identity(tmp_path: Path, repos: Repos) -> None:
    original = committed(repos, tmp_path / "original")
    before = ident(original)
    clone = tmp_path / "elsewhere" / "renamed-clone"
    repos.git(tmp_path, "clone", "-q", str(original), str(clone))
    moved = Path(shutil.move(original, tmp_path / "moved"))
    assert ident(clone) == ident(moved) == before
    assert repo_identity(moved).basis.startswith("git root commit ")


def test_distinct_repositories_differ_even_with_the_same_content(tmp_path: Path, repos: Repos) -> None:
    one = committed(repos, tmp_path / "one", "same")
    (tmp_path / "two").mkdir()
    repos.git(tmp_path / "two", "init", "-q")
    (tmp_path / "two" / "file.txt").write_text("same")
    repos.git(tmp_path / "two", "add", "-A")
    repos.git(tmp_path / "two", "commit", "-q", "-m", "another start", "--date", "2001-01-01T00:00:00")
    assert ident(one) != ident(tmp_path / "two")


def test_two_dvc_projects_in_one_git_repository_differ(tmp_path: Path, repos: Repos) -> None:
    mono = committed(repos, tmp_path / "mono")
    (mono / "a").mkdir()
    (mono / "b").mkdir()
    assert len({ident(mono), ident(mono / "a"), ident(mono / "b")}) == 3


def test_merging_an_unrelated_history_keeps_the_identity(tmp_path: Path, repos: Repos) -> None:
    main = committed(repos, tmp_path / "main", "main")
    other = committed(repos, tmp_path / "other", "other")
    before = ident(main)
    repos.git(main, "fetch", "-q", str(other), "main")
    repos.git(main, "merge", "-q", "--allow-unrelated-histories", "-X", "ours", "-m", "merge", "FETCH_HEAD")
    assert len(repos.git(main, "rev-list", "--max-parents=0", "HEAD").split()) == 2
    repo_identity.cache_clear()
    assert ident(main) == before


def test_without_a_commit_the_path_is_the_identity(tmp_path: Path, repos: Repos) -> None:
    (tmp_path / "fresh").mkdir()
    repos.git(tmp_path / "fresh", "init", "-q")
    identity = repo_identity(tmp_path / "fresh")
    assert identity.basis == f"path {(tmp_path / 'fresh').resolve()} (no git commit yet)"
    assert ident(tmp_path / "plain-folder") != identity.id


def test_repo_id_in_pyproject_wins_and_is_validated(tmp_path: Path, repos: Repos) -> None:
    copy = committed(repos, tmp_path / "from-template")
    (copy / "pyproject.toml").write_text('[tool.dvcflow]\nrepo_id = "team-churn-model"\n')
    assert repo_identity(copy).id == "team-churn-model"
    bad = committed(repos, tmp_path / "bad")
    (bad / "pyproject.toml").write_text('[tool.dvcflow]\nrepo_id = "Not Valid!"\n')
    with pytest.raises(ConfigError, match="repo_id must be 1-63 lowercase letters"):
        repo_identity(bad)


def test_tag_and_artifact_key_are_derived_from_the_identity(tmp_path: Path, repos: Repos) -> None:
    repo = committed(repos, tmp_path / "repo")
    assert repo_tag(repo) == f"{REPO_TAG}{ident(repo)}"
    assert artifact_key(repo) == f"dvcflow-metrics-{ident(repo)}"


def test_history_still_reads_metrics_published_under_the_old_path_key(
    tmp_path: Path, live_server: LiveServer
) -> None:
    env = dict(live_server.env)
    repo = committed(Repos(env), tmp_path / "repo")  # the server's environment
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, env=env, check=True)
    rows = [{"file": "m.json", "metric": "accuracy", "value": 0.5}]
    old = {"key": released_legacy_key(repo), "type": "table", "data": json.dumps(rows)}
    api_post(live_server.api_url, "/artifacts/", old)  # what an older dvcflow published (the released key)
    history = dvcflow("metrics", "--history", "--json", cwd=repo, env=env)
    assert history.returncode == 0, history.stderr
    data = json.loads(history.stdout)
    assert data["key"] == artifact_key(repo)
    assert [run["metrics"] for run in data["runs"]] == [{"m.json": {"accuracy": 0.5}}]
