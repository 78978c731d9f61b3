"""Torch datasets and loaders over an :class:`ImageDataset` and a :class:`Task`.

Every random choice of a sample comes from its :class:`SampleKey` (run seed, image
index, epoch), never from worker state, so a sample is the same whichever worker
builds it, in whatever order, and after a resume.
"""

from __future__ import annotations

import os
import random
import signal
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from sslbench.contract.config import TrainSettings
from sslbench.contract.interfaces import Geometry, ImageDataset, SampleKey, Task
from sslbench.data.splits import VAL_SEED

#: mixed into subset and shuffle seeds so they differ from augmentation streams
_SUBSET_WORD = 104729
_SHUFFLE_WORD = 130363


class TaskDataset(Dataset):
    """Samples of *task* built from images *indices* of *images*.

    ``limit`` caps the number of samples: for a training set (``train=True``) a new
    subset of *limit* images is drawn every epoch from the seed and the epoch (large
    unlabelled pools: every epoch sees different images); for an evaluation set a fixed
    subset, independent of the run seed, so every run is scored on the same images.
    Call :meth:`set_epoch` before each epoch: training samples get fresh augmentation
    (``SampleKey.epoch``), evaluation samples always use epoch 0.
    """

    def __init__(
        self,
        images: ImageDataset,
        indices: Sequence[int],
        task: Task,
        geometry: Geometry,
        seed: int,
        train: bool,
        limit: int | None = None,
    ) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {limit}")
        self.images = images
        self.indices = [int(i) for i in indices]
        self.task = task
        self.geometry = geometry
        self.seed = int(seed)
        self.train = train
        self.limit = limit
        self.epoch = 0
        self._active = self._choose()

    def _choose(self) -> list[int]:
        if self.limit is None or self.limit >= len(self.indices):
            return self.indices
        if self.train:
            words = [self.seed, self.epoch, _SUBSET_WORD]
        else:
            words = [VAL_SEED, _SUBSET_WORD]
        rng = np.random.default_rng(np.random.SeedSequence(words))
        chosen = rng.choice(len(self.indices), size=self.limit, replace=False)
        return [self.indices[i] for i in sorted(chosen)]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's augmentation and (for capped training sets) its image subset."""
        self.epoch = int(epoch)
        if self.train:
            self._active = self._choose()

    @property
    def active_indices(self) -> list[int]:
        """Image indices this epoch draws from, in order."""
        return list(self._active)

    def __len__(self) -> int:
        return len(self._active)

    def __getitem__(self, position: int) -> dict[str, Any]:
        index = self._active[position]
        key = SampleKey(self.seed, index, self.epoch if self.train else 0)
        joints = self.images.joints(index) if self.task.needs_labels else None
        # the person box and PCK scale of datasets that have them (ImageDataset.annotation)
        annotation = self.images.annotation(index) if self.task.needs_labels else {}
        sample = self.task.make_sample(self.images.image(index), joints, key, self.train, self.geometry, **annotation)
        sample["index"] = index
        return sample


def _worker_init(worker_id: int) -> None:
    """One torch thread per worker (workers are the parallelism); seed numpy/random from torch.

    Workers ignore SIGTERM: when the whole process group is stopped (``kill -- -PGID``,
    ``pkill -f``, a batch scheduler), the main process unwinds and shuts its workers down;
    a worker killed first would make torch raise "DataLoader worker ... killed" over the
    interrupt and print a traceback. A worker whose main process is gone exits by itself.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def distributed() -> bool:
    """Whether torch.distributed is initialised (then loaders shard and only rank 0 writes)."""
    return dist.is_available() and dist.is_initialized()


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def cap_loader_workers(requested: int, option: str, warn: Any = None) -> int:
    """*requested* data-loader processes, at most one per available core (a warning naming *option* says so)."""
    cores = available_cores()
    if requested <= cores:
        return requested
    if warn is not None:
        warn(f"{option} {requested}: this machine has {cores} core(s) for this process; using {cores} loader process(es)")
    return cores


def make_loader(
    dataset: TaskDataset,
    settings: TrainSettings,
    shuffle: bool,
    seed: int,
    epoch: int = 0,
    shard: bool | None = None,
) -> DataLoader:
    """A DataLoader for one pass (one epoch) over *dataset*.

    The shuffle order depends only on (seed, epoch). Workers are not persistent, so
    :meth:`TaskDataset.set_epoch` called before this takes effect in every worker.
    Under torch.distributed (and unless *shard* is False) a :class:`DistributedSampler`
    gives each rank its shard.
    ``pin_memory`` only when CUDA is present and the device is not the CPU. With
    workers, images of datasets that can ``preload`` (file datasets with a decoded-image
    cache) are decoded in this process first, so the forked workers share them.
    """
    dataset.set_epoch(epoch)
    base_seed = int(np.random.SeedSequence([seed, epoch, _SHUFFLE_WORD]).generate_state(1)[0])
    generator = torch.Generator().manual_seed(base_seed)
    sampler = None
    if distributed() if shard is None else shard:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=base_seed, drop_last=False)
        sampler.set_epoch(epoch)
        shuffle = False
    # a parallel sweep (sslbench.experiment.executor, --workers N) caps loader processes per cell: no oversubscribed cores
    workers = min(settings.num_workers, int(os.environ.get("SSLBENCH_MAX_LOADER_WORKERS", settings.num_workers)))
    workers = min(workers, available_cores())  # more processes than cores only compete for them
    preload = getattr(dataset.images, "preload", None)
    if workers > 0 and callable(preload):
        preload(dataset.active_indices)  # decoded once here; forked workers inherit the cache
    return DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available() and not settings.device.startswith("cpu"),
        drop_last=False,
        persistent_workers=False,
        worker_init_fn=_worker_init if workers > 0 else None,
        generator=generator,
    )
