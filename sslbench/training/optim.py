"""The optimiser and the learning-rate schedule of a training run.

Schedules (``settings.schedule``), all stepped once per iteration (batch) so short runs get
a smooth curve; ``warmup_epochs`` first ramps the factor linearly from ``1/warmup_steps`` to 1
under every schedule:

- ``constant``: the factor stays 1;
- ``cosine``: the factor falls from 1 to 0 along a half cosine over the steps after warmup;
- ``step``: the factor is 1, then 0.1 for the last third of the epochs (from epoch
  ``round(2/3 x epochs) + 1`` on).

Optimisers: ``sgd`` (momentum and L2 weight decay, as the reference CPM training), ``adam``
(L2 weight decay added to the gradient) and ``adamw`` (decoupled weight decay). Only
parameters with ``requires_grad`` are optimised, so frozen layers never change.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import nn

from sslbench.contract.config import TrainSettings
from sslbench.contract.errors import ConfigError
from sslbench.contract.networks import Backbone
from sslbench.training import parts


def parameter_groups(model: nn.Module, lr: float) -> list[dict[str, Any]]:
    """The trainable parameters as optimiser groups: one at *lr*, one per :attr:`Backbone.lr_scales` factor.

    A parameter takes the factor of the longest module path that contains it. The plain
    group comes first (its rate is the one logged); groups without parameters are left out.
    """
    scales = model.lr_scales if isinstance(model, Backbone) else {}
    paths = sorted(scales, key=len, reverse=True)
    groups: dict[float, list[nn.Parameter]] = {1.0: []}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            path = next((p for p in paths if name.startswith(p + ".")), None)
            groups.setdefault(scales[path] if path is not None else 1.0, []).append(parameter)
    return [{"params": params, "lr": lr * factor} for factor, params in groups.items() if params]


def make_optimizer(params: list[nn.Parameter] | list[dict[str, Any]], settings: TrainSettings) -> torch.optim.Optimizer:
    """SGD (momentum, L2 decay), Adam (L2 decay) or AdamW (decoupled decay) over *params* (or groups)."""
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    raise ConfigError(f"optimizer must be sgd, adam or adamw, got {settings.optimizer!r}")


def lr_factor(step: int, settings: TrainSettings, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at iteration *step* (0-based); see the module doc."""
    steps_per_epoch = max(1, steps_per_epoch)
    total = settings.epochs * steps_per_epoch
    warmup = min(settings.warmup_epochs * steps_per_epoch, total)
    if step < warmup:
        return (step + 1) / warmup
    if settings.schedule == "constant":
        return 1.0
    if settings.schedule == "step":
        decay_epoch = max(1, round(2 * settings.epochs / 3))
        return 0.1 if step >= decay_epoch * steps_per_epoch else 1.0
    if settings.schedule == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ConfigError(f"schedule must be cosine, constant or step, got {settings.schedule!r}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, settings: TrainSettings, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration :class:`LambdaLR` following :func:`lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, settings=settings, steps_per_epoch=steps_per_epoch)
    )


def optimiser_and_schedule(
    model: nn.Module, own_parts: nn.Module | None, settings: TrainSettings, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The optimiser over *model*'s trainable parameters and the task's parts, and its per-iteration schedule."""
    params = parameter_groups(model, settings.lr) + parts.parameter_groups(own_parts, settings.lr)
    if not params:
        raise ConfigError("nothing to train: every parameter of the backbone is frozen")
    optimizer = make_optimizer(params, settings)
    return optimizer, make_scheduler(optimizer, settings, steps_per_epoch)
