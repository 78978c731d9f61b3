"""A training step, an evaluation, and one epoch of steps: what :func:`~sslbench.training.loop.fit` repeats.

:func:`train_step` is also the step :mod:`sslbench.experiment.bench` times, so the benchmark measures the
loop's own work.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sslbench.contract.config import TrainSettings
from sslbench.contract.interfaces import Task
from sslbench.data.loaders import TaskDataset, distributed, make_loader
from sslbench.training import parts
from sslbench.training.device import (
    autocast_context,
    batch_to_device,
    prepare_model,
    resolve_device,
)

#: without a terminal (no progress bar), a long epoch prints a progress line this often (seconds)
PLAIN_PROGRESS_S = 30.0


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def train_step(
    net: nn.Module,
    task: Task,
    batch: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    settings: TrainSettings,
    channels_last: bool,
    step: int = 0,
    total_steps: int = 1,
) -> tuple[torch.Tensor, int]:
    """One optimiser step on *batch*: to the device, forward under autocast, task loss, backward,
    step, then the task's :meth:`~sslbench.contract.interfaces.Task.after_step` (*step* of *total_steps*).

    The step :func:`fit` takes (and :mod:`sslbench.experiment.bench` times). Returns the detached
    loss and the number of images; the learning-rate schedule is the caller's.
    """
    batch = batch_to_device(batch, device, channels_last)
    with autocast_context(device, settings):
        outputs = task.forward(net, batch)
    loss = task.loss(outputs, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    task.after_step(step, total_steps)
    return loss.detach(), int(batch["image"].shape[0])


def eval_step(
    net: nn.Module,
    task: Task,
    metric: Any,
    batch: dict[str, Any],
    device: torch.device,
    settings: TrainSettings,
    channels_last: bool,
) -> None:
    """:meth:`Task.predict` on *batch* under autocast (call in inference mode); float32 outputs to *metric*."""
    batch = batch_to_device(batch, device, channels_last)
    with autocast_context(device, settings):
        outputs = task.predict(net, batch)
    metric.update([o.float() for o in outputs], batch)


def evaluate(model: nn.Module, task: Task, dataset: TaskDataset, settings: TrainSettings) -> dict[str, float]:
    """The task metric of *model* on *dataset* (eval mode, no gradients, no shuffling).

    Runs on ``settings.device`` with ``settings.precision`` (outputs are cast to float32
    before the metric). Under torch.distributed every caller evaluates the whole
    dataset: :func:`fit` calls it on rank 0 only.
    """
    device = resolve_device(settings.device)
    net = _unwrap(model)
    channels_last = prepare_model(net, device, settings)
    was_training = net.training
    net.eval()
    parts.set_mode(task, False)
    metric = task.new_metric()
    loader = make_loader(dataset, settings, shuffle=False, seed=0, epoch=0, shard=False)
    try:
        with torch.inference_mode():
            for batch in loader:
                eval_step(net, task, metric, batch, device, settings, channels_last)
    finally:
        net.train(was_training)
        parts.set_mode(task, was_training)
    return metric.compute()


# -------------------------------------------------------------------------------- fit


def train_epoch(
    net: nn.Module,
    task: Task,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    settings: TrainSettings,
    channels_last: bool,
    console: Console | None,
    description: str,
    writer: bool,
) -> tuple[float, int]:
    """One pass over *loader*; returns (mean train loss per image, images seen on all ranks)."""
    net.train()
    parts.set_mode(task, True)
    total_steps = settings.epochs * len(loader)  # for the task's after_step (momentum schedules)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    started = time.perf_counter()
    last_refresh = 0.0
    last_line = started
    plain = writer and console is not None and not console.is_terminal  # a log or a pipe: no bar is drawn
    with _Bar(console, description, len(loader), enabled=writer) as bar:
        for step, batch in enumerate(loader):
            loss, n = train_step(
                net, task, batch, optimizer, device, settings, channels_last, scheduler.last_epoch, total_steps
            )
            scheduler.step()
            loss_sum += loss.double() * n
            count += n
            now = time.perf_counter()
            if bar.active and (now - last_refresh > 0.5 or step == len(loader) - 1):
                last_refresh = now
                bar.update(1, loss=float(loss_sum) / count, speed=count / max(now - started, 1e-9))
            else:
                bar.update(1)
            if plain and now - last_line >= PLAIN_PROGRESS_S and step < len(loader) - 1:
                last_line = now
                left = (now - started) / (step + 1) * (len(loader) - step - 1)
                console.print(  # type: ignore[union-attr]
                    f"{description}: step {step + 1}/{len(loader)}, train loss {float(loss_sum) / count:.4g}, "
                    f"{count / (now - started):.1f} img/s, about {left:.0f} s left in this epoch",
                    highlight=False,
                )
    totals = torch.tensor([float(loss_sum), float(count)], dtype=torch.float64, device=device)
    if distributed():
        dist.all_reduce(totals)
    total_loss, total_count = totals.tolist()
    return (total_loss / total_count if total_count else float("nan")), int(total_count)


class _Bar:
    """A transient rich progress bar for one epoch, or nothing when there is no terminal."""

    def __init__(self, console: Console | None, description: str, total: int, enabled: bool) -> None:
        self.progress: Progress | None = None
        if enabled and console is not None and console.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[speed]} img/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self.task_id = self.progress.add_task(description, total=total, loss="-", speed="-")

    def __enter__(self) -> _Bar:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    @property
    def active(self) -> bool:
        return self.progress is not None

    def update(self, advance: int, loss: float | None = None, speed: float | None = None) -> None:
        if self.progress is None:
            return
        fields = {}
        if loss is not None:
            fields["loss"] = f"{loss:.4g}"
        if speed is not None:
            fields["speed"] = f"{speed:.1f}"
        self.progress.update(self.task_id, advance=advance, **fields)


# --------------------------------------------------------------------------- evaluate
