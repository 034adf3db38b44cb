"""`dvcflow sweep --search`: an Optuna study asked for the next point as each trial ends, told how
each ended, and asked whether a running trial should stop (pruning).

Provides:
- `SearchPlan`: the search as plain data (strategy, trials, space, metric, direction, study, pruner,
  seed), checked by `check_plan` before any trial.
- `Search`: the study of one sweep (Optuna is imported here, lazily: only `--search` pays for it). A
  named study is kept in an Optuna journal file under the repository's `.dvc/tmp/dvcflow-studies/`, so
  `--study NAME` resumes it; without a name it lives in memory.
- `StepWatcher`: reads a running trial's metric per step (`dvcflow.dvc.steps`), reports each step to
  the study, and stops the trial's stage when the pruner says so.
- `search_markdown`: the end-of-run artifact (best params, the objective over the trials, each
  param's importance as Optuna computes it), as markdown: no plotting library is needed.
"""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dvcflow.core.errors import UsageError
from dvcflow.dvc.experiments import Override
from dvcflow.dvc.search_space import FIXED, SearchParam, Value, grid_size
from dvcflow.dvc.steps import read_steps, step_files
from dvcflow.proc import children

if TYPE_CHECKING:
    import optuna

STRATEGIES = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband")
STUDIES_DIR = ("tmp", "dvcflow-studies")  # under the repository's .dvc folder (DVC's scratch, git-ignored)
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
POLL_S = 0.1  # how often a running trial's step files are read


@dataclass(frozen=True)
class SearchPlan:
    strategy: str  # one of STRATEGIES
    trials: int  # new trials this run
    space: tuple[SearchParam, ...]
    metric: str
    maximize: bool
    study: str | None = None  # kept and resumable when named
    prune: str | None = None  # one of PRUNERS
    seed: int | None = None

    @property
    def searched(self) -> tuple[SearchParam, ...]:
        return tuple(param for param in self.space if param.searched)


def check_plan(strategy: str, trials: int | None, prune: str | None, study: str | None) -> None:
    """The flags alone (the space is checked by `dvc.search_space.parse_search_space`)."""
    if strategy not in STRATEGIES:
        raise UsageError(f"--search {strategy}: not a strategy (choose from {', '.join(STRATEGIES)})")
    if trials is not None and trials < 1:
        raise UsageError(f"--trials must be at least 1, got {trials}")
    if trials is None and strategy != "grid":
        raise UsageError(f"--search {strategy} needs --trials N")
    if prune is not None and prune not in PRUNERS:
        raise UsageError(f"--prune {prune}: not a pruner (choose from {', '.join(PRUNERS)})")
    if study is not None and not _STUDY_NAME.match(study):
        raise UsageError(f"--study {study!r}: use letters, digits, '.', '_' and '-'")


def study_file(root: Path, name: str) -> Path:
    """Where study `name` of the repository at `root` is kept."""
    return root.joinpath(".dvc", *STUDIES_DIR, f"{name}.journal")


def _quiet_optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


