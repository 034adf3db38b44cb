"""Which stages a run is about: DVC's own `repro` selection arguments as one frozen value.

`dvcflow run-a`, `run-a --per-stage`, `run-b` and `plan` take the same arguments as `dvc repro`
(targets, `-s`, `--downstream`, `--glob`, `--force`) and must pick the same stages for them. This module
holds the arguments and checks that need no repository; `dvc.targets.selected_stages` asks DVC which
stages they name, with DVC's own collection and planning code, so the two can never disagree.

Pure data: no DVC, no Prefect, cheap to import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from dvcflow.core.errors import UsageError


class SelectionFlags(TypedDict, total=False):
    """`Selection`'s flags as keyword arguments, declared once for `Pipeline.plan` and `Pipeline.run`
    (`**flags: Unpack[SelectionFlags]`); each is False unless given, and means what `Selection`'s says."""

    single_item: bool
    downstream: bool
    glob: bool
    force: bool


@dataclass(frozen=True)
class Selection:
    """The stages a run covers, as `dvc repro` arguments; the default is the whole pipeline."""

    targets: tuple[str, ...] = ()
    """Stage names, `dvc.yaml` paths (`sub/dvc.yaml:train`), `.dvc` files; empty means every stage."""
    single_item: bool = False
    """`-s`: only the targets themselves, not what they depend on."""
    downstream: bool = False
    """`--downstream`: the targets and every stage that depends on them, not their upstream."""
    glob: bool = False
    """`--glob`: targets are shell-style patterns over stage names."""
    force: bool = False
    """`-f`: reproduce every selected stage even if DVC finds it up to date."""

    def __post_init__(self) -> None:
        if self.downstream and not self.targets:
            raise UsageError("--downstream needs a target: the stages downstream of which stage?")
        if self.glob and not self.targets:
            raise UsageError("--glob needs a target pattern, e.g. 'train*'")
        if self.single_item and not self.targets:
            raise UsageError("-s/--single-item needs a target")

    def flags(self) -> SelectionFlags:
        """The flags, as `Pipeline.plan` and `Pipeline.run` take them after the targets."""
        return SelectionFlags(
            single_item=self.single_item, downstream=self.downstream, glob=self.glob, force=self.force
        )

    @property
    def everything(self) -> bool:
        """True when no target narrows the run: every stage of the pipeline is in it."""
        return not self.targets

    def dvc_args(self) -> list[str]:
        """The `dvc repro` arguments that make the same selection."""
        args: list[str] = []
        if self.single_item:
            args.append("--single-item")
        if self.downstream:
            args.append("--downstream")
        if self.glob:
            args.append("--glob")
        if self.force:
            args.append("--force")
        return [*args, *self.targets]

    def describe(self) -> str:
        """A few words for logs and summaries: `train (single item, forced)`."""
        flags = [
            label
            for label, on in (
                ("single item", self.single_item),
                ("and downstream", self.downstream),
                ("glob", self.glob),
                ("forced", self.force),
            )
            if on
        ]
        what = " ".join(self.targets) if self.targets else "all stages"
        return f"{what} ({', '.join(flags)})" if flags else what


EVERYTHING = Selection()
