"""The tags dvcflow puts on every flow run it starts: the repository, and the host and process that run it.

Why tags: they are how dvcflow finds its own runs again with nothing but the Prefect API. Notifications
and the metrics history filter by the repository's tag; the crash sweep (`dvcflow.api.crash`) picks the
unfinished runs of this host whose process is gone. Each is a `prefix:value` string, so a run started by
an older dvcflow (without a host or process tag) is simply never matched.
"""

from __future__ import annotations

from pathlib import Path

REPO_TAG = "dvcflow-repo:"


HOST_TAG = "dvcflow-host:"


PID_TAG = "dvcflow-pid:"


IDENTITY_TAGS = (REPO_TAG, HOST_TAG, PID_TAG)


EXPERIMENT_TAG = "dvcflow-exp:"  # a run on another machine saved its result as this DVC experiment


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


def tag_value(tags: list[str], prefix: str) -> str | None:
    """The value of the first of `tags` that starts with `prefix` (`PID_TAG`: the process token)."""
    return next((tag.removeprefix(prefix) for tag in tags if tag.startswith(prefix)), None)
