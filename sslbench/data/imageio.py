"""Image files on disk: strict decoding, a decoded-image cache, and the shared base of folder datasets.

:func:`read_image` turns every way an image file can be bad (missing, not an image,
truncated) into a one-line :class:`~sslbench.contract.errors.DataError`. :class:`ImageCache`
keeps decoded images in memory up to a byte budget, so a dataset the size of LSP
(2000 images, about 120 MB decoded) is decoded once per process. DataLoader workers
each hold their own copy: call :meth:`ImageFileDataset.preload` in the main process
before the workers start so they inherit the decoded images instead of decoding them
again in every (non-persistent) worker.

:class:`ImageFileDataset` is what the ``lsp``, ``lspet`` and ``folder`` plugins share:
a list of files, the cache, ``--skip-bad`` and the split of an unlabelled pool.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch.utils.data
from PIL import Image, ImageFile
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sslbench.contract.errors import ConfigError, DataError
from sslbench.contract.interfaces import ImageDataset, Splits
from sslbench.contract.registry import Entry
from sslbench.data import splits as splitting

#: default budget of decoded images kept per dataset and process (override: SSLBENCH_IMAGE_CACHE_MB)
DEFAULT_CACHE_BYTES = 2 << 30

_load_lock = threading.Lock()


class DataWarning(UserWarning):
    """Something in a dataset was skipped or looks suspicious, but the data is usable."""


# ----------------------------------------------------------------------------- decoding


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode *path* fully into an RGB ``uint8`` array (H, W, 3).

    Grayscale, palette, CMYK and alpha images are converted to RGB. A truncated file
    raises even if some other library set ``ImageFile.LOAD_TRUNCATED_IMAGES``: PIL
    would otherwise fill the missing part with grey and say nothing.
    """
    try:
        with Image.open(path) as image:
            if ImageFile.LOAD_TRUNCATED_IMAGES:
                with _load_lock:  # switch PIL's global back to strict for this one load
                    ImageFile.LOAD_TRUNCATED_IMAGES = False
                    try:
                        image.load()
                    finally:
                        ImageFile.LOAD_TRUNCATED_IMAGES = True
            else:
                image.load()
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            array = np.asarray(rgb)
    except FileNotFoundError:
        raise DataError(f"{path}: cannot read image: file not found") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read image: {exc or type(exc).__name__}") from None
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"{path}: cannot read image: decoded to an array of shape {array.shape}")
    return array


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise DataError(f"{path}: cannot read image: file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read image: {exc}") from None


# -------------------------------------------------------------------------------- cache


def default_cache_bytes() -> int:
    """The cache budget: ``SSLBENCH_IMAGE_CACHE_MB`` if set, else 2 GiB."""
    text = os.environ.get("SSLBENCH_IMAGE_CACHE_MB")
    if text is None:
        return DEFAULT_CACHE_BYTES
    try:
        megabytes = float(text)
    except ValueError:
        raise ConfigError(f"SSLBENCH_IMAGE_CACHE_MB must be a number of megabytes, got {text!r}") from None
    return max(0, int(megabytes * (1 << 20)))


class ImageCache:
    """Decoded images by key, filled until *max_bytes* is reached.

    Nothing is evicted once the budget is full: under the uniformly random access of
    training, keeping the first images gives the same hit rate as LRU without the
    churn. Cached arrays are read-only so no caller can change what the next one gets.
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = default_cache_bytes() if max_bytes is None else int(max_bytes)
        self._items: dict[Any, np.ndarray] = {}
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Any) -> bool:
        return key in self._items

    def get(self, key: Any, load: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for *key*, or ``load()`` (stored if it fits the budget)."""
        found = self._items.get(key)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        array = load()
        self.put(key, array)
        return array

    def budget(self) -> int:
        """Bytes this process may hold: in a DataLoader worker, the budget split among the workers.

        Workers are forked with the parent's cache (shared copy-on-write pages); what
        they add is their own, so without the split N workers could hold N budgets.
        """
        info = torch.utils.data.get_worker_info()
        return self.max_bytes if info is None else self.max_bytes // max(1, info.num_workers)

    def put(self, key: Any, array: np.ndarray) -> None:
        """Store *array* (made read-only) if it fits the remaining budget."""
        with self._lock:
            if key in self._items or self.nbytes + array.nbytes > self.budget():
                return
            array.flags.writeable = False
            self._items[key] = array
            self.nbytes += array.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0

    def __getstate__(self) -> dict[str, Any]:
        # pickled for spawned DataLoader workers: they start empty and fill their own copy
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_bytes"])


