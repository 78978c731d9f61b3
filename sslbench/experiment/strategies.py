"""What a strategy plugin works with: one cell's data, and the steps strategies share.

A :class:`~sslbench.contract.interfaces.Strategy` says how a cell's pose network starts and what its
pose phase trains on; the runner hands it a :class:`Cell`::

    Cell(config, labelled data and splits, pose task, run directory)
        strategy.initialise(cell) -> network      (random, or pretraining + transfer policy, or ...)
        strategy.train(cell, network) -> FitResult (labelled budget, or also an unlabelled pool)
    runner: network --evaluate--> test metrics, once

Everything a strategy reports beyond the pose metrics goes to :attr:`Cell.timings` (seconds
of its phases, in the record's ``timing``) and :attr:`Cell.metrics` (its own diagnostics, the
record's ``strategy_metrics``).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from rich.console import Console

from sslbench.contract.config import RunConfig
from sslbench.contract.errors import ConfigError
from sslbench.contract.interfaces import Geometry, ImageDataset, Splits, Strategy, Task
from sslbench.contract.networks import Backbone
from sslbench.contract.registry import Registry
from sslbench.contract.skeleton import LSP
from sslbench.data.loaders import TaskDataset
from sslbench.experiment.phases import build_backbone, open_dataset, pretrain, train_and_val
from sslbench.experiment.transfer import check_adapter_maps, transfer
from sslbench.tasks.pose import PoseTask
from sslbench.tasks.pretexts import option_choice, option_float, option_int
from sslbench.training import distributed
from sslbench.training.loop import FitResult, fit


def strategy_of(config: RunConfig, registry: Registry) -> Strategy:
    """The strategy plugin that runs *config*, checked against it (options included)."""
    strategy: Strategy = registry.create("strategy", config.strategy_name, "--strategy")
    strategy.validate(config, registry)
    strategy.options(config)
    return strategy


def label(config: RunConfig, registry: Registry) -> str:
    """The row label of *config*'s cell in result tables."""
    return strategy_of(config, registry).label(config)


@functools.lru_cache(maxsize=64)
def _pretext_trains(registry: Registry, name: str) -> bool:
    return bool(registry.get("pretext", name, "--pretext").factory().trains)


def pretrains(config: RunConfig, registry: Registry) -> bool:
    """Whether *config* names a pretext that trains (``none`` does not: no pretraining)."""
    return _pretext_trains(registry, config.pretext)


def transfer_label(config: RunConfig) -> str:
    """``pretext/policy`` plus ``:frozen`` when the transferred layers are frozen."""
    return f"{config.pretext}/{config.policy}{':frozen' if config.freeze else ''}"


def check_transfer_pair(config: RunConfig, registry: Registry, *, required: bool) -> None:
    """A pretext that trains needs a transfer policy, and a policy needs a pretext that trains.

    With *required*, the cell must pretrain (the ``transfer`` strategy); otherwise either
    both or neither are given (strategies that may start from scratch).
    """
    trains = pretrains(config, registry)
    if trains and config.policy == "none":
        raise ConfigError(
            f"--pretext {config.pretext} with --policy none would pretrain and then discard the weights; "
            "choose a policy (all, first, first+middle) or --pretext none"
        )
    if not trains and config.policy != "none":
        raise ConfigError(
            f"--policy {config.policy} needs pretrained weights, but --pretext is {config.pretext} "
            "(use --policy none for training from scratch)"
        )
    if required and not trains:
        raise ConfigError(
            f"strategy {config.strategy_name} transfers a pretext pretraining: give --pretext and --policy "
            "(or use the supervised strategy)"
        )


