"""Jigsaw puzzles shared by ``jigsaw-heatmap`` and ``jigsaw-ce``: tiles, permutations, targets.

A puzzle is the centre square of an image cut into a 3x3 grid of tiles with a gap
between tiles (5 px at 368 px, the report's setting), shuffled by a permutation.
``perm[i]`` is the *original* position of the tile now at *shuffled* position ``i``
(the report's label convention, sec. 3.2); positions count row by row from the top
left, 0-based::

    0 1 2
    3 4 5
    6 7 8

Every permutation is a derangement: no tile stays in its place (the report's rule).

Permutation modes (the ``permutations`` option of both jigsaw pretexts):

``fixed:N``
    N distinct derangements per image, drawn once from the image's fixed random stream
    and cycled epoch by epoch (the report shuffled every image by 10 permutations).
``fresh``
    a new random derangement every epoch.
``set:N``
    a global set of N derangements chosen greedily by maximal average Hamming
    distance from a fixed seed (Noroozi & Favaro 2016); each epoch draws one of them.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from sslbench.contract.errors import ConfigError
from sslbench.contract.interfaces import SampleKey
from sslbench.data.pipeline import gaussian_maps, input_to_map
from sslbench.tasks.pretexts import Averages

GRID = 3
NUM_TILES = GRID * GRID
#: the report's geometry: gap between tiles at 368 px, Gaussian sigma on the 46 x 46 map
REPORT_INPUT_SIZE = 368
REPORT_GAP = 5
REPORT_MAP_SIZE = 46
REPORT_SIGMA = 5.0
#: with ``tile_crop`` every tile is a random window of this fraction of its cell's side
#: (Noroozi & Favaro: 64 px tiles in 85 px cells)
TILE_CROP_FRACTION = 0.75
#: seed of the maximal-Hamming permutation sets: the same set for every run and machine
HAMMING_SEED = 1760
#: largest N accepted by ``fixed:N`` (there are 133,496 derangements of 9 tiles)
MAX_FIXED = 1000
#: largest N accepted by ``set:N`` (Noroozi & Favaro used up to 1000; the greedy choice
#: costs about 6 ms per permutation)
MAX_SET = 2000

IDENTITY = np.arange(NUM_TILES)


# ---------------------------------------------------------------------- permutations


def is_derangement(perm: np.ndarray) -> bool:
    """Whether *perm* is a permutation of 0..8 that moves every tile."""
    perm = np.asarray(perm)
    return perm.shape == (NUM_TILES,) and sorted(perm.tolist()) == list(range(NUM_TILES)) and bool(
        (perm != IDENTITY).all()
    )


@functools.lru_cache(maxsize=1)
def all_derangements() -> np.ndarray:
    """Every derangement of 9 tiles, (133496, 9) int8 in lexicographic order (read-only)."""
    perms = np.array(list(itertools.permutations(range(NUM_TILES))), dtype=np.int8)
    out = perms[(perms != IDENTITY).all(axis=1)]
    out.setflags(write=False)
    return out


def random_derangement(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random derangement (rejection sampling: about 2.7 tries on average)."""
    while True:
        perm = rng.permutation(NUM_TILES)
        if (perm != IDENTITY).all():
            return perm


def distinct_derangements(rng: np.random.Generator, count: int) -> np.ndarray:
    """*count* different random derangements, (count, 9) int64, in drawing order."""
    seen: set[tuple[int, ...]] = set()
    out: list[np.ndarray] = []
    while len(out) < count:
        perm = random_derangement(rng)
        if tuple(perm) not in seen:
            seen.add(tuple(perm))
            out.append(perm)
    return np.stack(out).astype(np.int64)