# --------------------------------------------------------------------------- joints.mat


def load_mat_array(path: Path, key: str = "joints") -> np.ndarray:
    """The float64 array *key* of a MATLAB file; missing, unreadable or truncated -> DataError."""
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        content = scipy.io.loadmat(str(path), variable_names=[key])
    except Exception as exc:  # noqa: BLE001  # scipy raises ValueError, TypeError, zlib.error, MatReadError ...
        raise DataError(f"{path}: cannot read annotations: {type(exc).__name__}: {exc}") from None
    if key not in content:
        raise DataError(f"{path}: no variable {key!r} in the file")
    try:
        return np.asarray(content[key], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: variable {key!r} is not a numeric array: {exc}") from None


def check_joint_values(joints: np.ndarray, path: Path, names: Sequence[str]) -> None:
    """Every (14, 3) block must have finite x, y and a 0/1 flag; the error names the image."""
    finite = np.isfinite(joints[:, :, :2]).all(axis=(1, 2))
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        count = int((~finite).sum())
        raise DataError(
            f"{path}: non-finite joint coordinates (NaN or inf) for {names[first]}"
            + (f" and {count - 1} more images" if count > 1 else "")
        )
    flags = joints[:, :, 2]
    bad = ~np.isin(flags, (0.0, 1.0)).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        found = sorted(set(flags[first].tolist()))
        raise DataError(f"{path}: visibility flags must be 0 or 1, found {found} for {names[first]}")


# ------------------------------------------------------------------------------ datasets

#: file names of the LSP family: im0001.jpg, im00001.jpg, ...
IMAGE_NAME = re.compile(r"^im\d+\.jpg$", re.IGNORECASE)


def expected_names(count: int, digits: int) -> list[str]:
    """``im0001.jpg`` .. for *count* annotations (zero-padded to *digits*)."""
    return [f"im{i:0{digits}d}.jpg" for i in range(1, count + 1)]


def match_images(images_dir: Path, names: list[str], annotations: Path) -> list[Path]:
    """The image files for *names*; a count mismatch or a missing name is a DataError."""
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder not found")
    found = {p.name for p in images_dir.iterdir() if IMAGE_NAME.match(p.name)}
    if len(found) != len(names):
        raise DataError(
            f"{images_dir}: {len(found)} images (imNNNN.jpg) but {annotations} has {len(names)} annotations"
        )
    missing = [name for name in names if name not in found]
    if missing:
        raise DataError(
            f"{images_dir / missing[0]}: image not found ({len(missing)} of {names[0]}..{names[-1]} missing)"
        )
    return [images_dir / name for name in names]


def annotated_images(images_dir: Path, joints: np.ndarray, annotations: Path, digits: int) -> list[Path]:
    """The files ``im0001.jpg`` .. (zero-padded to *digits*) in *images_dir* that the (N, K, 3) *joints*
    read from *annotations* label, in their order: :func:`match_images`, then :func:`check_joint_values`."""
    names = expected_names(joints.shape[0], digits)
    paths = match_images(images_dir, names, annotations)
    check_joint_values(joints, annotations, names)
    return paths


def shape_text(shape: tuple[int, ...]) -> str:
    """``(3, 14, 2000)`` -> ``"3x14x2000"``."""
    return "x".join(str(s) for s in shape)


def unlabelled_val_count(size: int, cap: int = 500, fraction: float = 0.05) -> int:
    """Held-out images of an unlabelled pool: 5% of it, at least 1, at most *cap* (500 of LSPET's 10k)."""
    return max(1, min(cap, int(size * fraction)))


class ImageFileDataset(ImageDataset):
    """Images stored as files (one per sample), decoded on first use and cached.

    ``__init__`` checks *root* (:func:`require_root`) and keeps it as :attr:`root`, a Path.
    Subclasses then set :attr:`paths` (and their labels) in their ``__init__`` and call
    :meth:`_drop_unreadable` when ``skip_bad`` is asked for.
    """

    root: Path

    def __init__(self, root: Path | str | None, cache_bytes: int | None = None) -> None:
        super().__init__(require_root(root, self.name))
        self.paths: list[Path] = []
        #: file names dropped by ``skip_bad`` (unreadable images)
        self.skipped: list[str] = []
        self.cache = ImageCache(cache_bytes)

    @classmethod
    def create(cls, root: Path | str | None = None, skip_bad: bool = False, **options: Any) -> ImageFileDataset:
        """Registry factory: *root* is the dataset folder; the only option is ``cache_bytes``."""
        cache_bytes = options.pop("cache_bytes", None)
        reject_options(cls.name, options)
        return cls(root, skip_bad=skip_bad, cache_bytes=cache_bytes)

    @classmethod
    def entry(cls, description: str) -> Entry:
        """The registry entry of this dataset: named ``cls.name``, built by :meth:`create`."""
        return Entry(cls.name, description, cls.create)

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, index: int) -> Path:
        return self.paths[index]

    def image_id(self, index: int) -> str:
        return self.paths[index].name

    def image(self, index: int) -> np.ndarray:
        path = self.paths[index]
        return self.cache.get(index, lambda: read_image(path))

    def preload(self, indices: Sequence[int] | None = None) -> int:
        """Decode images (all, or *indices*) into the cache until its budget is full.

        Call it in the main process before creating DataLoader workers: forked workers
        then share the decoded images instead of decoding them again every epoch.
        Returns the number of images cached.
        """
        for index in range(len(self)) if indices is None else indices:
            if self.cache.nbytes >= self.cache.budget():
                break
            self.image(index)
        return len(self.cache)

    def _drop_unreadable(self) -> list[int]:
        """Decode every image (filling the cache); drop unreadable ones, warn with the count.

        Returns the kept positions (into the list before dropping) so subclasses can
        filter their labels the same way.
        """
        kept: list[int] = []
        decoded: dict[int, np.ndarray] = {}  # new index -> array, as many as the cache takes
        budget = self.cache.max_bytes
        bad: list[str] = []
        for position, path in enumerate(self.paths):
            try:
                array = read_image(path)
            except DataError:
                bad.append(path.name)
                continue
            if array.nbytes <= budget:
                decoded[len(kept)] = array
                budget -= array.nbytes
            kept.append(position)
        self.paths = [self.paths[i] for i in kept]
        self.skipped = bad
        self.cache.clear()
        for index, array in decoded.items():
            self.cache.put(index, array)
        if bad:
            shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
            warnings.warn(
                f"{self.name}: skipped {len(bad)} unreadable image{'s' if len(bad) != 1 else ''} "
                f"in {self.root} ({shown})",
                DataWarning,
                stacklevel=3,
            )
        return kept

    def _check_protocol(self, protocol: str) -> None:
        if protocol not in self.protocols:
            known = ", ".join(self.protocols)
            raise ConfigError(f"--protocol: dataset {self.name!r} has no protocol {protocol!r}; available: {known}")

    def unlabelled_splits(self, protocol: str, train_size: int | None, seed: int) -> Splits:
        """Pretext split of the whole pool: 5% (at most 500) held out for validation, no test."""
        self._check_protocol(protocol)
        if len(self) < 2:
            raise DataError(f"{self.root}: {len(self)} image(s): a dataset needs at least 2 to hold one out")
        rest, val = splitting.carve(range(len(self)), unlabelled_val_count(len(self)))
        return Splits(
            train=splitting.budget(rest, train_size, seed),
            val=val,
            test=[],
            pool_size=len(rest),
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "skipped": len(self.skipped)}


def require_root(root: Path | str | None, name: str) -> Path:
    """*root* as a Path of an existing folder, or a DataError naming the dataset/folder."""
    if root is None:
        raise DataError(f"--root is required for dataset {name}")
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root}: dataset folder not found (dataset {name})")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (dataset {name})")
    return root


def reject_options(name: str, options: dict[str, Any]) -> None:
    """Factories take ``cache_bytes`` and nothing else: name what is unknown."""
    if options:
        raise ConfigError(f"dataset {name}: unknown option(s) {', '.join(sorted(options))} (known: cache_bytes)")


def progress_bar(transient: bool = True) -> Progress:
    """A progress bar on stderr for one pass over a dataset's images (verify, preview)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=transient,
    )
