"""A task's own trainable parts in the one training loop (see :meth:`sslbench.contract.interfaces.Task.build_parts`).

A pretext such as SimCLR or MoCo trains modules of its own beside the backbone (projection
heads, a momentum encoder, a queue). :func:`sslbench.training.loop.fit` uses the helpers here to
build them, optimise them, switch their mode and keep them beside the weights of its
checkpoints, as extra tensors ``extra.parts.*``: every parameter and every buffer,
persistent or not (lightly keeps its memory bank in non-persistent buffers), so a resumed
run continues exactly. Transfer reads a checkpoint's model weights only, so the parts never
reach a pose network.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import torch
from torch import nn

from sslbench.contract.errors import CheckpointError, ConfigError
from sslbench.contract.interfaces import Task
from sslbench.contract.networks import Backbone

#: key prefix of the parts' tensors in a checkpoint's extra tensors
PREFIX = "parts."


def attach(task: Task, model: Backbone, device: torch.device, distributed: bool) -> nn.Module | None:
    """The task's fresh parts for *model* on *device* (None when it has none); refused under DDP."""
    parts = task.build_parts(model)
    if parts is None:
        return None
    if distributed:
        raise ConfigError(
            f"task {task.name}: it trains modules of its own (heads, a momentum encoder), which distributed "
            "training does not support; run it in one process (without torchrun)"
        )
    return parts.to(device)


def parameter_groups(parts: nn.Module | None, lr: float) -> list[dict[str, Any]]:
    """The parts' trainable parameters as one optimiser group at the plain rate (none without parts)."""
    params = [p for p in parts.parameters() if p.requires_grad] if parts is not None else []
    return [{"params": params, "lr": lr}] if params else []


def set_mode(task: Task, training: bool) -> None:
    """Train or eval mode for the task's parts, if it has any."""
    if task.parts is not None:
        task.parts.train(training)


def snapshot(parts: nn.Module | None) -> dict[str, torch.Tensor]:
    """CPU copies of every parameter and buffer of *parts*, under :data:`PREFIX` (empty without parts)."""
    if parts is None:
        return {}
    named = chain(parts.named_parameters(remove_duplicate=False), parts.named_buffers(remove_duplicate=False))
    return {PREFIX + name: tensor.detach().to("cpu", copy=True) for name, tensor in named}


def restore(parts: nn.Module | None, tensors: dict[str, torch.Tensor], where: Any) -> None:
    """Copy a :func:`snapshot` (the ``parts.*`` entries of *tensors*) back into *parts*, exactly.

    Raises :class:`CheckpointError` naming *where* when a tensor is missing, extra or of another shape.
    """
    if parts is None:
        return
    stored = {k[len(PREFIX) :]: v for k, v in tensors.items() if k.startswith(PREFIX)}
    named = dict(chain(parts.named_parameters(remove_duplicate=False), parts.named_buffers(remove_duplicate=False)))
    missing, unexpected = sorted(set(named) - set(stored)), sorted(set(stored) - set(named))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {where}: the task's own parts do not match "
            f"(missing {', '.join(missing[:3]) or 'none'}; unexpected {', '.join(unexpected[:3]) or 'none'})"
        )
    with torch.no_grad():
        for name, tensor in named.items():
            if tensor.shape != stored[name].shape:
                raise CheckpointError(
                    f"checkpoint {where}: part {name} has shape {tuple(stored[name].shape)}, "
                    f"the task's has {tuple(tensor.shape)}"
                )
            tensor.copy_(stored[name])
