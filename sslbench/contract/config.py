"""Run configuration and stable config hashes.

A :class:`RunConfig` holds everything that determines one benchmark cell; it is
stored with every checkpoint and result row, so any row can be re-run from it.
Every field can be overridden from the command line with ``--set section.field=value``;
named starting points are in :mod:`sslbench.profiles`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from sslbench.contract.errors import ConfigError, SSLBenchError


@dataclass
class TrainSettings:
    """One training phase (pretext or downstream): optimiser, schedule, stopping."""

    epochs: int = 30
    batch_size: int = 16
    optimizer: str = "adam"  # sgd | adam | adamw
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | constant | step
    warmup_epochs: int = 0
    #: stop when the monitored validation metric has not improved for this many epochs (0: never)
    patience: int = 0
    #: cap on training samples drawn per epoch (None: the whole train split)
    samples_per_epoch: int | None = None
    #: cap on validation samples (None: the whole validation split)
    val_samples: int | None = None
    num_workers: int = 1
    #: auto: bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32
    precision: str = "auto"  # auto | bf16 | fp32
    #: channels_last memory format (measured 1.3-1.65x faster for cpm6 at the cpu profile on AVX2 too)
    channels_last: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    #: TensorBoard event files beside metrics.jsonl (:mod:`sslbench.training.live_curves`); changes no result,
    #: so it is not part of cell ids, pretext cache keys or resume checks (:data:`OUTPUT_ONLY`)
    tensorboard: bool = True
    #: also keep the weights after every N-th epoch and the last one (``run_dir/kept/epoch-NNNN``), to probe
    #: a pretraining along the way (``sslbench probe --kept-epochs``); 0 keeps none. Changes no weight, so it
    #: is :data:`OUTPUT_ONLY` like ``tensorboard``
    keep_every: int = 0

    def validate(self, section: str) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.optimizer in ("sgd", "adam", "adamw"), "optimizer must be sgd, adam or adamw"),
            (self.schedule in ("cosine", "constant", "step"), "schedule must be cosine, constant or step"),
            (self.precision in ("auto", "bf16", "fp32"), "precision must be auto, bf16 or fp32"),
            (self.patience >= 0, "patience must be >= 0"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.keep_every >= 0, "keep_every must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{section}: {message}")


#: RunConfig fields added after results were first recorded, with the value that reproduces
#: the behaviour from before them. :meth:`RunConfig.identity` leaves them out at that value, so
#: the cell ids of earlier records stay valid. A new field goes here, with that value.
LATER_FIELDS: dict[str, Any] = {
    "transfer_lr": 1.0,
    "strategy": None,
    "strategy_options": {},
    "unlabelled_data": None,
    "unlabelled_root": None,
    "unlabelled_data_options": {},
}


#: TrainSettings fields that only choose what a run writes beside its results: never hashed
OUTPUT_ONLY: tuple[str, ...] = ("tensorboard", "keep_every")


def at_later_default(name: str, value: Any) -> bool:
    """Whether *name* is one of :data:`LATER_FIELDS` and *value* its old-behaviour default."""
    return name in LATER_FIELDS and value == LATER_FIELDS[name]


@dataclass
class RunConfig:
    """Everything that determines one run: pretraining, transfer, downstream training, evaluation."""

    profile: str = "cpu"
    seed: int = 0
    # network
    backbone: str = "cpm6"
    backbone_options: dict[str, Any] = field(default_factory=dict)
    # self-supervised phase
    pretext: str = "none"
    pretext_options: dict[str, Any] = field(default_factory=dict)
    pretext_data: str = "synthetic-unlabelled"
    pretext_root: str | None = None
    pretext_data_options: dict[str, Any] = field(default_factory=dict)
    #: use at most this many unlabelled images (None: all)
    pretext_images: int | None = None
    pretrain: TrainSettings = field(default_factory=TrainSettings)
    #: seed of the pretraining (None: the run seed). Fixing it shares one pretraining across
    #: seeds; confidence intervals then cover downstream variation only.
    pretrain_seed: int | None = None
    # transfer
    policy: str = "none"
    freeze: bool = False
    #: learning-rate multiplier of the transferred layers when they are fine-tuned (1: the rate
    #: of the rest of the network; between frozen, 0, and plain fine-tuning)
    transfer_lr: float = 1.0
    # downstream pose estimation
    data: str = "synthetic"
    root: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    protocol: str = "standard"
    train_size: int | None = None
    sigma: float = 1.0  # Gaussian sigma of joint heatmaps, in heatmap pixels
    #: pose loss per stage: "mean" squared error, or "sum" = the reference's per-image sum (x m*m*15)
    loss_scale: str = "mean"
    downstream: TrainSettings = field(default_factory=TrainSettings)
    # how the cell uses unlabelled images (a strategy plugin) and its pose-phase pool
    #: strategy plugin name; None: the one the pretext implies (see :attr:`strategy_name`)
    strategy: str | None = None
    strategy_options: dict[str, Any] = field(default_factory=dict)
    #: unlabelled images used during pose training (semi-supervised strategies)
    unlabelled_data: str | None = None
    unlabelled_root: str | None = None
    #: options of that dataset plugin (e.g. ``{"seed": 1}``: synthetic people other than the labelled ones)
    unlabelled_data_options: dict[str, Any] = field(default_factory=dict)

    @property
    def strategy_name(self) -> str:
        """The strategy plugin that runs this cell. Before strategies were plugins the pretext
        alone decided: ``none`` meant supervised training, any other pretext transfer."""
        if self.strategy is not None:
            return self.strategy
        return "supervised" if self.pretext == "none" else "transfer"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The config as :attr:`cell_id` hashes it: :data:`LATER_FIELDS` at their defaults are left out,
        and so are pretext and strategy options at their plugin's default (:func:`canonical_options`)
        and a strategy spelled out that the pretext implies. The version a dataset declares (:func:`dataset_version`)
        is added: the labelled data's, the pretext data's when a pretext trains, the unlabelled
        pose-phase data's when there is some."""
        data = self.to_dict()
        if data["strategy"] == RunConfig(pretext=self.pretext).strategy_name:
            data["strategy"] = None  # spelled out or implied, the same cell
        data["strategy_options"] = canonical_options("strategy", self.strategy_name, self.strategy_options)
        data = {name: value for name, value in data.items() if not at_later_default(name, value)}
        data["pretext_options"] = canonical_options("pretext", self.pretext, self.pretext_options)
        for section in ("pretrain", "downstream"):
            data[section] = _hashed_settings(data[section])
        if (version := dataset_version(self.data)) is not None:
            data["data_version"] = version
        if (entry := _plugin("strategy", self.strategy_name)) is not None and entry.version is not None:
            data["strategy_version"] = entry.version  # a strategy whose computation changed renames its cells
        if self.pretext != "none" and (version := dataset_version(self.pretext_data)) is not None:
            data["pretext_data_version"] = version
        if self.unlabelled_data is not None and (version := dataset_version(self.unlabelled_data)) is not None:
            data["unlabelled_data_version"] = version
        return data

    @property
    def cell_id(self) -> str:
        """Hash of the full config: the name of the run's directory and result record."""
        return config_hash(self.identity())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        data = copy.deepcopy(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown run config keys: {', '.join(unknown)}")
        for section in ("pretrain", "downstream"):
            if section in data and isinstance(data[section], dict):
                data[section] = _settings_from_dict(data[section], section)
        return cls(**data)

    def pretext_key(self) -> dict[str, Any]:
        """Everything that determines the pretrained weights (the pretext cache key)."""
        key = {
            "backbone": self.backbone,
            "backbone_options": self.backbone_options,
            "pretext": self.pretext,
            "pretext_options": canonical_options("pretext", self.pretext, self.pretext_options),
            "pretext_data": self.pretext_data,
            "pretext_root": self.pretext_root,
            "pretext_data_options": self.pretext_data_options,
            "pretext_images": self.pretext_images,
            "pretrain": _hashed_settings(dataclasses.asdict(self.pretrain)),
            "seed": self.pretraining_seed,
        }
        if (version := dataset_version(self.pretext_data)) is not None:
            key["pretext_data_version"] = version
        return key

    @property
    def pretraining_seed(self) -> int:
        return self.seed if self.pretrain_seed is None else self.pretrain_seed

    def validate(self) -> None:
        self.pretrain.validate("pretrain")
        self.downstream.validate("downstream")
        if self.train_size is not None and self.train_size < 1:
            raise ConfigError(f"--train-size must be >= 1, got {self.train_size}")
        if self.loss_scale not in ("mean", "sum"):
            raise ConfigError(f"loss_scale must be mean or sum, got {self.loss_scale!r}")
        if self.freeze and self.policy == "none":
            raise ConfigError("--freeze needs a transfer policy other than none")
        if not self.transfer_lr > 0:
            raise ConfigError(f"transfer_lr must be > 0, got {self.transfer_lr!r} (freeze layers with POLICY:frozen)")
        if self.transfer_lr != 1.0 and (self.freeze or self.policy == "none"):
            raise ConfigError(
                f"transfer_lr {self.transfer_lr} scales the learning rate of fine-tuned transferred layers, "
                f"and policy {self.policy}{':frozen' if self.freeze else ''} fine-tunes none"
            )


def _hashed_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A phase's settings as cell ids and cache keys hash them: :data:`OUTPUT_ONLY` fields left out,
    precision as :func:`_legacy_precision` spells it."""
    return _legacy_precision({k: v for k, v in settings.items() if k not in OUTPUT_ONLY})


def _legacy_precision(settings: dict[str, Any]) -> dict[str, Any]:
    """*settings* (a phase, as a dict) with precision ``fp32`` spelled ``auto``, as cell ids hash it.

    Before precision was resolved (:func:`sslbench.training.device.resolve_precision`), every recorded cell said ``auto``
    and ran on AVX2-only machines, where auto meant fp32: hashing fp32 as auto keeps their ids, and
    new fp32 cells pair with them, while bf16 cells get ids of their own.
    """
    return {**settings, "precision": "auto"} if settings.get("precision") == "fp32" else settings


def _settings_from_dict(data: dict[str, Any], section: str) -> TrainSettings:
    known = {f.name for f in dataclasses.fields(TrainSettings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{section}: unknown keys {', '.join(unknown)}")
    return TrainSettings(**data)


def _plugin(kind: str, name: str) -> Any:
    """The installed plugin entry *kind* *name*, or None when there is none."""
    from sslbench.contract.registry import default_registry  # late: the registry loads every plugin

    try:
        return default_registry().get(kind, name)
    except SSLBenchError:
        return None


def dataset_version(name: str) -> Any:
    """The ``version`` dataset *name* declares (``RENDER_VERSION`` of ``synthetic``), or None.

    Datasets read from files declare none (their ids and keys stay as they were); one that
    generates its images declares one, so a change of its generator renames its cells and
    pretext cache entries instead of mixing old and new images under one id.
    """
    entry = _plugin("dataset", name)
    return entry.version if entry is not None else None


_NO_DEFAULT = object()


def canonical_options(kind: str, name: str, options: dict[str, Any]) -> dict[str, Any]:
    """*options* of plugin *kind* *name* without those at the plugin's default (:meth:`Entry.defaults`).

    Spelling out a default (``--pretext-opt augment=true``) is the same configuration, so it
    hashes the same: ``{}`` stays ``{}`` and earlier ids stay valid. Options of a plugin that is
    not installed are kept as given.
    """
    if not options:
        return options
    entry = _plugin(kind, name)
    defaults = entry.defaults() if entry is not None else {}

    def at_default(key: str, value: Any) -> bool:
        default = defaults.get(key, _NO_DEFAULT)
        return default is not _NO_DEFAULT and isinstance(value, bool) == isinstance(default, bool) and value == default

    return {key: value for key, value in options.items() if not at_default(key, value)}


def config_hash(data: Any, length: int = 12) -> str:
    """A stable short hash of JSON-serialisable data (key order does not matter)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
