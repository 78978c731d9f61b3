"""The files of one training run, and resuming from them.

A run directory holds everything needed to resume or inspect a :func:`~sslbench.training.loop.fit`::

    run_dir/metrics.jsonl            one JSON object per epoch (for curves)
    run_dir/last.{safetensors,json}  model + optimiser + schedule + RNG + progress
    run_dir/best.{safetensors,json}  weights of the best validation epoch
    run_dir/kept/epoch-NNNN.{...}    weights after epoch NNNN (``keep_every``: to probe a run along the way)

``last`` is written every epoch and ``best`` after it whenever the monitored value improves,
each atomically, so a kill at any moment leaves a run that resumes exactly. The last
checkpoint carries a key (:func:`fit_key`): a directory of another run is refused rather
than resumed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from sslbench.contract.config import OUTPUT_ONLY, TrainSettings, config_hash
from sslbench.contract.errors import CheckpointError
from sslbench.contract.interfaces import Task
from sslbench.contract.networks import Backbone
from sslbench.data.loaders import TaskDataset
from sslbench.training import parts
from sslbench.training.checkpoint import (
    Checkpoint,
    checkpoint_exists,
    checkpoint_paths,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from sslbench.training.epoch_log import METRICS_FILE, truncate_jsonl

LAST = "last"
BEST = "best"
KEPT = "kept"

#: the best weights of a run and its task's parts at that epoch (:func:`sslbench.training.parts.snapshot`)
Weights = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]


def fit_key(
    model: nn.Module, task: Task, train_set: TaskDataset, val_set: TaskDataset, settings: TrainSettings, seed: int
) -> str:
    """Hash of everything that makes a run directory's checkpoints belong to this call."""
    relevant = {
        k: v for k, v in dataclasses.asdict(settings).items() if k not in ("device", "num_workers", *OUTPUT_ONLY)
    }
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


