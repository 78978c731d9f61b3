"""The networks of the contract: a backbone with named layer groups, and the policy that transfers them.

A :class:`Backbone` maps an image (and centre map) to stage outputs and names its layer groups
from input to output; a pretext's heads read :meth:`Backbone.features` of a group, and a
:class:`TransferPolicy` picks the groups a pretrained backbone hands to the pose network
(:mod:`sslbench.experiment.transfer` copies them).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from sslbench.contract.errors import ConfigError

LayerRole = Literal["first", "middle", "later"]


@dataclass(frozen=True)
class LayerGroup:
    """A named, ordered group of a backbone's submodules; task adapters are never in a group.

    ``role`` lets a transfer policy speak about any backbone: ``first`` is the layers
    nearest the image (CPM ``stage1``), ``middle`` the shared feature trunk (CPM
    ``middle``), ``later`` everything after (CPM ``stage2``.. or a timm head).
    """

    name: str
    role: LayerRole
    modules: tuple[str, ...]


class Backbone(nn.Module, ABC):
    """A network mapping an image (and centre map) to a list of stage outputs.

    Every output is ``(B, num_outputs, input_size // stride, input_size // stride)``;
    the last one is the prediction, all of them are supervised.
    """

    def __init__(self, num_outputs: int, input_size: int, stride: int) -> None:
        super().__init__()
        self.num_outputs = num_outputs
        self.input_size = input_size
        self.stride = stride
        self._frozen: set[str] = set()
        self._lr_scales: dict[str, float] = {}

    @abstractmethod
    def forward(self, image: torch.Tensor, centermap: torch.Tensor | None = None) -> list[torch.Tensor]: ...

    @abstractmethod
    def layer_groups(self) -> list[LayerGroup]:
        """Groups ordered from input to output, covering every parameter except the adapters."""

    @abstractmethod
    def adapters(self) -> list[str]:
        """Module paths whose weight shapes depend on ``num_outputs`` (never transferred)."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """``{"name": entry name, **options}``: enough to rebuild this network with the registry."""

    @property
    def map_size(self) -> int:
        return self.input_size // self.stride

    # -- feature maps --------------------------------------------------------------------
    def features(self, image: torch.Tensor, group: str, centermap: torch.Tensor | None = None) -> torch.Tensor:
        """The feature map layer group *group* hands on: the output of its last module, (B, C, h, w).

        What a pretext's own head (a projection for joint embedding, a decoder) or a linear
        probe reads, for any backbone: CPM ``stage1`` (512 channels at stride 8), ``middle``
        (the 128-channel trunk), ``stage2``..; timm ``stem``, ``blocks`` (the deepest
        features), ``head``. The forward pass stops there, so later layers cost nothing and
        get no gradient. A backbone may override this with a direct computation.
        """
        return self.feature_maps(image, [group], centermap)[0]

    def feature_maps(
        self, image: torch.Tensor, groups: list[str], centermap: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """:meth:`features` of several groups from one forward pass, in the order of *groups*.

        The pass stops as soon as every group has run (CPM's ``stage1`` and ``middle`` are
        parallel branches from the image: one pass gives both).
        """
        maps: dict[str, torch.Tensor] = {}
        wanted = list(dict.fromkeys(groups))

        def capture(name: str) -> Any:
            def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
                maps[name] = output
                if len(maps) == len(wanted):
                    raise _FeatureMap(output)

            return hook

        handles = [
            self.get_submodule(self.layer_group(name).modules[-1]).register_forward_hook(capture(name))
            for name in wanted
        ]
        try:
            self(image, centermap)
        except _FeatureMap:
            return [maps[name] for name in groups]
        finally:
            for handle in handles:
                handle.remove()
        missing = ", ".join(name for name in wanted if name not in maps)
        raise RuntimeError(f"backbone {self.config()['name']}: forward never ran layer group(s) {missing}")

    def feature_shape(self, group: str) -> tuple[int, int]:
        """``(channels, stride)`` of :meth:`features` for *group*, from one small forward pass."""
        size = self.input_size
        parameter = next(self.parameters())
        image = torch.zeros(1, 3, size, size, device=parameter.device, dtype=parameter.dtype)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                output = self.features(image, group)
        finally:
            self.train(was_training)
        return output.shape[1], size // output.shape[-1]

    def layer_group(self, name: str) -> LayerGroup:
        """The layer group called *name*; a :class:`~sslbench.contract.errors.ConfigError` naming the others if none is."""
        groups = self.layer_groups()
        for group in groups:
            if group.name == name:
                return group
        raise ConfigError(
            f"backbone {self.config()['name']} has no layer group {name!r}; "
            f"its groups are {', '.join(g.name for g in groups)}"
        )

    # -- freezing ----------------------------------------------------------------------
    def freeze(self, module_paths: list[str]) -> None:
        """Stop gradients into these submodules and keep them in eval mode (no statistics drift)."""
        for path in module_paths:
            module = self.get_submodule(path)
            module.requires_grad_(False)
            module.eval()
            self._frozen.add(path)

    @property
    def frozen(self) -> frozenset[str]:
        return frozenset(self._frozen)

    def scale_lr(self, module_paths: list[str], factor: float) -> None:
        """Train these submodules at *factor* times the learning rate (see :attr:`lr_scales`)."""
        for path in module_paths:
            self.get_submodule(path)  # a wrong path fails here, not in the optimiser
            self._lr_scales[path] = float(factor)

    @property
    def lr_scales(self) -> dict[str, float]:
        """Module path -> learning-rate multiplier; other parameters train at the plain rate."""
        return dict(self._lr_scales)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for path in self._frozen:
            self.get_submodule(path).eval()
        return self


class _FeatureMap(Exception):
    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output


class TransferPolicy(ABC):
    """Which layer groups of a pretrained backbone initialise the downstream one."""

    name: ClassVar[str]
    #: whether the task adapters are copied too (only possible when the pretext had as many output maps as
    #: the task; :func:`sslbench.experiment.transfer.transfer` refuses it otherwise). Copied adapters are always trained.
    includes_adapters: ClassVar[bool] = False

    @abstractmethod
    def select(self, groups: list[LayerGroup]) -> list[LayerGroup]:
        """The groups to transfer (an empty list means: train from random initialisation)."""
