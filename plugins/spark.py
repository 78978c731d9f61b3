"""``spark``: masked image modelling for convolutional networks in the manner of SparK (Tian et al., ICLR 2023).

The centre square of an unlabelled image is cut into square patches of ``patch`` x ``patch`` output cells
(at the ``cpu`` profile 16 px: 8 x 8 patches of a 128 px input) and a ``mask_ratio`` share of them is hidden.
As in SparK the hidden patches must not leak through the convolutions: the network's *encoder*, the layer
groups of role ``first`` and ``middle`` (CPM ``stage1`` and the shared trunk; timm ``stem`` and ``blocks``),
sees the image with the hidden patches set to 0, and forward hooks set every activation of every one of its
layers back to 0 on the hidden patches after each layer (SparK's sparse convolutions, computed densely: a
hidden position holds 0 in every feature map, so no convolution, pooling or normalisation passes anything of
its pixels on). What follows, the layer groups of role ``later`` and the task adapters (CPM stages >= 2 with
their 11 x 11 convolutions), is the dense decoder that fills the hidden patches in from the visible ones (a
hidden position enters it as 0, SparK's mask token held fixed: the contract gives a pretext no weights of its
own). Nothing of a hidden pixel reaches any output (``tests/test_spark.py``).

Target: per output cell (``stride`` x ``stride`` input pixels) its pixels average-pooled to ``target_size`` x
``target_size`` (``target_size = stride``: every pixel), the 3 x target_size² values normalised by their own
mean and standard deviation (per-patch normalised pixels, SparK's and MAE's ``norm_pix_loss``; ``norm_target
=false`` keeps the normalised image values). The network outputs 3 x target_size² maps; the loss is the mean
squared error over the hidden cells only, on every output that the decoder computes (CPM: stages 2..T; stage
1 reads the masked encoder alone and cannot see into a hidden patch). Metric (held out): ``masked_mse``, in
units of the normalised target, of the last stage (the monitor; predicting each patch's own mean, all zeros,
scores 1.0 with ``norm_target``), and ``loss``.

Not SparK's: the decoder is the backbone's own later stages rather than a light UNet on the encoder's scales,
and BatchNorm statistics of the encoder include the hidden positions' zeros (SparK normalises over visible
positions only).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sslbench.contract.errors import ConfigError
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.interfaces import Geometry, Metric, SampleKey
from sslbench.contract.networks import Backbone
from sslbench.contract.registry import Entry
from sslbench.data.pipeline import to_tensor
from sslbench.tasks.pretexts import KitPretext, PretextMetric, base_sample, check_geometry, pretext_entry

#: layer-group roles that form the sparse encoder
ENCODER_ROLES = ("first", "middle")


def visible_at(keep: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The (B, 1, m, m) visibility mask at a feature map's (height, width): repeated on finer maps; on coarser
    maps a position is visible only when every cell it covers is (so a coarse position never mixes in a
    hidden one)."""
    if (height, width) == tuple(keep.shape[-2:]):
        return keep
    if height >= keep.shape[-2]:
        return F.interpolate(keep, size=(height, width), mode="nearest")
    return 1.0 - F.adaptive_max_pool2d(1.0 - keep, (height, width))


def encoder_layers(model: Backbone) -> list[nn.Module]:
    """Every leaf module of the encoder groups (convolutions, norms, activations, pools)."""
    layers = []
    for group in model.layer_groups():
        if group.role in ENCODER_ROLES:
            for path in group.modules:
                layers += [m for m in model.get_submodule(path).modules() if not list(m.children())]
    return layers