def finished(run_dir: Path) -> bool:
    """Whether *run_dir* holds a finished :func:`~sslbench.training.loop.fit` (its last checkpoint says so)."""
    sidecar = checkpoint_paths(Path(run_dir) / LAST)[1]
    try:
        return bool(json.loads(sidecar.read_text(encoding="utf-8"))["fit"]["done"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def kept_checkpoint(run_dir: Path, epoch: int) -> Path:
    """The stem of the weights *run_dir* kept after *epoch* (``TrainSettings.keep_every``)."""
    return Path(run_dir) / KEPT / f"epoch-{epoch:04d}"


def kept_epochs(run_dir: Path) -> list[int]:
    """The epochs whose weights *run_dir* kept, complete files only, in order."""
    found = (path.stem.removeprefix("epoch-") for path in (Path(run_dir) / KEPT).glob("epoch-*.json"))
    return sorted(int(e) for e in found if e.isdigit() and checkpoint_exists(kept_checkpoint(run_dir, int(e))))


def weights_copy(model: nn.Module, own_parts: nn.Module | None) -> Weights:
    """A CPU copy of *model*'s state and of the task's parts (the best epoch's, while training goes on)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}, parts.snapshot(own_parts)


class RunCheckpoints:
    """The last and best checkpoints and the metrics log of one run directory.

    *key* is the run's :func:`fit_key`; only the *writer* (rank 0 under torch.distributed)
    changes files, and warnings go to *say*.
    """

    def __init__(self, run_dir: Path, key: str, writer: bool, say: Console | None) -> None:
        self.run_dir = Path(run_dir)
        self.key, self.writer, self.say = key, writer, say
        self.metrics = self.run_dir / METRICS_FILE
        self.last, self.best = self.run_dir / LAST, self.run_dir / BEST
        if writer:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def load_last(self) -> Checkpoint | None:
        """The run's last checkpoint if it exists, belongs to this run and is readable."""
        if not checkpoint_exists(self.last):
            return None
        try:
            checkpoint = load_checkpoint(self.last)
        except CheckpointError as exc:
            if self.say:
                self.say.print(f"[yellow]warning:[/] cannot resume ({exc}); starting over", highlight=False)
            return None
        info = checkpoint.meta.get("fit")
        if not isinstance(info, dict) or "progress" not in info:
            raise CheckpointError(f"checkpoint {checkpoint.path} is not a training state (no 'fit' section)")
        if info.get("key") != self.key:
            raise CheckpointError(
                f"{self.run_dir} holds a run with other settings, task, backbone, seed or data "
                f"(last checkpoint {checkpoint.path}); use another run directory or start over without resuming"
            )
        return checkpoint

    def start_over(self) -> None:
        """Remove the metrics log and both checkpoints (a fresh run in this directory)."""
        if not self.writer:
            return
        self.metrics.unlink(missing_ok=True)
        stems = [self.last, self.best, *(kept_checkpoint(self.run_dir, e) for e in kept_epochs(self.run_dir))]
        for stem in stems:
            for path in checkpoint_paths(stem):
                path.unlink(missing_ok=True)

    def restore_best(self, last: Checkpoint, best_epoch: int, best_metrics: dict[str, float]) -> Weights | None:
        """The best weights of a resumed run, from ``best`` or, when the best epoch is the last saved one, ``last``.

        ``last`` is written before ``best`` each epoch, so when the best epoch is the last
        saved epoch its weights are in ``last`` (and ``best`` is rewritten from them in case
        the kill came between the two writes); an earlier best epoch's file was complete
        before the next epoch's ``last`` was written.
        """
        if best_epoch == 0:
            return None
        if best_epoch == last.meta["fit"]["progress"]["epoch"]:
            weights = dict(last.state), {k: v for k, v in last.extra.items() if k.startswith(parts.PREFIX)}
            if self.writer and self._best_epoch_on_disk() != best_epoch:
                dropped = ("fit", "optimizer", "weights", "versions", "created")
                meta = {k: v for k, v in last.meta.items() if k not in dropped}
                save_checkpoint(self.best, weights[0], {**meta, "epoch": best_epoch, "metrics": best_metrics},
                                extra=weights[1])  # fmt: skip
            return weights
        best = load_checkpoint(self.best)
        if best.meta.get("epoch") != best_epoch:
            raise CheckpointError(
                f"checkpoint {best.path} is from epoch {best.meta.get('epoch')}, "
                f"but the run's best epoch is {best_epoch}"
            )
        return dict(best.state), dict(best.extra)

    def _best_epoch_on_disk(self) -> int | None:
        if checkpoint_exists(self.best):
            with contextlib.suppress(CheckpointError):
                return load_checkpoint(self.best).meta.get("epoch")
        return None

    def restore_training(
        self,
        last: Checkpoint,
        model: nn.Module,
        own_parts: nn.Module | None,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> None:
        """Put the state of *last* back: weights, parts, optimiser, schedule and RNGs; trim the log to its epoch."""
        info = last.meta["fit"]
        load_weights(model, last)
        parts.restore(own_parts, last.extra, last.path)
        if last.optimizer is not None:
            optimizer.load_state_dict(last.optimizer)
        scheduler.load_state_dict(info["scheduler"])
        _set_rng_state(last.extra, info.get("rng", {}))
        if self.writer:
            truncate_jsonl(self.metrics, int(info["progress"]["epoch"]))

    def save_last(
        self,
        model: nn.Module,
        own_parts: nn.Module | None,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        progress: dict[str, Any],
        meta: dict[str, Any],
        result: dict[str, Any] | None,
    ) -> None:
        """The resumable state after an epoch; *result* (the fit's, when it is done) marks the run finished."""
        rng_tensors, rng_meta = _rng_state()
        fit_info = {
            "key": self.key,
            "progress": progress,
            "scheduler": scheduler.state_dict(),
            "rng": rng_meta,
            "done": result is not None,
            "result": result,
        }
        extra = {**rng_tensors, **parts.snapshot(own_parts)}
        save_checkpoint(self.last, model, {**meta, "fit": fit_info}, optimizer=optimizer.state_dict(), extra=extra)

    def save_best(self, model: nn.Module, best_parts: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        save_checkpoint(self.best, model, meta, extra=best_parts)

    def save_kept(self, model: nn.Module, meta: dict[str, Any]) -> None:
        """The weights after ``meta["epoch"]``, kept beside the run. Written before ``last``: a kill between
        the two leaves a file that the resumed run writes again, identically, when it retrains that epoch."""
        save_checkpoint(kept_checkpoint(self.run_dir, meta["epoch"]), model, meta)


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
