"""``jigsaw-ce``: the jigsaw puzzle as classification with cross-entropy (the report's sec. 3.3.2).

Puzzles are made exactly as for ``jigsaw-heatmap`` (:mod:`sslbench.tasks.jigsaw`); only the
way the network answers differs. Three heads, chosen with the ``head`` option:

``cells`` (default)
    9 output maps, one per *original* position ``c``. Each map is average-pooled to the
    3x3 tile grid, so ``score[r, c]`` is map ``c`` over the cell at *shuffled* position
    ``r``: a per-location 9-way classifier, "which original cell does the tile under me
    come from". Cross-entropy over ``c`` for every row ``r``.
``report``
    the report's literal design: every stage outputs 1 map, pooled to 9x9 and read as the
    9x9 score matrix (row = shuffled position, column = original position), cross-entropy
    per row. Kept so its chance-level result can be reproduced.
``permutation``
    Noroozi & Favaro's form: classify which of a fixed set of N permutations was applied.
    N output maps, global average pooled to N logits, cross-entropy. The set is chosen
    greedily by maximal average Hamming distance from a fixed seed
    (:func:`sslbench.tasks.jigsaw.hamming_set`); ``permutations`` must be ``set:N`` (default
    ``set:100``), and tiles are random windows inside their cells unless
    ``tile_crop=false``.

Metrics: ``tile_acc`` (percent of tiles whose predicted origin is right; for
``permutation``, tiles the predicted permutation places right; chance about 11 %),
``puzzle_acc`` (every tile right, i.e. permutation accuracy for ``permutation``), ``loss``.
The loss is cross-entropy averaged over rows and the batch, summed over stages.

Why the report's CE form stayed at chance (about 13 % tile accuracy)
-----------------------------------------------------------------------
Both, as far as a short experiment can tell: its settings explain the flat loss, and
with better settings its head still learns several times slower than a head shaped for
a convolutional network.

*The settings.* The report trained with SGD at lr 4e-6 for about 3 epochs. That rate
suits the CPM's squared error summed over 46 x 46 x 15 map pixels per image;
cross-entropy averaged over 9 rows, pooled from about 26 map pixels per score, sends
gradients about two orders of magnitude smaller into each output pixel, so at 4e-6
the weights hardly move. Measured below: in 40 steps the loss does not move at all
(4.388 -> 4.390; chance is 2 x ln 9 = 4.394 for 2 stages) and held-out accuracy is
chance. The report's own run (3 epochs of 100,000 puzzles at batch 10, about 30,000
steps) saw the same flat loss.

*The method.* With one channel pooled to 9x9, ``score[r, c]`` is the mean of the map over
the patch in the ``r``-th ninth of the image height and the ``c``-th ninth of its width.
That patch lies inside the tile at shuffled position ``3 * (r // 3) + c // 3``, which is
in general neither tile ``r`` (the tile the row asks about) nor cell ``c``: row ``r``
asks about tile ``r`` through 9 patches spread over 3 different tiles. So the value at
each location must describe a tile somewhere else, chosen by the location's absolute
coordinates. A convolution computes the same function at every location; it can only
tell locations apart through the zero padding at the borders (the centre map is
radially symmetric and cannot tell left from right). The head is therefore not
impossible (CPM's later stages see the whole image, and the experiment shows it learns
a little) but it asks for position-dependent routing learnt from border effects, with
nothing in its structure to help. The ``cells`` head asks the translation-equivariant
question instead (which cell did the tile under this location come from; one map per
origin) and learns quickly; the heatmap form works because a map per shuffled position
turns the answer into a location.

Measured with ``python -m sslbench_plugins.jigsaw_ce 96 40`` (:func:`compare_heads`: tiny
CPM with 2 stages and width 1/8, 96 px input, 12 x 12 maps, batch 16, 40 steps, puzzles
whose tiles show their origin in their colour so the puzzle itself is trivial, new
images every step, 128 held-out images, one CPU thread, about 95 s CPU in all)::

    cells   adam lr 0.001   loss 4.359 -> 1.457  held-out tile_acc 67.2%  puzzle_acc 3.9%
    report  adam lr 0.001   loss 4.344 -> 3.776  held-out tile_acc 23.4%  puzzle_acc 0.0%
    report  sgd lr 4e-06    loss 4.388 -> 4.390  held-out tile_acc 10.8%  puzzle_acc 0.0%

(losses summed over the 2 stages; tile chance 11.1 %). A short run on trivial puzzles
cannot say where the report head would end up on real images, only that it learns
several times slower than ``cells`` under the same budget, and not at all under the
report's optimiser settings.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sslbench.contract.errors import ConfigError
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.interfaces import Geometry, Metric, SampleKey
from sslbench.contract.registry import Entry
from sslbench.data.pipeline import to_tensor
from sslbench.tasks.jigsaw import (
    GRID,
    NUM_TILES,
    REPORT_GAP,
    PermutationMode,
    TileLayout,
    add_puzzle_accuracy,
    make_puzzle,
    scaled_gap,
)
from sslbench.tasks.pretexts import KitPretext, PretextMetric, base_sample, check_geometry, pretext_entry

HEADS = ("cells", "report", "permutation")



class JigsawCE(KitPretext):
    """Jigsaw puzzles classified with cross-entropy: heads ``cells``, ``report`` or ``permutation``."""

    name = "jigsaw-ce"
    monitor = "tile_acc"
    monitor_mode = "max"

    def __init__(
        self,
        head: str = "cells",
        permutations: str | None = None,
        tile_crop: bool | None = None,
        gap: int = REPORT_GAP,
        augment: bool = True,
    ) -> None:
        self.head = self.option_choice("head", head, HEADS)
        if permutations is None:
            permutations = "set:100" if self.head == "permutation" else "fixed:10"
        self.permutations = PermutationMode.parse(permutations)
        if self.head == "permutation" and self.permutations.kind != "set":
            raise ConfigError(
                f"pretext {self.name}: option permutations must be 'set:N' with head permutation "
                f"(it classifies over a fixed set), got {permutations!r}"
            )
        #: (N, 9) permutation set of the ``set:N`` mode, built now (before data-loader workers fork)
        self.table: torch.Tensor | None = None
        if self.permutations.kind == "set":
            self.table = torch.from_numpy(self.permutations.permutation_set().copy())
        if tile_crop is None:
            tile_crop = self.head == "permutation"
        self.tile_crop = self.option_bool("tile_crop", tile_crop)
        self.gap = self.option_int("gap", gap, 0, 100)
        self.augment = self.option_bool("augment", augment)

    @property
    def num_outputs(self) -> int:
        if self.head == "cells":
            return NUM_TILES
        if self.head == "report":
            return 1
        return self.permutations.count

    def config(self) -> dict[str, Any]:
        return {**super().config(), "permutations": self.permutations.text}

    # -- samples ------------------------------------------------------------------------
    def make_sample(
        self, image: np.ndarray, joints: np.ndarray | None, key: SampleKey, train: bool, geometry: Geometry
    ) -> dict[str, Any]:
        """``image`` puzzle, ``centermap``, ``perm`` (9,) origins, ``label`` (index in the set, or -1)."""
        check_geometry(self.name, geometry)
        layout = TileLayout(geometry.input_size, scaled_gap(geometry.input_size, self.gap))
        rng = key.rng()
        perm, index = self.permutations.draw(key, rng)
        view = self.view(image, layout.source_size(self.tile_crop), rng, train)
        puzzle = make_puzzle(to_tensor(view), perm, layout, rng if self.tile_crop else None)
        return {
            **base_sample(puzzle, geometry),
            "perm": torch.from_numpy(np.asarray(perm, dtype=np.int64)),
            "label": torch.tensor(index, dtype=torch.int64),
        }

    # -- scores -------------------------------------------------------------------------
    def scores(self, output: torch.Tensor) -> torch.Tensor:
        """One stage's maps -> logits: (B, 9 rows, 9 origins) for cells/report, (B, N) for permutation."""
        output = output.float()
        if self.head == "cells":
            pooled = F.adaptive_avg_pool2d(output, GRID)  # (B, 9 origins, 3, 3 shuffled cells)
            return pooled.flatten(2).transpose(1, 2)  # (B, 9 shuffled, 9 origins)
        if self.head == "report":
            return F.adaptive_avg_pool2d(output, NUM_TILES)[:, 0]  # (B, 9, 9)
        return output.mean(dim=(2, 3))

    def predicted_origins(self, output: torch.Tensor) -> torch.Tensor:
        """(B, 9) predicted original position of the tile at each shuffled position."""
        scores = self.scores(output)
        if self.head == "permutation":
            assert self.table is not None
            return self.table.to(scores.device)[scores.argmax(dim=1)]
        return scores.argmax(dim=2)

    # -- training -----------------------------------------------------------------------
    def loss(self, outputs: list[torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        """Cross-entropy (mean over rows and batch), summed over stages."""
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for output in outputs:
            scores = self.scores(output)
            if self.head == "permutation":
                total = total + F.cross_entropy(scores, batch["label"])
            else:
                total = total + F.cross_entropy(scores.reshape(-1, NUM_TILES), batch["perm"].reshape(-1))
        return total

    def new_metric(self) -> Metric:
        return CEJigsawMetric(self)


class CEJigsawMetric(PretextMetric):
    """Tile and puzzle accuracy (percent) of the last stage, and the loss."""

    def score(self, last: torch.Tensor, batch: dict[str, Any], n: int) -> None:
        add_puzzle_accuracy(self.averages, self.task.predicted_origins(last), batch["perm"], n)


@hookimpl
def sslbench_pretexts() -> list[Entry]:
    return [
        pretext_entry(
            JigsawCE,
            "3x3 jigsaw classified with cross-entropy (report sec. 3.3.2); heads cells, report "
            "(the report's 1-map 9x9 form) or permutation (Noroozi & Favaro); "
            "options: head, permutations, tile_crop, gap, augment",
        )
    ]


# ------------------------------------------------------------------ head comparison


def colour_coded_image(index: int, height: int = 120, width: int = 160) -> np.ndarray:
    """An image whose colour gives away position (red ~ x, green ~ y), so every tile shows its origin.

    On these puzzles the answer is visible in each tile by itself: a head that cannot
    learn them fails because of its form, not because the puzzle is hard.
    """
    rng = np.random.default_rng(index)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    blue = np.full_like(x, rng.uniform(0, 255))
    image = np.stack([255 * x / width, 255 * y / height, blue], axis=-1) + rng.normal(0, 8, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def compare_heads(
    input_size: int = 96, steps: int = 40, batch: int = 16, seed: int = 0
) -> list[dict[str, Any]]:
    """Train a tiny CPM (2 stages, width 1/8) briefly with each CE head; held-out accuracy per head.

    Runs: ``cells`` and ``report`` with Adam (lr 1e-3), and ``report`` with the report's
    SGD (lr 4e-6, momentum 0.9, weight decay 5e-4). Puzzles are colour-coded
    (:func:`colour_coded_image`) and unaugmented; every training step sees new images,
    and accuracy is measured on 128 other images. About a minute and a half of one CPU
    core at the defaults.
    """
    import time

    from sslbench.contract.registry import default_registry

    registry = default_registry()
    geometry = Geometry(input_size, 8)
    runs = [("cells", "adam", 1e-3), ("report", "adam", 1e-3), ("report", "sgd", 4e-6)]
    results = []

    def make_batch(task: JigsawCE, first: int, epoch: int, train: bool) -> dict[str, torch.Tensor]:
        samples = [
            task.make_sample(colour_coded_image(i), None, SampleKey(seed, i, epoch), train, geometry)
            for i in range(first, first + batch)
        ]
        return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}

    for head, optimiser, lr in runs:
        torch.manual_seed(seed)
        task = JigsawCE(head=head, augment=False)
        model = registry.create(
            "backbone", "cpm", num_outputs=task.num_outputs, stages=2, width=0.125, input_size=input_size
        )
        params = model.parameters()
        optim = (
            torch.optim.Adam(params, lr)
            if optimiser == "adam"
            else torch.optim.SGD(params, lr, momentum=0.9, weight_decay=5e-4)
        )

        start = time.process_time()
        losses = []
        model.train()
        for step in range(steps):
            data = make_batch(task, step * batch, 0, True)  # every training puzzle is a new image
            loss = task.loss(model(data["image"], data["centermap"]), data)
            optim.zero_grad()
            loss.backward()
            optim.step()
            losses.append(loss.item())
        model.eval()
        metric = task.new_metric()
        with torch.no_grad():
            for first in range(10**6, 10**6 + 128, batch):
                data = make_batch(task, first, 0, False)
                metric.update(model(data["image"], data["centermap"]), data)
        window = max(1, steps // 4)
        results.append(
            {
                "head": head,
                "optimiser": f"{optimiser} lr {lr:g}",
                "first_loss": float(np.mean(losses[:window])),
                "last_loss": float(np.mean(losses[-window:])),
                **metric.compute(),
                "cpu_s": time.process_time() - start,
            }
        )
    return results


if __name__ == "__main__":  # python -m sslbench_plugins.jigsaw_ce [input_size] [steps]
    import sys

    torch.set_num_threads(1)
    arguments = [int(a) for a in sys.argv[1:3]]
    for row in compare_heads(*arguments):
        print(
            f"{row['head']:7s} {row['optimiser']:15s} loss {row['first_loss']:.3f} -> {row['last_loss']:.3f}  "
            f"held-out tile_acc {row['tile_acc']:.1f}%  puzzle_acc {row['puzzle_acc']:.1f}%  ({row['cpu_s']:.0f} s CPU)"
        )
