"""The one training loop, shared by pose training and every pretext.

:func:`fit` trains a :class:`Backbone` on a :class:`Task` with the optimiser, schedule
and stopping rule of a :class:`TrainSettings`, selects the best epoch on validation,
and leaves the best weights in the model. A run directory holds everything needed to
resume or inspect it::

    run_dir/metrics.jsonl          one JSON object per epoch (for curves)
    run_dir/last.{safetensors,json}  model + optimiser + schedule + RNG + progress
    run_dir/best.{safetensors,json}  weights of the best validation epoch

Schedules (``settings.schedule``), all stepped once per iteration (batch) so short runs
get a smooth curve; ``warmup_epochs`` first ramps the factor linearly from
``1/warmup_steps`` to 1 under every schedule:

- ``constant``: the factor stays 1;
- ``cosine``: the factor falls from 1 to 0 along a half cosine over the steps after warmup;
- ``step``: the factor is 1, then 0.1 for the last third of the epochs (from epoch
  ``round(2/3 x epochs) + 1`` on).

Speed settings: ``precision`` ``auto`` uses bf16 autocast on CUDA and on CPUs with
native bf16 (AVX512-BF16 / AMX), fp32 elsewhere; ``channels_last`` None means on CUDA
only. Losses and metrics are always computed in float32.

Optimisers: ``sgd`` (momentum and L2 weight decay, as the reference CPM training),
``adam`` (L2 weight decay added to the gradient) and ``adamw`` (decoupled weight decay).
Only parameters with ``requires_grad`` are optimised, so frozen layers never change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sslbench import atomic
from sslbench.checkpoint import (
    Checkpoint,
    checkpoint_exists,
    checkpoint_paths,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from sslbench.config import RunConfig, TrainSettings, config_hash
from sslbench.data import TaskDataset, distributed, make_loader
from sslbench.errors import CheckpointError, ConfigError
from sslbench.interfaces import Backbone, Task

METRICS_FILE = "metrics.jsonl"
LAST = "last"
BEST = "best"
#: an epoch has converged when its monitored value is within this fraction of the best
CONVERGE_TOLERANCE = 0.01
#: without a terminal (no progress bar), a long epoch prints a progress line this often (seconds)
PLAIN_PROGRESS_S = 30.0


# ---------------------------------------------------------------------------- results


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
    def from_dict(cls, data: dict[str, Any]) -> "FitResult":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ----------------------------------------------------------------------------- device


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``, ``cuda``, ``cuda:N`` checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available on this machine (use auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type != "cpu":
        raise ConfigError(f"device {name!r} is not supported (use auto, cpu, cuda or cuda:N)")
    return device


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def use_bf16(settings: TrainSettings, device: torch.device) -> bool:
    """``precision``: ``bf16``/``fp32`` as given; ``auto`` is bf16 autocast on CUDA (when the
    GPU supports it) and on CPUs with native bf16, fp32 elsewhere (emulated bf16 is slower)."""
    if settings.precision == "auto":
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return cpu_has_native_bf16()
    return settings.precision == "bf16"


def resolve_precision(config: RunConfig) -> RunConfig:
    """A copy of *config* with each phase's precision ``auto`` replaced by what it means on this
    machine and that phase's device (``bf16`` or ``fp32``, :func:`use_bf16`).

    Runs and sweeps resolve a config before taking its cell id and storing it, so a record says
    which precision ran and cells that ran at different precisions differ.
    """
    if "auto" not in (config.pretrain.precision, config.downstream.precision):
        return config
    data = config.to_dict()
    for section in ("pretrain", "downstream"):
        settings: TrainSettings = getattr(config, section)
        if settings.precision == "auto":
            try:
                device = resolve_device(settings.device)
            except ConfigError as exc:
                raise ConfigError(f"{section}.precision auto: cannot tell what it means here ({exc}); "
                                  f"set {section}.precision to bf16 or fp32") from None  # fmt: skip
            data[section]["precision"] = "bf16" if use_bf16(settings, device) else "fp32"
    return RunConfig.from_dict(data)


def use_channels_last(settings: TrainSettings, device: torch.device) -> bool:
    """``channels_last`` as configured (kept a function so callers need not know the setting's name)."""
    return bool(settings.channels_last)


def autocast_context(device: torch.device, settings: TrainSettings) -> contextlib.AbstractContextManager:
    """bf16 autocast on *device* when :func:`use_bf16`, else a no-op context."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16(settings, device))


def batch_to_device(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    """Every tensor of *batch* on *device*; the ``image`` in channels_last format when asked."""
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and value.dim() == 4 and key == "image":
                value = value.contiguous(memory_format=torch.channels_last)
        moved[key] = value
    return moved


def prepare_model(model: nn.Module, device: torch.device, settings: TrainSettings) -> bool:
    """Move *model* to *device* (and memory format); returns whether channels_last is used."""
    model.to(device)
    channels_last = use_channels_last(settings, device)
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return channels_last


# -------------------------------------------------------------------- optimiser, schedule


def parameter_groups(model: nn.Module, lr: float) -> list[dict[str, Any]]:
    """The trainable parameters as optimiser groups: one at *lr*, one per :attr:`Backbone.lr_scales` factor.

    A parameter takes the factor of the longest module path that contains it. The plain
    group comes first (its rate is the one logged); groups without parameters are left out.
    """
    scales = model.lr_scales if isinstance(model, Backbone) else {}
    paths = sorted(scales, key=len, reverse=True)
    groups: dict[float, list[nn.Parameter]] = {1.0: []}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            path = next((p for p in paths if name.startswith(p + ".")), None)
            groups.setdefault(scales[path] if path is not None else 1.0, []).append(parameter)
    return [{"params": params, "lr": lr * factor} for factor, params in groups.items() if params]


def make_optimizer(params: list[nn.Parameter] | list[dict[str, Any]], settings: TrainSettings) -> torch.optim.Optimizer:
    """SGD (momentum, L2 decay), Adam (L2 decay) or AdamW (decoupled decay) over *params* (or groups)."""
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    raise ConfigError(f"optimizer must be sgd, adam or adamw, got {settings.optimizer!r}")


def lr_factor(step: int, settings: TrainSettings, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at iteration *step* (0-based); see the module doc."""
    steps_per_epoch = max(1, steps_per_epoch)
    total = settings.epochs * steps_per_epoch
    warmup = min(settings.warmup_epochs * steps_per_epoch, total)
    if step < warmup:
        return (step + 1) / warmup
    if settings.schedule == "constant":
        return 1.0
    if settings.schedule == "step":
        decay_epoch = max(1, round(2 * settings.epochs / 3))
        return 0.1 if step >= decay_epoch * steps_per_epoch else 1.0
    if settings.schedule == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ConfigError(f"schedule must be cosine, constant or step, got {settings.schedule!r}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, settings: TrainSettings, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration :class:`LambdaLR` following :func:`lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, settings=settings, steps_per_epoch=steps_per_epoch)
    )


# ------------------------------------------------------------------------ metrics file


def _finite(value: Any) -> Any:
    """JSON-safe: non-finite floats become None (JSON Lines stay strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and make it durable, so a kill can only cut the line being written."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(_finite(record), sort_keys=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete, parseable lines of a JSON Lines file (a cut-off last line is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    """Keep only whole lines of epochs up to *last_epoch* (those the last checkpoint knows)."""
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if int(r.get("epoch", 0)) <= last_epoch]
    atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


# -------------------------------------------------------------------------- progress


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

    def __enter__(self) -> "_Bar":
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
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
) -> tuple[torch.Tensor, int]:
    """One optimiser step on *batch*: to the device, forward under autocast, task loss, backward, step.

    The step :func:`fit` takes (and :mod:`sslbench.bench` times). Returns the detached
    loss and the number of images; the learning-rate schedule is the caller's.
    """
    batch = batch_to_device(batch, device, channels_last)
    with autocast_context(device, settings):
        outputs = task.forward(net, batch)
    loss = task.loss(outputs, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
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
    metric = task.new_metric()
    loader = make_loader(dataset, settings, shuffle=False, seed=0, epoch=0, shard=False)
    try:
        with torch.inference_mode():
            for batch in loader:
                eval_step(net, task, metric, batch, device, settings, channels_last)
    finally:
        net.train(was_training)
    return metric.compute()


# -------------------------------------------------------------------------------- fit


@dataclass
class _Progress:
    """What :func:`fit` must remember across epochs (and resumes)."""

    epoch: int = 0
    best_epoch: int = 0
    best_value: float | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    train_phase_seconds: float = 0.0
    images: int = 0
    stopped_early: bool = False


def _better(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    if not math.isfinite(value):
        return False
    if not math.isfinite(best):
        return True
    return value > best if mode == "max" else value < best


def converge_epoch(history: list[dict[str, Any]], key: str, best: float | None, mode: str) -> int:
    """First epoch whose *key* is within 1% (relative) of *best*; see :class:`FitResult`."""
    if best is None or not math.isfinite(best):
        return history[-1]["epoch"] if history else 0
    tolerance = CONVERGE_TOLERANCE * abs(best)
    for record in history:
        value = record.get(key)
        if value is None or not math.isfinite(value):
            continue
        if (mode == "max" and value >= best - tolerance) or (mode == "min" and value <= best + tolerance):
            return int(record["epoch"])
    return int(history[-1]["epoch"]) if history else 0


def _fit_key(
    model: nn.Module, task: Task, train_set: TaskDataset, val_set: TaskDataset, settings: TrainSettings, seed: int
) -> str:
    """Hash of everything that makes a run directory's checkpoints belong to this call."""
    relevant = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("device", "num_workers")}
    return config_hash(
        {
            "task": task.config(),
            "backbone": model.config() if isinstance(model, Backbone) else type(model).__name__,
            "frozen": sorted(model.frozen) if isinstance(model, Backbone) else [],
            **({"lr_scales": model.lr_scales} if isinstance(model, Backbone) and model.lr_scales else {}),
            "settings": relevant,
            "seed": seed,
            "train": config_hash([train_set.indices, train_set.limit]),
            "val": config_hash([val_set.indices, val_set.limit]),
        }
    )


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), *(_plain(v) for v in np_state[2:])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, meta


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _set_rng_state(extra: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    if "rng.torch" in extra:
        torch.set_rng_state(extra["rng.torch"])
    cuda = [extra[k] for k in sorted(extra) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if meta.get("numpy"):
        name, keys, *rest = meta["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    if meta.get("python"):
        version, state, gauss = meta["python"]
        random.setstate((version, tuple(state), gauss))


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


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
    saved whenever the monitored value improves. Training stops after
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
    run_dir = Path(run_dir)
    is_distributed = distributed()
    rank = dist.get_rank() if is_distributed else 0
    writer = rank == 0
    say = console if (console is not None and writer) else None
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / METRICS_FILE
    last_path, best_path = run_dir / LAST, run_dir / BEST

    device = resolve_device(settings.device)
    if is_distributed and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
        torch.cuda.set_device(device)
    torch.manual_seed(seed)
    channels_last = prepare_model(model, device, settings)

    params = parameter_groups(model, settings.lr)
    if not params:
        raise ConfigError("nothing to train: every parameter of the backbone is frozen")
    optimizer = make_optimizer(params, settings)
    steps_per_epoch = len(make_loader(train_set, settings, shuffle=True, seed=seed, epoch=1))
    if steps_per_epoch == 0:
        raise ConfigError("the training set is empty")
    scheduler = make_scheduler(optimizer, settings, steps_per_epoch)
    fit_key = _fit_key(model, task, train_set, val_set, settings, seed)

    state = _Progress()
    best_state: dict[str, torch.Tensor] | None = None
    resumed = _load_last(last_path, fit_key, resume, say) if resume else None
    if resumed is not None:
        info = resumed.meta["fit"]
        state = _Progress(**{k: v for k, v in info["progress"].items() if k in _Progress.__dataclass_fields__})
        best_state = _restore_best(resumed, best_path, state, writer)
        if info.get("done"):
            model.load_state_dict(best_state)
            if say:
                say.print(
                    f"{label or 'fit'}: already finished in {run_dir} (best epoch {state.best_epoch})", highlight=False
                )
            return FitResult.from_dict(info["result"])
        load_weights(model, resumed)
        if resumed.optimizer is not None:
            optimizer.load_state_dict(resumed.optimizer)
        scheduler.load_state_dict(info["scheduler"])
        _set_rng_state(resumed.extra, info.get("rng", {}))
        if writer:
            _truncate_metrics(metrics_path, state.epoch)
        if say:
            say.print(f"{label or 'fit'}: resuming {run_dir} after epoch {state.epoch}", highlight=False)
    elif writer:
        metrics_path.unlink(missing_ok=True)
        for stem in (last_path, best_path):
            for path in checkpoint_paths(stem):
                path.unlink(missing_ok=True)

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
    for epoch in range(state.epoch + 1, settings.epochs + 1):
        started = time.perf_counter()
        lr = float(optimizer.param_groups[0]["lr"])
        loader = make_loader(train_set, settings, shuffle=True, seed=seed, epoch=epoch)
        description = f"{label + ' ' if label else ''}epoch {epoch}/{settings.epochs}"
        train_loss, images = _train_epoch(
            net, task, loader, optimizer, scheduler, device, settings, channels_last, console, description, writer
        )
        train_time = time.perf_counter() - started
        if not math.isfinite(train_loss):
            raise ConfigError(
                f"training diverged: the train loss is {train_loss} in epoch {epoch} "
                f"(lower the learning rate, now {settings.lr})"
            )

        decision: list[Any] = [None]
        if writer:
            val_metrics = evaluate(model, task, val_set, settings)
            if task.monitor not in val_metrics:
                raise ConfigError(f"task {task.name!r}: its metric has no monitored value {task.monitor!r}")
            decision = [val_metrics]
        if is_distributed:
            dist.broadcast_object_list(decision, src=0)
        val_metrics = decision[0]
        value = float(val_metrics[task.monitor])
        improved = _better(value, state.best_value, task.monitor_mode)
        if improved:
            state.best_value, state.best_epoch, state.best_metrics, state.bad_epochs = value, epoch, val_metrics, 0
            best_state = _state_copy(model)
        else:
            state.bad_epochs += 1
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
        state.epoch = epoch
        state.history.append(record)
        state.train_seconds += seconds
        state.train_phase_seconds += train_time
        state.images += images
        state.stopped_early = bool(settings.patience and state.bad_epochs >= settings.patience)
        finished = state.stopped_early or epoch == settings.epochs
        if finished:
            result = _result(state, task)
        if writer:
            append_jsonl(metrics_path, record)
            _save_last(last_path, model, optimizer, scheduler, state, fit_key, base_meta, val_metrics, result)
            if improved:
                save_checkpoint(best_path, model, {**base_meta, "epoch": epoch, "metrics": val_metrics})
        if say:
            mark = " *" if improved else ""
            say.print(
                f"{description}  train loss {train_loss:.4g}  val {task.monitor} {value:.4g}{mark}  "
                f"{seconds:.1f} s  {record['images_per_s']:.1f} img/s",
                highlight=False,
            )
        if finished:
            break

    if result is None:  # resumed a run whose last epoch was already the final one
        result = _result(state, task)
    if best_state is not None:
        model.load_state_dict(best_state)
    if is_distributed:
        dist.barrier()
    return result


def _result(state: _Progress, task: Task) -> FitResult:
    return FitResult(
        best_epoch=state.best_epoch,
        best_metrics=dict(state.best_metrics),
        epochs_run=state.epoch,
        converge_epoch=converge_epoch(state.history, f"val.{task.monitor}", state.best_value, task.monitor_mode),
        history=list(state.history),
        train_seconds=state.train_seconds,
        images_per_s=state.images / state.train_phase_seconds if state.train_phase_seconds > 0 else 0.0,
        stopped_early=state.stopped_early,
    )


def finished(run_dir: Path) -> bool:
    """Whether *run_dir* holds a finished :func:`fit` (its last checkpoint says so)."""
    sidecar = checkpoint_paths(Path(run_dir) / LAST)[1]
    try:
        return bool(json.loads(sidecar.read_text(encoding="utf-8"))["fit"]["done"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _load_last(path: Path, fit_key: str, resume: bool, say: Console | None) -> Checkpoint | None:
    """The run's last checkpoint if it exists, belongs to this run and is readable."""
    if not resume or not checkpoint_exists(path):
        return None
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as exc:
        if say:
            say.print(f"[yellow]warning:[/] cannot resume ({exc}); starting over", highlight=False)
        return None
    info = checkpoint.meta.get("fit")
    if not isinstance(info, dict) or "progress" not in info:
        raise CheckpointError(f"checkpoint {checkpoint.path} is not a training state (no 'fit' section)")
    if info.get("key") != fit_key:
        raise CheckpointError(
            f"{path.parent} holds a run with other settings, task, backbone, seed or data "
            f"(last checkpoint {checkpoint.path}); use another run directory or start over without resuming"
        )
    return checkpoint


def _restore_best(last: Checkpoint, best_path: Path, state: _Progress, writer: bool) -> dict[str, torch.Tensor] | None:
    """Best weights for a resumed run.

    ``last`` is written before ``best`` each epoch, so when the best epoch is the last
    saved epoch its weights are in ``last`` (and ``best`` is rewritten from them in case
    the kill came between the two writes); an earlier best epoch's file was complete
    before the next epoch's ``last`` was written.
    """
    if state.best_epoch == 0:
        return None
    if state.best_epoch == state.epoch:
        weights = dict(last.state)
        if writer:
            stale = True
            if checkpoint_exists(best_path):
                with contextlib.suppress(CheckpointError):
                    stale = load_checkpoint(best_path).meta.get("epoch") != state.best_epoch
            if stale:
                dropped = ("fit", "optimizer", "weights", "versions", "created")
                meta = {k: v for k, v in last.meta.items() if k not in dropped}
                save_checkpoint(best_path, weights, {**meta, "epoch": state.best_epoch, "metrics": state.best_metrics})
        return weights
    best = load_checkpoint(best_path)
    if best.meta.get("epoch") != state.best_epoch:
        raise CheckpointError(
            f"checkpoint {best.path} is from epoch {best.meta.get('epoch')}, "
            f"but the run's best epoch is {state.best_epoch}"
        )
    return dict(best.state)


def _save_last(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: _Progress,
    fit_key: str,
    base_meta: dict[str, Any],
    val_metrics: dict[str, float],
    result: FitResult | None,
) -> None:
    rng_tensors, rng_meta = _rng_state()
    fit_info = {
        "key": fit_key,
        "progress": dataclasses.asdict(state),
        "scheduler": scheduler.state_dict(),
        "rng": rng_meta,
        "done": result is not None,
        "result": result.to_dict() if result is not None else None,
    }
    meta = {**base_meta, "epoch": state.epoch, "metrics": val_metrics, "fit": fit_info}
    save_checkpoint(path, model, meta, optimizer=optimizer.state_dict(), extra=rng_tensors)


def _train_epoch(
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
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    started = time.perf_counter()
    last_refresh = 0.0
    last_line = started
    plain = writer and console is not None and not console.is_terminal  # a log or a pipe: no bar is drawn
    with _Bar(console, description, len(loader), enabled=writer) as bar:
        for step, batch in enumerate(loader):
            loss, n = train_step(net, task, batch, optimizer, device, settings, channels_last)
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
