"""Pose accuracy math (numpy only): PCK, the PCK curve, its area, and per-part tables.

Conventions (LSP, see ``facts.md``; other skeletons, :mod:`sslbench.contract.skeleton`, normalise by the
person's head size or box instead of the torso: :func:`normalisers`):

- ``distances`` is (N, K): the Euclidean distance, in original image pixels, between the
  predicted and the ground-truth position of joint k in image n. ``NaN`` marks a joint
  that is not scored (for example a missing annotation); it counts neither as correct
  nor as wrong.
- ``torso`` is (N,): the torso size of each image, the ground-truth distance from the
  left shoulder (joint 9) to the right hip (joint 2).
- A joint is correct at threshold ``t`` when ``distance <= t * torso``.
- Every percentage is on a 0-100 scale.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.integrate import trapezoid

from sslbench.contract.errors import DataError
from sslbench.contract.skeleton import LSP, Skeleton
from sslbench.data.joints import TORSO


def torso_sizes(joints: np.ndarray, torso: tuple[int, int] = TORSO) -> np.ndarray:
    """(N,) torso size per image from ground-truth joints (N, K, >=2)."""
    joints = np.asarray(joints, dtype=np.float64)
    a, b = torso
    return np.linalg.norm(joints[:, a, :2] - joints[:, b, :2], axis=-1)


def normalisers(joints: np.ndarray, skeleton: Skeleton, scale: np.ndarray | None = None) -> np.ndarray:
    """(N,) what PCK divides distances by, per the skeleton: the torso from the ground-truth *joints*
    (N, K, >=2), or the dataset's per-person *scale* (N,) (head size, box side)."""
    if skeleton.normalise == "torso":
        assert skeleton.torso is not None  # Skeleton.check
        return torso_sizes(joints, skeleton.torso)
    if scale is None:
        raise DataError(f"skeleton {skeleton.name} normalises PCK by the {skeleton.normalise} size, "
                        "but the dataset gave no scale (ImageDataset.annotation)")  # fmt: skip
    return np.asarray(scale, dtype=np.float64).reshape(-1)


def skeleton_metrics(distances: np.ndarray, sizes: np.ndarray, skeleton: Skeleton) -> dict[str, float]:
    """The figure a head-normalised skeleton is known by: ``pckh@0.5`` over the joints of its parts
    (MPII: every joint but pelvis and thorax, as the official evaluation counts); none for others."""
    if skeleton.normalise != "head":
        return {}
    scored = sorted({j for _, members in skeleton.parts for j in members}) or list(range(skeleton.num_joints))
    return {"pckh@0.5": pck(np.asarray(distances)[:, scored], sizes, 0.5)}


def joint_distances(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(N, K) Euclidean distances between predicted (N, K, 2) and true (N, K, >=2) positions."""
    predicted = np.asarray(predicted, dtype=np.float64)[..., :2]
    truth = np.asarray(truth, dtype=np.float64)[..., :2]
    return np.linalg.norm(predicted - truth, axis=-1)


def _correct(distances: np.ndarray, torso: np.ndarray, threshold: float) -> np.ndarray:
    """(N, K) float array: 1 correct, 0 wrong, NaN not scored."""
    distances = np.asarray(distances, dtype=np.float64)
    torso = np.asarray(torso, dtype=np.float64).reshape(-1, 1)
    if distances.ndim != 2 or torso.shape[0] != distances.shape[0]:
        raise ValueError(f"distances must be (N, K) and torso (N,), got {distances.shape} and {torso.shape}")
    scored = np.isfinite(distances) & np.isfinite(torso)
    with np.errstate(invalid="ignore"):
        hit = (distances <= threshold * torso).astype(np.float64)
    return np.where(scored, hit, np.nan)


def _percent(values: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """100 x the mean of the scored (non-NaN) entries; NaN when nothing is scored."""
    scored = np.isfinite(values)
    count = scored.sum(axis=axis)
    total = np.where(scored, values, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        result = 100.0 * total / count
    return float(result) if axis is None else result


def pck(distances: np.ndarray, torso: np.ndarray, threshold: float) -> float:
    """Percentage of scored joints (all images, all joints) within ``threshold x torso``."""
    return float(_percent(_correct(distances, torso, threshold)))


def pck_per_joint(distances: np.ndarray, torso: np.ndarray, threshold: float) -> np.ndarray:
    """(K,) PCK of each joint over all images, in percent."""
    return np.asarray(_percent(_correct(distances, torso, threshold), axis=0), dtype=np.float64)


def pck_curve(distances: np.ndarray, torso: np.ndarray, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """PCK at each threshold (percent), same length as *thresholds*."""
    return np.array([pck(distances, torso, float(t)) for t in thresholds], dtype=np.float64)


def auc(distances: np.ndarray, torso: np.ndarray, max_threshold: float = 0.2, steps: int = 41) -> float:
    """Area under PCK(t) for t in [0, max_threshold], normalised to 0-100.

    The curve is sampled at *steps* evenly spaced thresholds (41 steps: every 0.005 up
    to 0.2) and integrated with the trapezoid rule, then divided by *max_threshold*: a
    model with every joint exact scores 100, one with PCK rising linearly from 0 to
    100 over the interval scores 50.
    """
    if max_threshold <= 0 or steps < 2:
        raise ValueError("auc needs max_threshold > 0 and steps >= 2")
    thresholds = np.linspace(0.0, max_threshold, steps)
    curve = pck_curve(distances, torso, thresholds)
    return float(trapezoid(curve, thresholds) / max_threshold)


def per_part(per_joint: Sequence[float] | np.ndarray, skeleton: Skeleton = LSP) -> dict[str, float]:
    """Per-part table from per-joint values (the skeleton's order): its parts' joints averaged
    (LSP: left and right), plus ``Mean``.

    ``Mean`` is the mean over all joints; with every part made of two joints (LSP) it equals
    the mean of the part values.
    """
    values = np.asarray(per_joint, dtype=np.float64)
    if values.shape != (skeleton.num_joints,):
        raise ValueError(f"per_part needs {skeleton.num_joints} per-joint values, got shape {values.shape}")
    with np.errstate(all="ignore"):
        table = {part: float(np.nanmean(values[list(joints)])) if np.isfinite(values[list(joints)]).any()
                 else float("nan") for part, joints in skeleton.parts}  # fmt: skip
    table["Mean"] = float(np.nanmean(values))
    return table
