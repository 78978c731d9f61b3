"""The one training loop, shared by pose training, every pretext and every strategy.

:func:`fit` trains a :class:`Backbone` on a :class:`Task` with the optimiser, schedule and
stopping rule of a :class:`TrainSettings`, selects the best epoch on validation, and leaves
the best weights in the model. Its collaborators, one job each: :mod:`.device` (device,
precision), :mod:`.optim` (optimiser, schedule), :mod:`.steps` (a step, an epoch, an
evaluation), :mod:`.stopping` (model selection, early stopping), :mod:`.run_files`
(checkpoints, resume) and :mod:`.epoch_log` (``metrics.jsonl``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sslbench.contract.config import TrainSettings
from sslbench.contract.errors import ConfigError
from sslbench.contract.interfaces import Task
from sslbench.contract.networks import Backbone
from sslbench.data.loaders import TaskDataset, distributed, make_loader
from sslbench.training import parts
from sslbench.training.device import prepare_model, training_device, use_bf16
from sslbench.training.epoch_log import append_jsonl
from sslbench.training.live_curves import TrainingCurves
from sslbench.training.optim import optimiser_and_schedule
from sslbench.training.run_files import RunCheckpoints, Weights, fit_key, weights_copy
from sslbench.training.steps import evaluate, train_epoch
from sslbench.training.stopping import EarlyStopping, converge_epoch


@dataclass
class FitResult:
    """What one :func:`fit` produced.

    ``converge_epoch`` is the first epoch whose monitored validation value is within 1%
    (relative) of the best value: ``>= best - 0.01 |best|`` when higher is better,
    ``<= best + 0.01 |best|`` when lower is better. ``images_per_s`` counts training
    images over training time (validation excluded); ``train_seconds`` is the wall time
    of all epochs, validation included, summed over resumes.
    """

    best_epoch: int
    best_metrics: dict[str, float]
    epochs_run: int
    converge_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    images_per_s: float = 0.0
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitResult:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Progress:
    """What :func:`fit` must remember across epochs and resumes, besides :class:`EarlyStopping`'s best epoch."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    train_phase_seconds: float = 0.0
    images: int = 0
    stopped_early: bool = False

    def add(self, record: dict[str, Any], images: int) -> None:
        self.epoch = record["epoch"]
        self.history.append(record)
        self.train_seconds += record["seconds"]
        self.train_phase_seconds += record["train_seconds"]
        self.images += images

    def result(self, stopping: EarlyStopping, monitor: str) -> FitResult:
        return FitResult(
            best_epoch=stopping.best_epoch,
            best_metrics=dict(stopping.best_metrics),
            epochs_run=self.epoch,
            converge_epoch=converge_epoch(self.history, f"val.{monitor}", stopping.best_value, stopping.mode),
            history=list(self.history),
            train_seconds=self.train_seconds,
            images_per_s=self.images / self.train_phase_seconds if self.train_phase_seconds > 0 else 0.0,
            stopped_early=self.stopped_early,
        )


