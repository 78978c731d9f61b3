"""Pieces every pretext plugin shares: option checks, the unlabelled view, the base sample, averages,
and :class:`KitPretext`, the base class that puts them together.

Every pretext starts from the same view of an unlabelled image: its centred square
(:func:`sslbench.data.pipeline.centre_square`) resampled to the size the task needs. When
training, the view is lightly augmented: zoomed in by up to 20 % at a random offset
(the view never leaves the image, so no fill pixels appear), mirrored half of the
time, and jittered in brightness and contrast by up to 20 %. Evaluation views are the
plain centre square. All random draws come from the generator the caller passes
(``key.rng()``), so samples are reproducible by seed.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sslbench.contract.errors import ConfigError, DataError
from sslbench.contract.interfaces import Geometry, Metric, Pretext
from sslbench.contract.registry import Entry
from sslbench.data.pipeline import centre_map_tensor, centre_square, crop_matrix, warp

# ---------------------------------------------------------------------------- options


@functools.cache
def option_names(cls: type[Pretext]) -> tuple[str, ...]:
    """The options of pretext class *cls*: the named parameters of ``cls.__init__`` and, while an
    ``__init__`` passes ``**options`` on, those of its base classes (in that order)."""
    known: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        known += [p.name for p in parameters if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return tuple(dict.fromkeys(known))


def pretext_factory(cls: type[Pretext]) -> Callable[..., Pretext]:
    """A registry factory for *cls* that turns unknown option names (:func:`option_names`) into a ConfigError."""
    known = option_names(cls)

    @functools.wraps(cls)
    def factory(**options: Any) -> Pretext:
        unknown = sorted(set(options) - set(known))
        if unknown:
            available = ", ".join(known) or "none"
            raise ConfigError(f"pretext {cls.name}: unknown option {unknown[0]!r} (options: {available})")
        return cls(**options)

    return factory


def pretext_entry(cls: type[Pretext], description: str) -> Entry:
    """The registry entry of pretext class *cls*: named ``cls.name``, built by :func:`pretext_factory`."""
    return Entry(cls.name, description, pretext_factory(cls))


# Option checks of every plugin with options (pretexts here, strategies through
# :func:`sslbench.experiment.strategies.check_options`): *owner* is the plugin's name, *kind* its kind.


def option_bool(owner: str, option: str, value: Any, *, kind: str = "pretext") -> bool:
    """*value* as a bool (``True``/``False`` or 0/1), else a ConfigError naming the option."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise ConfigError(f"{kind} {owner}: option {option} must be true or false, got {value!r}")


def option_float(
    owner: str, option: str, value: Any, low: float, high: float, *, open_low: bool = False, kind: str = "pretext"
) -> float:
    """*value* as a finite float in [low, high] (``(low, high]`` with *open_low*)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and value <= high
    if not ok:
        bracket = "(" if open_low else "["
        raise ConfigError(f"{kind} {owner}: option {option} must be a number in {bracket}{low}, {high}], got {value!r}")
    return float(value)


def option_int(owner: str, option: str, value: Any, low: int, high: int, *, kind: str = "pretext") -> int:
    """*value* as an int in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ConfigError(f"{kind} {owner}: option {option} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def option_choice(owner: str, option: str, value: Any, choices: Iterable[str], *, kind: str = "pretext") -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{kind} {owner}: option {option} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


# ------------------------------------------------------------------------------ views


@dataclass(frozen=True)
class ViewAugment:
    """Light augmentation of the centre-square view of an unlabelled image."""

    #: the view is zoomed in by a factor drawn from [1, 1 + zoom]
    zoom: float = 0.2
    flip: bool = True
    #: brightness and contrast factors are drawn from [1 - x, 1 + x]
    brightness: float = 0.2
    contrast: float = 0.2


LIGHT = ViewAugment()


def check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise DataError(f"pretext input must be an RGB uint8 array (H, W, 3), got shape {shape} dtype {dtype}")
    if min(image.shape[:2]) < 1:
        raise DataError(f"pretext input image is empty: shape {image.shape}")


def square_view(
    image: np.ndarray, size: int, rng: np.random.Generator | None = None, augment: ViewAugment = LIGHT
) -> np.ndarray:
    """The centre square of *image* as a (size, size, 3) uint8 view; augmented when *rng* is given."""
    check_image(image)
    height, width = image.shape[:2]
    (cx, cy), side = centre_square(height, width)
    scale, flip = 1.0, False
    if rng is not None:
        scale = float(rng.uniform(1.0, 1.0 + augment.zoom))
        slack = (side - side / scale) / 2.0  # how far the zoomed square may move and stay inside
        cx += float(rng.uniform(-slack, slack))
        cy += float(rng.uniform(-slack, slack))
        flip = bool(augment.flip and rng.random() < 0.5)
    view = warp(image, crop_matrix((cx, cy), side, size, scale=scale, flip=flip), size)
    if rng is not None and (augment.brightness or augment.contrast):
        view = colour_jitter(view, rng, augment.brightness, augment.contrast)
    return view


def colour_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float) -> np.ndarray:
    """Scale brightness and contrast by random factors in [1 - x, 1 + x] (uint8 in, uint8 out)."""
    b = rng.uniform(1.0 - brightness, 1.0 + brightness)
    c = rng.uniform(1.0 - contrast, 1.0 + contrast)
    pixels = image.astype(np.float32) * b
    pixels = (pixels - pixels.mean()) * c + pixels.mean()
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def base_sample(image: torch.Tensor, geometry: Geometry) -> dict[str, Any]:
    """``{"image", "centermap"}``: what every sample carries."""
    return {"image": image.contiguous(), "centermap": centre_map_tensor(geometry.input_size)}


