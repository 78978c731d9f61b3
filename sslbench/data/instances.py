"""Datasets whose samples are annotated people in shared image files (COCO-format data, MPII).

Sample *i* is one person: :meth:`InstanceDataset.image` is the region of its image file around
the person's box (the box plus :data:`CONTEXT` of its longer side on every side, clipped to the
image), and its joints, box and PCK scale are in that region's pixels, so the pose task crops it
by the box and an unlabelled pool made of the same dataset sees person crops, not whole scenes.
Unknown joints (NaN) are left out of the loss and the metrics.

Splits never cut an image: :func:`split_images` holds out whole images (all their people).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sslbench.contract.errors import DataError
from sslbench.contract.skeleton import Skeleton
from sslbench.data.imageio import ImageFileDataset, read_image
from sslbench.data.splits import VAL_SEED

#: context kept around a person's box in its sample image, as a share of the box's longer side
CONTEXT = 0.25


@dataclass(frozen=True)
class Instance:
    """One annotated person, in its image file's pixels."""

    path: Path
    #: (K, 3) float32: x, y (NaN: unknown), visibility (1 visible, 0 occluded)
    joints: np.ndarray
    #: person box: x, y (top-left), w, h
    box: tuple[float, float, float, float]
    #: a stable name (the file name and the annotation's id)
    name: str
    #: the PCK normaliser of a ``head`` or ``box`` skeleton (head size, box side)
    scale: float | None = None
    #: object area for OKS (COCO-format data)
    area: float | None = None

    @property
    def origin(self) -> tuple[int, int]:
        """Top-left corner of the sample region in the image file (needs no image size)."""
        x, y, w, h = self.box
        margin = CONTEXT * max(w, h)
        return max(0, math.floor(x - margin)), max(0, math.floor(y - margin))


class InstanceDataset(ImageFileDataset):
    """People of shared image files as samples; subclasses set :attr:`instances` and the skeleton."""

    unknown_joints = True

    def __init__(self, root: Path | None, skeleton: Skeleton, cache_bytes: int | None = None) -> None:
        super().__init__(root, cache_bytes)
        self._skeleton = skeleton
        self.instances: list[Instance] = []

    def _set_instances(self, instances: list[Instance]) -> None:
        self.instances = instances
        self.paths = [instance.path for instance in instances]

    def _drop_unreadable_instances(self) -> list[int]:
        """``skip_bad``: leave out the people of unreadable images; returns the kept positions."""
        kept = self._drop_unreadable()
        self.cache.clear()  # it holds whole images now; samples are regions of them
        self.instances = [self.instances[i] for i in kept]
        if not self.instances:
            raise DataError(f"{self.root}: no readable images")
        return kept

    @property
    def skeleton(self) -> Skeleton:
        return self._skeleton

    @property
    def labelled(self) -> bool:
        return True

    def image_id(self, index: int) -> str:
        return self.instances[index].name

    def image(self, index: int) -> np.ndarray:
        instance = self.instances[index]

        def region() -> np.ndarray:
            x, y, w, h = instance.box
            margin = CONTEXT * max(w, h)
            left, top = instance.origin
            right, bottom = math.ceil(x + w + margin), math.ceil(y + h + margin)
            return np.ascontiguousarray(read_image(instance.path)[top:bottom, left:right])

        return self.cache.get(index, region)

    def joints(self, index: int) -> np.ndarray:
        instance = self.instances[index]
        joints = instance.joints.copy()
        joints[:, :2] -= np.asarray(instance.origin, dtype=np.float32)
        return joints

    def annotation(self, index: int) -> dict[str, Any]:
        instance = self.instances[index]
        left, top = instance.origin
        x, y, w, h = instance.box
        extras: dict[str, Any] = {"box": (x - left, y - top, w, h)}
        extras.update({k: v for k, v in (("scale", instance.scale), ("area", instance.area)) if v is not None})
        return extras


def split_images(dataset: InstanceDataset, indices: Sequence[int], fraction: float) -> tuple[list[int], list[int]]:
    """(rest, held out): the people of a fixed share *fraction* of the images of *indices* (at least one
    image when there are two or more), chosen by a fixed seed, so a person never shares an image with
    one of another split."""
    files = sorted({str(dataset.instances[i].path) for i in indices})
    count = min(len(files) - 1, max(1, round(fraction * len(files)))) if len(files) > 1 else 0
    order = np.random.default_rng(VAL_SEED).permutation(len(files))
    held = {files[i] for i in order[:count]}
    rest = [int(i) for i in indices if str(dataset.instances[i].path) not in held]
    return rest, [int(i) for i in indices if str(dataset.instances[i].path) in held]
