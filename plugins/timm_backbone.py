"""Any timm network as a pose backbone: a ``features_only`` trunk plus a deconvolution head.

The head follows SimpleBaseline (Xiao et al., ECCV 2018): the deepest feature map goes
through ConvTranspose2d(4x4, stride 2) + BatchNorm + ReLU layers until it reaches
stride 8, then a 1x1 conv gives ``num_outputs`` maps (the only adapter). The output is a
one-element list of ``(B, num_outputs, S/8, S/8)`` maps; when the trunk's arithmetic does
not land exactly on ``S/8`` (input not a multiple of 32) the map is resized bilinearly.
The centre map is ignored.

Weights are never downloaded (``pretrained=False``); ``init`` loads a local checkpoint
(``.safetensors`` or a torch ``.pth``/``.pt`` state dict) into the trunk.

Layer groups (what transfer policies see): ``stem`` (role first: the trunk modules
matched by the timm model's own ``group_matcher()["stem"]``), ``blocks`` (role middle:
the rest of the trunk), ``head`` (role later: the deconvolutions); adapter ``head.out``.

Initialisation of the head as in SimpleBaseline: deconvolutions and the final 1x1 conv
normal(0, 0.001), BatchNorm weight 1 and bias 0, final bias 0.
"""

from __future__ import annotations

import logging
import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from sslbench.contract.errors import CheckpointError, ConfigError, did_you_mean
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.networks import Backbone, LayerGroup
from sslbench.contract.registry import Entry

log = logging.getLogger(__name__)

STRIDE = 8
#: deconvolution channels at width 1.0 (SimpleBaseline uses 256)
HEAD_CHANNELS = 256
#: entry name -> timm model name
NAMED_MODELS = {
    "timm-resnet18": "resnet18",
    "timm-resnet50": "resnet50",
    "timm-hrnet_w18_small": "hrnet_w18_small",
}