def fit(
    model: Backbone,
    task: Task,
    train_set: TaskDataset,
    val_set: TaskDataset,
    settings: TrainSettings,
    run_dir: Path,
    *,
    seed: int,
    resume: bool = True,
    label: str = "",
    console: Console | None = None,
    meta: dict[str, Any] | None = None,
) -> FitResult:
    """Train *model* on *task*; return the result with the best validation weights loaded.

    Each epoch: train on *train_set* (fresh augmentation, new shuffle), evaluate on
    *val_set*, keep the best epoch by ``task.monitor`` (``task.monitor_mode``), append a
    line to ``run_dir/metrics.jsonl`` and save ``run_dir/last``; ``run_dir/best`` is
    saved whenever the monitored value improves, and ``run_dir/kept/epoch-NNNN`` after every
    ``settings.keep_every``-th epoch and the last. Training stops after
    ``settings.epochs`` or when the monitor has not improved for ``settings.patience``
    epochs (0: never early). *meta* (JSON-serialisable, e.g. the run config) is stored
    in both checkpoints.

    With *resume* and a ``run_dir/last`` checkpoint of the same run (same task,
    backbone, settings, seed and splits) training continues after its epoch, and a
    finished run returns its stored result at once (best weights loaded). A last
    checkpoint of a different run raises :class:`CheckpointError`; an unreadable one is
    reported and training starts over. ``resume=False`` always starts over.

    Under torch.distributed the model is wrapped in DistributedDataParallel, every rank
    trains on its shard, rank 0 evaluates and decides (improvement, stopping) for all,
    and only rank 0 writes files. The model stays on the training device.
    """
    settings.validate("training settings")
    is_distributed = distributed()
    writer = not is_distributed or dist.get_rank() == 0
    say = console if writer else None
    device = training_device(settings, is_distributed)
    torch.manual_seed(seed)
    channels_last = prepare_model(model, device, settings)
    own_parts = parts.attach(task, model, device, is_distributed)
    steps_per_epoch = len(make_loader(train_set, settings, shuffle=True, seed=seed, epoch=1))
    if steps_per_epoch == 0:
        raise ConfigError("the training set is empty")
    optimizer, scheduler = optimiser_and_schedule(model, own_parts, settings, steps_per_epoch)
    files = RunCheckpoints(run_dir, fit_key(model, task, train_set, val_set, settings, seed), writer, say)

    stopping = EarlyStopping(task.monitor_mode, settings.patience)
    progress, best, finished = _resume(files, resume, model, own_parts, optimizer, scheduler, stopping, label)
    if finished is not None:
        return finished

    net: nn.Module = model
    if is_distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    base_meta = {
        **(meta or {}),
        "task": task.config(),
        "seed": seed,
        "settings": dataclasses.asdict(settings),
        "monitor": task.monitor,
        "monitor_mode": task.monitor_mode,
        "label": label,
        "precision": "bf16" if use_bf16(settings, device) else "fp32",
        "channels_last": channels_last,
        "device": str(device),
    }
    result: FitResult | None = None
    curves = TrainingCurves(files.run_dir, settings.tensorboard and writer, first_epoch=progress.epoch + 1)
    for epoch in range(progress.epoch + 1, settings.epochs + 1):
        started = time.perf_counter()
        lr = float(optimizer.param_groups[0]["lr"])
        loader = make_loader(train_set, settings, shuffle=True, seed=seed, epoch=epoch)
        description = f"{label + ' ' if label else ''}epoch {epoch}/{settings.epochs}"
        train_loss, images = train_epoch(
            net, task, loader, optimizer, scheduler, device, settings, channels_last, console, description, writer
        )
        train_time = time.perf_counter() - started
        if not math.isfinite(train_loss):
            raise ConfigError(
                f"training diverged: the train loss is {train_loss} in epoch {epoch} "
                f"(lower the learning rate, now {settings.lr})"
            )
        val_metrics = _validate(model, task, val_set, settings, writer, is_distributed)
        value = float(val_metrics[task.monitor])
        improved = stopping.update(epoch, value, val_metrics)
        if improved:
            best = weights_copy(model, own_parts)
        seconds = time.perf_counter() - started
        record = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train_loss,
            **{f"val.{k}": v for k, v in val_metrics.items()},
            "improved": improved,
            "seconds": seconds,
            "train_seconds": train_time,
            "images_per_s": images / train_time if train_time > 0 else 0.0,
        }
        progress.add(record, images)
        progress.stopped_early = stopping.should_stop
        done = progress.stopped_early or epoch == settings.epochs
        if done:
            result = progress.result(stopping, task.monitor)
        if writer:
            append_jsonl(files.metrics, record)
            curves.add_epoch(record)
            epoch_meta = {**base_meta, "epoch": epoch, "metrics": val_metrics}
            if settings.keep_every and (epoch % settings.keep_every == 0 or done):
                files.save_kept(model, {**epoch_meta, "images": progress.images})
            state = {**dataclasses.asdict(progress), **stopping.state()}
            files.save_last(model, own_parts, optimizer, scheduler, state, epoch_meta,
                            result.to_dict() if result is not None else None)  # fmt: skip
            if improved and best is not None:
                files.save_best(model, best[1], epoch_meta)
        if say:
            say.print(
                f"{description}  train loss {train_loss:.4g}  val {task.monitor} {value:.4g}"
                f"{' *' if improved else ''}  {seconds:.1f} s  {record['images_per_s']:.1f} img/s",
                highlight=False,
            )
        if done:
            break

    curves.close()
    if result is None:  # resumed a run whose last epoch was already the final one
        result = progress.result(stopping, task.monitor)
    _load_best(model, own_parts, best, files)
    if is_distributed:
        dist.barrier()
    return result


def _resume(
    files: RunCheckpoints,
    resume: bool,
    model: nn.Module,
    own_parts: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    stopping: EarlyStopping,
    label: str,
) -> tuple[Progress, Weights | None, FitResult | None]:
    """Where a run starts: afresh, after the last checkpoint's epoch, or finished (its stored result).

    Returns the progress, the best weights so far and, for a finished run, its result (best
    weights loaded); *stopping* gets the stored best epoch.
    """
    last = files.load_last() if resume else None
    if last is None:
        files.start_over()
        return Progress(), None, None
    info = last.meta["fit"]
    progress = Progress(**{k: v for k, v in info["progress"].items() if k in Progress.__dataclass_fields__})
    stopping.restore(info["progress"])
    best = files.restore_best(last, stopping.best_epoch, stopping.best_metrics)
    name = label or "fit"
    if info.get("done"):
        _load_best(model, own_parts, best, files)
        if files.say:
            files.say.print(f"{name}: already finished in {files.run_dir} (best epoch {stopping.best_epoch})",
                            highlight=False)  # fmt: skip
        return progress, best, FitResult.from_dict(info["result"])
    files.restore_training(last, model, own_parts, optimizer, scheduler)
    if files.say:
        files.say.print(f"{name}: resuming {files.run_dir} after epoch {progress.epoch}", highlight=False)
    return progress, best, None


def _validate(
    model: nn.Module, task: Task, val_set: TaskDataset, settings: TrainSettings, writer: bool, is_distributed: bool
) -> dict[str, float]:
    """The validation metrics, computed by the writer (rank 0) and broadcast to every rank."""
    decision: list[Any] = [None]
    if writer:
        metrics = evaluate(model, task, val_set, settings)
        if task.monitor not in metrics:
            raise ConfigError(f"task {task.name!r}: its metric has no monitored value {task.monitor!r}")
        decision = [metrics]
    if is_distributed:
        dist.broadcast_object_list(decision, src=0)
    return decision[0]


def _load_best(model: nn.Module, own_parts: nn.Module | None, best: Weights | None, files: RunCheckpoints) -> None:
    if best is not None:
        model.load_state_dict(best[0])
        parts.restore(own_parts, best[1], files.best)