def masked_forward(
    net: nn.Module, image: torch.Tensor, keep: torch.Tensor, centermap: torch.Tensor | None
) -> list[torch.Tensor]:
    """Run *net* with its encoder sparse: the input and every encoder layer's output are 0 where *keep* is 0."""
    model = net.module if isinstance(net, DistributedDataParallel) else net

    def remask(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            return output * visible_at(keep, *output.shape[-2:]).to(output.dtype)
        return output

    handles = [layer.register_forward_hook(remask) for layer in encoder_layers(model)]
    try:
        return net(image * visible_at(keep, *image.shape[-2:]).to(image.dtype), centermap)
    finally:
        for handle in handles:
            handle.remove()


class SparK(KitPretext):
    """Masked patches reconstructed as per-patch normalised pixels, through a sparse (re-masked) encoder."""

    name = "spark"
    monitor = "masked_mse"
    monitor_mode = "min"

    def __init__(
        self,
        mask_ratio: float = 0.6,
        patch: int = 2,
        target_size: int = 4,
        norm_target: bool = True,
        augment: bool = True,
    ) -> None:
        self.mask_ratio = self.option_float("mask_ratio", mask_ratio, 0.0, 1.0, open_low=True)
        if self.mask_ratio >= 1.0:
            raise ConfigError(
                f"pretext {self.name}: option mask_ratio must be below 1 (something must stay visible), got {mask_ratio!r}"
            )
        self.patch = self.option_int("patch", patch, 1, 64)
        self.target_size = self.option_int("target_size", target_size, 1, 64)
        self.norm_target = self.option_bool("norm_target", norm_target)
        self.augment = self.option_bool("augment", augment)

    @property
    def num_outputs(self) -> int:
        return 3 * self.target_size**2

    # -- samples ------------------------------------------------------------------------
    def hidden_cells(self, map_size: int, rng: np.random.Generator) -> np.ndarray:
        """bool (m, m): True on the output cells of the hidden patches (``mask_ratio`` of them, at least one)."""
        grid = -(-map_size // self.patch)  # patches per side (the last one may be cut)
        count = min(grid * grid - 1, max(1, round(self.mask_ratio * grid * grid)))
        if count < 1:
            raise ConfigError(
                f"pretext {self.name}: option patch {self.patch} leaves one patch on the {map_size}x{map_size} map: nothing to hide"
            )
        hidden = np.zeros(grid * grid, dtype=bool)
        hidden[rng.choice(grid * grid, size=count, replace=False)] = True
        cells = np.repeat(np.repeat(hidden.reshape(grid, grid), self.patch, axis=0), self.patch, axis=1)
        return cells[:map_size, :map_size]

    def target(self, image: torch.Tensor, geometry: Geometry) -> torch.Tensor:
        """(3 q², m, m): each output cell's pixels pooled to q x q, normalised per cell when ``norm_target``."""
        stride, m, q = geometry.stride, geometry.map_size, self.target_size
        if stride % q:
            raise ConfigError(f"pretext {self.name}: option target_size {q} must divide the network's stride {stride}")
        pooled = F.avg_pool2d(image[None], stride // q)[0, :, : m * q, : m * q]  # (3, m q, m q)
        cells = pooled.reshape(3, m, q, m, q).permute(1, 3, 0, 2, 4).reshape(m, m, 3 * q * q)
        if self.norm_target:
            cells = (cells - cells.mean(dim=-1, keepdim=True)) / (
                cells.var(dim=-1, unbiased=False, keepdim=True) + 1e-6
            ).sqrt()
        return cells.permute(2, 0, 1).contiguous()

    def make_sample(
        self, image: np.ndarray, joints: np.ndarray | None, key: SampleKey, train: bool, geometry: Geometry
    ) -> dict[str, Any]:
        """``image`` (whole: :meth:`forward` hides the patches), ``centermap``, ``target``, ``mask`` (1, m, m), 1 = hidden."""
        check_geometry(self.name, geometry)
        rng = key.rng()
        view = to_tensor(self.view(image, geometry.input_size, rng, train))
        hidden = self.hidden_cells(geometry.map_size, rng)
        return {
            **base_sample(view, geometry),
            "target": self.target(view, geometry),
            "mask": torch.from_numpy(hidden.astype(np.float32))[None],
        }

    # -- training -----------------------------------------------------------------------
    def forward(self, net: nn.Module, batch: dict[str, Any]) -> list[torch.Tensor]:
        return masked_forward(net, batch["image"], 1.0 - batch["mask"], batch.get("centermap"))

    def predict(self, net: nn.Module, batch: dict[str, Any]) -> list[torch.Tensor]:
        """Evaluation runs the masked encoder too: the held-out error is that of the task trained."""
        return self.forward(net, batch)

    @staticmethod
    def decoded(outputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The outputs the dense decoder computes: all but the first when there are several."""
        return outputs[1:] if len(outputs) > 1 else outputs

    def loss(self, outputs: list[torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        """Mean squared error over the hidden cells' target values, summed over the decoded outputs."""
        target, hidden = batch["target"].float(), batch["mask"].float()
        count = (hidden.sum() * target.shape[1]).clamp_min(1.0)
        return torch.stack(
            [(hidden * (out.float() - target) ** 2).sum() / count for out in self.decoded(outputs)]
        ).sum()

    def new_metric(self) -> Metric:
        return SparKMetric(self)


class SparKMetric(PretextMetric):
    """Masked reconstruction error of the last stage (normalised target units), and the loss."""

    def score(self, last: torch.Tensor, batch: dict[str, Any], n: int) -> None:
        hidden = batch["mask"].expand_as(last)
        error = (last.float() - batch["target"].float()) ** 2
        self.averages.add("masked_mse", float((error * hidden).sum()), float(hidden.sum()))


@hookimpl
def sslbench_pretexts() -> list[Entry]:
    return [
        pretext_entry(
            SparK,
            "masked image modelling for CNNs (SparK, Tian et al. 2023): hidden patches re-masked after every "
            "encoder layer, per-patch normalised pixels reconstructed by the later stages; "
            "options: mask_ratio, patch, target_size, norm_target, augment",
        )
    ]
