"""`dvcflow sweep` honours resource declarations (issue 23, and the sweep issue): trials queue for a GPU like
stages do.

The unit tests run two schedulers on threads against one shared pool (a sweep's per-stage trials). The
integration tests run real sweeps whose stages record their own start, end and `CUDA_VISIBLE_DEVICES`
(tests/helpers.py `TIMED_STAGE_PY`) into one file outside the trials' workspaces, which are removed at the
end; concurrency is read from those. The machines have no GPU: the capacity comes from `--resource`.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

# `import dvc` binds DVC's log handlers to the sys.stdout of that moment: import it before any
# CliRunner swaps sys.stdout for a buffer that it closes afterwards.
import dvc.logger as _dvc_logger  # noqa: F401
import yaml
from typer.testing import CliRunner

from dvcflow.cli.app import app
from dvcflow.core.graph import PipelineSnapshot, Plan, PlannedStage, StageGraph, StageNode, plan
from dvcflow.core.resources import Capacity, Demand, Grant, one_at_a_time
from dvcflow.engine.scheduler import Action, Outcome, ResourcePool, run_stages
from tests.conftest import Repos, integration_fixture
from tests.helpers import dvcflow, forget_machine_limit, git, make_resource_repo, most_at_once, timed_stage

GPU1 = Demand((("gpu", 1),))


# Two runs, one pool: the schedulers on threads, the stages on timers


class TimedLauncher:
    """Each launched RUN stage ends `seconds` later (a timer thread); records each stage's span and grant."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.spans: dict[str, tuple[float, float]] = {}
        self.grants: dict[str, Grant] = {}
        self._finished: queue.Queue[str | None] = queue.Queue()

    def launch(
        self, stage: PlannedStage, action: Action, reason: str, edges: tuple[str, ...], grant: Grant
    ) -> None:
        took = self.seconds if action is Action.RUN else 0.0
        start = time.monotonic()
        self.grants[stage.name] = grant

        def end() -> None:
            self.spans[stage.name] = (start, time.monotonic())
            self._finished.put(stage.name)

        threading.Timer(took, end).start()

    def next_finished(self) -> tuple[str, Outcome] | None:
        name = self._finished.get(timeout=10)
        return None if name is None else (name, Outcome.SUCCEEDED)

    def wake(self) -> None:
        self._finished.put(None)


def _plan(run: str) -> Plan:
    """`prep` (declares nothing), then `train` (gpu: 1), as one trial's pipeline."""
    graph = StageGraph((StageNode(f"{run}-prep"), StageNode(f"{run}-train", (f"{run}-prep",))))
    snapshot = PipelineSnapshot(graph, {f"{run}-prep": "changed", f"{run}-train": "changed"})
    return plan(snapshot, demands={f"{run}-train": GPU1})


