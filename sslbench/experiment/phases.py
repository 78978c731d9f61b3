"""The building blocks of a cell's two phases: datasets and networks by name, the train and
validation sets of a phase, and the pretext pretraining with its cache.

::

    unlabelled pool --fit(pretext)--> pretrained backbone      (cached by pretext config hash)

Strategies (:mod:`sslbench.experiment.strategies`) put these together; the runner
(:mod:`sslbench.experiment.runner`) runs a strategy and tests its network once.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from rich.console import Console

from sslbench.contract.config import RunConfig, TrainSettings, config_hash
from sslbench.contract.errors import CheckpointError
from sslbench.contract.interfaces import Geometry, ImageDataset, Pretext, Splits, Task
from sslbench.contract.networks import Backbone
from sslbench.contract.registry import Registry
from sslbench.data.loaders import TaskDataset
from sslbench.data.splits import budget
from sslbench.training import distributed
from sslbench.training.atomic import write_json
from sslbench.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from sslbench.training.loop import fit
from sslbench.training.steps import evaluate


def open_dataset(
    registry: Registry, name: str, root: str | None, options: dict[str, Any], option: str
) -> ImageDataset:
    return registry.create("dataset", name, option, root=Path(root) if root else None, **options)


def build_backbone(registry: Registry, config: RunConfig, num_outputs: int) -> Backbone:
    return registry.create("backbone", config.backbone, "--backbone", num_outputs=num_outputs, **config.backbone_options)


def train_and_val(
    images: ImageDataset, splits: Splits, task: Task, geometry: Geometry, seed: int, settings: TrainSettings
) -> tuple[TaskDataset, TaskDataset]:
    """The train set (capped per epoch by ``samples_per_epoch``) and validation set of one phase."""
    train = TaskDataset(images, splits.train, task, geometry, seed=seed, train=True, limit=settings.samples_per_epoch)
    val = TaskDataset(images, splits.val, task, geometry, seed=seed, train=False, limit=settings.val_samples)
    return train, val


#: the run directory of the pretraining inside its cache directory (its checkpoints, metrics.jsonl, kept epochs)
PRETEXT_RUN = "run"


def pretext_cache_dir(workdir: Path, config: RunConfig) -> Path:
    """Where the pretraining *config* needs is cached: ``WORKDIR/pretext/PRETEXT-KEYHASH``."""
    return workdir / "pretext" / f"{config.pretext}-{config_hash(config.pretext_key())}"


def is_pretrained(workdir: Path, config: RunConfig) -> bool:
    """Whether the pretraining *config* needs is cached (finished) under *workdir*."""
    return config.pretext != "none" and (pretext_cache_dir(workdir, config) / "pretrained.json").exists()


def pretrain(
    config: RunConfig, pretext: Pretext, workdir: Path, registry: Registry, console: Console
) -> dict[str, Any]:
    """Pretrained weights for the config's pretext, from the cache when an identical pretraining exists.

    The cache key hashes everything that determines the weights (backbone, pretext
    and its options, unlabelled data, seed, pretraining settings). A lock keeps two
    processes from training the same pretext at once; a corrupt cached checkpoint
    is reported, removed and retrained. Under torch.distributed rank 0 checks the cache
    and writes it; all ranks pretrain together, or load the cached weights.
    """
    key = config.pretext_key()
    cache_dir = pretext_cache_dir(workdir, config)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / "pretrained"

    def cached() -> Checkpoint | None:
        if is_pretrained(workdir, config):
            try:
                return load_checkpoint(final)
            except CheckpointError as exc:
                console.print(f"[yellow]cached pretext checkpoint is corrupt ({exc}); retraining[/]")
                for path in cache_dir.iterdir():
                    if path.name != ".lock":
                        shutil.rmtree(path) if path.is_dir() else path.unlink()
        return None

    main = distributed.is_main()
    with FileLock(str(cache_dir / ".lock")) if main else contextlib.nullcontext():
        checkpoint = cached() if main else None
        if distributed.broadcast(checkpoint is not None):
            if checkpoint is None:  # another rank: rank 0 has checked the cached file
                checkpoint = load_checkpoint(final)
            meta = checkpoint.meta
            console.print(
                f"[green]reusing pretext pretraining[/] {config.pretext} from {cache_dir} "
                f"(trained in {meta['seconds']:.0f} s)"
            )
            return {"state": checkpoint.state, "metrics": meta["metrics"], "seconds": 0.0,
                    "cached": True, "images_per_s": meta.get("images_per_s")}  # fmt: skip

        if main:
            write_json(cache_dir / "key.json", key)
        pool = open_dataset(registry, config.pretext_data, config.pretext_root, config.pretext_data_options, "--pretext-data")
        splits = pool.splits("standard", None, config.pretraining_seed)
        if config.pretext_images is not None:  # "at most": a smaller pool is used whole
            size = min(config.pretext_images, len(splits.train))
            splits = replace(splits, train=budget(splits.train, size, config.pretraining_seed, "--pretext-images"))
        torch.manual_seed(config.pretraining_seed)
        model = build_backbone(registry, config, pretext.num_outputs)
        geometry = Geometry(model.input_size, model.stride)
        train_set, val_set = train_and_val(pool, splits, pretext, geometry, config.pretraining_seed, config.pretrain)
        console.print(
            f"[bold]pretraining {config.pretext}[/] on {config.pretext_data}: "
            f"{len(splits.train)} images ({len(train_set)} per epoch), {len(val_set)} held out"
        )
        fitted = fit(
            model, pretext, train_set, val_set, config.pretrain, cache_dir / PRETEXT_RUN,
            seed=config.pretraining_seed, resume=True, label=f"pretext {config.pretext}", console=console,
            meta={"pretext_key": key},
        )  # fmt: skip
        seconds = fitted.train_seconds  # summed over interrupted and resumed sessions
        held_out = distributed.on_main(lambda: evaluate(model, pretext, val_set, config.pretrain))
        meta = {"key": key, "backbone": model.config(), "pretext": pretext.config(), "metrics": held_out,
                "seconds": seconds, "images_per_s": fitted.images_per_s, "best_epoch": fitted.best_epoch}  # fmt: skip
        if main:  # every rank holds the same best weights (fit keeps the DDP replicas in step)
            save_checkpoint(final, model.state_dict(), meta)
        console.print(f"pretext {config.pretext} held-out: " + ", ".join(f"{k} {v:.3g}" for k, v in held_out.items()))
        return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "metrics": held_out,
                "seconds": seconds, "cached": False, "images_per_s": fitted.images_per_s}  # fmt: skip