def check_options(strategy: str, given: dict[str, Any], table: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    """*given* options checked against *table* (name -> (default, lowest, highest) for a number of the
    default's type, or (default, choices) for a word), defaults filled in; else a one-line
    ConfigError naming the option."""
    unknown = sorted(set(given) - set(table))
    if unknown:
        raise ConfigError(f"strategy {strategy}: unknown option {unknown[0]!r} (options: {', '.join(table)})")
    checked: dict[str, Any] = {}
    for name, (default, *bounds) in table.items():
        value = given.get(name, default)
        if isinstance(default, str):
            checked[name] = option_choice(strategy, name, value, bounds[0], kind="strategy")
        elif isinstance(default, int) and not isinstance(default, bool):
            checked[name] = option_int(strategy, name, value, *bounds, kind="strategy")
        else:
            checked[name] = option_float(strategy, name, value, *bounds, kind="strategy")
    return checked


class SemiSupervised(Strategy):
    """A strategy whose pose phase also trains on an unlabelled pool (``unlabelled_data``). It starts
    like any cell (random, or a pretext pretraining transferred by the policy) and its rows say both
    parts (``jigsaw-heatmap/first+middle + consistency``)."""

    uses_unlabelled = True
    #: option name -> (default, lowest, highest), the default's type the option's; or (default, choices)
    OPTIONS: dict[str, tuple[Any, ...]] = {}

    def options(self, config: Any) -> dict[str, Any]:
        return check_options(self.name, config.strategy_options, self.OPTIONS)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Option defaults: an option spelled out at its default names the same cell."""
        return {name: spec[0] for name, spec in cls.OPTIONS.items()}

    def validate(self, config: Any, registry: Registry) -> None:
        check_transfer_pair(config, registry, required=False)
        require_unlabelled(config, self.name)

    def label(self, config: Any) -> str:
        return f"{transfer_label(config)} + {self.name}" if config.policy != "none" else self.name

    def require_lsp_skeleton(self, cell: Cell) -> None:
        """The first-party semi-supervised strategies handle LSP's 14 joints only (their flips, cut-outs
        and labeller scores assume it): a ConfigError for a dataset of another skeleton."""
        if cell.data.skeleton != LSP:
            raise ConfigError(f"strategy {self.name} handles LSP's 14 joints only so far; --data {cell.config.data} "
                              f"has skeleton {cell.data.skeleton.name} ({cell.data.skeleton.num_joints} joints)")  # fmt: skip


def require_unlabelled(config: RunConfig, strategy: str) -> None:
    """The pose-phase pool must be named by strategies that train on unlabelled images."""
    if not config.unlabelled_data:
        raise ConfigError(
            f"strategy {strategy} trains on unlabelled images: give --unlabelled-data (and --unlabelled-root)"
        )


def same_images(a: ImageDataset, b: ImageDataset) -> bool:
    """Whether two datasets hold the same images: their descriptions agree but for name, labels and count
    (``lsp`` twice on one folder; ``synthetic`` and ``synthetic-unlabelled`` with one render seed)."""
    ignored = ("name", "labelled", "size")
    return {k: v for k, v in a.describe().items() if k not in ignored} == {
        k: v for k, v in b.describe().items() if k not in ignored
    }


@dataclass
class Cell:
    """One cell as a strategy sees it: its config, labelled data and splits, pose task and files."""

    config: RunConfig
    registry: Registry
    workdir: Path
    run_dir: Path
    data: ImageDataset
    splits: Splits
    pose: PoseTask
    resume: bool = True
    console: Console = field(default_factory=lambda: Console(quiet=True))
    #: seconds of the strategy's own phases (teacher, pseudo-labelling, ...), added to the record's timing
    timings: dict[str, float] = field(default_factory=dict)
    #: the strategy's diagnostics (pseudo-label accuracy, ...), the record's ``strategy_metrics``
    metrics: dict[str, Any] = field(default_factory=dict)
    #: what the pretraining gave, when the cell transferred one (metrics, seconds, cache)
    pretrained: dict[str, Any] | None = None
    #: run directory of the last :meth:`fit` (the record points at its curves and best checkpoint)
    fit_dir: Path | None = None

    @property
    def label(self) -> str:
        return label(self.config, self.registry)

    # -- networks ----------------------------------------------------------------------------
    def new_network(self, seed_offset: int = 0) -> Backbone:
        """A randomly initialised pose network, seeded by the cell seed (plus *seed_offset*)."""
        torch.manual_seed(self.config.seed + seed_offset)
        return build_backbone(self.registry, self.config, self.pose.num_outputs)

    def initial_network(self) -> Backbone:
        """A random pose network, with the pretext pretraining transferred into it by the policy
        when the config names a pretext that trains (pretrained once per pretext key, cached)."""
        pretrained = None
        if pretrains(self.config, self.registry):
            pretext = self.registry.create("pretext", self.config.pretext, "--pretext", **self.config.pretext_options)
            policy = self.registry.create("policy", self.config.policy, "--policy")
            check_adapter_maps(policy, self.config.pretext, pretext.num_outputs, self.pose.num_outputs)
            pretrained = pretrain(self.config, pretext, self.workdir, self.registry, self.console)
        model = self.new_network()
        if pretrained is not None:
            report = transfer(pretrained["state"], model, policy, self.config.freeze, self.config.transfer_lr)
            self.console.print(report.table())
            self.pretrained = pretrained
        return model

    # -- data --------------------------------------------------------------------------------
    def geometry(self, model: Backbone) -> Geometry:
        return Geometry(model.input_size, model.stride)

    def labelled_sets(self, model: Backbone, task: Task | None = None) -> tuple[TaskDataset, TaskDataset]:
        """The labelled budget and the validation images as samples of *task* (the pose task)."""
        c = self.config
        return train_and_val(self.data, self.splits, task or self.pose, self.geometry(model), c.seed, c.downstream)

    def unlabelled_pool(self) -> tuple[ImageDataset, list[int]]:
        """The pose phase's unlabelled images (``unlabelled_data``) and the indices to use: its
        training split (held-out images are never used). An LSP pool may not hold the test images."""
        c = self.config
        require_unlabelled(c, c.strategy_name)
        pool = open_dataset(self.registry, c.unlabelled_data, c.unlabelled_root, c.unlabelled_data_options,
                            "--unlabelled-data")  # fmt: skip
        if c.protocol != "report" and same_images(pool, self.data):
            raise ConfigError(
                f"--unlabelled-data {c.unlabelled_data} is the labelled dataset itself: its test images "
                "would be trained on (use a separate pool such as lspet, or other synthetic people: "
                "--set unlabelled_data_options.seed=1)"
            )
        test_files = {Path(self.data.paths[i]).resolve() for i in self.splits.test} if hasattr(self.data, "paths") else set()
        overlap = test_files & {Path(p).resolve() for p in getattr(pool, "paths", [])}
        if overlap:
            raise ConfigError(
                f"--unlabelled-root {c.unlabelled_root} holds {len(overlap)} of the labelled test images "
                f"(e.g. {sorted(overlap)[0].name}): training on them would leak the test set"
            )
        indices = pool.splits("standard", None, c.seed).train
        if not indices:
            raise ConfigError(f"--unlabelled-data {c.unlabelled_data}: the pool has no training images")
        return pool, list(indices)

    # -- training ----------------------------------------------------------------------------
    def fit(
        self, model: Backbone, task: Task, train_set: TaskDataset, val_set: TaskDataset, name: str, label: str,
        directory: Path | None = None,
    ) -> FitResult:
        """The one training loop, into ``run_dir/name`` (or *directory*; resumable), at the downstream
        settings. A lock beside the directory keeps two cells sharing it from training it at once."""
        self.fit_dir = directory or self.run_dir / name
        self.fit_dir.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.fit_dir) + ".lock") if distributed.is_main() else contextlib.nullcontext()
        with lock:
            return fit(
                model, task, train_set, val_set, self.config.downstream, self.fit_dir,
                seed=self.config.seed, resume=self.resume, label=label, console=self.console,
                meta={"run": self.config.to_dict(), "cell_id": self.config.cell_id},
            )  # fmt: skip

    def fit_labelled(self, model: Backbone, name: str = "downstream", shared: bool = False) -> FitResult:
        """Pose training on the labelled budget, model selection on validation PCK@0.2. *shared*: in
        the run directory of the cell that trains exactly this (:meth:`labelled_cell`), so every cell
        that needs it (a pseudo-labelling teacher) trains it once, and a finished one is reused."""
        train_set, val_set = self.labelled_sets(model)
        directory = self.shared_labelled_dir() if shared else None
        label = f"pose {self.label}" + ("" if name == "downstream" else f" {name}")
        return self.fit(model, self.pose, train_set, val_set, name, label, directory)

    def shared_labelled_dir(self) -> Path:
        """The run directory where :meth:`labelled_cell` trains its network."""
        return self.workdir / "cells" / self.labelled_cell().cell_id / "downstream"

    def labelled_cell(self) -> RunConfig:
        """This cell's config as the strategy its initialisation implies (supervised, or transfer):
        the same start, trained on the labelled budget only."""
        c = self.config
        unlabelled = {"unlabelled_data": None, "unlabelled_root": None, "unlabelled_data_options": {}}
        fields = {**c.to_dict(), "strategy": None, "strategy_options": {}, **unlabelled}
        return RunConfig.from_dict(fields)
