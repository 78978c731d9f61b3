"""One ``sslbench bench`` run: the context it measures in, and every measure of the plan in one process."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from rich.console import Console

from sslbench.contract.config import RunConfig
from sslbench.contract.errors import ConfigError
from sslbench.contract.interfaces import Geometry, SampleKey
from sslbench.contract.registry import Registry, default_registry
from sslbench.data.loaders import TaskDataset
from sslbench.experiment import environment
from sslbench.experiment.bench.measures import (
    BenchContext,
    current_rss_mb,
    machine_load,
    peak_flops,
    peak_rss_mb,
    pose_batch,
    rss_over_epochs,
    slice_batch,
    time_inference,
    time_loader,
    time_pretexts,
    time_samples,
    time_training,
    train_flops_per_image,
)
from sslbench.experiment.bench.plan import (
    JIGSAW_IMAGE_SIDE,
    JIGSAW_PRETEXT,
    LOADER_TARGET_RATIO,
    SCHEMA,
    BenchPlan,
)
from sslbench.tasks.pose import PoseTask
from sslbench.training.device import cpu_has_native_bf16, resolve_device, use_bf16

# ----------------------------------------------------------------------------- run


def _context(config: RunConfig, registry: Registry, max_batch: int) -> BenchContext:
    from sslbench.experiment.phases import build_backbone, open_dataset

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

    pretext_rows: list[dict[str, Any]] = []
    if plan.pretexts:
        names = _pretext_names(registry, plan.pretexts)
        with say.status(f"timing the training step of {len(names)} pretexts..."):
            pretext_rows = time_pretexts(ctx, names, plan.steps)

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
            "pretexts": pretext_rows,
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


def _pretext_names(registry: Registry, wanted: Sequence[str]) -> list[str]:
    """*wanted* pretext names checked against the registry; ``all``: every pretext that trains."""
    known = [name for name in registry.names("pretext") if registry.create("pretext", name, "--pretext").trains]
    if "all" in wanted:
        return known
    for name in wanted:
        if name not in known:
            raise ConfigError(f"--pretext: unknown pretext {name!r} (choose from {', '.join(known)} or all)")
    return list(wanted)


def _data_measures(ctx: BenchContext, plan: BenchPlan, train_speed: float | None) -> dict[str, Any]:
    config = ctx.config
    registry = ctx.registry
    from sslbench.experiment.phases import open_dataset

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
