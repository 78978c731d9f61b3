"""Sweep time estimates: seconds per cell from earlier records or a short timed measurement."""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sslbench.contract.config import RunConfig, TrainSettings
from sslbench.contract.errors import SSLBenchError
from sslbench.contract.interfaces import Geometry
from sslbench.contract.registry import Registry
from sslbench.data.joints import NUM_JOINTS
from sslbench.experiment import strategies
from sslbench.experiment.plan import Cell
from sslbench.results.store import iter_records

#: evaluation (forward, decoding, PCK) runs about this many times faster than training, per image
#: (measured about 1.8x for cpm6 on a CPU; the backward pass alone would suggest 3x)
EVAL_SPEEDUP = 2.0
# ------------------------------------------------------------------------------ estimates


@dataclass
class CellEstimate:
    """Seconds a cell is expected to take (None where unknown); pretraining counted separately."""

    pretrain_s: float | None
    downstream_s: float | None


def measure_throughput(
    config: RunConfig, registry: Registry, phase: str = "downstream", budget_s: float = 3.0, max_batch: int = 8
) -> float:
    """Training images per second of the config's *phase* (``downstream`` or ``pretrain``), timed just now.

    The steps and their timing are those of ``sslbench bench``: for ``downstream``, real optimiser
    steps of :func:`sslbench.training.steps.train_step` (the step ``fit`` takes: forward, pose loss on
    every stage, backward, the downstream optimiser) on random tensors
    (:func:`sslbench.experiment.bench.time_training`); for ``pretrain``, the training step of the
    config's pretext with its own parts (a two-view pretext sees every image twice) on a batch of
    the pretext data at the pretraining's settings (:func:`sslbench.experiment.bench.time_pretext`,
    the step ``sslbench bench --pretext NAME`` times). On the device, in the precision and memory
    format the phase would use, after an untimed warm-up; the median step (robust to other
    processes' bursts) gives the speed. About *budget_s* seconds (3 to 20 steps); a network that
    needs more than that for its smallest batch (one image; two for a pretext, whose losses may
    compare the images of a batch) is timed on that batch (a slight underestimate of its batched
    speed).
    """
    import torch

    from sslbench.experiment.bench import PROFILE, time_pretext, time_training
    from sslbench.tasks.pose import PoseTask
    from sslbench.training.device import resolve_device

    base = config.pretrain if phase == "pretrain" else config.downstream
    device = resolve_device(base.device)
    if phase == "pretrain":

        def timed(batch: int, steps: int) -> dict[str, Any]:
            return time_pretext(config, registry, dataclasses.replace(base, batch_size=batch), steps, device)

        smallest = min(2, base.batch_size)
    else:
        net = registry.create(
            "backbone", config.backbone, "--backbones", num_outputs=NUM_JOINTS + 1, **config.backbone_options
        )
        size, maps = int(net.input_size), int(net.input_size) // int(net.stride)

        def timed(batch: int, steps: int) -> dict[str, Any]:
            data = {"image": torch.randn(batch, 3, size, size), "centermap": torch.rand(batch, 1, size, size),
                    "target": torch.rand(batch, NUM_JOINTS + 1, maps, maps)}  # fmt: skip
            settings = dataclasses.replace(base, batch_size=batch)
            (run,) = time_training(net, PoseTask(), data, settings, [PROFILE], steps, device)
            if run["error"]:
                raise RuntimeError(run["error"])
            return run

        smallest = 1
    first = timed(smallest, 1)
    batch = max(smallest, min(base.batch_size, max_batch))
    if batch == smallest or first["step_s"] > budget_s:  # e.g. the paper's network on a CPU: seconds per image
        return first["images_per_s"]
    per_image_s = first["step_s"] / smallest  # a batch takes at most batch x one image
    steps = max(3, min(20, int(budget_s / (per_image_s * batch))))
    return timed(batch, steps)["images_per_s"]


