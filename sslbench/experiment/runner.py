"""One benchmark cell, end to end: the strategy initialises and trains the pose network, the test
set is evaluated once.

::

    strategy.initialise: random, or unlabelled pool --fit(pretext)--> pretrained backbone (cached)
                         | policy selects layer groups, copy (and freeze)
    strategy.train:      labelled train/val (and, semi-supervised, the unlabelled pool)
                         --fit(pose)--> best checkpoint on val
    runner:              --evaluate--> test metrics (once)

The record this returns (and stores as ``result.json`` in the cell's run directory)
holds the full config, so every result row can be re-run from it.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from sslbench.contract.config import RunConfig
from sslbench.contract.errors import SSLBenchError
from sslbench.contract.registry import Registry, default_registry
from sslbench.contract.skeleton import LSP, Skeleton
from sslbench.data.loaders import TaskDataset
from sslbench.experiment import environment
from sslbench.experiment.phases import open_dataset
from sslbench.experiment.strategies import Cell, strategy_of
from sslbench.results.records import SCHEMA
from sslbench.tasks.semi import pose_task_for
from sslbench.training import distributed
from sslbench.training.atomic import read_json, write_json
from sslbench.training.device import resolve_device, resolve_precision
from sslbench.training.steps import evaluate


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
    config = resolve_precision(config)  # precision auto -> bf16/fp32 on this machine, before the id is taken
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
    strategy = strategy_of(config, registry)
    registry.create("pretext", config.pretext, "--pretext", **config.pretext_options)
    registry.get("policy", config.policy, "--policy")
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
    env = environment.describe(resolve_device(config.downstream.device), config.downstream.precision)

    pose = pose_task_for(data, sigma=config.sigma, loss_scale=config.loss_scale)
    cell = Cell(config, registry, Path(workdir), run_dir, data, splits, pose, resume=resume, console=console)
    model = strategy.initialise(cell)
    geometry = cell.geometry(model)
    test_set = TaskDataset(data, splits.test, pose, geometry, seed=config.seed, train=False)
    console.print(
        f"[bold]{cell.label}[/] on {config.data}: {len(splits.train)} train / {len(splits.val)} val / "
        f"{len(test_set)} test images, seed {config.seed}, cell {cid}"
    )
    fitted = strategy.train(cell, model)
    downstream_s = fitted.train_seconds  # summed over interrupted and resumed sessions

    eval_start = time.perf_counter()
    # the one look at the test set (on rank 0 only under torch.distributed)
    test_metrics = distributed.on_main(lambda: evaluate(model, pose, test_set, config.downstream))
    eval_s = time.perf_counter() - eval_start

    pretrained = cell.pretrained
    fit_dir = cell.fit_dir or run_dir / "downstream"
    record = {
        "schema": SCHEMA,
        "cell_id": cid,
        "status": "done",
        "error": None,
        "strategy": cell.label,
        "config": config.to_dict(),
        "seed": config.seed,
        "train_size": len(splits.train),  # the budget (the whole pool when None), not a per-epoch cap
        "metrics": pose_metrics(test_metrics, fitted),
        **skeleton_of_record(pose.skeleton),
        "pretext_metrics": pretrained["metrics"] if pretrained else {},
        **({"strategy_metrics": cell.metrics} if cell.metrics else {}),
        "timing": {
            "pretrain_s": pretrained["seconds"] if pretrained else 0.0,
            "pretrain_cached": bool(pretrained and pretrained["cached"]),
            "pretrain_img_per_s": pretrained["images_per_s"] if pretrained else None,
            "downstream_s": downstream_s,
            "downstream_img_per_s": fitted.images_per_s,
            **cell.timings,
            "eval_s": eval_s,
            "total_s": time.perf_counter() - started,
        },
        "env": env,
        "files": {
            "run_dir": str(run_dir),
            "metrics_jsonl": str(fit_dir / "metrics.jsonl"),
            "best_checkpoint": str(fit_dir / "best.json"),
        },
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if distributed.is_main():
        write_json(result_path, record)
    return record


def skeleton_of_record(skeleton: Skeleton) -> dict[str, Any]:
    """A record's ``skeleton`` (name, joint and part order: its JSON sorts ``per_joint`` by name), for
    skeletons other than LSP's; records of LSP cells have none, as before skeletons were data."""
    if skeleton == LSP:
        return {}
    return {"skeleton": {"name": skeleton.name, "joints": list(skeleton.joints), "parts": list(skeleton.part_names)}}


def pose_metrics(test: dict[str, float], fitted: Any) -> dict[str, Any]:
    """Test metrics plus what model selection saw, in the record's layout."""
    return {
        "pck@0.2": test["pck@0.2"],
        "pck@0.1": test["pck@0.1"],
        "auc@0.2": test["auc@0.2"],
        # what a skeleton is also scored by: PCKh@0.5 (MPII), OKS AP/AR (COCO-format data)
        **{k: v for k, v in test.items() if k.startswith(("pckh@", "oks."))},
        "per_joint": {k.split(".", 1)[1]: v for k, v in test.items() if k.startswith("joint.")},
        "per_part": {k.split(".", 1)[1]: v for k, v in test.items() if k.startswith("part.")},
        "test_loss": test["loss"],
        "report_loss": test["report_loss"],
        "val_pck@0.2": fitted.best_metrics.get("pck@0.2"),
        "best_epoch": fitted.best_epoch,
        "converge_epoch": fitted.converge_epoch,
        "epochs_run": fitted.epochs_run,
    }


