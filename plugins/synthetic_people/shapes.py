"""Flat polygons of the drawn shapes: tapered capsules, ellipses, shrunk outlines and the faces of a prism."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

#: (cos, sin) of the angles round one end cap of a capsule
_CAP = tuple((math.cos(t), math.sin(t)) for t in np.linspace(-math.pi / 2, math.pi / 2, 5).tolist())
_SQUARE_CAP = ((0.0, -1.0), (0.0, 1.0))


def capsule(a: Any, b: Any, ra: float, rb: float, square: bool = False) -> list[float]:
    """Flat polygon of a tapered capsule from point *a* (radius *ra*) to *b* (radius *rb*).

    Plain floats on purpose: this runs dozens of times per image and numpy's per-call
    overhead would dominate. ``square=True`` gives a quad without round caps.
    """
    ax, ay, bx, by = float(a[0]), float(a[1]), float(b[0]), float(b[1])
    dx, dy = bx - ax, by - ay
    length = math.hypot(dx, dy)
    ux, uy = (dx / length, dy / length) if length > 1e-6 else (1.0, 0.0)
    points: list[float] = []
    for c, s in _SQUARE_CAP if square else _CAP:
        points += [bx + rb * (c * ux - s * uy), by + rb * (c * uy + s * ux)]
    for c, s in _SQUARE_CAP if square else _CAP:
        points += [ax - ra * (c * ux - s * uy), ay - ra * (c * uy + s * ux)]
    return points


def ellipse(centre: np.ndarray, axis: np.ndarray, major: float, minor: float, n: int = 20) -> np.ndarray:
    """(n, 2) points of an ellipse whose major semi-axis lies along the unit vector *axis*."""
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)[:, None]
    ortho = np.array([-axis[1], axis[0]])
    return centre + major * np.cos(t) * axis + minor * np.sin(t) * ortho


def shrink(polygon: np.ndarray, by: float) -> np.ndarray:
    """Move the corners of a convex polygon *by* pixels towards its centroid (for the inner fill)."""
    centre = polygon.mean(axis=0)
    offset = polygon - centre
    dist = np.maximum(np.linalg.norm(offset, axis=1, keepdims=True), 1e-6)
    return centre + offset * np.maximum(dist - by, 0.3 * dist) / dist


def prism_faces(rings: np.ndarray) -> list[list[float]]:
    """Flat polygons whose union is the outline of a stack of 2-D-projected quadrilateral rings.

    *rings* is (L, 4, 2): L cross-sections of a body segment (for example hips, waist,
    chest), each with its four corners in order round the segment. The silhouette of
    the closed surface through them is the union of its faces, so drawing every face
    (sides, top and bottom) fills exactly the outline, from any viewing direction.
    """
    corners: list[list[list[float]]] = rings.tolist()
    faces = [[v for corner in corners[0] for v in corner], [v for corner in corners[-1] for v in corner]]
    for lower, upper in itertools.pairwise(corners):
        for c, d in ((0, 1), (1, 2), (2, 3), (3, 0)):
            faces.append(lower[c] + lower[d] + upper[d] + upper[c])
    return faces
