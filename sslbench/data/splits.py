"""Deterministic splits and nested, seed-dependent training budgets.

Validation and test images never depend on the run seed, so every seed and every
budget is scored on the same images. The training budget is a prefix of a
seed-dependent permutation of the pool, so the 200-image subset of a seed lies
inside its 1000-image subset.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from sslbench.contract.errors import ConfigError
from sslbench.contract.interfaces import Splits

#: fixed seed for carving validation sets: independent of the run seed
VAL_SEED = 20100506


def budget(pool: Sequence[int], train_size: int | None, seed: int, option: str = "--train-size") -> list[int]:
    """The first *train_size* images of a seed-dependent permutation of *pool* (all if None)."""
    pool = list(pool)
    if train_size is None:
        return pool
    if train_size < 1:
        raise ConfigError(f"{option} must be >= 1, got {train_size}")
    if train_size > len(pool):
        raise ConfigError(f"{option} {train_size} is larger than the training pool ({len(pool)} images)")
    order = np.random.default_rng(np.random.SeedSequence([seed, 7919])).permutation(len(pool))
    return sorted(pool[i] for i in order[:train_size])


def carve(pool: Sequence[int], count: int) -> tuple[list[int], list[int]]:
    """Split *pool* into (rest, held_out) with *count* held-out images chosen by a fixed seed."""
    pool = list(pool)
    if not 0 <= count < len(pool):
        raise ConfigError(f"cannot hold out {count} validation images from a pool of {len(pool)}")
    order = np.random.default_rng(VAL_SEED).permutation(len(pool))
    held = set(order[:count].tolist())
    return [p for i, p in enumerate(pool) if i not in held], [p for i, p in enumerate(pool) if i in held]


def train_val_test(
    train_pool: Sequence[int],
    test: Sequence[int],
    val_size: int,
    train_size: int | None,
    seed: int,
    warning: str | None = None,
) -> Splits:
    """Carve *val_size* validation images from *train_pool*, then draw the budget from the rest."""
    rest, val = carve(train_pool, val_size)
    return Splits(
        train=budget(rest, train_size, seed),
        val=val,
        test=list(test),
        pool_size=len(rest),
        warning=warning,
    )


def fixed_partition(n: int, sizes: Sequence[int], seed: int = VAL_SEED) -> list[list[int]]:
    """Partition ``range(n)`` into consecutive parts of *sizes* after a fixed shuffle."""
    if sum(sizes) > n:
        raise ConfigError(f"cannot split {n} images into parts of {list(sizes)}")
    order = np.random.default_rng(seed).permutation(n).tolist()
    parts, start = [], 0
    for size in sizes:
        parts.append(sorted(order[start : start + size]))
        start += size
    return parts