class Search:
    """The Optuna study of one sweep; thread-safe (trials end in their own threads)."""

    def __init__(self, plan: SearchPlan, root: Path, jobs: int) -> None:
        optuna = _quiet_optuna()
        self.plan = plan
        self._lock = threading.Lock()
        self._open: dict[int, Any] = {}  # optuna.trial.Trial by number
        direction = "maximize" if plan.maximize else "minimize"
        if plan.study is not None:
            from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

            path = study_file(root, plan.study)
            path.parent.mkdir(parents=True, exist_ok=True)
            storage: Any = JournalStorage(
                JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
            )
            self.location: str | None = str(path)
        else:
            storage, self.location = None, None
        self.study = optuna.create_study(
            study_name=plan.study or "dvcflow", storage=storage, load_if_exists=True, direction=direction
        )
        self._check_resumed()
        self._fail_left_running()
        earlier = self.study.get_trials(deepcopy=False)
        self.earlier = len(earlier)
        self.trials = plan.trials
        if plan.strategy == "grid":
            tried = {_grid_key(trial.params, plan.searched) for trial in earlier if trial.state.is_finished()}
            left = grid_size(plan.space) - len(tried)
            if left <= 0:
                raise UsageError(f"--study {plan.study}: every point of the grid has been tried")
            self.trials = min(plan.trials or left, left)
        self.study.sampler = self._sampler(jobs, len(earlier))
        self.study.pruner = self._pruner()
        self.pruning = plan.prune is not None

    def _check_resumed(self) -> None:
        """A resumed study must search the same space for the same metric and direction."""
        attrs = self.study.user_attrs
        space = [param.text for param in self.plan.space if param.searched]
        record = {"space": space, "metric": self.plan.metric}
        if not attrs:
            for key, value in record.items():
                self.study.set_user_attr(key, value)
            return
        if attrs.get("metric") != self.plan.metric:
            raise UsageError(
                f"--study {self.plan.study} searched --metric {attrs.get('metric')}, not {self.plan.metric}",
                hint="the same --metric, or a new --study name",
            )
        if sorted(attrs.get("space", [])) != sorted(space):
            raise UsageError(
                f"--study {self.plan.study} searched -S {' -S '.join(attrs.get('space', []))}",
                hint="give the same -S to resume it, or a new --study name",
            )
        if self.study.direction.name.lower() != ("maximize" if self.plan.maximize else "minimize"):
            raise UsageError(f"--study {self.plan.study} was created with the other of --maximize/--minimize")

    def _fail_left_running(self) -> None:
        """Trials a killed dvcflow left Running in the study are Failed: the resumed search goes on."""
        from optuna.trial import TrialState

        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            self.study.tell(trial.number, state=TrialState.FAIL)

    def _sampler(self, jobs: int, earlier: int) -> Any:
        import optuna

        # A resumed study must not draw the same points again: the seed moves on with the trials done.
        seed = None if self.plan.seed is None else self.plan.seed + earlier
        if self.plan.strategy == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if self.plan.strategy == "grid":
            grid = {param.label: list(param.grid_values()) for param in self.plan.searched}
            return _grid_sampler(grid, seed)
        total = earlier + self.trials
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=max(3, min(10, total // 4)),  # Optuna's 10 random first would be most of 16
            multivariate=True,
            constant_liar=jobs > 1,  # trials running at once are not all asked for the same point
        )

    def _pruner(self) -> Any:
        import optuna

        if self.plan.prune == "median":
            startup = max(1, min(5, self.trials // 4))
            return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=1)
        if self.plan.prune == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=1)
        return optuna.pruners.NopPruner()

    def ask(self) -> tuple[int, tuple[Override, ...]]:
        """The next point: the study's trial number and the overrides a trial writes (fixed ones too)."""
        with self._lock:
            trial = self.study.ask()
            overrides = tuple(param.override(self._suggest(trial, param)) for param in self.plan.space)
            self._open[trial.number] = trial
        return trial.number, overrides

    @staticmethod
    def _suggest(trial: Any, param: SearchParam) -> Value:
        if param.kind == FIXED:
            return param.choices[0]
        if param.kind == "int":
            return int(
                trial.suggest_int(
                    param.label, int(param.low), int(param.high), step=param.step, log=param.log
                )
            )
        if param.kind == "float":
            return float(trial.suggest_float(param.label, param.low, param.high, log=param.log))
        value: Value = trial.suggest_categorical(param.label, list(param.choices))
        return value

    def report(self, number: int, step: int, value: float) -> bool:
        """Tell the study a step's value; whether the trial should stop."""
        with self._lock:
            trial = self._open.get(number)
            if trial is None or not self.pruning:
                return False
            trial.report(value, step)
            return bool(trial.should_prune())

    def tell(self, number: int, outcome: str, value: float | None, name: str) -> None:
        """How the trial ended: "complete" with its value, "pruned", or "fail"."""
        from optuna.trial import TrialState

        with self._lock:
            trial = self._open.pop(number, None)
            if trial is None:
                return
            if name:
                trial.set_user_attr("experiment", name)
            if outcome == "complete" and value is not None:
                self.study.tell(number, value)
            elif outcome == "pruned":
                self.study.tell(number, state=TrialState.PRUNED)
            else:
                self.study.tell(number, state=TrialState.FAIL)

    def give_up_pruning(self) -> None:
        with self._lock:
            self.pruning = False

    def markdown(self) -> str:
        with self._lock:
            return search_markdown(self.study, self.plan, self.location)


def _grid_sampler(grid: dict[str, list[Any]], seed: int | None) -> Any:
    """Optuna's `GridSampler`, except that it does not stop the study when the grid is done (it can
    only from inside `optimize`; the search counts its trials itself)."""
    import optuna

    class AskedGridSampler(optuna.samplers.GridSampler):
        def after_trial(self, *args: Any, **kwargs: Any) -> None:
            pass

    return AskedGridSampler(grid, seed=seed)


def _grid_key(params: dict[str, Any], searched: tuple[SearchParam, ...]) -> tuple[Any, ...]:
    return tuple(params.get(param.label) for param in searched)


class StepWatcher:
    """Reads a running trial's metric per step, reports each new step to the study, and when the
    pruner says so marks the trial pruned (`on_prune`) and stops its stage (SIGTERM, then SIGKILL, to
    what runs in its workspace: `children.stop_commands_in`)."""

    def __init__(
        self,
        search: Search,
        number: int,
        folder: Path,
        locate: Callable[[], Path | None],
        on_prune: Callable[[int], None],
    ) -> None:
        self.search, self.number, self.folder = search, number, folder
        self._locate, self._on_prune = locate, on_prune
        self.steps: list[tuple[int, float]] = []
        self.pruned_at: int | None = None
        self._files: tuple[Path, ...] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"steps-{number}", daemon=True)

    def __enter__(self) -> StepWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.pruned_at is None:
            self._read()  # the steps written last

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            if self._read():
                self.pruned_at = self.steps[-1][0]
                self._on_prune(self.number)
                children.stop_commands_in(self.folder)
                return

    def _read(self) -> bool:
        """Report new steps; whether to prune."""
        if self._files is None:
            workspace = self._locate()
            if workspace is None or not (workspace / "dvc.yaml").exists():
                return False
            self._files = step_files(workspace, self.search.plan.metric)
        last = self.steps[-1][0] if self.steps else None
        for step, value in read_steps(self._files, self.search.plan.metric):
            if last is not None and step <= last:
                continue
            self.steps.append((step, value))
            last = step
            if self.search.report(self.number, step, value):
                return True
        return False


