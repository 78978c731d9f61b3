"""One benchmark cell, end to end: pretext pretraining (cached), transfer, pose training, test once.

::

    unlabelled pool --fit(pretext)--> pretrained backbone      (cached by pretext config hash)
                                   | policy selects layer groups, copy (and freeze)
    labelled train/val --fit(pose)--> best checkpoint on val --evaluate--> test metrics (once)

The record this returns (and stores as ``result.json`` in the cell's run directory)
holds the full config, so every result row can be re-run from it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from rich.console import Console

from sslbench import distributed, environment
from sslbench.atomic import read_json, write_json
from sslbench.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from sslbench.config import RunConfig, TrainSettings, config_hash
from sslbench.data import TaskDataset
from sslbench.errors import CheckpointError, SSLBenchError
from sslbench.interfaces import Backbone, Geometry, ImageDataset, Pretext, Splits, Task
from sslbench.pose import PoseTask
from sslbench.registry import Registry, default_registry
from sslbench.splits import budget
from sslbench.train import evaluate, fit, resolve_device
from sslbench.transfer import transfer

RECORD_SCHEMA = 1


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


def run_cell(
    config: RunConfig,
    workdir: Path,
    *,
    resume: bool = True,
    console: Console | None = None,
    registry: Registry | None = None,
) -> dict[str, Any]:
    """Run (or resume, or return the finished result of) one cell; returns its result record.

    Under torch.distributed (``torchrun``) every rank calls this: all ranks train
    together, rank 0 alone evaluates on the test set and writes files.
    """
    console = console or Console(quiet=True)
    registry = registry or default_registry()
    config.validate()
    cid = config.cell_id
    run_dir = Path(workdir) / "cells" / cid
    result_path = run_dir / "result.json"
    if resume and result_path.exists():
        try:
            record = read_json(result_path)
            if not isinstance(record, dict) or record.get("cell_id") != cid:
                raise SSLBenchError(f"{result_path}: not the result record of cell {cid}")
        except SSLBenchError as exc:  # truncated or edited: recompute it from the run's checkpoints
            console.print(f"[yellow]warning:[/] {exc}; computing the result again from the run directory "
                          f"(sslbench run --fresh starts the cell over)", highlight=False, soft_wrap=True)  # fmt: skip
            if distributed.is_main():
                result_path.unlink(missing_ok=True)
        else:
            console.print(f"[green]cell {cid} already finished[/]: {result_path}")
            return record
    if not resume:
        if distributed.is_main() and run_dir.exists():
            shutil.rmtree(run_dir)
        distributed.barrier()

    # Resolve every plugin before any work, so bad names fail in a second.
    registry.get("backbone", config.backbone, "--backbone")
    pretext: Pretext = registry.create("pretext", config.pretext, "--pretext", **config.pretext_options)
    policy = registry.create("policy", config.policy, "--policy")
    data = open_dataset(registry, config.data, config.root, config.data_options, "--data")
    splits = data.splits(config.protocol, config.train_size, config.seed)
    if splits.warning:
        console.print(f"[yellow]warning:[/] {splits.warning}")
    if distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", {"cell_id": cid, "config": config.to_dict()})
    started = time.perf_counter()
    # described now, not at the end: the commit is that of the code this run imported, even when the
    # checkout moves on while it trains
    env = environment.describe(resolve_device(config.downstream.device))

    pretrained = pretrain(config, pretext, Path(workdir), registry, console) if pretext.trains else None

    torch.manual_seed(config.seed)
    pose = PoseTask(sigma=config.sigma, loss_scale=config.loss_scale)
    model = build_backbone(registry, config, pose.num_outputs)
    if pretrained is not None:
        report = transfer(pretrained["state"], model, policy, config.freeze, config.transfer_lr)
        console.print(report.table())
    geometry = Geometry(model.input_size, model.stride)
    train_set, val_set = train_and_val(data, splits, pose, geometry, config.seed, config.downstream)
    test_set = TaskDataset(data, splits.test, pose, geometry, seed=config.seed, train=False)
    console.print(
        f"[bold]{config.strategy}[/] on {config.data}: {len(train_set)} train / {len(val_set)} val / "
        f"{len(test_set)} test images, seed {config.seed}, cell {cid}"
    )
    fitted = fit(
        model, pose, train_set, val_set, config.downstream, run_dir / "downstream",
        seed=config.seed, resume=resume, label=f"pose {config.strategy}", console=console,
        meta={"run": config.to_dict(), "cell_id": cid},
    )  # fmt: skip
    downstream_s = fitted.train_seconds  # summed over interrupted and resumed sessions

    eval_start = time.perf_counter()
    # the one look at the test set (on rank 0 only under torch.distributed)
    test_metrics = distributed.on_main(lambda: evaluate(model, pose, test_set, config.downstream))
    eval_s = time.perf_counter() - eval_start

    record = {
        "schema": RECORD_SCHEMA,
        "cell_id": cid,
        "status": "done",
        "error": None,
        "strategy": config.strategy,
        "config": config.to_dict(),
        "seed": config.seed,
        "train_size": len(train_set),
        "metrics": pose_metrics(test_metrics, fitted),
        "pretext_metrics": pretrained["metrics"] if pretrained else {},
        "timing": {
            "pretrain_s": pretrained["seconds"] if pretrained else 0.0,
            "pretrain_cached": bool(pretrained and pretrained["cached"]),
            "pretrain_img_per_s": pretrained["images_per_s"] if pretrained else None,
            "downstream_s": downstream_s,
            "downstream_img_per_s": fitted.images_per_s,
            "eval_s": eval_s,
            "total_s": time.perf_counter() - started,
        },
        "env": env,
        "files": {
            "run_dir": str(run_dir),
            "metrics_jsonl": str(run_dir / "downstream" / "metrics.jsonl"),
            "best_checkpoint": str(run_dir / "downstream" / "best.json"),
        },
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if distributed.is_main():
        write_json(result_path, record)
    return record


def pose_metrics(test: dict[str, float], fitted: Any) -> dict[str, Any]:
    """Test metrics plus what model selection saw, in the record's layout."""
    return {
        "pck@0.2": test["pck@0.2"],
        "pck@0.1": test["pck@0.1"],
        "auc@0.2": test["auc@0.2"],
        "per_joint": {k.split(".", 1)[1]: v for k, v in test.items() if k.startswith("joint.")},
        "per_part": {k.split(".", 1)[1]: v for k, v in test.items() if k.startswith("part.")},
        "test_loss": test["loss"],
        "report_loss": test["report_loss"],
        "val_pck@0.2": fitted.best_metrics.get("pck@0.2"),
        "best_epoch": fitted.best_epoch,
        "converge_epoch": fitted.converge_epoch,
        "epochs_run": fitted.epochs_run,
    }


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
            model, pretext, train_set, val_set, config.pretrain, cache_dir / "run",
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

