"""A linear probe of frozen features: in minutes, one number per pretraining that should predict transfer.

::

    pose network at initialisation (random, or a cached pretraining transferred by the cell's policy)
        --Backbone.features of the probed groups, sampled at the 14 joints and at background points-->
        (point, feature vector, joint id or background)  on the budget's training images and on validation
        --scikit-learn logistic regression, trained on the budget's points--> balanced accuracy on validation

The network probed is the one fine-tuning starts from: a random pose network of the cell's seed with the
cell's pretraining copied in by its policy (:func:`sslbench.experiment.transfer.transfer`, exactly as the cell does).
The features read are those of the transferred layer groups that compute from the image alone: roles
``first`` and ``middle`` (CPM ``stage1`` and the shared trunk; timm ``stem`` and ``blocks``). Groups of role
``later`` (CPM ``stage2``..) are left out: in the pose network they read the previous stage's maps through
freshly initialised adapters (``stageT.fuse``), so what the pretext network computed there does not reach
the pose network. A policy that transfers nothing (supervised training) is probed on the random ``first``
and ``middle`` groups: the floor.

The labelled images are the cell's: its budget (``splits.train``) to fit, the validation images
(``splits.val``) to score; the test images are never read. Samples are the pose task's evaluation crops
(no augmentation); background points are drawn from ``(seed, image index)`` at least ``min_distance`` of the
input size from every joint, so every number is reproducible.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sslbench.contract.config import RunConfig
from sslbench.contract.errors import ConfigError
from sslbench.contract.interfaces import Geometry, ImageDataset, SampleKey
from sslbench.contract.networks import Backbone
from sslbench.contract.registry import Registry
from sslbench.data.joints import NUM_JOINTS
from sslbench.experiment.phases import (
    PRETEXT_RUN,
    build_backbone,
    is_pretrained,
    open_dataset,
    pretext_cache_dir,
    pretrain,
)
from sslbench.experiment.strategies import pretrains
from sslbench.experiment.transfer import check_adapter_maps, transfer
from sslbench.tasks.pose import PoseTask
from sslbench.training.checkpoint import Checkpoint, load_checkpoint
from sslbench.training.run_files import kept_checkpoint, kept_epochs

#: layer-group roles a probe reads (see the module docstring for why ``later`` is not among them)
PROBED_ROLES = ("first", "middle")
#: the class of background points (joints are 0..13)
BACKGROUND = NUM_JOINTS


@dataclass(frozen=True)
class ProbeSettings:
    """How points are drawn and the linear model is fitted."""

    #: background points per image
    background: int = NUM_JOINTS
    #: a background point lies at least this share of the input size from every joint
    min_distance: float = 0.1
    #: inverse L2 strength of the logistic regression (scikit-learn's ``C``)
    C: float = 1.0
    #: images per forward pass
    batch_size: int = 32

    def validate(self) -> None:
        if isinstance(self.background, bool) or not isinstance(self.background, int) or self.background < 0:
            raise ConfigError(f"--background must be an integer >= 0, got {self.background!r}")
        if not 0.0 <= self.min_distance < 0.5:
            raise ConfigError(f"--min-distance must be in [0, 0.5), got {self.min_distance!r}")
        if not self.C > 0:
            raise ConfigError(f"--C must be > 0, got {self.C!r}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size!r}")


# ------------------------------------------------------------------------ the network


def probed_groups(model: Backbone, policy_name: str, registry: Registry) -> list[str]:
    """The groups a probe of a network transferred by *policy_name* reads: the transferred groups of role
    ``first``/``middle``, or all of them when the policy transfers none of those (a random start)."""
    readable = [group for group in model.layer_groups() if group.role in PROBED_ROLES]
    if not readable:
        raise ConfigError(f"backbone {model.config()['name']} has no layer group of role first or middle to probe")
    chosen = registry.create("policy", policy_name, "--policy").select(readable)
    return [group.name for group in (chosen or readable)]


def initial_network(
    config: RunConfig, workdir: Path, registry: Registry, console: Console, allow_pretrain: bool = False,
    kept: Checkpoint | None = None,
) -> Backbone:  # fmt: skip
    """The pose network the cell's fine-tuning starts from, in eval mode.

    A cached pretraining is required unless *allow_pretrain* (then a missing one is trained, with
    exactly the config's pretraining settings, and cached like a cell would). With *kept* (a
    :func:`kept_pretraining`) those weights of the pretraining are transferred instead of its final ones."""
    torch.manual_seed(config.seed)
    model = build_backbone(registry, config, PoseTask().num_outputs)
    if pretrains(config, registry):
        pretext = registry.create("pretext", config.pretext, "--pretext", **config.pretext_options)
        policy = registry.create("policy", config.policy, "--policy")
        check_adapter_maps(policy, config.pretext, pretext.num_outputs, model.num_outputs)
        if kept is not None:
            state = kept.state
        elif allow_pretrain or is_pretrained(workdir, config):
            state = pretrain(config, pretext, workdir, registry, console)["state"]
        else:
            raise ConfigError(
                f"no cached pretraining of {config.pretext} under {pretext_cache_dir(workdir, config)}; "
                "--pretrain trains it (as long as a cell's pretraining)"
            )
        transfer(state, model, policy, freeze=False)
    return model.eval()


def kept_run_dir(config: RunConfig, workdir: Path, registry: Registry) -> Path:
    """The run directory of the config's pretraining, where ``pretrain.keep_every`` keeps its weights by epoch."""
    if not pretrains(config, registry):
        raise ConfigError(f"--kept-epochs: --pretext {config.pretext} with --policy {config.policy} "
                          "transfers no pretraining")  # fmt: skip
    return pretext_cache_dir(workdir, config) / PRETEXT_RUN


