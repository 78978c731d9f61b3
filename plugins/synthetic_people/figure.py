"""A projected person ready to paint: every body part's rim and fill polygons, depth and the joints it owns."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sslbench.data.joints import NUM_JOINTS
from sslbench_plugins.synthetic_people.appearance import Look
from sslbench_plugins.synthetic_people.body import (
    ARM_JOINTS,
    HEAD_TOP,
    L_HIP,
    L_SHOULDER,
    LEG_JOINTS,
    NECK,
    R_HIP,
    R_SHOULDER,
    Body,
)
from sslbench_plugins.synthetic_people.kinematics import Projection, Skeleton, extent
from sslbench_plugins.synthetic_people.shapes import capsule, ellipse, prism_faces, shrink


@dataclass
class Part:
    """One body part ready to draw: polygons of its rim and of its fill (pixels), depth, joints."""

    outer: list[list[float]]
    inner: list[list[float]]
    depth: float
    group: str
    owners: tuple[int, ...]
    #: a body volume (torso, pelvis) hides a joint only well inside its outline, not at its edge
    volume: bool = False


@dataclass
class Figure:
    """A projected person: joints and the parts to draw (far to near) on a local canvas.

    Everything is in pixels of a canvas just big enough for the person, whose top-left
    corner sits at *origin* in the image: drawing and compositing only touch those pixels.
    """

    origin: tuple[int, int]
    size: tuple[int, int]
    joints: np.ndarray  # (14, 2), local
    depths: np.ndarray  # (14,) towards the viewer, in standing heights
    #: (14,) depth of the body's mid-plane at hips and shoulders (NaN elsewhere): the torso hides
    #: one of those joints when the joint is behind it
    mid_depths: np.ndarray
    parts: list[Part]
    reach: float  # pixels round a joint that must be covered too for a body volume to hide it


def build_figure(skeleton: Skeleton, body: Body, look: Look, project: Projection) -> Figure:
    """Project the skeleton and build every part's polygons (pixels), depth and owned joints."""
    px = project.scale
    lo, hi = extent(skeleton, project)
    pad = 0.08 * max(body.bulk, 1.0) * px + 2.0  # limb, head and rim thickness beyond the outline points
    corner = np.floor(lo - pad)
    origin = (int(corner[0]), int(corner[1]))
    size = (math.ceil(hi[0] + pad - corner[0]), math.ceil(hi[1] + pad - corner[1]))
    project = project.shifted(-corner)
    rim = max(1.0, 0.011 * px)
    j2 = project(skeleton.joints)
    jz = project.depth(skeleton.joints)
    parts: list[Part] = []

    def add_capsule(
        a: np.ndarray, b: np.ndarray, ra: float, rb: float, depth: float, group: str, owners: tuple[int, ...]
    ) -> None:
        ra, rb = ra * px * body.bulk, rb * px * body.bulk
        outer = capsule(a, b, ra, rb)
        inner = capsule(a, b, max(ra - rim, 0.5), max(rb - rim, 0.5))
        parts.append(Part([outer], [inner], depth, group, owners))

    def add_prism(rings: np.ndarray, depth: float, group: str, owners: tuple[int, ...]) -> None:
        # the fill: every ring's corners pulled towards the ring's centre by the rim width
        centres = rings.mean(axis=1, keepdims=True)
        radius = np.linalg.norm(rings - centres, axis=2, keepdims=True).clip(1e-6)
        inner = centres + (rings - centres) * np.maximum(1 - rim / (px * radius), 0.3)
        outer_faces, inner_faces = prism_faces(project(rings)), prism_faces(project(inner))
        parts.append(Part(outer_faces, inner_faces, depth, group, owners, volume=True))

    torso_depth = float(project.depth(skeleton.torso.reshape(-1, 3)).mean())
    # hips and shoulders lie on the torso's surface: whether it hides them is decided by depth
    add_prism(skeleton.torso, torso_depth, "shirt", (NECK,))
    add_prism(skeleton.pelvis, float(project.depth(skeleton.pelvis.reshape(-1, 3)).mean()), "trousers", ())
    mid_depths = np.full(NUM_JOINTS, np.nan)
    mid_depths[[R_HIP, L_HIP]] = 0.0  # the pelvis is the origin
    mid_depths[[R_SHOULDER, L_SHOULDER]] = project.depth(skeleton.shoulder_centre)
    upper_group = "skin" if look.sleeves == "none" else "shirt"
    fore_group = "shirt" if look.sleeves == "long" else "skin"
    shin_group = "trousers" if look.long_trousers else "skin"
    toes, heels, hands = project(skeleton.toes), project(skeleton.heels), project(skeleton.hands)
    toes_z, hands_z = project.depth(skeleton.toes), project.depth(skeleton.hands)
    for index in range(2):
        hip, knee, ankle = LEG_JOINTS[index]
        add_capsule(j2[hip], j2[knee], 0.05, 0.037, (jz[hip] + jz[knee]) / 2, "trousers", (hip, knee))
        add_capsule(j2[knee], j2[ankle], 0.036, 0.025, (jz[knee] + jz[ankle]) / 2, shin_group, (knee, ankle))
        add_capsule(heels[index], toes[index], 0.022, 0.016, toes_z[index] + 1e-4, "shoes", (ankle,))
        shoulder, elbow, wrist = ARM_JOINTS[index]
        add_capsule(
            j2[shoulder], j2[elbow], 0.033, 0.026, (jz[shoulder] + jz[elbow]) / 2, upper_group, (shoulder, elbow)
        )
        add_capsule(j2[elbow], j2[wrist], 0.026, 0.019, (jz[elbow] + jz[wrist]) / 2, fore_group, (elbow, wrist))
        add_capsule(j2[wrist], hands[index], 0.019, 0.015, hands_z[index] + 1e-4, "skin", (wrist,))
    add_capsule(project(skeleton.shoulder_centre), j2[NECK], 0.03, 0.027, torso_depth + 2e-4, "skin", (NECK,))

    # head: an ellipse along the neck -> head-top axis, hair over the side facing away from the viewer
    centre = project(skeleton.head_centre)
    axis = j2[HEAD_TOP] - j2[NECK]
    length = float(np.hypot(*axis))
    axis = axis / length if length > 1e-6 else np.array([0.0, -1.0])
    minor = 0.40 * body.head * px
    major = max(0.52 * length, minor * 1.05)
    head_depth = float(project.depth(skeleton.head_centre))
    outline = ellipse(centre, axis, major, minor)
    inner = shrink(outline, rim)
    parts.append(Part([outline.ravel().tolist()], [inner.ravel().tolist()], head_depth, "skin", (NECK, HEAD_TOP)))
    facing = float(project.depth(skeleton.head_forward))
    threshold = min(0.55, 0.1 + 0.9 * facing)
    cos_t = np.cos(np.linspace(0.0, 2 * math.pi, len(outline), endpoint=False))
    hair = outline[cos_t >= threshold]
    if len(hair) >= 3:
        if threshold > -1:  # close the cap with a hairline across the face
            hair = np.concatenate([hair, [centre + axis * major * threshold]])
        flat = hair.ravel().tolist()
        parts.append(Part([flat], [flat], head_depth + 1e-4, "hair", (NECK, HEAD_TOP)))
    parts.sort(key=lambda part: part.depth)
    return Figure(origin=origin, size=size, joints=j2, depths=jz, mid_depths=mid_depths, parts=parts, reach=0.05 * px)