def check_geometry(pretext: str, geometry: Geometry, minimum_map: int = 1) -> None:
    if geometry.input_size < 1 or geometry.stride < 1 or geometry.map_size < minimum_map:
        raise ConfigError(
            f"pretext {pretext} needs output maps of at least {minimum_map}x{minimum_map}; "
            f"input {geometry.input_size} px at stride {geometry.stride} gives {geometry.map_size}"
        )


# ------------------------------------------------------------------------ base class


class KitPretext(Pretext):
    """A pretext built from this kit: its options are the parameters of ``__init__``, each checked
    with an ``option_*`` method and kept as the attribute of the same name, and :meth:`config` is
    ``{"name": name, option: attribute, ...}`` in the order of :func:`option_names`. Its samples
    start from :meth:`view`, augmented only when training with the ``augment`` option on."""

    #: whether training views are augmented (an ``augment`` option sets it)
    augment: bool = False

    def option_bool(self, option: str, value: Any) -> bool:
        return option_bool(self.name, option, value)

    def option_float(self, option: str, value: Any, low: float, high: float, *, open_low: bool = False) -> float:
        return option_float(self.name, option, value, low, high, open_low=open_low)

    def option_int(self, option: str, value: Any, low: int, high: int) -> int:
        return option_int(self.name, option, value, low, high)

    def option_choice(self, option: str, value: Any, choices: Iterable[str]) -> str:
        return option_choice(self.name, option, value, choices)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **{option: getattr(self, option) for option in option_names(type(self))}}

    def view(self, image: np.ndarray, size: int, rng: np.random.Generator, train: bool) -> np.ndarray:
        """:func:`square_view` of *image* at *size* px, augmented from *rng* when *train* and ``augment``."""
        return square_view(image, size, rng if train and self.augment else None)


# ---------------------------------------------------------------------------- metrics


class Averages:
    """Running sums and counts of named quantities; :meth:`compute` gives their means."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, name: str, total: float, count: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(total)
        self.counts[name] = self.counts.get(name, 0.0) + float(count)

    def mean(self, name: str) -> float:
        count = self.counts.get(name, 0.0)
        return self.sums[name] / count if count else float("nan")

    def compute(self) -> dict[str, float]:
        return {name: self.mean(name) for name in self.sums}


def batch_size(batch: dict[str, Any]) -> int:
    return int(batch["image"].shape[0])


class PretextMetric(Metric):
    """The task's loss averaged per image, plus the pretext's own scores of the last stage.

    Subclasses implement :meth:`score`, adding named sums and counts to ``self.averages``.
    """

    def __init__(self, task: Pretext) -> None:
        self.task = task
        self.averages = Averages()

    @torch.no_grad()
    def update(self, outputs: list[torch.Tensor], batch: dict[str, Any]) -> None:
        n = batch_size(batch)
        self.averages.add("loss", float(self.task.loss(outputs, batch)) * n, n)
        self.score(outputs[-1], batch, n)

    def score(self, last: torch.Tensor, batch: dict[str, Any], n: int) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        return self.averages.compute()