def test_two_runs_sharing_a_pool_never_overlap_their_gpu_stages() -> None:
    """The second run's `train` waits for the first's with none of its own stages in flight, and starts
    when the pool wakes it: the GPU stages never overlap, both complete, on the one index."""
    pool = ResourcePool(Capacity((("gpu", 1),), ("0",)))
    launchers = {run: TimedLauncher(0.2) for run in ("a", "b", "c")}
    outcomes: dict[str, dict[str, Outcome]] = {}

    def run(name: str) -> None:
        outcomes[name] = run_stages(_plan(name), launchers[name], jobs=2, keep_going=False, pool=pool)

    threads = [threading.Thread(target=run, args=(name,)) for name in launchers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert all(set(outcome.values()) == {Outcome.SUCCEEDED} for outcome in outcomes.values()), outcomes
    spans = {name: span for launcher in launchers.values() for name, span in launcher.spans.items()}
    assert most_at_once([span for name, span in spans.items() if name.endswith("-train")]) == 1
    assert most_at_once([span for name, span in spans.items() if name.endswith("-prep")]) >= 2
    assert {launcher.grants[f"{run}-train"].gpus for run, launcher in launchers.items()} == {("0",)}
    assert pool.free == {"gpu": 1} and pool.free_gpus == ["0"]  # everything given back


def test_a_whole_dvc_repro_holds_what_its_stages_need_one_at_a_time() -> None:
    demands = [
        Demand((("gpu", 1), ("mem_gb", 12)), ("licence",)),
        Demand((("gpu", 2),)),
        Demand(mutex=("db",)),
    ]
    assert one_at_a_time(demands) == Demand((("gpu", 2), ("mem_gb", 12)), ("db", "licence"))
    assert one_at_a_time([]).empty


def test_per_stage_trials_on_dask_share_what_their_worker_reserved_and_hold_their_mutex_groups(
    tmp_path: Path,
) -> None:
    """On Dask the sweep's pool is out of the workers' reach: a per-stage trial schedules its stages against
    what its task reserved on its worker (two `gpu: 1` stages of one trial never at once on a `GPU=1`
    worker), and holds its stages' mutex groups in the sweep for its whole run."""
    from dvcflow.core.resources import Resources
    from dvcflow.engine.trials import SweepSession, TrialSpec

    demands = {"a-prep": Demand(mutex=("licence",)), "a-train": GPU1, "a-eval": GPU1}
    resources = Resources(demands, share=False, dask=True)
    specs = (TrialSpec(1, ()), TrialSpec(2, ()))
    sweep = SweepSession(
        tmp_path, "0" * 40, specs, tmp_path, tmp_path, save=False, per_stage=True, metric=None,
        maximize=True, resources=resources, dask_address="tcp://127.0.0.1:1",
    )  # fmt: skip
    assert sweep.room()
    sweep.started(1)
    assert not sweep.room()  # trial 1 holds the mutex group: trial 2 waits in the sweep
    job = sweep.job(1)
    assert job.cancel_event == sweep.cancel_event != ""
    inside = job.stage_resources
    assert (inside.capacity.amounts, inside.dask, inside.pool) == ((("gpu", 1),), False, "")
    graph = StageGraph(
        (StageNode("a-prep"), StageNode("a-train", ("a-prep",)), StageNode("a-eval", ("a-prep",)))
    )
    snapshot = PipelineSnapshot(graph, dict.fromkeys(("a-prep", "a-train", "a-eval"), "changed"))
    launcher = TimedLauncher(0.2)
    outcomes = run_stages(
        plan(snapshot, demands=inside.demands), launcher, jobs=3, keep_going=False, capacity=inside.capacity
    )
    assert set(outcomes.values()) == {Outcome.SUCCEEDED}
    assert most_at_once([launcher.spans["a-train"], launcher.spans["a-eval"]]) == 1
    local = SweepSession(
        tmp_path, "0" * 40, specs, tmp_path, tmp_path, save=False, per_stage=True, metric=None,
        maximize=True, resources=Resources(demands),
    )  # fmt: skip
    assert local.job(1).stage_resources == local.resources  # here, the pool the trials share


# Real sweeps


def _stage(name: str, seconds: float, meta: dict[str, object] | None = None) -> dict[str, object]:
    """A timed stage that reads the `seed` param, so that each trial runs it (not DVC's run cache)."""
    return {**timed_stage(name, seconds, meta), "params": ["seed"]}


def _sweep_repo(root: Path, env: dict[str, str], gpus: object = 1) -> Path:
    """`prep` (declares nothing, 1 s), then `train` (gpu: `gpus`, 1 s), with `seed` in params.yaml."""
    train = _stage("train", 1, {"resources": {"gpu": gpus}})
    train["deps"] = ["stage.py", "out/prep.json"]
    repo = make_resource_repo(root, env, {"prep": _stage("prep", 1), "train": train})
    (repo / "params.yaml").write_text("seed: 0\n")
    git(repo, "add", "params.yaml", env=env)
    git(repo, "commit", "-q", "-m", "seed", env=env)
    return repo


def _trial_spans(log: Path) -> dict[str, dict[str, dict[str, object]]]:
    """Trial workspace → stage name → its span, as the stages recorded them."""
    trials: dict[str, dict[str, dict[str, object]]] = {}
    for line in log.read_text().splitlines():
        span = json.loads(line)
        trials.setdefault(str(span["cwd"]), {})[str(span["name"])] = span
    return trials


def _interval(span: dict[str, object]) -> tuple[float, float]:
    return float(str(span["start"])), float(str(span["end"]))


def _sweep(repo: Path, env: dict[str, str], log: Path, *flags: str) -> None:
    """Three trials; the machine's GPU limit set to the sweep's capacity (another run may have left one)."""
    forget_machine_limit(env, "gpu")
    result = dvcflow(
        "sweep", "-S", "seed=1,2,3", "--json", *flags, cwd=repo, env={**env, "DVCFLOW_TEST_SPANS": str(log)}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    trials = json.loads(result.stdout)["trials"]
    assert [trial["state"] for trial in trials] == ["Completed"] * 3


def test_per_stage_trials_queue_for_the_one_gpu_while_undeclared_stages_run_beside(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    repo = _sweep_repo(tmp_path / "repo", client_env)
    log = tmp_path / "spans.jsonl"
    _sweep(repo, client_env, log, "--per-stage", "--jobs", "3", "--resource", "gpu=1")
    trials = _trial_spans(log)
    assert len(trials) == 3 and all(set(stages) == {"prep", "train"} for stages in trials.values())
    trains = [stages["train"] for stages in trials.values()]
    assert most_at_once([_interval(span) for span in trains]) == 1, trains  # never two on the one GPU
    assert {span["gpus"] for span in trains} == {"0"}
    every = [_interval(span) for stages in trials.values() for span in stages.values()]
    assert most_at_once(every) >= 2  # the trials did run at once: only the GPU stages queued


def test_whole_trials_on_two_gpus_run_two_at_a_time_on_indices_of_their_own(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    """A trial that is one `dvc repro` holds one GPU from its start to its end (its heaviest stage's
    need): with three trials and --jobs 3, two run at once, each on its own index, every one of its
    stages seeing it."""
    repo = _sweep_repo(tmp_path / "repo", client_env)
    log = tmp_path / "spans.jsonl"
    _sweep(repo, client_env, log, "--jobs", "3", "--resource", "gpu=2")
    trials = _trial_spans(log)
    assert len(trials) == 3
    for stages in trials.values():
        assert stages["prep"]["gpus"] == stages["train"]["gpus"] in ("0", "1"), stages
    whole = {cwd: (_interval(s["prep"])[0], _interval(s["train"])[1]) for cwd, s in trials.items()}
    assert most_at_once(list(whole.values())) == 2, whole
    names = sorted(whole)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            (a0, a1), (b0, b1) = whole[a], whole[b]
            if a0 < b1 and b0 < a1:
                assert trials[a]["train"]["gpus"] != trials[b]["train"]["gpus"], (trials[a], trials[b])


def test_bad_resource_input_to_a_sweep_is_one_line_before_any_trial(tmp_path: Path, repos: Repos) -> None:
    repo = _sweep_repo(tmp_path / "bad", repos.env)
    dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text())
    cases = [
        (1, ["--resource", "gpu=abc"], 2, "--resource gpu=abc: the amount must be a whole number, got 'abc'"),
        (3, ["--resource", "gpu=2"], 3, "stage 'train' needs gpu=3, more than the whole capacity (gpu=2, "
         "from --resource)"),
        ({"licence_seats": 1}, [], 3, "stage 'train' needs licence_seats=1, but there is no capacity for "
         "'licence_seats'"),
    ]  # fmt: skip
    searching = [
        "--search",
        "random",
        "--trials",
        "2",
        "--metric",
        "f",
        "--study",
        "s",
        "-S",
        "seed=range(1,9)",
    ]
    for needs, flags, code, message in cases:
        resources = needs if isinstance(needs, dict) else {"gpu": needs}
        dvc_yaml["stages"]["train"]["meta"] = {"dvcflow": {"resources": resources}}
        (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml))
        for how in (["-S", "seed=1,2"], ["-S", "seed=1,2", "--per-stage"], searching):
            result = CliRunner().invoke(app, ["sweep", *how, *flags, "--repo", str(repo)], env=repos.env)
            lines = result.output.strip().splitlines()
            assert result.exit_code == code, result.output
            assert len(lines) == 1 and lines[0].startswith(f"Error: {message}"), result.output
    assert len(git(repo, "worktree", "list", env=repos.env).splitlines()) == 1  # no trial's workspace
    assert not (repo / "out").exists() and not (repo / ".dvc" / "tmp" / "dvcflow-studies").exists()


@integration_fixture
def mute_port() -> Iterator[int]:
    """A local TCP port that takes connections and never answers: no Dask scheduler, yet one to connect to."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def test_bad_resource_input_to_a_sweep_in_clones_is_refused_before_the_workers_are_asked(
    tmp_path: Path, repos: Repos, mute_port: int
) -> None:
    """The local check comes before `plan_clones`, which asks the Dask workers and may push a ref to the
    git remote: here the workers would never answer, and the line comes at once."""
    repo = _sweep_repo(tmp_path / "bad", repos.env)
    address = f"tcp://127.0.0.1:{mute_port}"
    started = time.monotonic()

    result = CliRunner().invoke(
        app,
        ["sweep", "-S", "seed=1,2", "--resource", "gpu=1", "--dask-address", address, "--no-shared-disk",
         "--repo", str(repo)],
        env=repos.env,
    )  # fmt: skip

    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --resource does not apply with --dask-address")
    assert time.monotonic() - started < 10