@dataclass
class LoadReport:
    """What a checkpoint load matched: trunk keys loaded, trunk keys left, checkpoint keys unused."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    #: checkpoint keys whose name matched but whose shape did not
    mismatched: list[str] = field(default_factory=list)


class DeconvHead(nn.Module):
    """SimpleBaseline head: ``num_deconvs`` x (deconv 4x4/2 + BN + ReLU), then ``out`` (1x1 conv)."""

    def __init__(self, in_channels: int, channels: int, num_deconvs: int, num_outputs: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(num_deconvs):
            layers += [
                nn.ConvTranspose2d(in_channels, channels, kernel_size=4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
            in_channels = channels
        self.deconvs = nn.Sequential(*layers)
        self.out = nn.Conv2d(in_channels, num_outputs, kernel_size=1)
        for module in self.modules():
            if isinstance(module, (nn.ConvTranspose2d, nn.Conv2d)):
                nn.init.normal_(module.weight, std=0.001)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.deconvs(x))


class TimmPose(Backbone):
    """A timm ``features_only`` trunk with a deconvolution heatmap head, at stride 8.

    ``model`` is any timm model name that supports ``features_only``; ``width``
    multiplies the head's deconvolution channels (256); ``init`` is an optional local
    checkpoint for the trunk.
    """

    def __init__(
        self,
        num_outputs: int,
        model: str = "resnet18",
        input_size: int = 256,
        width: float = 1.0,
        init: str | Path | None = None,
        *,
        entry_name: str = "timm",
    ) -> None:
        _check_int("num_outputs", num_outputs, minimum=1)
        _check_input_size(input_size)
        _check_positive("width", width)
        super().__init__(num_outputs=num_outputs, input_size=input_size, stride=STRIDE)
        self.model_name = model
        self.width = float(width)
        self.init = str(init) if init is not None else None
        self.entry_name = entry_name

        self.trunk = _create_trunk(model)
        info = self.trunk.feature_info
        deepest_channels = info.channels()[-1]
        deepest_reduction = info.reduction()[-1]
        num_deconvs = max(0, round(math.log2(deepest_reduction / STRIDE)))
        channels = max(1, round(HEAD_CHANNELS * width))
        self.head = DeconvHead(deepest_channels, channels, num_deconvs, num_outputs)
        self._stem_names = _stem_children(self.trunk, model)

        self.init_report: LoadReport | None = None
        if init is not None:
            self.init_report = load_trunk_weights(self.trunk, Path(init))

    def forward(self, image: torch.Tensor, centermap: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``image`` (B, 3, S, S) -> ``[maps]`` with maps (B, num_outputs, S/8, S/8); centermap unused."""
        deepest = self.trunk(image)[-1]
        maps = self.head(deepest)
        size = (image.shape[-2] // STRIDE, image.shape[-1] // STRIDE)
        if maps.shape[-2:] != size:
            maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        return [maps]

    def layer_groups(self) -> list[LayerGroup]:
        """``stem`` (first), ``blocks`` (middle), ``head`` (later); empty groups are left out."""
        stem: list[str] = []
        blocks: list[str] = []
        if any(True for _ in self.trunk.parameters(recurse=False)):
            # tensors held by the wrapper itself cannot be split by child: one group for the trunk
            blocks.append("trunk")
        else:
            for name, module in self.trunk.named_children():
                if _has_state(module):
                    (stem if name in self._stem_names else blocks).append(f"trunk.{name}")
        groups = []
        if stem:
            groups.append(LayerGroup("stem", "first", tuple(stem)))
        if blocks:
            groups.append(LayerGroup("blocks", "middle", tuple(blocks)))
        if _has_state(self.head.deconvs):
            groups.append(LayerGroup("head", "later", ("head.deconvs",)))
        return groups

    def adapters(self) -> list[str]:
        """The final 1x1 conv, whose output channels are ``num_outputs``."""
        return ["head.out"]

    def config(self) -> dict[str, Any]:
        """Rebuild options; ``model`` only for the generic ``timm`` entry, ``init`` only when set."""
        cfg: dict[str, Any] = {"name": self.entry_name}
        if self.entry_name not in NAMED_MODELS:
            cfg["model"] = self.model_name
        cfg.update(input_size=self.input_size, width=self.width)
        if self.init is not None:
            cfg["init"] = self.init
        return cfg


# ----------------------------------------------------------------------------- helpers


def _check_int(option: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"backbone option {option} must be an integer >= {minimum}, got {value!r}")


def _check_input_size(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < STRIDE or value % STRIDE:
        raise ConfigError(
            f"backbone option input_size must be a positive multiple of 8 (32 recommended), got {value!r}"
        )


def _check_positive(option: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"backbone option {option} must be a number > 0, got {value!r}")


def _create_trunk(model: str) -> nn.Module:
    """``timm.create_model(model, features_only=True, pretrained=False)`` with clear errors."""
    import timm

    if not isinstance(model, str) or not timm.is_model(model):
        hint = did_you_mean(str(model), timm.list_models(), n=3, cutoff=0.6)
        raise ConfigError(f"backbone option model: unknown timm model {model!r}.{hint} See timm.list_models()")
    try:
        return timm.create_model(model, features_only=True, pretrained=False)
    except Exception as exc:  # timm raises assorted errors for models without a feature extractor
        raise ConfigError(
            f"backbone option model: timm model {model!r} cannot be built with features_only=True "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _stem_children(trunk: nn.Module, model: str) -> set[str]:
    """Names of the trunk's top-level children that form the stem.

    Uses the timm model's own ``group_matcher()["stem"]`` regex (taken from a copy built
    on the meta device, so nothing is allocated); the feature wrappers rename
    ``stages.0`` to ``stages_0``, so both spellings are matched. Falls back to the first
    child holding parameters when the model has no matcher.
    """
    import timm

    pattern: str | None = None
    try:
        with torch.device("meta"):
            full = timm.create_model(model, pretrained=False)
        matcher = full.group_matcher()
        stem = matcher.get("stem") if isinstance(matcher, dict) else None
        pattern = stem if isinstance(stem, str) else None
    except Exception as exc:  # a model without group_matcher or that cannot live on meta
        log.debug("no stem matcher for timm model %s: %s", model, exc)
    names = [name for name, module in trunk.named_children() if _has_state(module)]
    if pattern is not None:
        regex = re.compile(pattern)
        matched = {name for name in names if regex.match(name) or regex.match(name.replace("_", "."))}
        if matched:
            return matched
    return set(names[:1])


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch state dict (optionally under ``state_dict``/``model``)."""
    if not path.is_file():
        raise CheckpointError(f"backbone option init: checkpoint file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if "weights_only" in str(exc) or isinstance(exc, pickle.UnpicklingError):
            raise CheckpointError(
                f"backbone option init: {path} holds pickled Python objects besides tensors, which sslbench never "
                "loads (code could run); save a plain state dict (torch.save(model.state_dict(), ...)) or safetensors"
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""  # torch's messages run to many lines
        raise CheckpointError(
            f"backbone option init: cannot read checkpoint {path} ({type(exc).__name__}: {first})"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"backbone option init: {path} does not hold a state dict of tensors")
    return state


def _candidate_keys(key: str) -> list[str]:
    """Spellings under which a checkpoint key may appear in a timm feature trunk."""
    for prefix in ("module.", "trunk."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    parts = key.split(".")
    # feature wrappers flatten "stages.0.x" into a child named "stages_0"
    return [key] + ["_".join(parts[: i + 1]) + "." + ".".join(parts[i + 1 :]) for i in range(1, len(parts) - 1)]


def load_trunk_weights(trunk: nn.Module, path: Path) -> LoadReport:
    """Copy matching tensors of the checkpoint at *path* into *trunk* (non-strict).

    Keys may come from the full timm model (classifier keys are ignored), from the
    feature trunk itself, or from a whole :class:`TimmPose` (``trunk.`` prefix). Raises
    :class:`CheckpointError` when the file is missing or unreadable, or when not a
    single tensor matches by name and shape.
    """
    state = _read_state_dict(path)
    own = trunk.state_dict()
    report = LoadReport(path=str(path))
    matched: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        target = next((k for k in _candidate_keys(key) if k in own), None)
        if target is None:
            report.unexpected.append(key)
        elif own[target].shape != tensor.shape:
            report.mismatched.append(key)
        else:
            matched[target] = tensor
    if not matched:
        raise CheckpointError(
            f"backbone option init: no tensor of {path} matches the trunk by name and shape "
            f"({len(state)} tensors in the file, {len(report.mismatched)} with a matching name but another shape)"
        )
    trunk.load_state_dict(matched, strict=False)
    report.loaded = sorted(matched)
    report.missing = sorted(set(own) - set(matched))
    log.info(
        "loaded %d/%d trunk tensors from %s (%d unused, %d shape mismatches)",
        len(matched), len(own), path, len(report.unexpected), len(report.mismatched),
    )  # fmt: skip
    if report.missing:
        log.warning("%d trunk tensors not in %s keep their random init: %s", len(report.missing), path,
                    ", ".join(report.missing[:5]) + (" ..." if len(report.missing) > 5 else ""))  # fmt: skip
    return report


#: options every timm entry accepts (besides ``num_outputs``)
OPTIONS = ("model", "input_size", "width", "init")


def _factory(entry_name: str, model: str | None) -> Callable[..., TimmPose]:
    """Build a TimmPose for *entry_name*; a fixed-model entry accepts ``model`` only if it agrees."""

    def create(num_outputs: int, **options: Any) -> TimmPose:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ConfigError(
                f"backbone {entry_name!r}: unknown option(s) {', '.join(unknown)}; accepted: {', '.join(OPTIONS)}"
            )
        if model is not None:
            given = options.setdefault("model", model)
            if given != model:
                raise ConfigError(
                    f"backbone option model={given!r} conflicts with entry {entry_name!r} (which is {model}); "
                    f"use the generic 'timm' entry with model={given!r}"
                )
        return TimmPose(num_outputs, **options, entry_name=entry_name)

    return create


@hookimpl
def sslbench_backbones() -> list[Entry]:
    """``timm`` (any model via ``model=``) and fixed ``timm-resnet18``, ``timm-resnet50``, ``timm-hrnet_w18_small``."""
    entries = [
        Entry(
            "timm",
            "any timm model (option model) + SimpleBaseline deconv head; never downloads",
            _factory("timm", model=None),
        )
    ]
    for entry_name, model in NAMED_MODELS.items():
        entries.append(
            Entry(
                entry_name,
                f"timm {model} + SimpleBaseline deconv head (Xiao et al. 2018)",
                _factory(entry_name, model),
            )
        )
    return entries
