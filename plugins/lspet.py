"""LSP-extended (Johnson & Everingham, CVPR 2011): 10,000 images, used as an unlabelled pretext pool.

Layout (as in the official ``lspet_dataset.zip``)::

    root/images/im00001.jpg .. im10000.jpg
    root/joints.mat          optional; variable ``joints``, 14 x 3 x N: x, y, flag

Without ``joints.mat`` the images form an unlabelled pool (``labelled`` is False).
With it, joints are available too. The published file is 14 x 3 x N; a transposed
3 x 14 x N copy (LSP's layout) is accepted as well, told apart by the shape. In both the
flag is read with LSP-extended's meaning, 1 = visible (the opposite of LSP), and returned
unchanged as visibility.

Protocol ``standard``: 5% of the images (500 of 10,000, at least 1) are held out for
validation with a fixed seed; the rest is the training pool; there is no test set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sslbench.contract.errors import DataError
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.interfaces import Splits
from sslbench.contract.registry import Entry
from sslbench.data.imageio import IMAGE_NAME, ImageFileDataset, annotated_images, load_mat_array, shape_text
from sslbench.data.joints import NUM_JOINTS


class LSPET(ImageFileDataset):
    """LSP-extended images, with joints when ``joints.mat`` is present."""

    name = "lspet"
    protocols = ("standard",)

    def __init__(self, root: Path | str | None, skip_bad: bool = False, cache_bytes: int | None = None) -> None:
        super().__init__(root, cache_bytes)
        images_dir = self.root / "images"
        if not images_dir.is_dir():
            raise DataError(f"{images_dir}: image folder not found (lspet expects images/im00001.jpg..)")
        annotations = self.root / "joints.mat"
        self._joints: np.ndarray | None = None
        #: shape of ``joints`` in joints.mat, if there is one
        self.annotation_shape: tuple[int, ...] | None = None
        if annotations.exists():
            raw = load_mat_array(annotations)
            self.annotation_shape = tuple(raw.shape)
            if raw.ndim == 3 and raw.shape[:2] == (NUM_JOINTS, 3):
                joints = raw.transpose(2, 0, 1)
            elif raw.ndim == 3 and raw.shape[:2] == (3, NUM_JOINTS):
                joints = raw.transpose(2, 1, 0)
            else:
                raise DataError(
                    f"{annotations}: 'joints' has shape {shape_text(raw.shape)}, "
                    f"expected {NUM_JOINTS}x3xN (or 3x{NUM_JOINTS}xN) with {NUM_JOINTS} joints"
                )
            if joints.shape[0] == 0:
                raise DataError(f"{annotations}: 'joints' holds no images (shape {shape_text(raw.shape)})")
            self.paths = annotated_images(images_dir, joints, annotations, digits=5)
            self._joints = np.ascontiguousarray(joints, dtype=np.float32)  # flag 1 = visible already
        else:
            self.paths = sorted(p for p in images_dir.iterdir() if IMAGE_NAME.match(p.name))
            if not self.paths:
                raise DataError(f"{images_dir}: no images named imNNNNN.jpg")
        if skip_bad:
            kept = self._drop_unreadable()
            if self._joints is not None:
                self._joints = self._joints[kept]
            if not self.paths:
                raise DataError(f"{images_dir}: no readable images")

    @property
    def labelled(self) -> bool:
        return self._joints is not None

    def joints(self, index: int) -> np.ndarray:
        if self._joints is None:
            return super().joints(index)
        return self._joints[index].copy()

    def splits(self, protocol: str, train_size: int | None, seed: int) -> Splits:
        return self.unlabelled_splits(protocol, train_size, seed)


@hookimpl
def sslbench_datasets() -> list[Entry]:
    return [
        LSPET.entry("LSP-extended: 10,000 images as an unlabelled pretext pool (joints used if joints.mat is present)")
    ]