BAR_WIDTH = 24


def _bar(fraction: float) -> str:
    cells = round(max(0.0, min(1.0, fraction)) * BAR_WIDTH)
    return "█" * cells + "·" * (BAR_WIDTH - cells)


def search_markdown(study: optuna.Study, plan: SearchPlan, location: str | None) -> str:
    """Best params, the objective over the trials (with the best so far), and each param's importance
    (`optuna.importance.get_param_importances`, fANOVA), as markdown with text bars."""
    import optuna
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = [trial for trial in trials if trial.state == TrialState.COMPLETE and trial.value is not None]
    how = "max" if plan.maximize else "min"
    lines = [
        f"# Search: {plan.strategy}, {plan.metric} ({how})",
        "",
        f"Study `{study.study_name}`"
        + (f", kept in `{location}`" if location else " (in memory)")
        + f": {len(trials)} trials, {len(done)} complete, "
        + f"{sum(trial.state == TrialState.PRUNED for trial in trials)} pruned.",
        "",
    ]
    if done:
        best = study.best_trial
        lines += ["## Best", "", f"Trial {best.number}: **{plan.metric} = {best.value:.6g}**", ""]
        lines += ["| param | value |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in best.params.items()]
        lines += [""]
    values = [trial.value for trial in done if trial.value is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    span = (high - low) or 1.0
    lines += ["## The objective over the trials", "", f"| trial | state | {plan.metric} | | best so far |"]
    lines += ["|---:|---|---:|---|---:|"]
    best_so_far: float | None = None
    for trial in trials:
        value = trial.value if trial.state == TrialState.COMPLETE else None
        if value is not None:
            better = best_so_far is None or (value > best_so_far if plan.maximize else value < best_so_far)
            best_so_far = value if better else best_so_far
        shown = "" if value is None else f"{value:.6g}"
        bar = "" if value is None else _bar((value - low) / span)
        so_far = "" if best_so_far is None else f"{best_so_far:.6g}"
        lines.append(f"| {trial.number} | {trial.state.name.title()} | {shown} | `{bar}` | {so_far} |")
    lines += ["", "## Importance of each param", ""]
    try:
        with warnings.catch_warnings():  # "too few trials": said below when it is so
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as err:  # too few complete trials, or a single point
        lines.append(f"Not computed: {err}")
    else:
        lines += ["| param | importance | |", "|---|---:|---|"]
        lines += [f"| {name} | {share:.3f} | `{_bar(share)}` |" for name, share in importances.items()]
    return "\n".join(lines) + "\n"
