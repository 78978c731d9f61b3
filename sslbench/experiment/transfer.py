"""Copy pretrained layer groups into a fresh backbone, optionally freeze them, and say what happened.

A :class:`~sslbench.contract.networks.TransferPolicy` picks layer groups by role; :func:`transfer`
copies every parameter *and* buffer of those groups' modules (BatchNorm running
statistics included) from the pretext network's state dict into the pose network.
Task adapters (:meth:`Backbone.adapters`, whose shapes depend on the number of outputs)
are not copied: they keep their fresh initialisation, unless the policy ``includes_adapters``
(``all+adapters``; the pretext then had the task's number of output maps, else the cell is
refused before its pretraining, :func:`check_adapter_maps`) and then they are copied and always
trained. With ``freeze`` the copied modules stop receiving gradients and stay in eval mode (:meth:`Backbone.freeze`), so
their weights and normalisation statistics are bit-identical after downstream training.
With ``lr_scale`` the fine-tuned copies train at that multiple of the learning rate
(:meth:`Backbone.scale_lr`; ``RunConfig.transfer_lr``).

Policy syntax on the command line: ``NAME`` (fine-tune), ``NAME:frozen`` or
``NAME:finetune`` (:func:`parse_policy`), e.g. ``--policy first+middle:frozen``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from rich.table import Table

from sslbench.contract.errors import CheckpointError, ConfigError
from sslbench.contract.networks import Backbone, TransferPolicy

FROZEN_SUFFIXES = ("frozen", "freeze")
FINETUNE_SUFFIXES = ("finetune", "finetuned", "fine-tune", "fine-tuned")


def parse_policy(text: str) -> tuple[str, bool]:
    """``"first+middle:frozen"`` -> ``("first+middle", True)``; no suffix means fine-tune."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"--policy must be a policy name such as first+middle or first+middle:frozen, got {text!r}")
    name, _, mode = text.strip().partition(":")
    name, mode = name.strip(), mode.strip().lower()
    if not name:
        raise ConfigError(f"--policy {text!r}: missing the policy name before ':'")
    if mode in FROZEN_SUFFIXES:
        frozen = True
    elif mode in ("", *FINETUNE_SUFFIXES):
        frozen = False
    else:
        raise ConfigError(f"--policy {text!r}: unknown mode {mode!r}; write NAME, NAME:frozen or NAME:finetune")
    if frozen and name == "none":
        raise ConfigError(f"--policy {text!r}: policy none transfers nothing, so there is nothing to freeze")
    return name, frozen


@dataclass(frozen=True)
class GroupTransfer:
    """What happened to one layer group."""

    name: str
    role: str
    modules: tuple[str, ...]
    parameters: int
    transferred: bool
    frozen: bool
    #: state-dict tensors copied (parameters and buffers)
    tensors: int = 0


@dataclass(frozen=True)
class AdapterInfo:
    """A task adapter: always freshly initialised and trained."""

    path: str
    parameters: int
    #: copied from the pretrained weights (a policy that ``includes_adapters``)
    transferred: bool = False


