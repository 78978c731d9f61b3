"""``jigsaw-heatmap``: solve a 3x3 jigsaw puzzle with belief maps (the report's sec. 3.3.3).

The input is the centre square of an unlabelled image cut into 3x3 tiles with a gap
between tiles and shuffled by a derangement (see :mod:`sslbench.tasks.jigsaw`). The network
predicts 9 maps, one per shuffled position: map ``i`` should peak at the centre of the
cell that the tile now at position ``i`` came from. On the report's 46 x 46 maps the
cell centres are 8, 24, 39 and the Gaussians have sigma 5; both scale with the map
size. The loss is summed over stages (intermediate supervision); per stage it is the
mean squared error (``loss_scale="mean"``, like the pose task's default, for Adam) or
the CPM reference's per-image sum of squared errors averaged over the batch
(``loss_scale="sum"``: the MSE times 9 m m, for SGD at lr 4e-6 as in the report).

Metric: ``tile_acc`` (the peak of map ``i`` lies nearest the centre of tile ``i``'s true
cell; chance 1/9 = 11.1 %), ``puzzle_acc`` (all 9 right) and ``loss``.

Options: ``permutations`` (``fixed:10`` as in the report, ``fresh`` or ``set:N``),
``tile_crop`` (each tile a random window inside its cell, against edge-continuity
shortcuts; off as in the report), ``sigma`` (map pixels; default 5 x m / 46), ``gap``
(pixels between tiles at 368 px input, scaled with the input size, at least 1 px),
``centres`` (``report``: the report's cell centres, or ``exact``: the tiles' true
centres), ``augment`` (light zoom/shift/flip/colour augmentation when training) and
``loss_scale`` (``mean`` or ``sum``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.interfaces import Geometry, Metric, SampleKey
from sslbench.contract.registry import Entry
from sslbench.data.pipeline import to_tensor
from sslbench.tasks.jigsaw import (
    GRID,
    NUM_TILES,
    REPORT_GAP,
    REPORT_MAP_SIZE,
    REPORT_SIGMA,
    PermutationMode,
    TileLayout,
    add_puzzle_accuracy,
    cell_centres,
    decode_cells,
    make_puzzle,
    puzzle_targets,
    scaled_gap,
)
from sslbench.tasks.pretexts import KitPretext, PretextMetric, base_sample, check_geometry, pretext_entry


class JigsawHeatmap(KitPretext):
    """The report's heatmap jigsaw: 9 belief maps, map ``i`` peaks at the origin cell of tile ``i``."""

    name = "jigsaw-heatmap"
    monitor = "tile_acc"
    monitor_mode = "max"

    def __init__(
        self,
        permutations: str = "fixed:10",
        tile_crop: bool = False,
        sigma: float | None = None,
        gap: int = REPORT_GAP,
        centres: str = "report",
        augment: bool = True,
        loss_scale: str = "mean",
    ) -> None:
        self.permutations = PermutationMode.parse(permutations)
        if self.permutations.kind == "set":
            self.permutations.permutation_set()  # build it now, before data-loader workers fork
        self.tile_crop = self.option_bool("tile_crop", tile_crop)
        self.sigma = None if sigma is None else self.option_float("sigma", sigma, 0.0, 1000.0, open_low=True)
        self.gap = self.option_int("gap", gap, 0, 100)
        self.centres = self.option_choice("centres", centres, ("report", "exact"))
        self.augment = self.option_bool("augment", augment)
        self.loss_scale = self.option_choice("loss_scale", loss_scale, ("mean", "sum"))

    @property
    def num_outputs(self) -> int:
        return NUM_TILES

    def config(self) -> dict[str, Any]:
        return {**super().config(), "permutations": self.permutations.text}

    # -- samples ------------------------------------------------------------------------
    def map_sigma(self, map_size: int) -> float:
        """Gaussian sigma in map pixels: the option, or the report's 5 at 46 scaled to *map_size*."""
        return self.sigma if self.sigma is not None else REPORT_SIGMA * map_size / REPORT_MAP_SIZE

    def layout(self, geometry: Geometry) -> TileLayout:
        return TileLayout(geometry.input_size, scaled_gap(geometry.input_size, self.gap))

    def make_sample(
        self, image: np.ndarray, joints: np.ndarray | None, key: SampleKey, train: bool, geometry: Geometry
    ) -> dict[str, Any]:
        """``image`` (3,S,S) puzzle, ``centermap``, ``target`` (9,m,m), ``perm`` (9,), ``cell_centres`` (3,)."""
        check_geometry(self.name, geometry, minimum_map=GRID)
        layout = self.layout(geometry)
        m = geometry.map_size
        centres = cell_centres(m, self.centres, layout, geometry.stride)  # type: ignore[arg-type]
        rng = key.rng()
        perm, _ = self.permutations.draw(key, rng)
        view = self.view(image, layout.source_size(self.tile_crop), rng, train)
        puzzle = make_puzzle(to_tensor(view), perm, layout, rng if self.tile_crop else None)
        target = puzzle_targets(perm, centres, m, self.map_sigma(m))
        return {
            **base_sample(puzzle, geometry),
            "target": torch.from_numpy(target),
            "perm": torch.from_numpy(np.asarray(perm, dtype=np.int64)),
            "cell_centres": torch.from_numpy(centres.astype(np.float32)),
        }

    # -- training -----------------------------------------------------------------------
    def loss(self, outputs: list[torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        """Per-stage MSE (or per-image sum of squared errors, ``loss_scale="sum"``), summed over stages."""
        target = batch["target"].float()
        scale = target[0].numel() if self.loss_scale == "sum" else 1
        return torch.stack([F.mse_loss(out.float(), target) for out in outputs]).sum() * scale

    def new_metric(self) -> Metric:
        return HeatmapJigsawMetric(self)


class HeatmapJigsawMetric(PretextMetric):
    """Tile and whole-puzzle accuracy of the last stage's peaks (percent), and the loss."""

    def score(self, last: torch.Tensor, batch: dict[str, Any], n: int) -> None:
        add_puzzle_accuracy(self.averages, decode_cells(last, batch["cell_centres"][0]), batch["perm"], n)


@hookimpl
def sslbench_pretexts() -> list[Entry]:
    return [
        pretext_entry(
            JigsawHeatmap,
            "3x3 jigsaw as 9 belief maps peaking at each tile's origin cell (report sec. 3.3.3); "
            "options: permutations, tile_crop, sigma, gap, centres, augment, loss_scale",
        )
    ]
