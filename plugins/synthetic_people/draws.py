"""Random draws for the renderer: fast scalar uniforms, integers, choices and Gaussians from a numpy Generator."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")
#: (low, high) of a uniform draw
Range = tuple[float, float]


class Random:
    """Fast scalar draws from a numpy Generator.

    A render makes a few hundred scalar draws; numpy's per-call overhead (several
    microseconds each) would cost more than the drawing itself, so uniforms are
    taken from blocks. Deterministic: the same generator state gives the same draws.
    """

    def __init__(self, rng: np.random.Generator, block: int = 256) -> None:
        self.rng = rng
        self.block = block
        self._values: Iterator[float] = iter(())

    def random(self) -> float:
        """Uniform in [0, 1)."""
        try:
            return next(self._values)
        except StopIteration:
            self._values = iter(self.rng.random(self.block).tolist())
            return next(self._values)

    def u(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.random()

    def i(self, lo: int, hi: int) -> int:
        """Integer in [lo, hi)."""
        return lo + int(self.random() * (hi - lo))

    def chance(self, p: float) -> bool:
        return self.random() < p

    def normal(self, mean: float = 0.0, std: float = 1.0) -> float:
        """Gaussian by the Box-Muller transform."""
        return mean + std * math.sqrt(-2.0 * math.log(1.0 - self.random())) * math.cos(2 * math.pi * self.random())

    def pick(self, options: Sequence[T], weights: Sequence[float] | None = None) -> T:
        if weights is None:
            return options[self.i(0, len(options))]
        x, total = self.random() * sum(weights), 0.0
        for option, weight in zip(options, weights):
            total += weight
            if x < total:
                return option
        return options[-1]