@dataclass(frozen=True)
class TransferReport:
    """Which layers were transferred, frozen or trained, with parameter counts."""

    policy: str
    freeze: bool
    groups: tuple[GroupTransfer, ...]
    adapters: tuple[AdapterInfo, ...]
    #: parameters in neither a group nor an adapter (a backbone that leaves some out)
    other_parameters: int = 0
    #: every state-dict key copied from the pretrained weights
    copied: tuple[str, ...] = field(default=(), repr=False)
    #: learning-rate multiplier of the transferred groups when fine-tuned
    lr_scale: float = 1.0

    @property
    def total_parameters(self) -> int:
        return sum(g.parameters for g in self.groups) + sum(a.parameters for a in self.adapters) + self.other_parameters

    @property
    def transferred_parameters(self) -> int:
        return sum(g.parameters for g in self.groups if g.transferred) + sum(
            a.parameters for a in self.adapters if a.transferred
        )

    @property
    def frozen_parameters(self) -> int:
        return sum(g.parameters for g in self.groups if g.frozen)

    @property
    def trained_parameters(self) -> int:
        return self.total_parameters - self.frozen_parameters

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary for result records (without the list of copied keys)."""
        return {
            "policy": self.policy,
            "freeze": self.freeze,
            "lr_scale": self.lr_scale,
            "groups": [{**asdict(g), "modules": list(g.modules)} for g in self.groups],
            "adapters": [asdict(a) for a in self.adapters],
            "other_parameters": self.other_parameters,
            "transferred_parameters": self.transferred_parameters,
            "frozen_parameters": self.frozen_parameters,
            "trained_parameters": self.trained_parameters,
            "total_parameters": self.total_parameters,
        }

    def table(self) -> Table:
        """A rich table: one row per layer group, one for the task adapters, totals in the caption."""
        label = f"{self.policy}{':frozen' if self.freeze else ''}"
        table = Table(title=f"transfer policy {label}", title_justify="left")
        table.add_column("group")
        table.add_column("role")
        table.add_column("modules", overflow="fold")
        table.add_column("parameters", justify="right")
        table.add_column("init")
        table.add_column("training")
        for group in self.groups:
            init = "pretrained" if group.transferred else "random"
            training = "frozen" if group.frozen else ("fine-tuned" if group.transferred else "trained")
            if group.transferred and not group.frozen and self.lr_scale != 1.0:
                training += f" (lr x{self.lr_scale:g})"
            style = "cyan" if group.frozen else ("green" if group.transferred else None)
            table.add_row(
                group.name, group.role, ", ".join(group.modules), f"{group.parameters:,}", init, training, style=style
            )
        if self.adapters:
            paths = [a.path for a in self.adapters]
            shown = ", ".join(paths) if len(paths) <= 3 else f"{', '.join(paths[:3])}, ... ({len(paths)} layers)"
            count = sum(a.parameters for a in self.adapters)
            init = "pretrained" if any(a.transferred for a in self.adapters) else "random"
            table.add_row("adapters", "adapter", shown, f"{count:,}", init, "trained", style="dim")
        if self.other_parameters:
            table.add_row("(other)", "-", "", f"{self.other_parameters:,}", "random", "trained", style="dim")
        table.caption = (
            f"{self.transferred_parameters:,} of {self.total_parameters:,} parameters transferred, "
            f"{self.frozen_parameters:,} frozen, {self.trained_parameters:,} trained"
        )
        return table


def _parameter_count(model: torch.nn.Module, paths: tuple[str, ...] | list[str], seen: set[int]) -> int:
    count = 0
    for path in paths:
        for parameter in model.get_submodule(path).parameters():
            if id(parameter) not in seen:
                seen.add(id(parameter))
                count += parameter.numel()
    return count


def _under(key: str, paths: list[str]) -> bool:
    return any(key == path or key.startswith(path + ".") for path in paths)


def transfer(
    source_state: dict[str, torch.Tensor], target: Backbone, policy: TransferPolicy, freeze: bool,
    lr_scale: float = 1.0,
) -> TransferReport:
    """Copy the groups *policy* selects from *source_state* into *target*; freeze them if asked,
    else train them at *lr_scale* times the learning rate.

    *source_state* is the pretrained backbone's ``state_dict()``. Every parameter and
    buffer of every selected group's modules is copied, adapters never. A missing key or
    a shape that differs raises :class:`CheckpointError` naming the key (and both shapes).
    """
    groups = target.layer_groups()
    selected = policy.select(groups)
    known = {group.name: group for group in groups}
    for group in selected:
        if known.get(group.name) != group:
            raise ConfigError(
                f"policy {policy.name} selected {group.name!r}, which is not a layer group of the backbone"
            )
    selected_names = {group.name for group in selected}
    adapters = list(target.adapters())

    # check everything before changing anything
    updates: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    for group in selected:
        for path in group.modules:
            for name, tensor in target.get_submodule(path).state_dict().items():
                key = f"{path}.{name}" if path else name
                if _under(key, adapters):
                    continue
                if key not in source_state:
                    raise CheckpointError(
                        f"pretrained weights have no tensor {key!r}, needed by policy {policy.name} "
                        f"(layer group {group.name}); were they saved from another backbone?"
                    )
                source = source_state[key]
                if tuple(source.shape) != tuple(tensor.shape):
                    raise CheckpointError(
                        f"pretrained tensor {key!r} has shape {tuple(source.shape)} but the pose network's "
                        f"has shape {tuple(tensor.shape)}; pretrain and fine-tune with the same backbone options"
                    )
                updates.append((key, tensor, source))
    if policy.includes_adapters:
        updates += _adapter_updates(source_state, target, policy, adapters)
    with torch.no_grad():
        for _, tensor, source in updates:
            tensor.copy_(source)  # state_dict() tensors share storage with the module's

    copied_paths = [path for group in selected for path in group.modules]
    if freeze:
        target.freeze(copied_paths)
    elif lr_scale != 1.0:
        target.scale_lr(copied_paths, lr_scale)

    seen: set[int] = set()  # adapters counted first, so a group never counts an adapter's weights
    adapter_info = [
        AdapterInfo(path, _parameter_count(target, [path], seen), policy.includes_adapters) for path in adapters
    ]
    group_info = []
    for group in groups:
        chosen = group.name in selected_names
        tensors = sum(1 for key, _, _ in updates if _under(key, list(group.modules))) if chosen else 0
        group_info.append(
            GroupTransfer(
                name=group.name,
                role=group.role,
                modules=tuple(group.modules),
                parameters=_parameter_count(target, group.modules, seen),
                transferred=chosen,
                frozen=chosen and freeze,
                tensors=tensors,
            )
        )
    other = sum(p.numel() for p in target.parameters() if id(p) not in seen)
    return TransferReport(
        policy=policy.name,
        freeze=bool(freeze),
        groups=tuple(group_info),
        adapters=tuple(adapter_info),
        other_parameters=other,
        copied=tuple(key for key, _, _ in updates),
        lr_scale=float(lr_scale),
    )


def check_adapter_maps(policy: TransferPolicy, pretext: str, pretext_maps: int, task_maps: int) -> None:
    """Before any pretraining: a policy that copies the task adapters (whose shapes follow the number
    of output maps) needs a pretext with the task's number of maps; else a one-line ConfigError."""
    if policy.includes_adapters and pretext_maps != task_maps:
        raise ConfigError(
            f"policy {policy.name} copies the task adapters too, but pretext {pretext} has {pretext_maps} output "
            f"maps where the pose task has {task_maps}: pretrain with {task_maps} maps or use a policy without "
            "the adapters (all)"
        )


def _adapter_updates(
    source_state: dict[str, torch.Tensor], target: Backbone, policy: TransferPolicy, adapters: list[str]
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(key, target tensor, source tensor) of every adapter tensor, for a policy that copies the adapters;
    a :class:`CheckpointError` when the pretext's outputs do not have the task's shape."""
    updates = []
    for path in adapters:
        for name, tensor in target.get_submodule(path).state_dict().items():
            key = f"{path}.{name}"
            source = source_state.get(key)
            if source is None or tuple(source.shape) != tuple(tensor.shape):
                held = "no such tensor" if source is None else f"shape {tuple(source.shape)}"
                raise CheckpointError(
                    f"policy {policy.name} copies the task adapters too, but the pretrained adapter {key!r} has "
                    f"{held} where the network being initialised has shape {tuple(tensor.shape)}: the pretext had "
                    f"another number of output maps than this task's {target.num_outputs}; pretrain with "
                    f"{target.num_outputs} maps or use a policy without the adapters (all)"
                )
            updates.append((key, tensor, source))
    return updates