def measure_sample_rate(
    config: RunConfig, registry: Registry, phase: str = "downstream", budget_s: float = 1.0
) -> float:
    """Training samples per second this process makes for the config's *phase*, timed just now.

    What a loader worker does for each sample: read and decode an image of the phase's training
    split (the labelled budget's images for ``downstream``, the pretext pool's for ``pretrain``)
    and make its task's augmented sample (:class:`~sslbench.data.loaders.TaskDataset`: the pose
    sample with its belief maps, or the pretext's sample of one image, both views of a two-view
    pretext). About *budget_s* seconds of samples (3 to 32) after untimed ones.
    """
    from sslbench.data.loaders import TaskDataset
    from sslbench.experiment.bench.measures import time_samples
    from sslbench.experiment.phases import build_backbone, open_dataset
    from sslbench.tasks.pose import PoseTask

    if phase == "pretrain":
        task = registry.create("pretext", config.pretext, "--pretext", **config.pretext_options)
        images = open_dataset(registry, config.pretext_data, config.pretext_root, config.pretext_data_options,
                              "--pretext-data")  # fmt: skip
        indices = images.splits("standard", None, config.pretraining_seed).train
    else:
        task = PoseTask()
        images = open_dataset(registry, config.data, config.root, config.data_options, "--data")
        indices = images.splits(config.protocol, config.train_size, config.seed).train
    net = build_backbone(registry, config, task.num_outputs)
    samples = TaskDataset(
        images, indices, task, Geometry(int(net.input_size), int(net.stride)), config.seed, train=True
    )
    start = time.perf_counter()
    samples[0]  # also the untimed first sample
    count = max(3, min(32, int(budget_s / max(time.perf_counter() - start, 1e-6))))
    return time_samples(lambda i: samples[i % len(samples)], count)


def with_loading(step_speed: float, sample_speed: float, workers: int) -> float:
    """Training images/s of a loop whose steps run at *step_speed* and whose samples are made at
    *sample_speed* each by *workers* loader processes (0: in the training process, between steps).

    Without workers the two add up; workers make samples while the step runs, so the slower of
    the two sets the pace.
    """
    if workers <= 0:
        return 1.0 / (1.0 / step_speed + 1.0 / sample_speed)
    return min(step_speed, workers * sample_speed)


