"""``inpaint``: hide parts of the image and paint them back with the pose network's maps.

A context-encoder / masked-image-modelling task (Pathak et al. 2016; He et al. 2022)
shaped for a fully convolutional pose network. The output map grid (m x m at the
network's stride) is split into ``grid`` x ``grid`` blocks and a ``mask_ratio`` share
of them (at least one) is hidden: their pixels are set to 0 after normalisation (the
mean colour). The network predicts 3 maps, the *original* normalised image averaged
over each stride x stride cell, so every output pixel is a colour.

Loss: squared error over the hidden cells (all 3 channels), summed over stages. Per
stage it is the mean over the hidden values (``loss_scale="mean"``, like the pose
task's default) or the per-image sum averaged over the batch (``loss_scale="sum"``,
the CPM reference's scaling for SGD at lr 4e-6). Visible cells are weighted by
``unmasked_weight`` (default 0: the task is to infer what is hidden, and copying
visible pixels through teaches little). Metrics: ``masked_mse`` (mean squared error per
hidden value, normalised units; the monitor, lower is better), ``unmasked_mse``,
``masked_psnr`` (dB on the 0-255 scale, hidden cells only) and ``loss``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sslbench.contract.errors import ConfigError
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.interfaces import Geometry, Metric, SampleKey
from sslbench.contract.registry import Entry
from sslbench.data.pipeline import STD, to_tensor
from sslbench.tasks.pretexts import KitPretext, PretextMetric, base_sample, batch_size, check_geometry, pretext_entry

#: per-channel standard deviation (0-255 scale), to turn normalised errors into pixel errors
_STD = torch.from_numpy(STD.copy()).view(1, 3, 1, 1)


class Inpaint(KitPretext):
    """Masked-region reconstruction at the output stride."""

    name = "inpaint"
    monitor = "masked_mse"
    monitor_mode = "min"

    def __init__(
        self,
        mask_ratio: float = 0.3,
        grid: int = 4,
        unmasked_weight: float = 0.0,
        augment: bool = True,
        loss_scale: str = "mean",
    ) -> None:
        self.mask_ratio = self.option_float("mask_ratio", mask_ratio, 0.0, 1.0, open_low=True)
        self.grid = self.option_int("grid", grid, 1, 1000)
        self.unmasked_weight = self.option_float("unmasked_weight", unmasked_weight, 0.0, 1e6)
        self.augment = self.option_bool("augment", augment)
        self.loss_scale = self.option_choice("loss_scale", loss_scale, ("mean", "sum"))

    @property
    def num_outputs(self) -> int:
        return 3

    @property
    def blocks_hidden(self) -> int:
        return max(1, round(self.mask_ratio * self.grid**2))

    # -- samples ------------------------------------------------------------------------
    def cell_mask(self, map_size: int, rng: np.random.Generator) -> np.ndarray:
        """bool (m, m): True on hidden cells, ``blocks_hidden`` of the ``grid x grid`` blocks."""
        if self.grid > map_size:
            raise ConfigError(
                f"pretext {self.name}: option grid {self.grid} is larger than the {map_size}x{map_size} output map"
            )
        bands = np.array_split(np.arange(map_size), self.grid)
        mask = np.zeros((map_size, map_size), dtype=bool)
        for block in rng.choice(self.grid**2, size=self.blocks_hidden, replace=False):
            rows, cols = bands[block // self.grid], bands[block % self.grid]
            mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
        return mask

    def make_sample(
        self, image: np.ndarray, joints: np.ndarray | None, key: SampleKey, train: bool, geometry: Geometry
    ) -> dict[str, Any]:
        """``image`` with hidden blocks zeroed, ``centermap``, ``target`` (3,m,m), ``mask`` (1,m,m)."""
        check_geometry(self.name, geometry)
        size, stride, m = geometry.input_size, geometry.stride, geometry.map_size
        rng = key.rng()
        original = to_tensor(self.view(image, size, rng, train))
        target = F.avg_pool2d(original[None], stride)[0, :, :m, :m]
        cells = self.cell_mask(m, rng)
        to_cell = np.minimum(np.arange(size) // stride, m - 1)
        pixels = torch.from_numpy(cells[np.ix_(to_cell, to_cell)])
        masked = original.masked_fill(pixels, 0.0)
        return {
            **base_sample(masked, geometry),
            "target": target.contiguous(),
            "mask": torch.from_numpy(cells.astype(np.float32))[None],
        }

    # -- training -----------------------------------------------------------------------
    def weights(self, batch: dict[str, Any]) -> torch.Tensor:
        mask = batch["mask"]
        return mask + self.unmasked_weight * (1.0 - mask)

    def loss(self, outputs: list[torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        """Weighted squared error (hidden cells weight 1), summed over stages.

        Per stage: the weighted mean over values (``mean``) or the weighted sum per image
        averaged over the batch (``sum``).
        """
        target, weights = batch["target"].float(), self.weights(batch)
        weights = weights.expand_as(target)
        total = batch_size(batch) if self.loss_scale == "sum" else weights.sum().clamp_min(1e-12)
        losses = [(weights * (out.float() - target) ** 2).sum() / total for out in outputs]
        return torch.stack(losses).sum()

    def new_metric(self) -> Metric:
        return InpaintMetric(self)


class InpaintMetric(PretextMetric):
    """Reconstruction error of the last stage on hidden and visible cells, and the loss."""

    def __init__(self, task: Inpaint) -> None:
        super().__init__(task)
        self.pixel_sq_error = 0.0
        self.hidden_values = 0.0

    def score(self, last: torch.Tensor, batch: dict[str, Any], n: int) -> None:
        error = (last.float() - batch["target"]) ** 2
        hidden = batch["mask"].expand_as(error)
        self.averages.add("masked_mse", float((error * hidden).sum()), float(hidden.sum()))
        self.averages.add("unmasked_mse", float((error * (1 - hidden)).sum()), float((1 - hidden).sum()))
        pixel_error = error * _STD.to(error.device) ** 2
        self.pixel_sq_error += float((pixel_error * hidden).sum())
        self.hidden_values += float(hidden.sum())

    def compute(self) -> dict[str, float]:
        out = super().compute()
        if self.hidden_values:
            mse = self.pixel_sq_error / self.hidden_values
            out["masked_psnr"] = 10.0 * math.log10(255.0**2 / mse) if mse > 0 else float("inf")
        return out


@hookimpl
def sslbench_pretexts() -> list[Entry]:
    return [
        pretext_entry(
            Inpaint,
            "hide blocks of the image and reconstruct them as 3 colour maps at the output stride "
            "(context encoder / masked image modelling); "
            "options: mask_ratio, grid, unmasked_weight, augment, loss_scale",
        )
    ]
