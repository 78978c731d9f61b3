"""Checking a dataset: every image decodes, joints fall inside their pictures, splits have the sizes they say.

:func:`verify_dataset` is what ``sslbench data verify`` prints (:mod:`sslbench.cli.data`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sslbench.contract.errors import DataError, SSLBenchError
from sslbench.contract.interfaces import ImageDataset
from sslbench.data.imageio import ImageFileDataset, progress_bar, read_image


@dataclass
class VerifyReport:
    """What ``sslbench data verify`` found in one dataset."""

    name: str
    root: str | None
    images: int
    labelled: bool
    annotation_shape: tuple[int, ...] | None = None
    #: (image id, reason) of images that could not be decoded
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    #: warnings from opening the dataset (images skipped by --skip-bad)
    skipped_messages: list[str] = field(default_factory=list)
    skipped: int = 0
    joints_outside: int = 0
    images_with_joints_outside: list[str] = field(default_factory=list)
    occluded_fraction: float | None = None
    widths: list[int] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)
    #: protocol -> (train pool, val, test) sizes, or the error message
    splits: dict[str, tuple[int, int, int] | str] = field(default_factory=dict)
    split_warnings: dict[str, str] = field(default_factory=dict)
    #: images that decode without error but show nothing (one colour, or one 16 x 16 tile repeated)
    uniform: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """Findings that make the data unfit as it is (exit code 1)."""
        found = [f"{image}: cannot read image: {reason}" for image, reason in self.unreadable]
        found += [f"protocol {p}: {v}" for p, v in self.splits.items() if isinstance(v, str)]
        return found


def _decode(dataset: ImageDataset, index: int) -> np.ndarray:
    """Decode image *index* without filling the dataset's cache (verify reads everything once)."""
    if isinstance(dataset, ImageFileDataset) and index not in dataset.cache:
        return read_image(dataset.path(index))
    return dataset.image(index)


def looks_blank(image: np.ndarray, block: int = 16) -> bool:
    """Whether *image* holds no picture: every *block* x *block* tile has the same mean colour.

    A JPEG whose scan data was zeroed but whose header survived decodes without an error, to
    a flat grey or to one tile repeated (every 8 x 8 block decoded from the same zero bits);
    either way its tile means do not vary. Cheap next to decoding; images smaller than two
    tiles are not judged.
    """
    height, width = (image.shape[0] // block) * block, (image.shape[1] // block) * block
    if height < block or width < block or height * width < 2 * block * block:
        return False
    tiles = image[:height, :width].reshape(height // block, block, width // block, block, -1).mean(axis=(1, 3))
    return bool(np.ptp(tiles, axis=(0, 1)).max() < 1.0)


def verify_dataset(
    dataset: ImageDataset, skipped_messages: list[str] | None = None, progress: bool = True
) -> VerifyReport:
    """Decode every image, check joints against image bounds, size statistics and splits."""
    report = VerifyReport(
        name=dataset.name,
        root=str(dataset.root) if dataset.root is not None else None,
        images=len(dataset),
        labelled=dataset.labelled,
        annotation_shape=getattr(dataset, "annotation_shape", None),
        skipped_messages=list(skipped_messages or []),
        skipped=len(getattr(dataset, "skipped", [])),
    )
    occluded = total_joints = 0
    with progress_bar() as bar:
        task = bar.add_task(f"decoding {dataset.name} images", total=len(dataset), visible=progress)
        for index in range(len(dataset)):
            bar.advance(task)
            try:
                image = _decode(dataset, index)
            except DataError as exc:
                where = dataset.path(index) if isinstance(dataset, ImageFileDataset) else dataset.image_id(index)
                report.unreadable.append((str(where), str(exc).split("cannot read image: ", 1)[-1]))
                continue
            height, width = image.shape[:2]
            if looks_blank(image):
                report.uniform.append(str(dataset.image_id(index)))
            report.widths.append(width)
            report.heights.append(height)
            if not dataset.labelled:
                continue
            joints = dataset.joints(index)
            x, y = joints[:, 0], joints[:, 1]
            # pixels cover -0.5..W-0.5 with 0-based centres, 0.5..W+0.5 with MATLAB's 1-based ones:
            # a joint is outside when it is outside both
            outside = int(((x < -0.5) | (y < -0.5) | (x > width + 0.5) | (y > height + 0.5)).sum())
            if outside:
                report.joints_outside += outside
                report.images_with_joints_outside.append(dataset.image_id(index))
            occluded += int((joints[:, 2] < 0.5).sum())
            total_joints += len(joints)
    if total_joints:
        report.occluded_fraction = occluded / total_joints
    for protocol in dataset.protocols:
        try:
            splits = dataset.splits(protocol, None, 0)
        except SSLBenchError as exc:
            report.splits[protocol] = str(exc)
            continue
        report.splits[protocol] = (splits.pool_size or len(splits.train), len(splits.val), len(splits.test))
        if splits.warning:
            report.split_warnings[protocol] = splits.warning
    return report
