"""Runs on machines that do not share this disk: git carries the code, the DVC remote the data, DVC
experiments the results (docs/remote.md).

Provides:
- `check_git_deploy`: before Prefect is contacted, what a worker will run (HEAD on the git remote, no
  uncommitted change to a file the pipeline depends on) and the DVC default remote it will use.
- `register_from_git`: pushes a HEAD the git remote lacks (to a dvcflow ref), then registers the deployment
  of `dvcflow.flows.remote.git_pipeline_flow` with the work pool: its pull step checks the commit out on the
  worker; job variables by the pool's type (`image` and `env` where its job template has them).
- `fetch`: a run's experiment back into the workspace (`dvcflow fetch RUN`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvcflow import __version__
from dvcflow.core.errors import ConfigError, UsageError
from dvcflow.dvc import gitsource, remote_data
from dvcflow.dvc.gitsource import GitSource
from dvcflow.dvc.remote_data import DvcRemote
from dvcflow.services.deploy import DeploymentInfo, DeployRequest, check_cron, deployment_info

DEFAULT_IMAGE = f"dvcflow:{__version__}"  # what `docker build -t dvcflow:VERSION .` names (Dockerfile)
JOB_ENV = {"DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class GitDeploy:
    """A checked `deploy --pool`: the request, the code's source, the data's remote, the image."""

    request: DeployRequest
    source: GitSource
    dvc_remote: DvcRemote
    image: str | None = None

    @property
    def parameters(self) -> dict[str, Any]:
        return {
            "repository": self.source.url,
            "commit": self.source.commit,
            "subdir": self.source.subdir,
            **self.request.run_parameters,
        }


def check_git_deploy(request: DeployRequest, *, image: str | None = None) -> GitDeploy:
    """Refuse, in one line, what would make a worker run something else than HEAD or fail for lack of
    data: no git remote, uncommitted changes to pipeline files, no DVC default remote. Reads the git
    remote (`git ls-remote`); changes nothing."""
    if getattr(request, "watch", None) is not None:
        raise UsageError(
            "--on-change watches this disk: with --pool, add --shared-disk (workers see this repository)"
        )
    if image is not None and not image.strip():
        raise UsageError("--image needs an image name, e.g. registry.example.com/dvcflow:1.0")
    source = gitsource.check_source(request.root, gitsource.pipeline_files(request.root))
    return GitDeploy(request, source, remote_data.default_remote(request.root), image)


def check_pool_flags(request: DeployRequest, *, shared_disk: bool, image: str | None) -> GitDeploy | None:
    """`deploy`'s --pool, --shared-disk and --image: the checked git deployment, or None when the
    deployment is served here or workers share this disk (`services.deploy.register_to_pool`)."""
    if request.pool is None:
        for flag, given in (("--shared-disk", shared_disk), ("--image", image is not None)):
            if given:
                raise UsageError(f"{flag} needs --pool")
        return None
    if shared_disk:
        if image is not None:
            raise UsageError(
                "--image and --shared-disk exclude each other: a shared disk needs a process pool"
            )
        return None
    return check_git_deploy(request, image=image)


def job_variables(template: dict[str, Any] | None, image: str | None) -> dict[str, Any]:
    """What the deployment sets in the pool's job template: `env` (never a secret: credentials come from
    the worker's or the job template's environment, docs/remote.md) and, for pools that run images
    (docker, kubernetes, ...), `image`."""
    properties = ((template or {}).get("variables") or {}).get("properties") or {}
    variables: dict[str, Any] = {}
    if "env" in properties:
        variables["env"] = dict(JOB_ENV)
    if "image" in properties:
        variables["image"] = image or DEFAULT_IMAGE
    elif image is not None:
        raise UsageError("--image: this work pool runs no images (its type has no `image` job variable)")
    return variables


def _pool_template(pool: str) -> dict[str, Any] | None:
    """The work pool's base job template; None when there is no pool named `pool`."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return dict(client.read_work_pool(pool).base_job_template or {})
        except ObjectNotFound:
            return None


