"""pytest-benchmark benchmarks of the training step, sample generation, the loader and inference.

Not part of the test run (``testpaths = ["tests"]``, ``--benchmark-disable``). Run::

    python -m pytest benchmarks --benchmark-enable --benchmark-json=bench.json
    python -m pytest benchmarks --benchmark-enable --benchmark-compare   # against the last saved run

The JSON holds machine and commit (pytest-benchmark's ``machine_info`` and
``commit_info``, plus sslbench's description from ``conftest.py``). The channels_last
speed-up is best read from ``sslbench bench``, which times both steps side by side;
here each benchmark runs on its own. The ``paper`` profile's training step runs on
CUDA, or on a CPU when ``SSLBENCH_BENCH_PAPER=1`` (seconds per image there).
"""

from __future__ import annotations

import copy
import itertools
import os
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from sslbench.contract.interfaces import Geometry, SampleKey
from sslbench.contract.registry import default_registry
from sslbench.data.loaders import TaskDataset, make_loader
from sslbench.experiment.bench import (
    BASELINE,
    JIGSAW_IMAGE_SIDE,
    PROFILE,
    Variant,
    pose_batch,
    slice_batch,
)
from sslbench.experiment.phases import build_backbone, open_dataset
from sslbench.profiles import profile_config
from sslbench.tasks.pose import PoseTask
from sslbench.training.device import prepare_model, resolve_device, use_bf16
from sslbench.training.optim import make_optimizer
from sslbench.training.steps import eval_step, train_step

#: images (and batches) per loader benchmark round
LOADER_BATCHES = 4


class Setup:
    """A profile's model, pose task, data and one collated training batch."""

    def __init__(self, profile: str, batch_size: int | None = None) -> None:
        self.config = profile_config(profile)
        if batch_size is not None:
            self.config = replace(self.config, downstream=replace(self.config.downstream, batch_size=batch_size))
        self.settings = self.config.downstream
        self.device = resolve_device(self.settings.device)
        self.registry = default_registry()
        torch.manual_seed(0)
        self.pose = PoseTask(sigma=self.config.sigma, loss_scale=self.config.loss_scale)  # type: ignore[arg-type]
        self.model = build_backbone(self.registry, self.config, self.pose.num_outputs)
        self.geometry = Geometry(self.model.input_size, self.model.stride)
        self.data = open_dataset(self.registry, self.config.data, self.config.root, self.config.data_options, "--data")
        self.train_indices = self.data.splits(self.config.protocol, None, 0).train
        self.batch = pose_batch(self.data, self.pose, self.geometry, self.settings.batch_size)


@pytest.fixture(scope="module")
def cpu_setup() -> Setup:
    return Setup("cpu")


def _per_second(benchmark: Any, items: int) -> None:
    """Store items per second (from the median round) in the benchmark's extra info."""
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None and stats.stats.median > 0:
        benchmark.extra_info["per_second"] = items / stats.stats.median


def _train_step_benchmark(benchmark: Any, setup: Setup, variant: Variant, rounds: int) -> None:
    settings = variant.settings(setup.settings)
    net = copy.deepcopy(setup.model)
    channels_last = prepare_model(net, setup.device, settings)
    net.train()
    optimizer = make_optimizer([p for p in net.parameters() if p.requires_grad], settings)
    batch = slice_batch(setup.batch, settings.batch_size)

    def step() -> None:
        train_step(net, setup.pose, batch, optimizer, setup.device, settings, channels_last)
        if setup.device.type == "cuda":
            torch.cuda.synchronize(setup.device)

    benchmark.group = f"train step, {setup.config.profile} profile"
    benchmark.extra_info.update({"variant": variant.name, "batch_size": settings.batch_size,
                                 "channels_last": channels_last,
                                 "precision": "bf16" if use_bf16(settings, setup.device) else "fp32"})  # fmt: skip
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=1, iterations=1)
    _per_second(benchmark, settings.batch_size)


@pytest.mark.parametrize("variant", [PROFILE, BASELINE], ids=lambda v: v.name)
def test_train_step_cpu_profile(benchmark, cpu_setup: Setup, variant: Variant) -> None:
    """cpm6 training step at the cpu profile: as fit runs it, and as plain fp32 NCHW."""
    _train_step_benchmark(benchmark, cpu_setup, variant, rounds=5)


@pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("SSLBENCH_BENCH_PAPER") != "1",
    reason="paper profile on a CPU takes seconds per image (set SSLBENCH_BENCH_PAPER=1 to run it)",
)
def test_train_step_paper_profile(benchmark) -> None:
    """cpm6 at the paper profile (368 px, full width); on a CPU at batch 1."""
    setup = Setup("paper", batch_size=None if torch.cuda.is_available() else 1)
    _train_step_benchmark(benchmark, setup, PROFILE, rounds=3 if torch.cuda.is_available() else 1)


def test_jigsaw_sample_generation(benchmark, cpu_setup: Setup) -> None:
    """One jigsaw-heatmap puzzle (cut, shuffle, target maps) from a 250 x 250 image."""
    jigsaw = cpu_setup.registry.create("pretext", "jigsaw-heatmap")
    image = np.random.default_rng(0).integers(0, 256, (JIGSAW_IMAGE_SIDE, JIGSAW_IMAGE_SIDE, 3), dtype=np.uint8)
    keys = itertools.count()
    benchmark.group = "samples"
    benchmark(lambda: jigsaw.make_sample(image, None, SampleKey(0, next(keys), 1), True, cpu_setup.geometry))
    _per_second(benchmark, 1)


def test_pose_sample_generation(benchmark, cpu_setup: Setup) -> None:
    """One pose sample of a decoded image: crop, augmentation, heatmaps."""
    index = cpu_setup.train_indices[0]
    image, joints = cpu_setup.data.image(index), cpu_setup.data.joints(index)
    keys = itertools.count()
    benchmark.group = "samples"
    benchmark(lambda: cpu_setup.pose.make_sample(image, joints, SampleKey(0, next(keys), 1), True, cpu_setup.geometry))
    _per_second(benchmark, 1)


def test_loader_end_to_end(benchmark, cpu_setup: Setup) -> None:
    """TaskDataset + make_loader with one worker process: image, sample, collation, per batch."""
    settings = replace(cpu_setup.settings, num_workers=1)
    count = LOADER_BATCHES * settings.batch_size
    dataset = TaskDataset(cpu_setup.data, cpu_setup.train_indices[:count], cpu_setup.pose, cpu_setup.geometry,
                          seed=0, train=True)  # fmt: skip
    epochs = itertools.count(1)

    def one_pass() -> int:
        return sum(int(batch["image"].shape[0]) for batch in make_loader(dataset, settings, True, 0, next(epochs)))

    benchmark.group = "loader"
    benchmark.extra_info["samples"] = count
    benchmark.pedantic(one_pass, rounds=3, warmup_rounds=0, iterations=1)
    _per_second(benchmark, count)


def test_inference_latency(benchmark, cpu_setup: Setup) -> None:
    """Batch 1: forward, decoding and metric update (eval_step), as evaluation runs it."""
    net = copy.deepcopy(cpu_setup.model)
    channels_last = prepare_model(net, cpu_setup.device, cpu_setup.settings)
    net.eval()
    single = slice_batch(cpu_setup.batch, 1)

    def infer() -> None:
        with torch.inference_mode():
            eval_step(
                net, cpu_setup.pose, cpu_setup.pose.new_metric(), single, cpu_setup.device, cpu_setup.settings,
                channels_last,
            )

    benchmark.group = "inference"
    benchmark(infer)
    _per_second(benchmark, 1)