def kept_pretraining(config: RunConfig, workdir: Path, registry: Registry, epoch: int) -> Checkpoint:
    """The weights the config's pretraining kept after *epoch*, with their epoch's ``metrics`` (held out)
    and ``images`` (pretraining samples so far) in the meta."""
    run_dir = kept_run_dir(config, workdir, registry)
    kept = kept_epochs(run_dir)
    if epoch not in kept:
        raise ConfigError(
            f"--kept-epochs: the pretraining in {run_dir} kept no weights after epoch {epoch} "
            f"(kept: {', '.join(map(str, kept)) or 'none; pretrain.keep_every keeps them'})"
        )
    return load_checkpoint(kept_checkpoint(run_dir, epoch))


# ------------------------------------------------------------------------- the points


def background_points(joints_xy: np.ndarray, size: int, count: int, min_distance: float,
                      rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """(count, 2) input pixels at least ``min_distance * size`` from every finite joint (uniform, rejection)."""
    joints_xy = joints_xy[np.isfinite(joints_xy).all(axis=1)]
    radius = min_distance * size
    found: list[np.ndarray] = []
    for _ in range(100):
        candidates = rng.uniform(0, size - 1, size=(4 * count + 4, 2))
        if len(joints_xy):
            distance = np.linalg.norm(candidates[:, None] - joints_xy[None], axis=2).min(axis=1)
            candidates = candidates[distance >= radius]
        found.extend(candidates)
        if len(found) >= count:
            return np.asarray(found[:count])
    raise ConfigError(f"--min-distance {min_distance}: found no background point that far from every joint")


def sample_points(features: list[torch.Tensor], points: torch.Tensor, size: int) -> torch.Tensor:
    """(B, P, sum C) bilinear samples of every (B, C, h, w) map at *points* (B, P, 2) in input pixels.

    A map at stride s puts its pixel u at input pixel ``s*u + (s-1)/2`` (:mod:`sslbench.data.pipeline`), which is
    ``grid_sample``'s ``align_corners=False`` frame of the input: any stride samples the same place."""
    grid = ((points + 0.5) / size * 2.0 - 1.0)[:, :, None, :].float()  # (B, P, 1, 2)
    sampled = [F.grid_sample(f.float(), grid, mode="bilinear", align_corners=False) for f in features]
    return torch.cat(sampled, dim=1)[..., 0].transpose(1, 2)  # (B, P, C)


@torch.no_grad()
def point_features(
    model: Backbone, groups: Sequence[str], images: ImageDataset, indices: Sequence[int], seed: int,
    settings: ProbeSettings,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Features (N, C) and labels (N,) at the joints inside the crop and at background points of *indices*."""
    pose = PoseTask()
    geometry = Geometry(model.input_size, model.stride)
    size = geometry.input_size
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for start in range(0, len(indices), settings.batch_size):
        chunk = indices[start : start + settings.batch_size]
        samples, points, labels = [], [], []
        for index in chunk:
            key = SampleKey(seed, int(index))
            sample = pose.make_sample(images.image(index), images.joints(index), key, False, geometry)
            xy = sample["input_joints"][:, :2].numpy().astype(np.float64)
            with np.errstate(invalid="ignore"):
                inside = np.isfinite(xy).all(axis=1) & ((xy >= 0) & (xy <= size - 1)).all(axis=1)
            rng = key.rng(per_epoch=False)
            background = background_points(xy, size, settings.background, settings.min_distance, rng)
            points.append(np.concatenate([np.where(inside[:, None], xy, 0.0), background]))
            labels.append(np.concatenate([np.where(inside, np.arange(NUM_JOINTS), -1),
                                          np.full(settings.background, BACKGROUND)]))  # fmt: skip
            samples.append(sample)
        image = torch.stack([s["image"] for s in samples])
        centermap = torch.stack([s["centermap"] for s in samples])
        features = [model.features(image, group, centermap) for group in groups]
        sampled = sample_points(features, torch.from_numpy(np.stack(points)), size).numpy()
        label = np.stack(labels)
        keep = label >= 0
        xs.append(sampled[keep])
        ys.append(label[keep])
    return np.concatenate(xs).astype(np.float64), np.concatenate(ys)


# ---------------------------------------------------------------------------- the fit


def fit_probe(
    train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], C: float = 1.0
) -> dict[str, float]:
    """Standardised features, multinomial logistic regression on the training points; scores on *val*.

    ``probe_acc``: balanced accuracy over the 15 classes (14 joints and background), percent, chance
    100/15; ``joint_acc``: accuracy on the joint points alone (chance about 100/14); ``background_acc``."""
    x_train, y_train = train
    x_val, y_val = val
    if len(np.unique(y_train)) < 2:
        raise ConfigError("the probe's training points hold fewer than 2 classes (no joint inside the crops?)")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    model.fit(x_train, y_train)
    predicted = model.predict(x_val)
    joints = y_val != BACKGROUND
    return {
        "probe_acc": 100.0 * balanced_accuracy_score(y_val, predicted),
        "joint_acc": 100.0 * accuracy_score(y_val[joints], predicted[joints]) if joints.any() else float("nan"),
        "background_acc": 100.0 * accuracy_score(y_val[~joints], predicted[~joints])
        if (~joints).any()
        else float("nan"),
    }


def probe(
    config: RunConfig, workdir: Path, registry: Registry, settings: ProbeSettings = ProbeSettings(),
    console: Console | None = None, allow_pretrain: bool = False, kept_epoch: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Probe the network the cell *config* fine-tunes from (with *kept_epoch*: from that epoch of its
    pretraining, :func:`initial_network`): its score on validation and what went in."""
    console = console or Console(quiet=True)
    settings.validate()
    data = open_dataset(registry, config.data, config.root, config.data_options, "--data")
    splits = data.splits(config.protocol, config.train_size, config.seed)
    kept = None if kept_epoch is None else kept_pretraining(config, Path(workdir), registry, kept_epoch)
    model = initial_network(config, Path(workdir), registry, console, allow_pretrain, kept)
    started = time.perf_counter()  # the probe's own time, without a pretraining it had to train
    groups = probed_groups(model, config.policy, registry)
    train = point_features(model, groups, data, splits.train, config.seed, settings)
    val = point_features(model, groups, data, splits.val, config.seed, settings)
    scores = fit_probe(train, val, settings.C)
    if kept is not None:
        scores.update(pretrain_epoch=kept_epoch, pretrain_samples=kept.meta["images"],
                      pretext_metrics=kept.meta["metrics"])  # fmt: skip
    return {
        **scores,
        "groups": groups,
        "features": int(train[0].shape[1]),
        "train_points": len(train[1]),
        "val_points": len(val[1]),
        "train_images": len(splits.train),
        "val_images": len(splits.val),
        "seconds": time.perf_counter() - started,
    }


def probe_config(record_config: dict[str, Any]) -> RunConfig:
    """The config of a result record, precision ``auto`` read as fp32 (what records from before precision
    was recorded ran at, and what their pretext caches are keyed by)."""
    data = {**record_config}
    for section in ("pretrain", "downstream"):
        if isinstance(data.get(section), dict) and data[section].get("precision") == "auto":
            data[section] = {**data[section], "precision": "fp32"}
    return RunConfig.from_dict(data)


# ------------------------------------------------------------------- rows of a results store


@dataclass(frozen=True)
class ProbeRow:
    """A row of a results table at one budget: its label, fine-tuned mean, and the config a probe runs."""

    label: str
    pck: float
    seeds: int
    config: RunConfig


def result_rows(
    results_dir: Path, train_size: int, metric: str = "pck@0.2", rows: Sequence[str] | None = None,
    include_frozen: bool = False,
) -> list[ProbeRow]:  # fmt: skip
    """The rows of *results_dir* with cells at *train_size*, each with its mean *metric* and the config of
    its lowest-seed cell. By default the rows a probe speaks for: not frozen, and no setting in the label
    other than the profile's (a changed fine-tuning, ``transfer_lr=0.1``, is invisible to a probe)."""
    from sslbench.results.report import build_report
    from sslbench.results.store import iter_records, load_results

    report = build_report(load_results(results_dir), metric)
    done = report.df[report.df["train_size"] == train_size]
    if done.empty:
        sizes = ", ".join(str(s) for s in report.train_sizes)
        raise ConfigError(f"--train-size {train_size}: no finished cell in {results_dir} has it (it has {sizes})")
    labels = sorted(done["row"].unique())
    if rows:
        unknown = [row for row in rows if row not in labels]
        if unknown:
            raise ConfigError(f"--rows: no row {unknown[0]!r} at {train_size} images; rows: {', '.join(labels)}")
        labels = list(rows)
    else:
        frozen = set(done.loc[done["mode"] == "frozen", "row"])
        labels = [row for row in labels if " [" not in row and (include_frozen or row not in frozen)]
    records = {record["cell_id"]: record for _, record in iter_records(results_dir)}
    out = []
    for label in labels:
        cells = done[done["row"] == label].sort_values("seed")
        config = probe_config(records[cells["cell_id"].iloc[0]]["config"])
        out.append(ProbeRow(label, float(cells[metric].mean()), len(cells), config))
    return out


def spearman(probes: Sequence[float], targets: Sequence[float]) -> tuple[float, float]:
    """Spearman's rank correlation of the probe scores with the fine-tuned metric, and its p-value."""
    from scipy.stats import spearmanr

    if len(probes) < 3 or len(set(probes)) < 2 or len(set(targets)) < 2:  # too few, or nothing to rank
        return float("nan"), float("nan")
    result = spearmanr(probes, targets)
    return float(result.statistic), float(result.pvalue)
