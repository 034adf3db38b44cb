"""TODO docstring."""

from __future__ import annotations

from pathlib import Path

REPO_TAG = "dvcflow-repo:"


HOST_TAG = "dvcflow-host:"


PID_TAG = "dvcflow-pid:"


IDENTITY_TAGS = (REPO_TAG, HOST_TAG, PID_TAG)


def repo_tag(repo_root: Path) -> str:
    """The Prefect tag naming one repository (`dvcflow.core.identity`), set on every flow run dvcflow starts.

    The one door to that fact: notifications and history filter flow runs by it.
    """
    from dvcflow.core.identity import repo_identity

    return f"{REPO_TAG}{repo_identity(repo_root).id}"


def run_tags(repo_root: Path) -> tuple[str, ...]:
    """Every tag of a flow run started here: the repository, and the host and process that run it."""
    from dvcflow.proc import liveness

    return (repo_tag(repo_root), f"{HOST_TAG}{liveness.host_id()}", f"{PID_TAG}{liveness.process_token()}")


def _tag_value(tags: list[str], prefix: str) -> str | None:
    return next((tag.removeprefix(prefix) for tag in tags if tag.startswith(prefix)), None)
