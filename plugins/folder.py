"""Any folder of images as an unlabelled pretext pool.

Files ending in .jpg, .jpeg, .png, .bmp or .webp (any case) directly inside ``root``
are used, sorted by name; subfolders are not searched (so a folder of several
datasets is not mixed by accident) and hidden files are ignored. Protocol
``standard`` holds out 5% (at most 500, at least 1) for validation, like ``lspet``.
"""

from __future__ import annotations

from pathlib import Path

from sslbench.contract.errors import DataError
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.interfaces import Splits
from sslbench.contract.registry import Entry
from sslbench.data.imageio import ImageFileDataset

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class ImageFolder(ImageFileDataset):
    """The images directly inside one folder, unlabelled."""

    name = "folder"
    protocols = ("standard",)

    def __init__(self, root: Path | str | None, skip_bad: bool = False, cache_bytes: int | None = None) -> None:
        super().__init__(root, cache_bytes)
        self.paths = sorted(
            p
            for p in self.root.iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
        if not self.paths:
            raise DataError(
                f"{self.root}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder (subfolders are not searched)"
            )
        if skip_bad:
            count = len(self.paths)
            self._drop_unreadable()
            if not self.paths:
                raise DataError(f"{self.root}: no readable images (all {count} image files are unreadable)")

    @property
    def labelled(self) -> bool:
        return False

    def splits(self, protocol: str, train_size: int | None, seed: int) -> Splits:
        return self.unlabelled_splits(protocol, train_size, seed)


@hookimpl
def sslbench_datasets() -> list[Entry]:
    return [
        ImageFolder.entry(
            "Any folder of images (jpg, jpeg, png, bmp, webp; not recursive) as an unlabelled pretext pool"
        )
    ]
