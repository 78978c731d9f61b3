"""Convolutional Pose Machine backbone (Wei et al., CVPR 2016).

Layer shapes follow the Caffe LEEDS prototxt and namedBen's ``cpm_model.py``: at 368 px,
full width, 6 stages and 15 outputs the network has 31,219,866 parameters.

Module layout (the names transfer policies and checkpoints see)::

    stage1.features   conv9 3->128, pool, conv9, pool, conv9, pool, conv5 128->32,
                      conv9 32->512, conv1 512->512            (layer group "stage1", role first)
    stage1.out        conv1 512->K                             (adapter)
    middle            conv9 3->128, pool, conv9, pool, conv9, pool
                      shared image trunk of stages >= 2, run once per forward
                                                               (layer group "middle", role middle)
    stageT.features   conv5 128->32                            (layer group "stageT", role later)
    stageT.fuse       conv11 (32 + K + 1)->128                 (adapter: input depends on K)
    stageT.refine     conv11, conv11, conv1 128->128           (layer group "stageT")
    stageT.out        conv1 128->K                             (adapter)

``K`` is ``num_outputs`` and hidden channel counts are multiplied by ``width``. Every
conv keeps the spatial size; every max pool (3x3, stride 2, padding 1) halves it, so an
``S x S`` input (S a multiple of 8) gives ``S/8 x S/8`` maps. ReLU follows every conv
except the stage outputs (``out``). The centre map is average-pooled (9x9, stride 8,
padding 1, padding not counted) to the same ``S/8 x S/8``.

``norm="batch"`` puts BatchNorm between every hidden conv and its ReLU (the published
network, ``norm="none"``, has none). The ``cpu`` profile uses it: at width x0.125 the
plain network's ReLUs die within about 20 Adam steps on pretext losses. The BatchNorm
after ``stageT.fuse`` belongs to ``stageT.refine``: its size does not depend on ``K``.

Initialisation: Kaiming-normal (fan-in, ReLU gain) for every conv followed by a ReLU, so
activations keep their scale through the deep stack when training from scratch with Adam;
the stage outputs (``out``) use normal(0, 0.01) like the reference, so initial belief maps
are near zero. Biases start at zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from sslbench.contract.errors import ConfigError
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.networks import Backbone, LayerGroup
from sslbench.contract.registry import Entry
from sslbench.data.pipeline import centre_map_sigma

#: stride of every CPM output map relative to the input image
STRIDE = 8
#: ``norm`` choices: none (the published CPM) or batch (BatchNorm after every hidden convolution)
NORMS = ("none", "batch")
#: stage counts that get their own ``cpmN`` entry
NAMED_STAGES = (3, 4, 5, 6)


def _conv(in_channels: int, out_channels: int, kernel: int) -> nn.Conv2d:
    """A stride-1 convolution with 'same' padding (odd kernels)."""
    return nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)


def _act(channels: int, norm: str) -> list[nn.Module]:
    """What follows a hidden convolution: ReLU, preceded by BatchNorm when ``norm="batch"``."""
    return ([nn.BatchNorm2d(channels)] if norm == "batch" else []) + [nn.ReLU(inplace=True)]


def _conv_act(in_channels: int, out_channels: int, kernel: int, norm: str) -> list[nn.Module]:
    return [_conv(in_channels, out_channels, kernel), *_act(out_channels, norm)]


def _pool() -> nn.MaxPool2d:
    """3x3 max pool, stride 2, padding 1: exactly halves any even size."""
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


def _image_trunk(channels: int, norm: str) -> list[nn.Module]:
    """conv9 3->C, pool, conv9 C->C, pool, conv9 C->C, pool (stride 8)."""
    return [
        *_conv_act(3, channels, 9, norm), _pool(),
        *_conv_act(channels, channels, 9, norm), _pool(),
        *_conv_act(channels, channels, 9, norm), _pool(),
    ]  # fmt: skip


class FirstStage(nn.Module):
    """Stage 1: image -> belief maps, from the image alone."""

    def __init__(self, num_outputs: int, c128: int, c32: int, c512: int, norm: str) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_image_trunk(c128, norm),
            *_conv_act(c128, c32, 5, norm),
            *_conv_act(c32, c512, 9, norm),
            *_conv_act(c512, c512, 1, norm),
        )  # fmt: skip
        self.out = _conv(c512, num_outputs, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(image))


class LaterStage(nn.Module):
    """Stage t >= 2: refines the previous beliefs from shared image features and the centre map."""

    def __init__(self, num_outputs: int, c128: int, c32: int, norm: str) -> None:
        super().__init__()
        self.features = nn.Sequential(*_conv_act(c128, c32, 5, norm))
        self.fuse = _conv(c32 + num_outputs + 1, c128, 11)
        self.refine = nn.Sequential(
            *_act(c128, norm),  # the fuse adapter's normalisation and ReLU: their shape does not depend on K
            *_conv_act(c128, c128, 11, norm),
            *_conv_act(c128, c128, 11, norm),
            *_conv_act(c128, c128, 1, norm),
        )  # fmt: skip
        self.out = _conv(c128, num_outputs, 1)

    def forward(self, trunk: torch.Tensor, beliefs: torch.Tensor, centermap: torch.Tensor) -> torch.Tensor:
        features = self.features(trunk)
        # autocast promotes torch.cat to the widest input dtype: keep everything in one dtype
        x = torch.cat([features, beliefs.to(features.dtype), centermap.to(features.dtype)], dim=1)
        return self.out(self.refine(self.fuse(x)))


class CPM(Backbone):
    """Convolutional Pose Machine: ``stages`` belief-map outputs at stride 8.

    ``num_outputs`` maps per stage (15 = 14 joints + background for pose, 9 for the
    jigsaw-heatmap pretext). ``width`` multiplies every hidden channel count (128, 32,
    512). ``centermap_sigma`` (input pixels) shapes the default centre map used when
    ``forward`` gets none: a Gaussian at the image centre; None (the default) scales
    CPM's 21 px at 368 px to ``input_size``, the same map every sample carries.
    """

    def __init__(
        self,
        num_outputs: int,
        stages: int = 6,
        width: float = 1.0,
        input_size: int = 368,
        centermap_sigma: float | None = None,
        norm: str = "none",
        *,
        entry_name: str = "cpm",
    ) -> None:
        _check_int("num_outputs", num_outputs, minimum=1)
        _check_int("stages", stages, minimum=1)
        _check_input_size(input_size)
        _check_positive("width", width)
        if centermap_sigma is not None:
            _check_positive("centermap_sigma", centermap_sigma)
        if norm not in NORMS:
            raise ConfigError(f"backbone option norm must be one of {', '.join(NORMS)}, got {norm!r}")
        super().__init__(num_outputs=num_outputs, input_size=input_size, stride=STRIDE)
        self.stages = stages
        self.width = float(width)
        self.centermap_sigma = None if centermap_sigma is None else float(centermap_sigma)
        self.norm = norm
        self.entry_name = entry_name

        c128, c32, c512 = (max(1, round(c * width)) for c in (128, 32, 512))
        self.stage1 = FirstStage(num_outputs, c128, c32, c512, norm)
        if stages >= 2:
            self.middle = nn.Sequential(*_image_trunk(c128, norm))
        for t in range(2, stages + 1):
            self.add_module(f"stage{t}", LaterStage(num_outputs, c128, c32, norm))
        self.centermap_pool = nn.AvgPool2d(kernel_size=9, stride=STRIDE, padding=1, count_include_pad=False)
        self._centermaps: dict[tuple[int, int, str, torch.dtype], torch.Tensor] = {}
        self._init_weights()

    # -- construction helpers -------------------------------------------------------------
    def _init_weights(self) -> None:
        outputs = {id(self.get_submodule(path)) for path in self._output_paths()}
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                if id(module) in outputs:
                    nn.init.normal_(module.weight, std=0.01)
                else:
                    nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def _output_paths(self) -> list[str]:
        return ["stage1.out"] + [f"stage{t}.out" for t in range(2, self.stages + 1)]

    def default_centermap(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(1, 1, H, W) Gaussian at the image centre (cached), as :func:`~sslbench.data.pipeline.centre_map_tensor`."""
        key = (height, width, str(device), dtype)
        if key not in self._centermaps:
            sigma = centre_map_sigma(self.input_size) if self.centermap_sigma is None else self.centermap_sigma
            ys = torch.arange(height, dtype=torch.float32) - (height - 1) / 2
            xs = torch.arange(width, dtype=torch.float32) - (width - 1) / 2
            d2 = ys[:, None] ** 2 + xs[None, :] ** 2
            gauss = torch.exp(-d2 / (2 * sigma**2))
            self._centermaps[key] = gauss[None, None].to(device=device, dtype=dtype)
        return self._centermaps[key]

    # -- forward ----------------------------------------------------------------------------
    def forward(self, image: torch.Tensor, centermap: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``image`` (B, 3, S, S), ``centermap`` (B, 1, S, S) or None -> ``stages`` maps (B, K, S/8, S/8)."""
        beliefs = self.stage1(image)
        outputs = [beliefs]
        if self.stages == 1:
            return outputs
        if centermap is None:
            height, width = image.shape[-2:]
            centermap = self.default_centermap(height, width, image.device, image.dtype)
            centermap = centermap.expand(image.shape[0], -1, -1, -1)
        pooled_centre = self.centermap_pool(centermap)
        trunk = self.middle(image)  # shared by every later stage: computed once
        for t in range(2, self.stages + 1):
            stage: LaterStage = getattr(self, f"stage{t}")
            beliefs = stage(trunk, beliefs, pooled_centre)
            outputs.append(beliefs)
        return outputs

    # -- Backbone contract ------------------------------------------------------------------
    def layer_groups(self) -> list[LayerGroup]:
        """``stage1`` (first), ``middle`` (middle, if stages >= 2), ``stage2``.. (later)."""
        groups = [LayerGroup("stage1", "first", ("stage1.features",))]
        if self.stages >= 2:
            groups.append(LayerGroup("middle", "middle", ("middle",)))
        for t in range(2, self.stages + 1):
            groups.append(LayerGroup(f"stage{t}", "later", (f"stage{t}.features", f"stage{t}.refine")))
        return groups

    def adapters(self) -> list[str]:
        """``stage1.out`` and each later stage's ``fuse`` and ``out``: 11 for 6 stages."""
        paths = ["stage1.out"]
        for t in range(2, self.stages + 1):
            paths += [f"stage{t}.fuse", f"stage{t}.out"]
        return paths

    def config(self) -> dict[str, Any]:
        return {"name": self.entry_name, **{option: getattr(self, option) for option in OPTIONS}}


def _check_int(option: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"backbone option {option} must be an integer >= {minimum}, got {value!r}")


def _check_input_size(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < STRIDE or value % STRIDE:
        raise ConfigError(f"backbone option input_size must be a positive multiple of 8, got {value!r}")


def _check_positive(option: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"backbone option {option} must be a number > 0, got {value!r}")


#: options every CPM entry accepts (besides ``num_outputs``)
OPTIONS = ("stages", "width", "input_size", "centermap_sigma", "norm")


def _factory(entry_name: str, stages: int) -> Callable[..., CPM]:
    """Build a CPM for *entry_name*, naming any option it does not know in a ConfigError."""

    def create(num_outputs: int, **options: Any) -> CPM:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ConfigError(
                f"backbone {entry_name!r}: unknown option(s) {', '.join(unknown)}; accepted: {', '.join(OPTIONS)}"
            )
        return CPM(num_outputs, **{"stages": stages, **options}, entry_name=entry_name)

    return create


@hookimpl
def sslbench_backbones() -> list[Entry]:
    """``cpm`` (6 stages unless ``stages`` is given) and ``cpm3``..``cpm6``.

    Each ``cpmN`` sets the default stage count; an explicit ``stages`` option still
    wins, so profiles that shrink the network (``stages: 2``) work with any CPM entry.
    """
    entries = [
        Entry(
            "cpm",
            "Convolutional Pose Machine (Wei et al. 2016), option stages (default 6)",
            _factory("cpm", stages=6),
        )
    ]
    for n in NAMED_STAGES:
        entries.append(
            Entry(
                f"cpm{n}",
                f"Convolutional Pose Machine, {n} stages (Wei et al. 2016)",
                _factory(f"cpm{n}", stages=n),
            )
        )
    return entries