def hamming_distances(perms: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances (number of positions that differ), (N, N) int."""
    perms = np.asarray(perms)
    return (perms[:, None, :] != perms[None, :, :]).sum(axis=2)


@functools.lru_cache(maxsize=8)
def hamming_set(count: int, seed: int = HAMMING_SEED) -> np.ndarray:
    """*count* derangements chosen greedily by maximal average Hamming distance (read-only).

    Noroozi & Favaro's procedure: start from a random derangement, then repeatedly add
    the derangement whose average Hamming distance to those already chosen is largest.
    Ties (there are many) go to the candidate farthest from its nearest chosen one, then
    to a random one, so the set also keeps a large minimum distance. Deterministic for a
    given *seed*.

    For large sets the average cannot rise far above a random set's: it is 9 minus the
    chance that two permutations agree at a position, which is smallest when every value
    is equally common at every position (about 7.95 for 100 derangements, 7.89 for random
    ones). The greedy choice reaches that balance; the tie-break raises the minimum.
    """
    pool = all_derangements()
    if not 1 <= count <= len(pool):
        raise ConfigError(f"a permutation set needs 1..{len(pool)} permutations, got {count}")
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(pool)))]
    total = np.zeros(len(pool), dtype=np.int64)  # sum of distances to the chosen ones
    nearest = np.full(len(pool), NUM_TILES + 1, dtype=np.int64)  # distance to the nearest chosen one
    for _ in range(1, count):
        distance = (pool != pool[chosen[-1]]).sum(axis=1)
        total += distance
        np.minimum(nearest, distance, out=nearest)
        score = total * (NUM_TILES + 2) + nearest  # lexicographic: average first, then minimum
        score[chosen] = -1  # never twice
        best = np.flatnonzero(score == score.max())
        chosen.append(int(best[rng.integers(len(best))]))
    out = pool[chosen].astype(np.int64)
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class PermutationMode:
    """How the permutation of a sample is chosen: ``fixed:N``, ``fresh`` or ``set:N``."""

    kind: Literal["fixed", "fresh", "set"]
    count: int = 0

    @classmethod
    def parse(cls, text: object, option: str = "permutations") -> PermutationMode:
        """``"fixed:10"`` -> PermutationMode("fixed", 10); bad text -> ConfigError naming *option*."""
        if isinstance(text, str):
            if text == "fresh":
                return cls("fresh")
            match = re.fullmatch(r"(fixed|set):(\d+)", text)
            if match:
                kind, count = match.group(1), int(match.group(2))
                limit = MAX_FIXED if kind == "fixed" else MAX_SET
                if not 1 <= count <= limit:
                    raise ConfigError(f"option {option}: {kind}:N needs 1 <= N <= {limit}, got {text!r}")
                return cls(kind, count)  # type: ignore[arg-type]
        raise ConfigError(f"option {option} must be 'fixed:N', 'fresh' or 'set:N', got {text!r}")

    @property
    def text(self) -> str:
        return "fresh" if self.kind == "fresh" else f"{self.kind}:{self.count}"

    def permutation_set(self) -> np.ndarray:
        """The global set of a ``set:N`` mode, (N, 9)."""
        if self.kind != "set":
            raise ConfigError(f"permutations {self.text!r} has no global permutation set")
        return hamming_set(self.count)

    def draw(self, key: SampleKey, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """The sample's permutation (9,) int64 and its index in the global set (-1 if none).

        ``fixed`` uses the image's per-image stream (same list every epoch) and takes entry
        ``epoch % N``; ``fresh`` and ``set`` draw from *rng*, the sample's per-epoch stream.
        """
        if self.kind == "fixed":
            perms = distinct_derangements(key.rng(per_epoch=False), self.count)
            return perms[key.epoch % self.count], -1
        if self.kind == "fresh":
            return random_derangement(rng).astype(np.int64), -1
        index = int(rng.integers(self.count))
        return self.permutation_set()[index].copy(), index


# ------------------------------------------------------------------------- geometry


def scaled_gap(input_size: int, gap_at_368: int = REPORT_GAP) -> int:
    """Gap between tiles at *input_size*: ``round(gap * S / 368)``, at least 1 px unless *gap* is 0.

    At 368 px the report's 5 px; 2 px at 128; 1 px at 64 and below (a zero-width gap
    would leave the tiles touching, so small inputs keep one pixel).
    """
    if gap_at_368 == 0:
        return 0
    return max(1, round(gap_at_368 * input_size / REPORT_INPUT_SIZE))


@dataclass(frozen=True)
class TileLayout:
    """Where the 3x3 tiles sit in an ``size`` x ``size`` puzzle: equal tiles, ``gap`` px apart, centred."""

    size: int
    gap: int

    def __post_init__(self) -> None:
        if self.tile < 1:
            raise ConfigError(f"input size {self.size} is too small for 3x3 jigsaw tiles with a {self.gap} px gap")

    @property
    def tile(self) -> int:
        """Side of every tile in pixels."""
        return (self.size - 2 * self.gap) // GRID

    @property
    def offset(self) -> int:
        """Left/top margin that centres the grid (the rounding remainder)."""
        return (self.size - GRID * self.tile - 2 * self.gap) // 2

    def start(self, index: int) -> int:
        """First pixel of tile row/column *index* (0..2)."""
        return self.offset + index * (self.tile + self.gap)

    def box(self, position: int) -> tuple[slice, slice]:
        """(rows, cols) slices of the tile at grid *position* (0..8, row by row)."""
        row, col = divmod(position, GRID)
        y, x = self.start(row), self.start(col)
        return slice(y, y + self.tile), slice(x, x + self.tile)

    def source_size(self, tile_crop: bool) -> int:
        """Side of the square view the tiles are cut from.

        Without ``tile_crop`` the view is the puzzle itself (each tile keeps its pixels);
        with it the view is larger so every cell is ``tile / 0.75`` wide and a tile is a
        random ``tile x tile`` window inside its cell.
        """
        return math.ceil(GRID * self.tile / TILE_CROP_FRACTION) if tile_crop else self.size

    def tile_centres(self) -> np.ndarray:
        """Input-pixel coordinates of the three tile centres along one axis, (3,) float."""
        return np.array([self.start(i) + (self.tile - 1) / 2.0 for i in range(GRID)])


CentreConvention = Literal["report", "exact"]


def cell_centres(
    map_size: int, convention: CentreConvention = "report", layout: TileLayout | None = None, stride: int = 8
) -> np.ndarray:
    """Map coordinates (3,) of the three cell centres along each axis, where target maps peak.

    ``report``: the map pixel holding the centre of each third of the map, counted from 1
    as the report did: ``floor((i + 1/2) * m / 3) + 1``. At m = 46 this is the report's
    (8, 24, 39) (its Table 3.4); the peaks sit about one map pixel right of and below
    the tiles' true centres, which a fully convolutional network absorbs. On maps of 8
    pixels or less that pixel can fall outside its third; it is then clamped into it
    (pixel ``u`` belongs to third ``floor((u + 1/2) * 3 / m)``), e.g. (2, 4, 7) at m = 8.

    ``exact``: the true centres of the tiles of *layout*, mapped from input pixels to
    map coordinates (at 368 px with a 5 px gap: about 6.9, 22.4, 37.9).
    """
    if map_size < GRID:
        raise ConfigError(f"jigsaw targets need a map of at least 3x3 pixels, got {map_size}x{map_size}")
    if convention == "report":
        index = np.arange(GRID)
        centres = np.floor((index + 0.5) * map_size / GRID) + 1.0
        # pixels of third i: from ceil(i m / 3 - 1/2) to ceil((i + 1) m / 3 - 1/2) - 1
        first = np.ceil(index * map_size / GRID - 0.5)
        last = np.ceil((index + 1) * map_size / GRID - 0.5) - 1.0
        return np.clip(centres, first, last)
    if convention == "exact":
        if layout is None:
            raise ValueError("exact cell centres need the tile layout")
        return input_to_map(layout.tile_centres(), stride)
    raise ConfigError(f"option centres must be 'report' or 'exact', got {convention!r}")


def make_puzzle(
    view: torch.Tensor, perm: np.ndarray, layout: TileLayout, rng: np.random.Generator | None = None
) -> torch.Tensor:
    """Shuffle the normalised square *view* (3, L, L) into a puzzle (3, S, S); gaps are 0.

    Shuffled position ``i`` shows the tile cut from original position ``perm[i]``. When
    *view* is larger than the puzzle (``tile_crop``), each original tile is a ``tile x
    tile`` window inside its cell of the view, placed at random by *rng* (centred if None).
    """
    channels, side, _ = view.shape
    puzzle = view.new_zeros((channels, layout.size, layout.size))
    tile = layout.tile
    cell = side / GRID
    for position in range(NUM_TILES):
        source = int(perm[position])
        rows, cols = layout.box(position)
        if side == layout.size:
            src_rows, src_cols = layout.box(source)
        else:
            row, col = divmod(source, GRID)
            y, x = (_window_start(index, cell, tile, rng) for index in (row, col))
            src_rows, src_cols = slice(y, y + tile), slice(x, x + tile)
        puzzle[:, rows, cols] = view[:, src_rows, src_cols]
    return puzzle


def _window_start(index: int, cell: float, tile: int, rng: np.random.Generator | None) -> int:
    """First pixel of a *tile*-wide window inside cell *index* of width *cell*."""
    low = math.ceil(index * cell)
    high = max(low, math.floor((index + 1) * cell) - tile)
    if rng is None:
        return (low + high) // 2
    return int(rng.integers(low, high + 1))


def puzzle_targets(perm: np.ndarray, centres: np.ndarray, map_size: int, sigma: float) -> np.ndarray:
    """float32 (9, m, m): map ``i`` is a Gaussian at the centre of cell ``perm[i]``."""
    rows, cols = np.divmod(np.asarray(perm), GRID)
    points = np.stack([centres[cols], centres[rows]], axis=1)  # (x, y)
    return gaussian_maps(points, map_size, sigma)


def decode_cells(maps: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(B, K, m, m) maps -> (B, K) cell index of each map's peak (nearest cell centre per axis)."""
    maps = maps.detach()
    b, k, h, w = maps.shape
    index = maps.reshape(b, k, h * w).argmax(dim=2)
    ys = torch.div(index, w, rounding_mode="floor").to(torch.float32)
    xs = (index % w).to(torch.float32)
    centres = centres.to(device=maps.device, dtype=torch.float32)
    row = (ys[..., None] - centres).abs().argmin(dim=-1)
    col = (xs[..., None] - centres).abs().argmin(dim=-1)
    return row * GRID + col


def puzzle_hits(predicted: torch.Tensor, perm: torch.Tensor) -> tuple[int, int]:
    """(tiles placed right, puzzles entirely right) for (B, 9) predicted and true origins."""
    right = predicted.to(perm.device) == perm
    return int(right.sum()), int(right.all(dim=1).sum())


def add_puzzle_accuracy(averages: Averages, predicted: torch.Tensor, perm: torch.Tensor, n: int) -> None:
    """Add ``tile_acc`` and ``puzzle_acc`` (percent) of *n* puzzles' (B, 9) *predicted* origins to *averages*."""
    tiles, puzzles = puzzle_hits(predicted, perm)
    averages.add("tile_acc", 100.0 * tiles, n * NUM_TILES)
    averages.add("puzzle_acc", 100.0 * puzzles, n)
