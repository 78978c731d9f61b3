"""Leeds Sports Pose (Johnson & Everingham, BMVC 2010): 2000 images with 14 joints each.

Layout (as in the official ``lsp_dataset.zip``)::

    root/images/im0001.jpg .. im2000.jpg
    root/joints.mat          variable ``joints``, 3 x 14 x N: x, y, flag

In LSP the flag is 1 on *occluded* joints; :meth:`LSP.joints` returns visibility
``1 - flag`` (1 = visible), the project's convention. Coordinates are returned as
stored (MATLAB's frame: about +1 px against the 0-based pixel centres used elsewhere);
every consumer uses them the same way, so PCK is unaffected.

Protocols:

- ``standard``: im0001-1000 are the training pool, im1001-2000 the test set; 100 images
  of the pool are held out for validation (:func:`sslbench.data.splits.carve`), leaving 900
  for training budgets. A smaller copy (test fixtures) scales: first half pool, second
  half test, ``max(1, half // 10)`` validation images.
- ``report``: the 1600/200/200 random partition of the report this project grew out
  of. It moves standard test images into training, so its numbers are not comparable
  with published LSP results; the split carries that warning.

All checks at construction are cheap (no image decoding) unless ``skip_bad`` is set,
in which case every image is decoded once and unreadable ones are dropped with a warning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sslbench.contract.errors import DataError
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.interfaces import Splits
from sslbench.contract.registry import Entry
from sslbench.data import splits as splitting
from sslbench.data.imageio import ImageFileDataset, annotated_images, load_mat_array, shape_text
from sslbench.data.joints import NUM_JOINTS


class LSP(ImageFileDataset):
    """LSP images and joints; see the module docstring for layout and protocols."""

    name = "lsp"
    protocols = ("standard", "report")

    def __init__(self, root: Path | str | None, skip_bad: bool = False, cache_bytes: int | None = None) -> None:
        super().__init__(root, cache_bytes)
        annotations = self.root / "joints.mat"
        images_dir = self.root / "images"
        if not images_dir.is_dir():
            raise DataError(f"{images_dir}: image folder not found (lsp expects images/im0001.jpg.. and joints.mat)")
        raw = load_mat_array(annotations)
        #: shape of ``joints`` in joints.mat
        self.annotation_shape: tuple[int, ...] = tuple(raw.shape)
        if raw.ndim != 3 or raw.shape[0] != 3 or raw.shape[1] != NUM_JOINTS:
            hint = ""
            if raw.ndim == 3 and raw.shape[0] == 3:
                hint = f": {raw.shape[1]} joints per image, LSP has {NUM_JOINTS}"
            elif raw.ndim == 3 and raw.shape[:2] == (NUM_JOINTS, 3):
                hint = ": that is LSP-extended's layout, use --data lspet"
            raise DataError(
                f"{annotations}: 'joints' has shape {shape_text(raw.shape)}, expected 3x{NUM_JOINTS}xN{hint}"
            )
        #: number of annotated images in the file (the standard split is defined on it)
        self.num_annotated = raw.shape[2]
        if self.num_annotated == 0:
            raise DataError(f"{annotations}: 'joints' holds no images (shape {shape_text(raw.shape)})")
        joints = raw.transpose(2, 1, 0).copy()  # (N, 14, 3): x, y, occluded flag
        self.paths = annotated_images(images_dir, joints, annotations, digits=4)
        joints[:, :, 2] = 1.0 - joints[:, :, 2]
        self._joints = joints.astype(np.float32)
        #: 0-based position of each kept image in joints.mat (im0001 -> 0)
        self.ordinals = np.arange(self.num_annotated)
        if skip_bad:
            kept = self._drop_unreadable()
            self._joints = self._joints[kept]
            self.ordinals = self.ordinals[kept]
            if not self.paths:
                raise DataError(f"{images_dir}: no readable images")

    @property
    def labelled(self) -> bool:
        return True

    def joints(self, index: int) -> np.ndarray:
        return self._joints[index].copy()

    def splits(self, protocol: str, train_size: int | None, seed: int) -> Splits:
        self._check_protocol(protocol)
        half = self.num_annotated // 2
        if protocol == "standard":
            pool = [i for i, o in enumerate(self.ordinals) if o < half]
            test = [i for i, o in enumerate(self.ordinals) if o >= half]
            return splitting.train_val_test(pool, test, max(1, half // 10), train_size, seed)
        n = len(self)
        held = max(1, n // 10)
        train, val, test = splitting.fixed_partition(n, [n - 2 * held, held, held])
        warning = (
            f"the report split puts standard test images (im{half + 1:04d}-{self.num_annotated}) into training: "
            "not comparable with published LSP results"
        )
        return Splits(
            train=splitting.budget(train, train_size, seed),
            val=val,
            test=test,
            pool_size=len(train),
            warning=warning,
        )


@hookimpl
def sslbench_datasets() -> list[Entry]:
    return [
        LSP.entry("Leeds Sports Pose: 2000 images, 14 joints; protocols standard (1000/1000) and report (1600/200/200)")
    ]
