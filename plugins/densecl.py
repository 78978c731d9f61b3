"""``densecl``: dense contrastive learning, locations matched by geometry (after Wang et al., CVPR 2021).

MoCo v2 (``moco``: query encoder, momentum key encoder, a queue of global keys) plus a dense
term: a second projection head applied at every location of the feature grid, and an NT-Xent
loss between each location of view 0 and the location of view 1 that shows the same image
point. DenseCL matches locations by feature similarity; here the views' exact affine map
(``view_affine``, :class:`sslbench.tasks.embedding.TwoViews`) gives the match: the centre of each
view-0 cell is mapped into view 1 and the key map is sampled there (bilinear); cells that fall
outside view 1 are left out. Negatives of the dense term are the other matched locations of
the batch (at most ``dense_points``, drawn at random), not a dense queue. Loss:
``(1 - dense_weight) x global + dense_weight x dense`` (DenseCL's weight 0.5).

From lightly: ``MoCoProjectionHead``, ``DenseCLProjectionHead``, ``NTXentLoss`` (with its
memory bank for the global queue), ``update_momentum``, ``cosine_schedule``. Options: those
of ``moco`` and ``dense_weight``, ``dense_points``. Metric: ``retrieval`` (global query of
view 0 against the keys of view 1) and ``loss``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from lightly.models.modules import DenseCLProjectionHead
from torch import nn

from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.networks import Backbone
from sslbench.contract.registry import Entry
from sslbench.tasks.pretexts import option_float, option_int, pretext_entry
from sslbench_plugins.moco import MoCo


def cell_centres(height: int, width: int, stride: float, device: torch.device) -> torch.Tensor:
    """(h, w, 3) homogeneous input-pixel coordinates of the cell centres of an (h, w) grid at *stride*."""
    ys = torch.arange(height, device=device, dtype=torch.float32) * stride + (stride - 1) / 2
    xs = torch.arange(width, device=device, dtype=torch.float32) * stride + (stride - 1) / 2
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=-1)


def matched_keys(keys: torch.Tensor, affine: torch.Tensor, input_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The key map (B, D, h, w) of view 1 sampled where each view-0 cell centre lands, and whether it lands inside.

    Returns ``(B, D, h, w)`` sampled keys and a ``(B, h, w)`` bool mask.
    """
    height, width = keys.shape[-2:]
    centres = cell_centres(height, width, input_size / width, keys.device)
    landed = torch.einsum("bij,hwj->bhwi", affine.float(), centres)[..., :2]  # view-1 input pixels
    normalised = (2 * landed + 1) / input_size - 1  # grid_sample's convention without corner alignment
    inside = (normalised.abs() < 1).all(dim=-1)
    sampled = F.grid_sample(keys, normalised, mode="bilinear", align_corners=False)
    return sampled, inside


class DenseCL(MoCo):
    """MoCo v2 with a dense term between geometrically matched locations of the two views."""

    name = "densecl"

    def __init__(self, dense_weight: float = 0.5, dense_points: int = 1024, **options: Any) -> None:
        super().__init__(**options)
        self.dense_weight = option_float(self.name, "dense_weight", dense_weight, 0.0, 1.0)
        self.dense_points = option_int(self.name, "dense_points", dense_points, 2, 1 << 20)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "dense_weight": self.dense_weight, "dense_points": self.dense_points}

    def make_parts(self, backbone: Backbone, channels: int) -> nn.Module:
        parts = super().make_parts(backbone, channels)
        dense = DenseCLProjectionHead(channels, self.hidden_dim, self.output_dim)
        parts.update({
            "dense_projection": dense,
            "target_dense_projection": self.momentum_copy(dense),
            "dense_criterion": NTXentLoss(temperature=self.temperature),
        })  # fmt: skip
        return parts

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [*super().momentum_pairs(), (self.parts["dense_projection"], self.parts["target_dense_projection"])]

    @staticmethod
    def per_location(head: nn.Module, grid: torch.Tensor) -> torch.Tensor:
        """*head* applied at every location of *grid* (B, C, h, w) -> (B, D, h, w)."""
        b, c, h, w = grid.shape
        return head(grid.permute(0, 2, 3, 1).reshape(-1, c)).reshape(b, h, w, -1).permute(0, 3, 1, 2)

    def embed(self, net: nn.Module, batch: dict[str, Any]) -> list[torch.Tensor]:
        """[global query, global key, matched dense queries (N, D), their keys (N, D)]."""
        parts = self.parts
        grid = self.grid(net, batch["image"])
        query = parts["projection"](grid.mean(dim=(2, 3))).float()
        dense_query = self.per_location(parts["dense_projection"], grid).float()
        with torch.no_grad():
            target_grid = self.grid(parts["target_backbone"], batch["view1"])
            key = parts["target_projection"](target_grid.mean(dim=(2, 3))).float()
            dense_key = self.per_location(parts["target_dense_projection"], target_grid).float()
            dense_key, inside = matched_keys(dense_key, batch["view_affine"], batch["image"].shape[-1])
        chosen = inside.flatten().nonzero().squeeze(1)
        if chosen.numel() > self.dense_points:
            chosen = chosen[torch.randperm(chosen.numel(), device=chosen.device)[: self.dense_points]]
        flat_query = dense_query.permute(0, 2, 3, 1).reshape(-1, dense_query.shape[1])
        flat_key = dense_key.permute(0, 2, 3, 1).reshape(-1, dense_key.shape[1])
        return [query, key, flat_query[chosen], flat_key[chosen]]

    def loss(self, outputs: list[torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        """``(1 - dense_weight)`` x the MoCo loss + ``dense_weight`` x NT-Xent of the matched locations
        (the dense term is left out of a batch with fewer than 2 matches)."""
        global_loss = super().loss(outputs, batch)
        if outputs[2].shape[0] < 2:
            return global_loss
        dense_loss = self.parts["dense_criterion"](outputs[2], outputs[3])
        return (1 - self.dense_weight) * global_loss + self.dense_weight * dense_loss


@hookimpl
def sslbench_pretexts() -> list[Entry]:
    return [pretext_entry(DenseCL, "DenseCL-style: MoCo v2 plus a dense NT-Xent between locations of the two views "
                                   "matched by their exact affine map (after Wang et al. 2021), lightly's heads and "
                                   "losses; options: dense_weight, dense_points, momentum, temperature, queue, layers, "
                                   "min_scale, cj_strength, hidden_dim, output_dim")]  # fmt: skip
