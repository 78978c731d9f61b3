"""Profiles: named starting points for a run config (``paper``, ``cpu``, ``demo``, ``smoke``).

A profile overrides :class:`sslbench.contract.config.RunConfig` defaults; every field can still be set
with ``--set section.field=value``. README "Profiles" says what each is sized for.
"""

from __future__ import annotations

from typing import Any

from sslbench.contract.config import RunConfig
from sslbench.contract.errors import ConfigError, did_you_mean
from sslbench.overrides import apply_overrides

#: the CPM entries of ``plugins/cpm.py``: the backbones the profiles size with ``width`` and ``norm``
CPM_BACKBONES = ("cpm", "cpm3", "cpm4", "cpm5", "cpm6")

#: profile name -> overrides of RunConfig defaults (nested dicts for sections). ``backbone_options``
#: apply to every backbone; ``per_backbone`` maps a backbone name to the options the profile gives
#: that backbone only (merged over the common ones), so another backbone never receives options
#: it does not know (a timm backbone has no ``norm``).
PROFILES: dict[str, dict[str, Any]] = {
    # The report / CPM paper: 368 px, full width, 6 stages, SGD at lr 4e-6 on a summed
    # per-image loss, batch 12 (downstream) / 10 (pretext), early stop after 50 epochs.
    "paper": {
        "backbone_options": {"input_size": 368},
        "per_backbone": {name: {"width": 1.0} for name in CPM_BACKBONES},
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
        "backbone_options": {"input_size": 128},
        "per_backbone": {name: {"width": 0.125, "norm": "batch"} for name in CPM_BACKBONES},
        "sigma": 1.0,
        # fp32, not auto: it runs on every machine, while emulated bf16 is about 20x slower on
        # AVX2-only CPUs; every committed cpu-profile cell ran fp32 (README "Profiles")
        "pretrain": {
            "epochs": 5, "batch_size": 16, "optimizer": "adam", "lr": 1e-3, "schedule": "cosine",
            "samples_per_epoch": 3000, "val_samples": 500, "num_workers": 1, "precision": "fp32",
        },
        "downstream": {
            "epochs": 60, "batch_size": 16, "optimizer": "adam", "lr": 1e-3, "schedule": "cosine",
            "warmup_epochs": 1, "patience": 15, "num_workers": 1, "precision": "fp32",
        },
    },
    # A demonstration on the synthetic people, sized so that benchmarks/demo.toml (3 seeds x
    # supervised + jigsaw transfer, with their pretrainings) finishes in about 5 minutes on 2 cores:
    # 64 px, width x0.125 with BatchNorm, 100 labelled images. Its numbers show how the harness
    # compares strategies, not how they compare on real people (that is the cpu profile on LSP).
    "demo": {
        "backbone_options": {"input_size": 64},
        "per_backbone": {name: {"width": 0.125, "norm": "batch"} for name in CPM_BACKBONES},
        "sigma": 1.0,
        "train_size": 100,
        "data_options": {"size": 600},
        "pretrain": {
            "epochs": 3, "batch_size": 16, "optimizer": "adam", "lr": 1e-3, "schedule": "cosine",
            "samples_per_epoch": 800, "val_samples": 100, "num_workers": 0, "precision": "fp32",
        },
        "downstream": {  # validation PCK levels off after about 8 epochs here
            "epochs": 10, "batch_size": 16, "optimizer": "adam", "lr": 1e-3, "schedule": "cosine",
            "warmup_epochs": 1, "patience": 0, "num_workers": 0, "precision": "fp32",
        },
    },
    # Seconds: for tests and trying the command line.
    "smoke": {
        "backbone_options": {"input_size": 64},
        "per_backbone": {name: {"width": 0.125} for name in CPM_BACKBONES},
        "sigma": 1.0,
        "pretext_images": 32,
        "pretrain": {"epochs": 1, "batch_size": 8, "num_workers": 0, "val_samples": 8},
        "downstream": {"epochs": 2, "batch_size": 8, "num_workers": 0, "val_samples": 16},
        "train_size": 16,
    },
}


def profile_config(profile: str, backbone: str | None = None) -> RunConfig:
    """The run config of *profile*, with the backbone options it gives *backbone* (default: its own, cpm6)."""
    if profile not in PROFILES:
        hint = did_you_mean(profile, PROFILES, cutoff=0.6)
        raise ConfigError(f"--profile: unknown profile {profile!r}.{hint} Available: {', '.join(PROFILES)}")
    overrides = dict(PROFILES[profile])
    per_backbone = overrides.pop("per_backbone", {})
    config = apply_overrides(RunConfig(profile=profile), overrides)
    name = backbone or config.backbone
    return apply_overrides(config, {"backbone": name, "backbone_options": per_backbone.get(name, {})})
