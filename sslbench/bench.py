"""How fast the training loop runs on this machine, and how close to the machine's limit.

``sslbench bench`` measures, in one process and one run so ratios compare like with like:

- the training step of :func:`sslbench.train.train_step` (the step :func:`~sslbench.train.fit`
  takes) in *variants* timed round-robin, one step of each in turn, so a busy machine
  slows them alike: ``profile`` (precision and memory format resolved exactly as ``fit``
  resolves them), ``baseline`` (plain fp32, NCHW) and optional explorations;
- inference: latency per image at batch 1 and evaluation throughput at the batch size
  (:func:`sslbench.train.eval_step`: forward, decoding, metric);
- sample generation (jigsaw puzzles on 250 x 250 images, pose crops with augmentation
  and heatmaps) and the data loader end to end (:class:`TaskDataset` + :func:`make_loader`,
  one worker process) as a multiple of the training step's images per second;
- model FLOP utilisation: FLOPs of one training image (forward + backward, counted with
  :class:`torch.utils.flop_counter.FlopCounterMode`) x images per second, over the peak
  of a large matmul and a large convolution timed here in the same precision;
- memory: peak RSS, and RSS after every epoch of a few short :func:`fit` epochs (growth
  would mean a leak).

Results are a JSON-able dict with the machine and commit (:func:`sslbench.environment.describe`)
and the load average before and after: figures taken on a busy machine are lower bounds.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import default_collate
from torch.utils.flop_counter import FlopCounterMode

from sslbench import environment
from sslbench.config import RunConfig, TrainSettings
from sslbench.data import TaskDataset, make_loader
from sslbench.errors import ConfigError
from sslbench.interfaces import Backbone, Geometry, ImageDataset, SampleKey, Task
from sslbench.pose import PoseTask
from sslbench.registry import Registry, default_registry
from sslbench.train import (
    cpu_has_native_bf16,
    eval_step,
    fit,
    make_optimizer,
    prepare_model,
    resolve_device,
    train_step,
    use_bf16,
)

SCHEMA = 1
#: side of the random images jigsaw puzzles are cut from (LSP images are about this size)
JIGSAW_IMAGE_SIDE = 250
#: the pretext whose sample generation and loader are measured
JIGSAW_PRETEXT = "jigsaw-heatmap"
#: the data pipeline should produce at least this many times the samples the step consumes
LOADER_TARGET_RATIO = 3.0


# ------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class Variant:
    """One way of running the training step; None fields keep the profile's setting."""

    name: str
    description: str
    precision: str | None = None
    channels_last: bool | None = None
    batch_factor: float = 1.0
    threads: int | None = None
    mkldnn: bool = True
    compile: bool = False

    def settings(self, base: TrainSettings) -> TrainSettings:
        changes: dict[str, Any] = {"batch_size": max(1, round(base.batch_size * self.batch_factor))}
        if self.precision is not None:
            changes["precision"] = self.precision
        if self.channels_last is not None:
            changes["channels_last"] = self.channels_last
        return replace(base, **changes)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Thread count and oneDNN switch of this variant, restored afterwards."""
        threads, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        torch.backends.mkldnn.enabled = mkldnn and self.mkldnn
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.backends.mkldnn.enabled = mkldnn


PROFILE = Variant("profile", "as fit trains it (the profile's precision and memory format)")
BASELINE = Variant("baseline", "plain PyTorch step: fp32, NCHW, no tweaks", precision="fp32", channels_last=False)
#: what ``--variant NAME`` adds: each changes one thing of the profile variant
EXPLORE = (
    Variant("threads-1", "profile, one torch thread", threads=1),
    Variant("no-mkldnn", "profile, oneDNN (mkldnn) convolutions off", mkldnn=False),
    Variant("bf16", "profile with bf16 autocast", precision="bf16"),
    Variant("fp32", "profile in fp32", precision="fp32"),
    Variant("batch-x2", "profile at twice the batch size", batch_factor=2.0),
    Variant("batch-half", "profile at half the batch size", batch_factor=0.5),
    Variant("compile", "profile under torch.compile (inductor)", compile=True),
)


@dataclass(frozen=True)
class BenchPlan:
    """How much of everything to measure (more steps: steadier medians, longer run)."""

    steps: int = 10
    inference_reps: int = 10
    samples: int = 60
    loader_batches: int = 6
    rss_epochs: int = 3
    peak_matmul: int = 2048
    #: (batch, channels, side, kernel) of the peak convolution: a full-width CPM 9x9 layer
    peak_conv: tuple[int, int, int, int] = (4, 128, 46, 9)
    peak_reps: int = 3
    #: training variants timed side by side; the first must be ``profile``
    variants: tuple[Variant, ...] = (PROFILE, BASELINE)

    @classmethod
    def for_profile(cls, profile: str, steps: int | None = None, rss_epochs: int | None = None,
                    compare_baseline: bool = True, explore: Sequence[str] = ()) -> BenchPlan:  # fmt: skip
        """Defaults per profile: ``smoke`` measures everything briefly (tests), others properly.

        *explore* names variants of :data:`EXPLORE` to time as well (``all``: every one).
        """
        variants = (PROFILE, BASELINE) if compare_baseline else (PROFILE,)
        known = {v.name: v for v in EXPLORE}
        for name in explore:
            if name != "all" and name not in known:
                raise ConfigError(f"--variant: unknown variant {name!r} (choose from {', '.join(known)} or all)")
        chosen = list(known) if "all" in explore else list(dict.fromkeys(explore))
        variants += tuple(known[name] for name in chosen)
        if profile == "smoke":
            plan = cls(steps=3, inference_reps=3, samples=12, loader_batches=2, rss_epochs=2, peak_matmul=512,
                       peak_conv=(2, 32, 16, 5), peak_reps=2, variants=variants)  # fmt: skip
        else:
            plan = cls(variants=variants)
        if steps is not None:
            if steps < 1:
                raise ConfigError(f"--steps must be >= 1, got {steps}")
            plan = replace(plan, steps=steps, inference_reps=steps, samples=max(8, 6 * steps),
                           loader_batches=max(2, min(6, steps)))  # fmt: skip
        if rss_epochs is not None:
            if rss_epochs < 0:
                raise ConfigError(f"--rss-epochs must be >= 0, got {rss_epochs}")
            plan = replace(plan, rss_epochs=rss_epochs)
        return plan


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


def pose_batch(dataset: ImageDataset, task: PoseTask, geometry: Geometry, size: int, seed: int = 0) -> dict[str, Any]:
    """A collated batch of *size* augmented training samples (images reused cyclically)."""
    samples = [
        task.make_sample(
            dataset.image(i % len(dataset)), dataset.joints(i % len(dataset)), SampleKey(seed, i, 1), True, geometry
        )
        for i in range(size)
    ]
    return default_collate(samples)


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
    for _ in range(steps):
        for run in runs:
            if run["error"]:
                continue
            with run["variant"].active():
                start = time.perf_counter()
                train_step(
                    run["net"], task, run["batch"], run["optimizer"], device, run["settings"], run["channels_last"]
                )
                _sync(device)
                run["times"].append(time.perf_counter() - start)
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


# ----------------------------------------------------------------------------- run


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


def _context(config: RunConfig, registry: Registry, max_batch: int) -> BenchContext:
    from sslbench.phases import build_backbone, open_dataset

    config.validate()
    device = resolve_device(config.downstream.device)
    torch.manual_seed(config.seed)
    pose = PoseTask(sigma=config.sigma, loss_scale=config.loss_scale)  # type: ignore[arg-type]
    model = build_backbone(registry, config, pose.num_outputs)
    geometry = Geometry(model.input_size, model.stride)
    data = open_dataset(registry, config.data, config.root, config.data_options, "--data")
    splits = data.splits(config.protocol, None, config.seed)
    context = BenchContext(config, registry, device, model, pose, geometry, data, list(splits.train), list(splits.val))
    context.batch = pose_batch(data, pose, geometry, max_batch)
    return context


def run_bench(config: RunConfig, plan: BenchPlan, registry: Registry | None = None,
              console: Console | None = None) -> dict[str, Any]:  # fmt: skip
    """Every measure of the module doc for *config* (its backbone and downstream settings)."""
    registry = registry or default_registry()
    say = console or Console(quiet=True)
    started = time.perf_counter()
    load_before = machine_load()
    rss_at_start = current_rss_mb()
    settings = config.downstream
    max_batch = max(max(1, round(settings.batch_size * v.batch_factor)) for v in plan.variants)
    with say.status("building samples..."):
        ctx = _context(config, registry, max(max_batch, 2))
    device = ctx.device
    if device.type == "cuda":  # a GPU needs far larger problems to reach its peak
        plan = replace(plan, peak_matmul=max(plan.peak_matmul, 8192), peak_conv=(32, 256, 64, 9),
                       peak_reps=max(plan.peak_reps, 10))  # fmt: skip

    with say.status(f"timing the training step ({len(plan.variants)} variants x {plan.steps} steps)..."):
        variants = time_training(ctx.model, ctx.pose, ctx.batch, settings, plan.variants, plan.steps, device, say)
    by_name = {v["name"]: v for v in variants}
    profile_speed = by_name["profile"]["images_per_s"]
    baseline_speed = by_name.get("baseline", {}).get("images_per_s")

    with say.status("timing inference..."):
        inference = time_inference(ctx.model, ctx.pose, ctx.batch, settings, device, plan.inference_reps)

    with say.status("counting FLOPs and timing the peak..."):
        # one image: every counted operation (convolutions, matmuls) scales linearly with the batch
        train_flops, forward_flops = train_flops_per_image(
            ctx.model, ctx.pose, slice_batch(ctx.batch, 1), settings, device
        )
        peak = peak_flops(device, use_bf16(settings, device), bool(settings.channels_last), plan)
    for variant in variants:
        speed = variant["images_per_s"]
        variant["achieved_flops"] = train_flops * speed if speed else None
        variant["mfu_percent"] = 100.0 * train_flops * speed / peak["peak"] if speed else None

    with say.status("timing sample generation and the data loader..."):
        data_result = _data_measures(ctx, plan, profile_speed)

    memory: dict[str, Any] = {"start_rss_mb": rss_at_start}
    if plan.rss_epochs > 0:
        with say.status(f"fitting {plan.rss_epochs} short epochs for memory..."):
            memory["fit"] = rss_over_epochs(ctx.model, ctx.pose, ctx.data, ctx.train_indices, ctx.val_indices,
                                            settings, plan.rss_epochs)  # fmt: skip
    memory["peak_rss_mb"] = peak_rss_mb()
    memory["peak_rss_children_mb"] = peak_rss_mb(children=True)

    machine = {
        **environment.describe(device),
        "interop_threads": torch.get_num_interop_threads(),
        "logical_cpus": os.cpu_count(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        # OpenMP threads spin while they wait; PASSIVE makes them sleep (matters when cores are shared)
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "native_bf16": cpu_has_native_bf16() if device.type == "cpu" else None,
        "load_before": load_before,
        "load_after": machine_load(),
    }
    return {
        "schema": SCHEMA,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "config": {
            "profile": config.profile,
            "backbone": config.backbone,
            "backbone_options": config.backbone_options,
            "input_size": ctx.model.input_size,
            "batch_size": settings.batch_size,
            "precision": by_name["profile"]["precision"],
            "channels_last": by_name["profile"]["channels_last"],
            "device": str(device),
            "data": config.data,
            "plan": {k: v for k, v in dataclasses.asdict(plan).items() if k != "variants"},
        },
        "train": {
            "variants": variants,
            "images_per_s": profile_speed,
            "baseline_images_per_s": baseline_speed,
            "speedup_vs_baseline": profile_speed / baseline_speed if profile_speed and baseline_speed else None,
        },
        "inference": inference,
        "data": data_result,
        "flops": {
            "train_per_image": train_flops,
            "forward_per_image": forward_flops,
            "achieved": by_name["profile"]["achieved_flops"],
            "peak_matmul": peak["matmul"],
            "peak_conv": peak["conv"],
            "peak": peak["peak"],
            "mfu_percent": by_name["profile"]["mfu_percent"],
            "peak_precision": "bf16" if use_bf16(settings, device) else "fp32",
        },
        "memory": memory,
        "seconds": time.perf_counter() - started,
    }


def _data_measures(ctx: BenchContext, plan: BenchPlan, train_speed: float | None) -> dict[str, Any]:
    config = ctx.config
    registry = ctx.registry
    from sslbench.phases import open_dataset

    # jigsaw puzzles from random images of LSP's size
    jigsaw = registry.create("pretext", JIGSAW_PRETEXT, "--pretext")
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (JIGSAW_IMAGE_SIDE, JIGSAW_IMAGE_SIDE, 3), dtype=np.uint8) for _ in range(4)]
    jigsaw_rate = time_samples(
        lambda i: jigsaw.make_sample(pictures[i % len(pictures)], None, SampleKey(0, i, 1), True, ctx.geometry),
        plan.samples,
    )
    # pose crops: augmentation and heatmaps of already decoded images
    count = min(len(ctx.train_indices), 8)
    people = [(ctx.data.image(i), ctx.data.joints(i)) for i in ctx.train_indices[:count]]
    pose_rate = time_samples(
        lambda i: ctx.pose.make_sample(*people[i % len(people)], SampleKey(0, i, 1), True, ctx.geometry), plan.samples
    )
    # the loaders read only the first images they need
    needed = (plan.loader_batches + 1) * config.downstream.batch_size
    pose_set = TaskDataset(ctx.data, ctx.train_indices[:needed], ctx.pose, ctx.geometry, seed=0, train=True)
    pose_loader = time_loader(pose_set, config.downstream, plan.loader_batches)
    pool = open_dataset(
        registry, config.pretext_data, config.pretext_root, config.pretext_data_options, "--pretext-data"
    )
    pool_indices = pool.splits("standard", None, config.pretraining_seed).train[:needed]
    jigsaw_set = TaskDataset(pool, pool_indices, jigsaw, ctx.geometry, seed=0, train=True)
    jigsaw_loader = time_loader(jigsaw_set, config.downstream, plan.loader_batches)

    def ratio(rate: float) -> float | None:
        return rate / train_speed if train_speed else None

    return {
        "jigsaw_samples_per_s": jigsaw_rate,
        "jigsaw_image_side": JIGSAW_IMAGE_SIDE,
        "pose_samples_per_s": pose_rate,
        "loader": {
            "pose": {**pose_loader, "ratio_to_training": ratio(pose_loader["samples_per_s"])},
            "jigsaw": {**jigsaw_loader, "ratio_to_training": ratio(jigsaw_loader["samples_per_s"])},
            "workers": 1,
            "target_ratio": LOADER_TARGET_RATIO,
        },
    }


# ---------------------------------------------------------------------------- output


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def _giga(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e9:,.2f} GFLOP"


def result_table(result: dict[str, Any]) -> Table:
    """The figures of :func:`run_bench` as one rich table."""
    cfg, train, flops, data, memory = (
        result["config"],
        result["train"],
        result["flops"],
        result["data"],
        result["memory"],
    )
    machine = result["machine"]
    title = (f"sslbench bench: {cfg['backbone']} at {cfg['input_size']} px, profile {cfg['profile']}, "
             f"{machine['device']} ({machine['cpu']}, {machine['threads']} threads)")  # fmt: skip
    table = Table(title=title, title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("detail")
    for v in train["variants"]:
        if v["error"]:
            status = "skipped" if v["error"].startswith("skipped") else "failed"
            table.add_row(f"train step: {v['name']}", status, v["error"])
            continue
        layout = "channels_last" if v["channels_last"] else "NCHW"
        extra = f", compile {v['warmup_s']:.0f} s" if v["compile"] else ""
        table.add_row(
            f"train step: {v['name']}", _fmt(v["images_per_s"], " img/s"),
            f"{v['precision']}, {layout}, batch {v['batch_size']}, {v['threads']} threads"
            f"{'' if v['mkldnn'] else ', mkldnn off'}{extra}; MFU {_fmt(v['mfu_percent'], '%')}",
        )  # fmt: skip
    if train["speedup_vs_baseline"] is not None:
        table.add_row(
            "speed-up vs baseline", _fmt(train["speedup_vs_baseline"], "x", 2), "profile / baseline, same run"
        )
    inference = result["inference"]
    table.add_row("inference latency", _fmt(inference["latency_ms"], " ms/img"), "batch 1: forward + decoding")
    table.add_row("eval throughput", _fmt(inference["eval_images_per_s"], " img/s"), f"batch {cfg['batch_size']}")
    table.add_row("jigsaw samples", _fmt(data["jigsaw_samples_per_s"], "/s"),
                  f"{JIGSAW_PRETEXT} make_sample, {data['jigsaw_image_side']} px images, one process")  # fmt: skip
    table.add_row("pose samples", _fmt(data["pose_samples_per_s"], "/s"), "crop, augmentation, heatmaps; one process")
    for name, loader in (("pose", data["loader"]["pose"]), ("jigsaw", data["loader"]["jigsaw"])):
        ratio = loader["ratio_to_training"]
        mark = "" if ratio is None else (" (ok)" if ratio >= LOADER_TARGET_RATIO else " [red](below 3x)[/]")
        table.add_row(f"loader {name}", _fmt(loader["samples_per_s"], "/s"),
                      f"1 worker, incl. image load; {_fmt(ratio, 'x', 1)} the training step{mark}; "
                      f"first batch {loader['first_batch_s']:.2f} s")  # fmt: skip
    table.add_row("FLOPs per training image", _giga(flops["train_per_image"]),
                  f"forward + backward; forward alone {_giga(flops['forward_per_image'])}")  # fmt: skip
    table.add_row("achieved", _fmt((flops["achieved"] or 0) / 1e9, " GFLOP/s"), "profile variant")
    table.add_row("peak (measured)", _fmt(flops["peak"] / 1e9, " GFLOP/s"),
                  f"{flops['peak_precision']}: matmul {flops['peak_matmul'] / 1e9:,.1f}, "
                  f"conv {flops['peak_conv'] / 1e9:,.1f} GFLOP/s")  # fmt: skip
    table.add_row("model FLOP utilisation", _fmt(flops["mfu_percent"], " %"), "achieved / measured peak")
    if "fit" in memory:
        fit_rss = memory["fit"]
        series = ", ".join(f"{x:.0f}" for x in fit_rss["after_epoch_mb"])
        table.add_row("RSS growth over epochs", _fmt(fit_rss["growth_mb"], " MiB"),
                      f"RSS after each of {fit_rss['epochs']} short fit epochs: {series} MiB")  # fmt: skip
    table.add_row("peak RSS", _fmt(memory["peak_rss_mb"], " MiB"),
                  f"this process ({memory['start_rss_mb']:.0f} MiB after imports); "
                  f"largest loader worker {memory['peak_rss_children_mb']:.0f} MiB")  # fmt: skip
    load = machine.get("load_before")
    table.caption = (
        f"commit {machine['commit']}, torch {machine['torch']}; load average before "
        f"{load[0] if load else '?'} on {machine['logical_cpus']} CPUs; {result['seconds']:.0f} s"
    )
    return table


def busy_warning(result: dict[str, Any]) -> str | None:
    """A warning when the machine was busy before the benchmark started (figures are then lower bounds)."""
    load = result["machine"].get("load_before")
    cpus = result["machine"].get("logical_cpus") or 1
    if load and load[0] > 0.25 * cpus:
        return (f"the machine was busy (load average {load[0]} on {cpus} CPUs) before the benchmark: "
                "figures are lower bounds; ratios measured side by side are more reliable")  # fmt: skip
    return None
