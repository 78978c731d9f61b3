"""The measures of ``sslbench bench``: training steps timed round-robin, FLOPs, inference, samples, loaders, memory."""

from __future__ import annotations

import copy
import functools
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn
from torch.utils.data import default_collate
from torch.utils.flop_counter import FlopCounterMode

from sslbench.contract.config import RunConfig, TrainSettings
from sslbench.contract.errors import ConfigError
from sslbench.contract.interfaces import Geometry, ImageDataset, SampleKey, Task
from sslbench.contract.networks import Backbone
from sslbench.contract.registry import Registry
from sslbench.data.loaders import TaskDataset, make_loader
from sslbench.experiment.bench.plan import BenchPlan, Variant
from sslbench.tasks.pose import PoseTask
from sslbench.training import parts
from sslbench.training.device import cpu_has_native_bf16, prepare_model, use_bf16
from sslbench.training.loop import fit
from sslbench.training.optim import make_optimizer, parameter_groups
from sslbench.training.steps import eval_step, train_step


@dataclass
class BenchContext:
    """What every measure needs: the config, the model, the tasks, the data."""

    config: RunConfig
    registry: Registry
    device: torch.device
    model: Backbone
    pose: PoseTask
    geometry: Geometry
    data: ImageDataset
    train_indices: list[int]
    val_indices: list[int]
    batch: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def current_rss_mb() -> float:
    """Resident memory of this process now (MiB), from /proc; the peak where /proc is missing."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident memory (MiB) of this process, or of its largest finished child process."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return usage.ru_maxrss * scale / 2**20


def machine_load() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def slice_batch(batch: dict[str, Any], n: int) -> dict[str, Any]:
    """The first *n* samples of a collated batch."""
    return {k: (v[:n] if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in batch.items()}


def count_flops(function: Callable[[], Any]) -> int:
    """FLOPs (multiply and add counted separately) of the matmuls and convolutions *function* runs."""
    with FlopCounterMode(display=False) as counter:
        function()
    return int(counter.get_total_flops())


def train_flops_per_image(model: nn.Module, task: Task, batch: dict[str, Any], settings: TrainSettings,
                          device: torch.device) -> tuple[float, float]:  # fmt: skip
    """(training, forward-only) FLOPs per image of *model* on *batch*: one :func:`train_step`
    (forward, loss, backward) on a copy with a zero-learning-rate SGD, and one forward."""
    net = copy.deepcopy(model)
    channels_last = prepare_model(net, device, settings)
    net.train()
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.0)
    n = int(batch["image"].shape[0])
    train = count_flops(lambda: train_step(net, task, batch, optimizer, device, settings, channels_last))
    net.eval()
    with torch.inference_mode():
        image = batch["image"].to(device)
        forward = count_flops(lambda: net(image, batch["centermap"].to(device)))
    return train / n, forward / n


def peak_flops(device: torch.device, bf16: bool, channels_last: bool, plan: BenchPlan) -> dict[str, float]:
    """FLOP/s of a large square matmul and a large 'same' convolution, best of ``peak_reps``."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    n = plan.peak_matmul
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    batch, channels, side, kernel = plan.peak_conv
    x = torch.randn(batch, channels, side, side, device=device, dtype=dtype)
    w = torch.randn(channels, channels, kernel, kernel, device=device, dtype=dtype) / (channels * kernel * kernel)
    if channels_last:
        x, w = (x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last))

    def best(function: Callable[[], Any], flops: float) -> float:
        function()  # warm-up: kernel choice, allocation
        _sync(device)
        times = []
        for _ in range(plan.peak_reps):
            start = time.perf_counter()
            function()
            _sync(device)
            times.append(time.perf_counter() - start)
        return flops / min(times)

    with torch.inference_mode():
        matmul = best(lambda: a @ b, 2.0 * n**3)
        conv = best(
            lambda: F.conv2d(x, w, padding=kernel // 2), 2.0 * batch * channels * side * side * channels * kernel**2
        )
    return {"matmul": matmul, "conv": conv, "peak": max(matmul, conv)}


# ------------------------------------------------------------------------- measures


def pose_batch(dataset: ImageDataset, task: Task, geometry: Geometry, size: int, seed: int = 0) -> dict[str, Any]:
    """A collated batch of *size* augmented training samples (images reused cyclically; joints when the task
    needs them)."""
    samples = []
    for i in range(size):
        joints = dataset.joints(i % len(dataset)) if task.needs_labels else None
        samples.append(task.make_sample(dataset.image(i % len(dataset)), joints, SampleKey(seed, i, 1), True, geometry))
    return default_collate(samples)


def _round_robin(steps_of: Sequence[Callable[[], Any] | None], steps: int, device: torch.device) -> list[list[float]]:
    """Seconds of each of *steps* calls of every step function, taken in turns (None: not timed)."""
    times: list[list[float]] = [[] for _ in steps_of]
    for _ in range(steps):
        for step, taken in zip(steps_of, times):
            if step is None:
                continue
            start = time.perf_counter()
            step()
            _sync(device)
            taken.append(time.perf_counter() - start)
    return times


def time_training(
    model: nn.Module,
    task: Task,
    batch: dict[str, Any],
    base: TrainSettings,
    variants: Sequence[Variant],
    steps: int,
    device: torch.device,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Images per second of :func:`train_step` for every variant, timed round-robin.

    Every variant trains its own copy of *model* (same initial weights) with the
    optimiser of its settings; after one untimed warm-up step each (for ``compile``: the
    compilation), the variants take turns, one step at a time, so a busy machine slows
    them alike; the median step time gives the speed.
    """
    runs = []
    for variant in variants:
        settings = variant.settings(base)
        net = copy.deepcopy(model)
        channels_last = prepare_model(net, device, settings)
        net.train()
        optimizer = make_optimizer([p for p in net.parameters() if p.requires_grad], settings)
        runner: nn.Module = torch.compile(net) if variant.compile else net
        data = slice_batch(batch, settings.batch_size)
        if int(data["image"].shape[0]) < settings.batch_size:
            raise ConfigError(
                f"variant {variant.name}: the benchmark batch has fewer than {settings.batch_size} images"
            )
        run = {"variant": variant, "settings": settings, "net": runner, "optimizer": optimizer,
               "channels_last": channels_last, "batch": data, "times": [], "error": None, "warmup_s": 0.0}  # fmt: skip
        runs.append(run)
        if variant.precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
            run["error"] = "skipped: this CPU has no native bf16 (emulated bf16 autocast is many times slower)"
            continue
        start = time.perf_counter()
        try:
            with variant.active():
                train_step(runner, task, data, optimizer, device, settings, channels_last)
                _sync(device)
        except Exception as exc:  # noqa: BLE001 - e.g. torch.compile without a C compiler: report, go on
            run["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            if console is not None:
                console.print(f"[yellow]variant {variant.name} failed:[/] {run['error']}", highlight=False)
        run["warmup_s"] = time.perf_counter() - start

    def step_of(run: dict[str, Any]) -> Callable[[], Any] | None:
        def step() -> None:
            with run["variant"].active():
                train_step(
                    run["net"], task, run["batch"], run["optimizer"], device, run["settings"], run["channels_last"]
                )

        return None if run["error"] else step

    for run, taken in zip(runs, _round_robin([step_of(run) for run in runs], steps, device)):
        run["times"] = taken
    results = []
    for run in runs:
        variant, settings = run["variant"], run["settings"]
        median = statistics.median(run["times"]) if run["times"] else None
        results.append({
            "name": variant.name,
            "description": variant.description,
            "batch_size": settings.batch_size,
            "precision": "bf16" if use_bf16(settings, device) else "fp32",
            "channels_last": run["channels_last"],
            "threads": variant.threads or torch.get_num_threads(),
            "mkldnn": variant.mkldnn,
            "compile": variant.compile,
            "images_per_s": settings.batch_size / median if median else None,
            "step_s": median,
            "step_s_min": min(run["times"]) if run["times"] else None,
            "steps": len(run["times"]),
            "warmup_s": run["warmup_s"],
            "error": run["error"],
        })  # fmt: skip
    return results


def pretext_training_step(registry: Registry, config: RunConfig, name: str, pool: ImageDataset,
                          settings: TrainSettings, device: torch.device) -> tuple[Callable[[], Any], bool]:  # fmt: skip
    """The training step of pretext *name* as its pretraining takes it, ready to call, and whether the
    pretext has parts of its own.

    A fresh backbone of *config* (the pretext's output count; *config*'s pretext options when
    *name* is its pretext) with the pretext's parts (heads, momentum encoder:
    :mod:`sslbench.training.parts`) and the optimiser of *settings*, on a batch of
    ``settings.batch_size`` of its samples of *pool* (a two-view sample is one image).
    """
    from sslbench.experiment.phases import build_backbone

    torch.manual_seed(config.seed)
    task = registry.create("pretext", name, "--pretext", **(config.pretext_options if name == config.pretext else {}))
    model = build_backbone(registry, config, task.num_outputs)
    batch = pose_batch(pool, task, Geometry(model.input_size, model.stride), settings.batch_size)
    return _ready_step(model, task, batch, settings, device)


def _ready_step(model: Backbone, task: Task, batch: dict[str, Any], settings: TrainSettings,
                device: torch.device) -> tuple[Callable[[], Any], bool]:  # fmt: skip
    """:func:`train_step` of *task* on *model* (prepared, with the task's parts and the optimiser of
    *settings*) bound to *batch*, and whether the task has parts."""
    channels_last = prepare_model(model, device, settings)
    own_parts = parts.attach(task, model, device, distributed=False)
    groups = parameter_groups(model, settings.lr) + parts.parameter_groups(own_parts, settings.lr)
    optimizer = make_optimizer(groups, settings)
    model.train()
    parts.set_mode(task, True)
    return functools.partial(train_step, model, task, batch, optimizer, device, settings, channels_last), (
        own_parts is not None
    )


def _speed(batch_size: int, taken: Sequence[float]) -> dict[str, Any]:
    median = statistics.median(taken)
    return {"images_per_s": batch_size / median, "step_s": median, "steps": len(taken)}


def time_pretext(config: RunConfig, registry: Registry, settings: TrainSettings, steps: int,
                 device: torch.device) -> dict[str, Any]:  # fmt: skip
    """``images_per_s``, ``step_s`` and ``steps`` of the training step of *config*'s pretext at *settings*
    on its pretext data, timed as :func:`time_pretexts` times every pretext (one untimed step, then
    the median of *steps*): what a sweep's estimate of a pretraining assumes."""
    from sslbench.experiment.phases import open_dataset

    pool = open_dataset(registry, config.pretext_data, config.pretext_root, config.pretext_data_options,
                        "--pretext-data")  # fmt: skip
    step, _ = pretext_training_step(registry, config, config.pretext, pool, settings, device)
    step()  # warm-up
    (taken,) = _round_robin([step], steps, device)
    return _speed(settings.batch_size, taken)


def time_pretexts(ctx: BenchContext, names: Sequence[str], steps: int) -> list[dict[str, Any]]:
    """Images per second of the training step of every pretext in *names*, next to the pose step.

    Each pretext trains as :func:`pretext_training_step` builds it, on the pretext data, at the
    profile's downstream settings (batch size, precision, memory format), so every row compares
    with the ``pose`` row like with like. After one untimed step and one counted for FLOPs each,
    the steps take turns (:func:`_round_robin`).
    ``cost_vs_pose`` is a pose step's images per second over the pretext's, ``flops_vs_pose``
    the same for training FLOPs per image (a machine-independent check): a two-view method
    sees each image twice, but its heads read features that may stop before the last stage.
    Images are unlabelled images (a two-view sample is one image).
    """
    from sslbench.experiment.phases import open_dataset

    config, device, settings = ctx.config, ctx.device, ctx.config.downstream
    pool = open_dataset(ctx.registry, config.pretext_data, config.pretext_root, config.pretext_data_options,
                        "--pretext-data")  # fmt: skip
    rows, steps_of = [], []
    for name in ["pose", *names]:
        if name == "pose":
            torch.manual_seed(config.seed)
            batch = slice_batch(ctx.batch, settings.batch_size)
            step, has_parts = _ready_step(copy.deepcopy(ctx.model), ctx.pose, batch, settings, device)
        else:
            step, has_parts = pretext_training_step(ctx.registry, config, name, pool, settings, device)
        step()  # warm-up
        steps_of.append(step)
        flops = count_flops(step) / settings.batch_size
        rows.append({"pretext": name, "parts": has_parts, "batch_size": settings.batch_size,
                     "train_flops_per_image": flops, "flops_vs_pose": flops / rows[0]["train_flops_per_image"]
                     if rows else 1.0})  # fmt: skip
    pose_speed = None
    for row, taken in zip(rows, _round_robin(steps_of, steps, device)):
        row.update(_speed(row["batch_size"], taken))
        pose_speed = pose_speed or row["images_per_s"]
        row["cost_vs_pose"] = pose_speed / row["images_per_s"]
    return rows


def time_inference(model: nn.Module, task: Task, batch: dict[str, Any], settings: TrainSettings,
                   device: torch.device, reps: int) -> dict[str, float]:  # fmt: skip
    """Median latency per image at batch 1 and images/s at the batch size, of :func:`eval_step`."""
    net = copy.deepcopy(model)
    channels_last = prepare_model(net, device, settings)
    net.eval()

    def median_time(data: dict[str, Any]) -> float:
        times = []
        with torch.inference_mode():
            for i in range(reps + 1):
                start = time.perf_counter()
                eval_step(net, task, task.new_metric(), data, device, settings, channels_last)
                _sync(device)
                if i:  # the first is a warm-up
                    times.append(time.perf_counter() - start)
        return statistics.median(times)

    single = median_time(slice_batch(batch, 1))
    full = slice_batch(batch, settings.batch_size)
    return {"latency_ms": 1000.0 * single, "eval_images_per_s": int(full["image"].shape[0]) / median_time(full)}


def time_samples(make: Callable[[int], Any], count: int) -> float:
    """Samples per second of ``make(i)`` for i in 0..count-1 (after one warm-up call)."""
    make(count)
    start = time.perf_counter()
    for i in range(count):
        make(i)
    return count / (time.perf_counter() - start)


def time_loader(dataset: TaskDataset, settings: TrainSettings, batches: int) -> dict[str, float]:
    """One worker process producing *batches* batches through :func:`make_loader`.

    ``samples_per_s`` is the steady rate after the first batch (the worker's start-up,
    paid once per epoch, is ``first_batch_s``).
    """
    loader = make_loader(dataset, replace(settings, num_workers=1), shuffle=True, seed=0, epoch=1, shard=False)
    start = time.perf_counter()
    first = None
    samples = 0
    for i, batch in enumerate(loader):
        if i == 0:
            first = time.perf_counter()
        else:
            samples += int(batch["image"].shape[0])
        if i >= batches:
            break
    end = time.perf_counter()
    assert first is not None
    if samples == 0:
        raise ConfigError(
            f"the data loader produced fewer than 2 batches ({len(dataset)} samples): use a larger dataset"
        )
    return {"samples_per_s": samples / (end - first), "first_batch_s": first - start, "samples": samples}


class _EpochProbe(TaskDataset):
    """A training set that notes this process's RSS whenever an epoch starts (``set_epoch``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.rss_at_epoch: dict[int, float] = {}
        super().__init__(*args, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        self.rss_at_epoch[int(epoch)] = current_rss_mb()
        super().set_epoch(epoch)


def rss_over_epochs(model: Backbone, task: Task, data: ImageDataset, indices: Sequence[int], val_indices: Sequence[int],
                    settings: TrainSettings, epochs: int) -> dict[str, Any]:  # fmt: skip
    """RSS (MiB) after each of *epochs* short :func:`fit` epochs (two batches of training, one of validation).

    ``growth_mb`` is the RSS after the last epoch minus after the first: the first
    epoch allocates the allocator's caches; growth after it would be a leak.
    """
    geometry = Geometry(model.input_size, model.stride)
    settings = replace(settings, epochs=epochs, samples_per_epoch=2 * settings.batch_size,
                       val_samples=settings.batch_size, patience=0)  # fmt: skip
    train_set = _EpochProbe(data, indices, task, geometry, seed=0, train=True, limit=settings.samples_per_epoch)
    val_set = TaskDataset(data, val_indices, task, geometry, seed=0, train=False, limit=settings.val_samples)
    start_rss = current_rss_mb()
    with tempfile.TemporaryDirectory(prefix="sslbench-bench-") as run_dir:
        fit(copy.deepcopy(model), task, train_set, val_set, settings, Path(run_dir), seed=0, resume=False)
        end_rss = current_rss_mb()
    # set_epoch(e + 1) runs after epoch e finished: RSS after epoch e
    after = [train_set.rss_at_epoch[e] for e in range(2, epochs + 1) if e in train_set.rss_at_epoch] + [end_rss]
    return {"epochs": epochs, "before_mb": start_rss, "after_epoch_mb": after, "growth_mb": after[-1] - after[0]}
