"""Sample geometry: crops, augmentation, heatmap targets, centre maps, and the way back.

Every crop is a 3x3 affine matrix from original image pixels to network input
pixels, so a point predicted on a heatmap maps back to the original image exactly:
``map -> input`` (:func:`map_to_input`) then ``input -> original`` (inverse matrix).

Conventions: pixel centres sit at integer coordinates; heatmap pixel ``u`` at stride
``s`` covers input pixel ``s*u + (s-1)/2``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

#: ImageNet statistics (0-255 scale): shared with timm backbones
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255.0
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255.0
#: fill colour of pixels outside the original image (the mean: zero after normalising)
FILL = tuple(int(round(v)) for v in MEAN)


# ------------------------------------------------------------------------- tensors


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> normalised float32 (3, H, W)."""
    array = (image.astype(np.float32) - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def to_image(tensor: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`to_tensor`: float (3, H, W) -> uint8 (H, W, 3)."""
    array = tensor.detach().float().cpu().numpy().transpose(1, 2, 0) * STD + MEAN
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------ geometry


@dataclass(frozen=True)
class Augment:
    """Random geometric augmentation (the report's rotation of up to 40 degrees, plus scale and flip)."""

    rotation: float = 40.0
    scale: tuple[float, float] = (0.7, 1.3)
    flip: bool = True

    def draw(self, rng: np.random.Generator) -> tuple[float, float, bool]:
        """(rotation in degrees, scale factor, horizontal flip)."""
        rotation = float(rng.uniform(-self.rotation, self.rotation)) if self.rotation else 0.0
        scale = float(rng.uniform(*self.scale))
        flip = bool(self.flip and rng.random() < 0.5)
        return rotation, scale, flip


def crop_matrix(
    center: tuple[float, float],
    side: float,
    input_size: int,
    rotation: float = 0.0,
    scale: float = 1.0,
    flip: bool = False,
) -> np.ndarray:
    """Affine (3, 3) from original pixels to input pixels.

    The square of *side* pixels around *center* fills the ``input_size`` input; *scale*
    > 1 zooms in, *rotation* turns the content counter-clockwise (degrees), *flip*
    mirrors it left-right.
    """
    cx, cy = center
    zoom = scale * input_size / side
    theta = math.radians(rotation)
    cos, sin = math.cos(theta) * zoom, math.sin(theta) * zoom
    to_origin = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], dtype=np.float64)
    # image y points down, so a counter-clockwise turn on screen is this matrix
    rotate_scale = np.array([[cos, sin, 0], [-sin, cos, 0], [0, 0, 1]], dtype=np.float64)
    mirror = np.diag([-1.0 if flip else 1.0, 1.0, 1.0])
    half = (input_size - 1) / 2.0
    to_centre = np.array([[1, 0, half], [0, 1, half], [0, 0, 1]], dtype=np.float64)
    return to_centre @ mirror @ rotate_scale @ to_origin


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a (3, 3) affine to (N, 2) points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def warp(image: np.ndarray, matrix: np.ndarray, size: int, fill: tuple[int, int, int] = FILL) -> np.ndarray:
    """Resample *image* (H, W, 3) into a (size, size, 3) crop through *matrix* (bilinear)."""
    inverse = np.linalg.inv(matrix)
    # PIL samples output pixel (x, y) at its centre (x + 0.5, y + 0.5) and reads input
    # coordinates with the same half-pixel convention: shift in and out of it.
    shift = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    unshift = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    pil_inverse = shift @ inverse @ unshift
    zoom_out = 1.0 / math.sqrt(abs(np.linalg.det(matrix[:2, :2])))
    source = Image.fromarray(image)
    if zoom_out > 2.0:  # shrinking a lot: pre-filter to avoid aliasing
        factor = int(zoom_out // 1.5)
        source = source.reduce(factor)
        pil_inverse = _reduce_adjust(inverse, factor)
    out = source.transform(
        (size, size),
        Image.Transform.AFFINE,
        data=tuple(pil_inverse[:2].ravel()),
        resample=Image.Resampling.BILINEAR,
        fillcolor=fill,
    )
    return np.asarray(out)


def _reduce_adjust(inverse: np.ndarray, factor: int) -> np.ndarray:
    """PIL inverse matrix for sampling a ``reduce(factor)`` copy of the image.

    A reduced pixel j covers original pixels [j*f, (j+1)*f), its centre at original
    coordinate j*f + (f-1)/2; in PIL's half-pixel frame that is (j + 0.5) * f.
    """
    shift = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    unshift = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    to_reduced = np.diag([1.0 / factor, 1.0 / factor, 1.0])
    return to_reduced @ shift @ inverse @ unshift


def person_box(joints: np.ndarray, margin: float = 0.2) -> tuple[tuple[float, float], float]:
    """Square box around the joints: (centre, side), *margin* of the longer extent added on each side."""
    xy = np.asarray(joints, dtype=np.float64)[:, :2]
    xy = xy[np.isfinite(xy).all(axis=1)]
    low, high = xy.min(axis=0), xy.max(axis=0)
    centre = (low + high) / 2.0
    side = max(float((high - low).max()), 1.0) * (1.0 + 2.0 * margin)
    return (float(centre[0]), float(centre[1])), side


def centre_square(height: int, width: int) -> tuple[tuple[float, float], float]:
    """The largest centred square of an image: (centre, side)."""
    return ((width - 1) / 2.0, (height - 1) / 2.0), float(min(height, width))


def box_square(x: float, y: float, w: float, h: float, margin: float = 0.0) -> tuple[tuple[float, float], float]:
    """Square around a box given as top-left corner and size: (centre, side)."""
    return (x + (w - 1) / 2.0, y + (h - 1) / 2.0), max(w, h) * (1.0 + 2.0 * margin)


# ------------------------------------------------------------------------ heatmaps


def input_to_map(points: np.ndarray, stride: int) -> np.ndarray:
    return (np.asarray(points, dtype=np.float64) - (stride - 1) / 2.0) / stride


def map_to_input(points: np.ndarray, stride: int) -> np.ndarray:
    return np.asarray(points, dtype=np.float64) * stride + (stride - 1) / 2.0


def gaussian_maps(points: np.ndarray, size: int, sigma: float, present: np.ndarray | None = None) -> np.ndarray:
    """float32 (K, size, size): a Gaussian of peak 1 at each point (map pixels); zeros where not *present*."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    grid = np.arange(size, dtype=np.float64)
    gx = np.exp(-((grid[None, :] - points[:, :1]) ** 2) / (2 * sigma**2))  # (K, size)
    gy = np.exp(-((grid[None, :] - points[:, 1:]) ** 2) / (2 * sigma**2))
    maps = gy[:, :, None] * gx[:, None, :]
    if present is not None:
        maps[~np.asarray(present, dtype=bool)] = 0.0
    return maps.astype(np.float32)


def with_background(maps: np.ndarray) -> np.ndarray:
    """Append the CPM background map, ``1 - max`` over the part maps."""
    background = 1.0 - maps.max(axis=0, keepdims=True) if len(maps) else np.ones((1, *maps.shape[1:]), np.float32)
    return np.concatenate([maps, background.astype(np.float32)], axis=0)


#: CPM's centre-map sigma at its 368 px input; other sizes scale it
CENTRE_MAP_SIGMA_368 = 21.0


def centre_map(input_size: int, sigma: float = CENTRE_MAP_SIGMA_368) -> np.ndarray:
    """CPM centre map: float32 (1, S, S), a Gaussian at the centre of the input."""
    half = (input_size - 1) / 2.0
    return gaussian_maps(np.array([[half, half]]), input_size, sigma)


@functools.lru_cache(maxsize=16)
def _cached_centre_map(input_size: int, sigma: float) -> np.ndarray:
    return centre_map(input_size, sigma)


def centre_map_sigma(input_size: int) -> float:
    """The default centre-map sigma: 21 px at CPM's 368 px input, scaled with the input size."""
    return CENTRE_MAP_SIGMA_368 * input_size / 368.0


def centre_map_tensor(input_size: int, sigma: float | None = None) -> torch.Tensor:
    """A fresh (1, S, S) centre map tensor; sigma defaults to :func:`centre_map_sigma`."""
    sigma = centre_map_sigma(input_size) if sigma is None else sigma
    return torch.from_numpy(_cached_centre_map(input_size, float(sigma)).copy())


def decode_maps(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Peak positions (B, K, 2) in map pixels with sub-pixel refinement, and peak values (B, K).

    The offset comes from a parabola through the log of the peak and its two
    neighbours on each axis, which is exact for a Gaussian peak.
    """
    maps = maps.detach().float()
    b, k, h, w = maps.shape
    flat = maps.reshape(b, k, h * w)
    scores, index = flat.max(dim=2)
    ys, xs = torch.div(index, w, rounding_mode="floor"), index % w
    coords = torch.stack([xs, ys], dim=-1).to(torch.float32)
    log = maps.clamp_min(1e-10).log()

    def offset(axis_len: int, pos: torch.Tensor, take) -> torch.Tensor:
        inner = (pos > 0) & (pos < axis_len - 1)
        left = take(torch.clamp(pos - 1, 0, axis_len - 1))
        centre = take(pos)
        right = take(torch.clamp(pos + 1, 0, axis_len - 1))
        curvature = left - 2 * centre + right
        ok = inner & (curvature < -1e-6)
        delta = 0.5 * (left - right) / torch.where(ok, curvature, torch.ones_like(curvature))
        return torch.where(ok, delta.clamp(-0.5, 0.5), torch.zeros_like(delta))

    bi = torch.arange(b)[:, None].expand(b, k)
    ki = torch.arange(k)[None, :].expand(b, k)
    dx = offset(w, xs, lambda x: log[bi, ki, ys, x])
    dy = offset(h, ys, lambda y: log[bi, ki, y, xs])
    coords[..., 0] += dx
    coords[..., 1] += dy
    return coords, scores
