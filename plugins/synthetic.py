"""Synthetic people: the built-in dataset, rendered on the fly so every command runs offline.

Each image shows one procedurally drawn person (14 LSP joints) on a cluttered
background. A 3-D skeleton is posed by forward kinematics (sports-like poses within
joint limits, per-person proportions), turned about the vertical axis, projected
orthographically and rolled in the image plane. Body parts are drawn as filled,
rimmed and textured shapes from far to near, so nearer parts hide farther ones; a
joint is marked occluded (visibility 0) when a nearer body part or a foreground
object covers it. Images are deterministic in (dataset seed, index) and never
stored: one takes a few milliseconds to render.

This file is the plugin: the datasets and their hook. The renderer lives in
:mod:`sslbench_plugins.synthetic_people`, whose :func:`render_person` (re-exported
here) is the reusable entry point: one image and its joints from a numpy Generator.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from sslbench.contract.errors import ConfigError, DataError
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.interfaces import ImageDataset, Splits
from sslbench.contract.registry import Entry
from sslbench.data.splits import train_val_test
from sslbench_plugins.synthetic_people.render import render_person

#: bumped whenever the renderer's output changes: the dataset's ``version``, so cell ids and
#: pretext cache keys of its images change with it (and describe() says it)
RENDER_VERSION = 1


class SyntheticPeople(ImageDataset):
    """Procedurally rendered people with 14 LSP joints, generated on the fly; no files needed.

    Image *i* depends only on (*seed*, *i*, labelled or not): the unlabelled variant
    draws a different stream of images, so pretext training on it never sees the
    labelled test images.
    """

    name = "synthetic"
    protocols = ("standard",)
    version = RENDER_VERSION

    def __init__(
        self,
        root: Path | str | None = None,
        skip_bad: bool = False,
        size: int = 2000,
        seed: int = 0,
        labelled: bool = True,
    ) -> None:
        super().__init__(None)  # nothing on disk: root is accepted and ignored, like skip_bad
        if isinstance(size, bool) or not isinstance(size, int) or size < 4:
            raise ConfigError(f"synthetic dataset: size must be an integer >= 4, got {size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"synthetic dataset: seed must be an integer >= 0, got {seed!r}")
        self.size = size
        self.seed = seed
        self._labelled = bool(labelled)
        self._recent: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    @property
    def labelled(self) -> bool:
        return self._labelled

    def __len__(self) -> int:
        return self.size

    def _check(self, index: int) -> None:
        if not 0 <= index < self.size:
            raise IndexError(f"synthetic dataset: index {index} out of range 0..{self.size - 1}")

    def _render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Render image *index*, keeping the last few so image() then joints() renders once."""
        self._check(index)
        if index in self._recent:
            self._recent.move_to_end(index)
            return self._recent[index]
        stream = 0 if self._labelled else 1
        result = render_person(np.random.default_rng(np.random.SeedSequence([self.seed, index, stream])))
        self._recent[index] = result
        if len(self._recent) > 4:
            self._recent.popitem(last=False)
        return result

    def image(self, index: int) -> np.ndarray:
        return self._render(index)[0].copy()

    def joints(self, index: int) -> np.ndarray:
        if not self._labelled:
            raise DataError("dataset 'synthetic-unlabelled' has no joint labels (use 'synthetic' for labelled images)")
        return self._render(index)[1].copy()

    def image_id(self, index: int) -> str:
        self._check(index)
        return f"synth{index + 1:05d}.png"

    def splits(self, protocol: str, train_size: int | None, seed: int) -> Splits:
        """LSP's standard split: first half is the train pool (10% of it validation), second half test."""
        if protocol not in self.protocols:
            raise ConfigError(f"--protocol: dataset 'synthetic' has no protocol {protocol!r} (available: standard)")
        half = self.size // 2
        return train_val_test(range(half), range(half, self.size), max(1, half // 10), train_size, seed)

    def describe(self) -> dict[str, Any]:
        return {
            "name": "synthetic" if self._labelled else "synthetic-unlabelled",
            "root": None,
            "size": self.size,
            "seed": self.seed,
            "labelled": self._labelled,
            "render_version": RENDER_VERSION,
        }


@hookimpl
def sslbench_datasets() -> list[Entry]:
    return [
        Entry(
            "synthetic",
            "Procedurally rendered people with 14 LSP joints, made on the fly (no download)",
            SyntheticPeople,
        ),
        Entry(
            "synthetic-unlabelled",
            "Synthetic people without labels, a separate image stream for pretext training",
            functools.partial(SyntheticPeople, labelled=False),
        ),
    ]
