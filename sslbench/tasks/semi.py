"""Pieces the semi-supervised strategies share: pose targets with unknown joints, training sets that
mix the labelled budget with unlabelled images, and the network's view of an unlabelled image.

- :class:`MaskedPoseTask`: the pose task whose joints may be unknown (NaN): an unknown joint's
  map, and the background map of an image with any unknown joint, are left out of the loss
  (weight 0), instead of being taught to show no joint. Pseudo-labels have unknown joints, and
  so do datasets with :attr:`~sslbench.contract.interfaces.ImageDataset.unknown_joints` (COCO, MPII).
- :class:`MixedTaskDataset`: every epoch the whole labelled budget plus a fresh, seeded subset
  of the unlabelled images (``per_epoch``), so an epoch costs a known multiple of a labelled one.
- :func:`unlabelled_crop`: where an unlabelled image's person is assumed to be: the centred square
  of at most ``side`` pixels (LSP-extended scales its person to about 150 px; 1.4 x that is the
  labelled crops' size with their 20 % margin), or the whole image padded to a square.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from sslbench.contract.errors import ConfigError
from sslbench.contract.interfaces import Geometry, ImageDataset, SampleKey
from sslbench.contract.skeleton import Skeleton
from sslbench.data.loaders import TaskDataset
from sslbench.data.pipeline import centre_square
from sslbench.tasks.pose import PoseTask

#: mixed into the seed of the unlabelled subset of each epoch
_UNLABELLED_WORD = 15485863


def unlabelled_crop(image: np.ndarray, side: float) -> tuple[tuple[float, float], float]:
    """(centre, side) of the square an unlabelled image is cut to: the centred square of at most
    *side* pixels, or for *side* 0 the square of the image's longer side (all of it, padded)."""
    centre, shorter = centre_square(*image.shape[:2])
    return centre, float(max(image.shape[:2])) if side == 0 else min(shorter, float(side))


class MaskedPoseTask(PoseTask):
    """:class:`PoseTask` whose samples carry ``weight`` (K+1,): 0 for the map of an unknown (NaN) joint,
    and for the background map of an image with any unknown joint; 1 elsewhere. The loss is the
    weighted MSE, equal to the pose loss when every joint is known."""

    name = "pose-masked"

    def make_sample(
        self, image: np.ndarray, joints: np.ndarray | None, key: SampleKey, train: bool, geometry: Geometry,
        **annotation: Any,
    ) -> dict[str, Any]:
        sample = super().make_sample(image, joints, key, train, geometry, **annotation)
        known = torch.isfinite(sample["joints"][:, :2]).all(dim=1).float()
        if bool(sample["flip"]):  # channels follow the mirrored joint order
            known = known[list(self.skeleton.flip_index)]
        background = known.min().reshape(1)
        sample["weight"] = torch.cat([known, background])
        return sample

    def loss(self, outputs: list[torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        if "weight" not in batch:
            return super().loss(outputs, batch)
        target = batch["target"].float()
        weight = batch["weight"].float()[:, :, None, None]
        total = sum(((output.float() - target) ** 2 * weight).mean() for output in outputs)
        if self.loss_scale == "sum":
            total = total * target[0].numel()
        return total


def pose_task_for(dataset: ImageDataset, **options: Any) -> PoseTask:
    """The pose task of *dataset*'s skeleton (*options*: :class:`PoseTask`'s): :class:`MaskedPoseTask`
    when its joints may be unknown, so they are left out of the loss."""
    task = MaskedPoseTask if dataset.unknown_joints else PoseTask
    return task(skeleton=dataset.skeleton, **options)


class JointsOverride(ImageDataset):
    """A labelled view of *images* with the given joints (NaN where unknown): pseudo-labels."""

    name = "pseudo-labelled"

    def __init__(self, images: ImageDataset, joints: dict[int, np.ndarray]) -> None:
        super().__init__(images.root)
        self.images = images
        self._joints = joints

    @property
    def labelled(self) -> bool:
        return True

    @property
    def skeleton(self) -> Skeleton:
        return self.images.skeleton

    def __len__(self) -> int:
        return len(self.images)

    def image(self, index: int) -> np.ndarray:
        return self.images.image(index)

    def image_id(self, index: int) -> str:
        return self.images.image_id(index)

    def joints(self, index: int) -> np.ndarray:
        return self._joints[index].copy()

    def splits(self, protocol: str, train_size: int | None, seed: int):  # pragma: no cover - never split
        raise ConfigError("pseudo-labelled images are not split")


class Concat(ImageDataset):
    """Two datasets as one: indices below ``len(first)`` are *first*'s, the rest *second*'s."""

    name = "concat"

    def __init__(self, first: ImageDataset, second: ImageDataset) -> None:
        super().__init__(first.root)
        self.first, self.second = first, second
        self.offset = len(first)

    def _at(self, index: int) -> tuple[ImageDataset, int]:
        return (self.first, index) if index < self.offset else (self.second, index - self.offset)

    @property
    def labelled(self) -> bool:
        return self.first.labelled and self.second.labelled

    @property
    def skeleton(self) -> Skeleton:
        return self.first.skeleton

    def __len__(self) -> int:
        return self.offset + len(self.second)

    def image(self, index: int) -> np.ndarray:
        data, i = self._at(index)
        return data.image(i)

    def image_id(self, index: int) -> str:
        data, i = self._at(index)
        return data.image_id(i)

    def joints(self, index: int) -> np.ndarray:
        data, i = self._at(index)
        return data.joints(i)

    def splits(self, protocol: str, train_size: int | None, seed: int):  # pragma: no cover - never split
        raise ConfigError("concatenated datasets are not split")


class MixedTaskDataset(TaskDataset):
    """Training samples: all of *labelled* every epoch, plus *per_epoch* of *unlabelled* drawn anew
    each epoch from (seed, epoch); indices refer to *images* (usually a :class:`Concat`)."""

    def __init__(
        self,
        images: ImageDataset,
        labelled: Sequence[int],
        unlabelled: Sequence[int],
        per_epoch: int,
        task: Any,
        geometry: Geometry,
        seed: int,
    ) -> None:
        self.labelled_indices = [int(i) for i in labelled]
        self.unlabelled_indices = [int(i) for i in unlabelled]
        self.per_epoch = min(int(per_epoch), len(self.unlabelled_indices))
        super().__init__(images, [*self.labelled_indices, *self.unlabelled_indices], task, geometry, seed, train=True,
                         limit=len(self.labelled_indices) + self.per_epoch)  # fmt: skip

    def _choose(self) -> list[int]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, _UNLABELLED_WORD]))
        chosen = rng.choice(len(self.unlabelled_indices), size=self.per_epoch, replace=False)
        return self.labelled_indices + [self.unlabelled_indices[i] for i in sorted(chosen)]