class Estimator:
    """Seconds per cell from measured throughput: earlier records first, else a short timing run."""

    def __init__(self, registry: Registry, results_dir: Path | None, measure: bool = True) -> None:
        self.registry = registry
        self.measure = measure
        self.records = [r for _, r in iter_records(results_dir, lambda m: None)] if results_dir else []
        self.sources: dict[str, str] = {}
        self._speed: dict[str, float | None] = {}
        self._sizes: dict[str, tuple[int, int, int] | None] = {}

    @staticmethod
    def _backbone_key(config: RunConfig) -> str:
        return json.dumps([config.profile, config.backbone, config.backbone_options], sort_keys=True, default=str)

    def _label(self, config: RunConfig) -> str:
        options = ", ".join(f"{k}={v}" for k, v in sorted(config.backbone_options.items()))
        return f"{config.backbone} ({options}; profile {config.profile})"

    def _from_records(self, config: RunConfig, field_name: str, pretext: str | None) -> list[float]:
        key = self._backbone_key(config)
        speeds = []
        for record in self.records:
            try:
                other = RunConfig.from_dict(record["config"])
                value = record["timing"][field_name]
            except (KeyError, TypeError, SSLBenchError):
                continue
            if record.get("status") != "done" or not isinstance(value, (int, float)) or value <= 0:
                continue
            if self._backbone_key(other) == key and (pretext is None or other.pretext == pretext):
                speeds.append(float(value))
        return speeds

    def speed(self, config: RunConfig, phase: str = "downstream") -> float | None:
        """Training images/s for *phase* (``downstream`` or ``pretrain``), or None when unknown.

        Earlier records of the same backbone first (for ``pretrain``: of the same pretext), else
        a short timing run of the phase's own step (:func:`measure_throughput`; for ``pretrain``
        the pretext's step: a two-view pretext costs up to 2.5 pose steps). A pretraining is
        never estimated at the pose step's speed.
        """
        pretrain = phase == "pretrain"
        label = f"{self._label(config)}, pretext {config.pretext}" if pretrain else self._label(config)
        if label not in self._speed:
            if pretrain:
                speeds = self._from_records(config, "pretrain_img_per_s", config.pretext)
            else:
                speeds = self._from_records(config, "downstream_img_per_s", None)
            if speeds:
                speed: float | None = statistics.median(speeds)
                self.sources[label] = f"{speed:.1f} img/s, median of {len(speeds)} earlier record(s)"
            else:
                speed = self._measured(config, phase, label) if self.measure else None
            self._speed[label] = speed
        return self._speed[label]

    def _measured(self, config: RunConfig, phase: str, label: str) -> float | None:
        """The phase's step timed (:func:`measure_throughput`), slowed by the time its loaders take to
        make the samples (:func:`measure_sample_rate`, :func:`with_loading`) where that can be timed."""
        try:
            step = measure_throughput(config, self.registry, phase)
        except Exception as exc:  # an estimate must never stop a dry run
            self.sources[label] = f"unknown (timing failed: {type(exc).__name__}: {exc})"
            return None
        what = "the pretext's training step on its data" if phase == "pretrain" else "the step on random tensors"
        workers = (config.pretrain if phase == "pretrain" else config.downstream).num_workers
        try:
            made = measure_sample_rate(config, self.registry, phase)
        except Exception as exc:  # the data cannot be read here: the step alone (too fast)
            self.sources[label] = (
                f"{step:.1f} img/s, measured on {what} just now; loading not timed ({type(exc).__name__}: {exc})"
            )
            return step
        speed = with_loading(step, made, workers)
        by = f"{workers} loader worker(s)" if workers else "the training process"
        self.sources[label] = (
            f"{speed:.1f} img/s, measured just now: {what} {step:.1f} img/s, samples made at {made:.1f}/s by {by}"
        )
        return speed

    def _split_sizes(
        self, name: str, root: str | None, protocol: str, size: int | None, seed: int
    ) -> tuple[int, int, int] | None:
        """(train, val, test) image counts of a dataset split, or None when it cannot be opened."""
        key = json.dumps([name, root, protocol, size, seed])
        if key not in self._sizes:
            try:
                dataset = self.registry.create("dataset", name, root=Path(root) if root else None)
                splits = dataset.splits(protocol, size, seed)
                self._sizes[key] = (len(splits.train), len(splits.val), len(splits.test))
            except Exception:  # unknown sizes leave the estimate open, they do not stop the plan
                self._sizes[key] = None
        return self._sizes[key]

    @staticmethod
    def _phase_seconds(
        settings: TrainSettings, speed: float | None, train: int | None, val: int, test: int
    ) -> float | None:
        """All epochs of training plus validation passes, plus the test pass (at :data:`EVAL_SPEEDUP` x)."""
        if not speed or not train:
            return None
        if settings.samples_per_epoch:
            train = min(train, settings.samples_per_epoch)
        if settings.val_samples is not None:
            val = min(val, settings.val_samples)
        return settings.epochs * (train + val / EVAL_SPEEDUP) / speed + test / (EVAL_SPEEDUP * speed)

    def estimate(self, cell: Cell) -> CellEstimate:
        """Upper bound in seconds (all epochs run; early stopping ends sooner)."""
        c = cell.config
        pretrain_s = None
        if cell.pretrains:
            sizes = self._split_sizes(c.pretext_data, c.pretext_root, "standard", c.pretext_images, c.seed)
            train = sizes[0] if sizes else (c.pretrain.samples_per_epoch or c.pretext_images)
            val = sizes[1] if sizes else (c.pretrain.val_samples or 0)
            pretrain_s = self._phase_seconds(c.pretrain, self.speed(c, "pretrain"), train, val, val)
        sizes = self._split_sizes(c.data, c.root, c.protocol, c.train_size, c.seed)
        train = sizes[0] if sizes else c.train_size
        val, test = (sizes[1], sizes[2]) if sizes else (c.downstream.val_samples or 0, 0)
        downstream_s = self._phase_seconds(c.downstream, self.speed(c, "downstream"), train, val, test)
        if downstream_s is not None:  # semi-supervised strategies train on more than the labelled budget
            downstream_s *= strategies.strategy_of(c, self.registry).cost(c)
        return CellEstimate(pretrain_s, downstream_s)

    def estimates(self, cells: Sequence[Cell], cached: Iterable[str] = ()) -> dict[str, float | None]:
        """Cell id -> seconds, the shared pretraining charged to the first cell that needs it.

        Pretrainings whose keys are in *cached* (see :func:`cached_pretrainings`) cost nothing.
        """
        out: dict[str, float | None] = {}
        charged: set[str] = set(cached)
        for cell in cells:
            estimate = self.estimate(cell)
            seconds = estimate.downstream_s
            key = cell.pretrain_key
            if key is not None and key not in charged:
                charged.add(key)
                seconds = None if seconds is None or estimate.pretrain_s is None else seconds + estimate.pretrain_s
            out[cell.cell_id] = seconds
        return out


def cached_pretrainings(cells: Iterable[Cell], workdir: Path) -> set[str]:
    """Pretraining keys of *cells* already cached under *workdir* (a sweep reuses them)."""
    from sslbench.experiment.phases import is_pretrained

    return {cell.pretrain_key for cell in cells if cell.pretrain_key and is_pretrained(workdir, cell.config)}


def format_seconds(seconds: float | None) -> str:
    """``3725`` -> ``1h 02m``; None -> ``?``."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    return f"{hours // 24}d {hours % 24:02d}h"
