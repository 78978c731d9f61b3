"""Run configuration, profiles and stable config hashes.

A :class:`RunConfig` holds everything that determines one benchmark cell; it is
stored with every checkpoint and result row, so any row can be re-run from it.
Profiles are named starting points (``paper``, ``cpu``, ``smoke``); every field can be
overridden from the command line with ``--set section.field=value``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from sslbench.errors import ConfigError


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
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{section}: {message}")


#: RunConfig fields added after results were first recorded, with the value that reproduces
#: the behaviour from before them. :meth:`RunConfig.identity` leaves them out at that value, so
#: the cell ids of earlier records stay valid. A new field goes here, with that value.
LATER_FIELDS: dict[str, Any] = {"transfer_lr": 1.0}


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The config as :attr:`cell_id` hashes it: :data:`LATER_FIELDS` at their defaults are left out."""
        return {name: value for name, value in self.to_dict().items() if not at_later_default(name, value)}

    @property
    def cell_id(self) -> str:
        """Hash of the full config: the name of the run's directory and result record."""
        return config_hash(self.identity())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        data = copy.deepcopy(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown run config keys: {', '.join(unknown)}")
        for section in ("pretrain", "downstream"):
            if section in data and isinstance(data[section], dict):
                data[section] = _settings_from_dict(data[section], section)
        return cls(**data)

    @property
    def strategy(self) -> str:
        """``pretext/policy[:frozen]``: the row label of result tables."""
        if self.pretext == "none":
            return "supervised"
        return f"{self.pretext}/{self.policy}{':frozen' if self.freeze else ''}"

    def pretext_key(self) -> dict[str, Any]:
        """Everything that determines the pretrained weights (the pretext cache key)."""
        return {
            "backbone": self.backbone,
            "backbone_options": self.backbone_options,
            "pretext": self.pretext,
            "pretext_options": self.pretext_options,
            "pretext_data": self.pretext_data,
            "pretext_root": self.pretext_root,
            "pretext_data_options": self.pretext_data_options,
            "pretext_images": self.pretext_images,
            "pretrain": dataclasses.asdict(self.pretrain),
            "seed": self.pretraining_seed,
        }

    @property
    def pretraining_seed(self) -> int:
        return self.seed if self.pretrain_seed is None else self.pretrain_seed

    def validate(self) -> None:
        self.pretrain.validate("pretrain")
        self.downstream.validate("downstream")
        if self.train_size is not None and self.train_size < 1:
            raise ConfigError(f"--train-size must be >= 1, got {self.train_size}")
        if self.pretext == "none" and self.policy != "none":
            raise ConfigError(
                f"--policy {self.policy} needs pretrained weights, but --pretext is none "
                "(use --policy none for supervised training from scratch)"
            )
        if self.pretext != "none" and self.policy == "none":
            raise ConfigError(
                f"--pretext {self.pretext} with --policy none would pretrain and then discard the weights; "
                "choose a policy (all, first, first+middle) or --pretext none"
            )
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


def _settings_from_dict(data: dict[str, Any], section: str) -> TrainSettings:
    known = {f.name for f in dataclasses.fields(TrainSettings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{section}: unknown keys {', '.join(unknown)}")
    return TrainSettings(**data)


def config_hash(data: Any, length: int = 12) -> str:
    """A stable short hash of JSON-serialisable data (key order does not matter)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# ------------------------------------------------------------------------------ profiles

#: profile name -> overrides of RunConfig defaults (nested dicts for sections)
PROFILES: dict[str, dict[str, Any]] = {
    # The report / CPM paper: 368 px, full width, 6 stages, SGD at lr 4e-6 on a summed
    # per-image loss, batch 12 (downstream) / 10 (pretext), early stop after 50 epochs.
    "paper": {
        "backbone_options": {"input_size": 368, "width": 1.0},
        "sigma": 3.0,
        "loss_scale": "sum",
        "pretrain": {
            "epochs": 5, "batch_size": 10, "optimizer": "sgd", "lr": 4e-6, "momentum": 0.9,
            "weight_decay": 5e-4, "schedule": "constant", "patience": 0, "num_workers": 4,
        },
        "downstream": {
            "epochs": 300, "batch_size": 12, "optimizer": "sgd", "lr": 4e-6, "momentum": 0.9,
            "weight_decay": 5e-4, "schedule": "constant", "patience": 50, "num_workers": 4,
        },
    },
    # This 2-core CPU: 128 px, width x0.125, BatchNorm after every hidden convolution (without
    # it the thin, deep CPM's ReLUs die within 20 Adam steps on pretext losses and rotation stays
    # at chance). See README "Profiles" for the sizing and the measurements.
    "cpu": {
        "backbone_options": {"input_size": 128, "width": 0.125, "norm": "batch"},
        "sigma": 1.0,
        "pretrain": {
            "epochs": 5, "batch_size": 16, "optimizer": "adam", "lr": 1e-3, "schedule": "cosine",
            "samples_per_epoch": 3000, "val_samples": 500, "num_workers": 1,
        },
        "downstream": {
            "epochs": 60, "batch_size": 16, "optimizer": "adam", "lr": 1e-3, "schedule": "cosine",
            "warmup_epochs": 1, "patience": 15, "num_workers": 1,
        },
    },
    # A demonstration on the synthetic people, sized so that benchmarks/demo.toml (3 seeds x
    # supervised + jigsaw transfer, with their pretrainings) finishes in about 5 minutes on 2 cores:
    # 64 px, width x0.125 with BatchNorm, 100 labelled images. Its numbers show how the harness
    # compares strategies, not how they compare on real people (that is the cpu profile on LSP).
    "demo": {
        "backbone_options": {"input_size": 64, "width": 0.125, "norm": "batch"},
        "sigma": 1.0,
        "train_size": 100,
        "data_options": {"size": 600},
        "pretrain": {
            "epochs": 3, "batch_size": 16, "optimizer": "adam", "lr": 1e-3, "schedule": "cosine",
            "samples_per_epoch": 800, "val_samples": 100, "num_workers": 0,
        },
        "downstream": {  # validation PCK levels off after about 8 epochs here
            "epochs": 10, "batch_size": 16, "optimizer": "adam", "lr": 1e-3, "schedule": "cosine",
            "warmup_epochs": 1, "patience": 0, "num_workers": 0,
        },
    },
    # Seconds: for tests and trying the command line.
    "smoke": {
        "backbone_options": {"input_size": 64, "width": 0.125},
        "sigma": 1.0,
        "pretext_images": 32,
        "pretrain": {"epochs": 1, "batch_size": 8, "num_workers": 0, "val_samples": 8},
        "downstream": {"epochs": 2, "batch_size": 8, "num_workers": 0, "val_samples": 16},
        "train_size": 16,
    },
}


def profile_config(profile: str) -> RunConfig:
    if profile not in PROFILES:
        import difflib

        close = difflib.get_close_matches(profile, list(PROFILES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"--profile: unknown profile {profile!r}.{hint} Available: {', '.join(PROFILES)}")
    config = RunConfig(profile=profile)
    return apply_overrides(config, PROFILES[profile])


def apply_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """A copy of *config* with nested *overrides* merged in (dict options are merged key by key)."""
    data = config.to_dict()
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return RunConfig.from_dict(data)


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """``"downstream.lr=0.01"`` -> (["downstream", "lr"], 0.01); values are parsed as JSON when possible."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. downstream.lr=0.001")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().split("."), value


def setting_types() -> dict[str, str]:
    """Dotted setting path -> annotation text (``"int | None"``), for type checks of ``--set`` values.

    The sections ``pretrain`` and ``downstream`` are listed by their fields only: a section
    itself is not a value.
    """
    types = {f.name: str(f.type) for f in dataclasses.fields(RunConfig)}
    for section in SECTIONS:
        types.pop(section)
        types.update({f"{section}.{f.name}": str(f.type) for f in dataclasses.fields(TrainSettings)})
    return types


#: the RunConfig fields that are TrainSettings tables
SECTIONS = ("pretrain", "downstream")

_TYPE_NAMES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),),
    "dict[str, Any]": (dict,),
}  # fmt: skip