def _create_process_pool(pool: str, announce: Callable[[str], None]) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        created = client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    announce(f"Created the process work pool {pool!r}")
    return dict(created.base_job_template or {})


def register_from_git(plan: GitDeploy, *, announce: Callable[[str], None]) -> DeploymentInfo:
    """Push HEAD when the git remote lacks it, then register the deployment with the work pool."""
    from prefect.types.entrypoint import EntrypointType

    from dvcflow.api.tags import repo_tag
    from dvcflow.flows.deployed import FLOW_NAME
    from dvcflow.flows.remote import CommitCheckout, git_pipeline_flow

    request, source = plan.request, plan.source
    assert request.pool is not None
    check_cron(request.cron)
    template = _pool_template(request.pool)
    if template is not None:
        job_variables(template, plan.image)  # an --image the pool cannot use is refused before a push
    pushed = gitsource.publish(request.root, source, request.name)
    if pushed is not None:
        announce(f"Pushed {source.short} to {source.remote} as {pushed} (no branch moved)")
    if template is None:
        template = _create_process_pool(request.pool, announce)
    variables = job_variables(template, plan.image)
    deployment: Any = git_pipeline_flow.to_deployment(
        name=request.name,
        interval=request.interval,
        cron=request.cron,
        paused=False,
        parameters=plan.parameters,
        tags=[repo_tag(request.root)],
        description=(
            f"The DVC pipeline of {source.url} at {source.short} (DVC remote {plan.dvc_remote.name!r}), "
            "registered by `dvcflow deploy --pool`."
        ),
        entrypoint_type=EntrypointType.MODULE_PATH,
        work_pool_name=request.pool,
        job_variables=variables,
    )
    deployment.storage = CommitCheckout(source.url, source.commit, source.subdir)
    deployment_id = deployment.apply()
    announce(
        f"Workers run commit {source.short} of {source.url}; data through DVC remote {plan.dvc_remote.name!r}"
    )
    return deployment_info(deployment_id, request, FLOW_NAME)


# --- back home -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    run: str
    experiment: str
    repository: str
    pulled: bool


def _find_run(root: Path, run: str) -> Any:
    """The flow run of this repository named `run` (or with that id)."""
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterName,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    from dvcflow.api.tags import repo_tag

    try:
        by_id = FlowRunFilterId(any_=[uuid.UUID(run)])
        named = FlowRunFilter(id=by_id, tags=FlowRunFilterTags(all_=[repo_tag(root)]))
    except ValueError:
        named = FlowRunFilter(
            name=FlowRunFilterName(any_=[run]), tags=FlowRunFilterTags(all_=[repo_tag(root)])
        )
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=named, sort=FlowRunSort.START_TIME_DESC, limit=1)
    if not runs:
        raise UsageError(f"no flow run named {run!r} of this repository", hint="`dvcflow runs` lists them")
    return runs[0]


def fetch(root: Path, run: str, *, pull: bool, on_line: Callable[[str], None]) -> Fetched:
    """Bring run `run`'s experiment into the workspace: `dvc exp pull` from the git remote it was pushed
    to, `dvc exp apply` (its dvc.lock, params, metrics); with `pull`, `dvc pull` of its data."""
    from dvcflow.api.tags import EXPERIMENT_TAG, tag_value

    found = _find_run(root, run)
    experiment = tag_value(list(found.tags), EXPERIMENT_TAG)
    repository = (found.parameters or {}).get("repository")
    if experiment is None or not repository:
        state = found.state.name if found.state else "Unknown"
        raise ConfigError(
            f"flow run {found.name!r} ({state}) saved no DVC experiment",
            hint="runs of a `dvcflow deploy --pool` deployment save one when they complete",
        )
    remote_data.fetch_experiment(root, str(repository), experiment, pull=pull, on_line=on_line)
    return Fetched(found.name, experiment, str(repository), pull)
