"""``rotation``: predict how far the image was turned, 0, 90, 180 or 270 degrees (Gidaris et al. 2018).

The centre square of an unlabelled image is turned by ``k`` quarter turns counter-
clockwise (``k`` drawn per sample and epoch) and the network classifies ``k``: 4 output
maps, global average pooled to 4 logits, cross-entropy summed over stages. Metric:
``rot_acc`` (percent; chance 25 %) and ``loss``.
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
from sslbench.tasks.pretexts import KitPretext, PretextMetric, base_sample, check_geometry, pretext_entry

NUM_ROTATIONS = 4


class Rotation(KitPretext):
    """Four-way rotation classification from globally pooled maps."""

    name = "rotation"
    monitor = "rot_acc"
    monitor_mode = "max"

    def __init__(self, augment: bool = True) -> None:
        self.augment = self.option_bool("augment", augment)

    @property
    def num_outputs(self) -> int:
        return NUM_ROTATIONS

    def make_sample(
        self, image: np.ndarray, joints: np.ndarray | None, key: SampleKey, train: bool, geometry: Geometry
    ) -> dict[str, Any]:
        """``image`` turned by ``label`` quarter turns counter-clockwise, ``centermap``, ``label``."""
        check_geometry(self.name, geometry)
        rng = key.rng()
        quarter_turns = int(rng.integers(NUM_ROTATIONS))
        view = self.view(image, geometry.input_size, rng, train)
        turned = torch.rot90(to_tensor(view), quarter_turns, dims=(1, 2))
        return {**base_sample(turned, geometry), "label": torch.tensor(quarter_turns, dtype=torch.int64)}

    @staticmethod
    def logits(output: torch.Tensor) -> torch.Tensor:
        return output.float().mean(dim=(2, 3))

    def loss(self, outputs: list[torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        """Cross-entropy of the pooled logits, summed over stages."""
        return torch.stack([F.cross_entropy(self.logits(out), batch["label"]) for out in outputs]).sum()

    def new_metric(self) -> Metric:
        return RotationMetric(self)


class RotationMetric(PretextMetric):
    """Rotation accuracy (percent) of the last stage, and the loss."""

    def score(self, last: torch.Tensor, batch: dict[str, Any], n: int) -> None:
        predicted = self.task.logits(last).argmax(dim=1)
        self.averages.add("rot_acc", 100.0 * float((predicted == batch["label"]).sum()), n)


@hookimpl
def sslbench_pretexts() -> list[Entry]:
    return [
        pretext_entry(
            Rotation,
            "predict the rotation (0/90/180/270 degrees) of the centre crop (Gidaris et al. 2018); options: augment",
        )
    ]