def _close(name: str, known: Any) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_setting(path: list[str] | tuple[str, ...], value: Any, where: str) -> None:
    """Raise :class:`ConfigError` (prefixed by *where*) when *path* is no setting or *value* has the wrong type.

    The one check of every ``--set`` value, whether from ``sslbench run``, ``bench`` or a sweep spec.
    """
    path = list(path)
    dotted = ".".join(path)
    types = setting_types()
    if len(path) == 1 and path[0] in SECTIONS:
        fields = ", ".join(f.name for f in dataclasses.fields(TrainSettings))
        raise ConfigError(f"{where}: {dotted} is a section, not a value; set one of its fields "
                          f"({dotted}.epochs=3; fields: {fields})")  # fmt: skip
    options = len(path) == 2 and path[0].endswith("_options") and path[0] in types
    if dotted not in types:
        if options:
            return
        raise ConfigError(f"{where}: no such setting {dotted!r}.{_close(dotted, types)}")
    allowed = [_TYPE_NAMES.get(part.strip()) for part in types[dotted].split("|")]
    if not all(allowed):
        return
    kinds = tuple(t for group in allowed for t in group)  # type: ignore[union-attr]
    wrong_bool = isinstance(value, bool) and bool not in kinds
    if wrong_bool or not isinstance(value, kinds):
        raise ConfigError(f"{where}: {dotted} must be {types[dotted]}, got {value!r}")


def set_path(config: RunConfig, path: list[str], value: Any, where: str | None = None) -> RunConfig:
    """A copy of *config* with the field at *path* (e.g. ``["downstream", "lr"]``) set to *value*.

    *value* is type-checked against the field (:func:`check_setting`); *where* names the
    option in errors (default ``--set PATH``).
    """
    check_setting(path, value, where or f"--set {'.'.join(path)}")
    data = config.to_dict()
    node: Any = data
    for i, part in enumerate(path[:-1]):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"--set {'.'.join(path)}: no such setting {'.'.join(path[: i + 1])!r}")
        if node[part] is None:
            node[part] = {}
        node = node[part]
    leaf = path[-1]
    is_options = len(path) == 2 and path[0].endswith("_options")
    if not isinstance(node, dict) or (leaf not in node and not is_options):
        raise ConfigError(f"--set {'.'.join(path)}: no such setting")
    node[leaf] = value
    return RunConfig.from_dict(data)
