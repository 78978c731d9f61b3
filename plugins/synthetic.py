"""Synthetic people: the built-in dataset, rendered on the fly so every command runs offline.

Each image shows one procedurally drawn person (14 LSP joints) on a cluttered
background. A 3-D skeleton is posed by forward kinematics (sports-like poses within
joint limits, per-person proportions), turned about the vertical axis, projected
orthographically and rolled in the image plane. Body parts are drawn as filled,
rimmed and textured shapes from far to near, so nearer parts hide farther ones; a
joint is marked occluded (visibility 0) when a nearer body part or a foreground
object covers it. Images are deterministic in (dataset seed, index) and never
stored: one takes a few milliseconds to render.

:func:`render_person` is the reusable entry point: one image and its joints from a
numpy Generator.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence, TypeVar

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from sslbench.errors import ConfigError, DataError
from sslbench.hookspecs import hookimpl
from sslbench.interfaces import ImageDataset, Splits
from sslbench.joints import NUM_JOINTS
from sslbench.registry import Entry
from sslbench.splits import train_val_test

#: bumped whenever the renderer's output changes: the dataset's ``version``, so cell ids and
#: pretext cache keys of its images change with it (and describe() says it)
RENDER_VERSION = 1

#: image sides are drawn from this range (pixels), like LSP's crops around one person
MIN_SIDE, MAX_SIDE = 160, 260
#: standing height of the person in pixels (LSP people are about 150 px tall)
HEIGHT_RANGE = (115.0, 170.0)
#: joints keep at least this distance (pixels) from the image border
MARGIN = 4.0
#: shortest projected torso (left shoulder to right hip, in standing heights): PCK divides by it
MIN_TORSO = 0.15

# LSP joint indices
R_ANKLE, R_KNEE, R_HIP, L_HIP, L_KNEE, L_ANKLE = 0, 1, 2, 3, 4, 5
R_WRIST, R_ELBOW, R_SHOULDER, L_SHOULDER, L_ELBOW, L_WRIST = 6, 7, 8, 9, 10, 11
NECK, HEAD_TOP = 12, 13
#: (hip, knee, ankle) and (shoulder, elbow, wrist) per side; side 0 is the person's right
LEG_JOINTS = ((R_HIP, R_KNEE, R_ANKLE), (L_HIP, L_KNEE, L_ANKLE))
ARM_JOINTS = ((R_SHOULDER, R_ELBOW, R_WRIST), (L_SHOULDER, L_ELBOW, L_WRIST))
#: x of the body frame points to the person's left, so their right side is at -x
SIDE_SIGN = (-1.0, 1.0)

#: a part hides a joint only if it is this much nearer the viewer (in standing heights)
DEPTH_MARGIN = 0.02
#: label of a foreground object drawn over the person (occludes every joint it covers)
OCCLUDER_LABEL = 254

_DOWN = np.array([0.0, -1.0, 0.0])
T = TypeVar("T")


class _Random:
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


# ----------------------------------------------------------------------------- geometry


def _rx(deg: float) -> np.ndarray:
    """Rotation about x (pitch); positive turns +y towards +z."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _ry(deg: float) -> np.ndarray:
    """Rotation about y (the vertical axis); positive turns +z towards +x."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rz(deg: float) -> np.ndarray:
    """Rotation about z; positive turns +x towards +y."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _swing(elevation: float, azimuth: float, side: float) -> np.ndarray:
    """The smallest rotation taking straight down onto the limb direction (see :func:`_limb_direction`).

    Swinging a limb this way keeps its bending plane tied to the body, so knees fold
    backwards and elbows forwards whichever way the limb points.
    """
    el, az = math.radians(elevation), math.radians(azimuth)
    dx, dz = side * math.sin(az) * math.sin(el), math.cos(az) * math.sin(el)
    sin, cos = math.hypot(dx, dz), math.cos(el)  # axis = down x direction = (-dz, 0, dx)
    if sin < 1e-9:
        return np.eye(3) if cos > 0 else _rx(180.0)
    kx, kz = -dz / sin, dx / sin
    skew = np.array([[0.0, -kz, 0.0], [kz, 0.0, -kx], [0.0, kx, 0.0]])
    return np.eye(3) + sin * skew + (1.0 - cos) * (skew @ skew)


#: (cos, sin) of the angles round one end cap of a capsule
_CAP = tuple((math.cos(t), math.sin(t)) for t in np.linspace(-math.pi / 2, math.pi / 2, 5).tolist())
_SQUARE_CAP = ((0.0, -1.0), (0.0, 1.0))


def _capsule(a: Any, b: Any, ra: float, rb: float, square: bool = False) -> list[float]:
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


def _ellipse(centre: np.ndarray, axis: np.ndarray, major: float, minor: float, n: int = 20) -> np.ndarray:
    """(n, 2) points of an ellipse whose major semi-axis lies along the unit vector *axis*."""
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)[:, None]
    ortho = np.array([-axis[1], axis[0]])
    return centre + major * np.cos(t) * axis + minor * np.sin(t) * ortho


def _shrink(polygon: np.ndarray, by: float) -> np.ndarray:
    """Move the corners of a convex polygon *by* pixels towards its centroid (for the inner fill)."""
    centre = polygon.mean(axis=0)
    offset = polygon - centre
    dist = np.maximum(np.linalg.norm(offset, axis=1, keepdims=True), 1e-6)
    return centre + offset * np.maximum(dist - by, 0.3 * dist) / dist


def _prism_faces(rings: np.ndarray) -> list[list[float]]:
    """Flat polygons whose union is the outline of a stack of 2-D-projected quadrilateral rings.

    *rings* is (L, 4, 2): L cross-sections of a body segment (for example hips, waist,
    chest), each with its four corners in order round the segment. The silhouette of
    the closed surface through them is the union of its faces, so drawing every face
    (sides, top and bottom) fills exactly the outline, from any viewing direction.
    """
    corners: list[list[list[float]]] = rings.tolist()
    faces = [[v for corner in corners[0] for v in corner], [v for corner in corners[-1] for v in corner]]
    for lower, upper in zip(corners[:-1], corners[1:]):
        for c, d in ((0, 1), (1, 2), (2, 3), (3, 0)):
            faces.append(lower[c] + lower[d] + upper[d] + upper[c])
    return faces


# --------------------------------------------------------------------------- the person


@dataclass(frozen=True)
class _Body:
    """Segment lengths and thicknesses in units of standing height."""

    torso: float
    neck: float
    head: float
    shoulder_width: float
    hip_width: float
    upper_arm: float
    forearm: float
    hand: float
    thigh: float
    shin: float
    foot: float
    depth: float
    bulk: float


def _sample_body(r: _Random) -> _Body:
    """Plausible adult proportions, varied per person (limb ratios, build, torso width)."""
    arms, legs, bulk = r.u(0.92, 1.08), r.u(0.93, 1.07), r.u(0.8, 1.3)
    return _Body(
        torso=0.29 * r.u(0.95, 1.05),
        neck=0.04 * r.u(0.9, 1.1),
        head=0.125 * r.u(0.95, 1.05),
        shoulder_width=r.u(0.19, 0.26),
        hip_width=r.u(0.10, 0.15),
        upper_arm=0.18 * arms * r.u(0.96, 1.04),
        forearm=0.145 * arms * r.u(0.96, 1.04),
        hand=0.075 * r.u(0.9, 1.1),
        thigh=0.245 * legs * r.u(0.96, 1.04),
        shin=0.24 * legs * r.u(0.96, 1.04),
        foot=0.12 * r.u(0.9, 1.1),
        depth=r.u(0.10, 0.14) * bulk,
        bulk=bulk,
    )


@dataclass(frozen=True)
class _Limb:
    """Angles (degrees) of one arm or leg: swing of the upper segment, twist, and the two bends."""

    elevation: float  # 0 hangs straight down, 90 horizontal, 180 straight up
    azimuth: float  # 0 forward, 90 outward, 180 backward
    twist: float  # turns the bending plane about the upper segment (negative: inwards)
    bend: float  # knee or elbow flexion, >= 0: these joints bend one way only
    end: float  # ankle or wrist flexion


@dataclass(frozen=True)
class _Pose:
    arms: tuple[_Limb, _Limb]  # right, left
    legs: tuple[_Limb, _Limb]
    torso_bend: float  # forward flexion of the spine
    torso_side: float
    torso_twist: float
    head_nod: float
    head_tilt: float
    yaw: float  # turn of the whole body about the vertical axis (0 faces the camera)
    roll: float  # in-plane rotation of the projected body


#: pose families and how often each is drawn
POSE_KINDS: dict[str, float] = {
    "stand": 0.11,
    "run": 0.19,
    "jump": 0.10,
    "arms_up": 0.10,
    "bend": 0.10,
    "squat": 0.08,
    "kick": 0.08,
    "throw": 0.10,
    "dive": 0.04,
    "inverted": 0.03,
    "random": 0.07,
}
_Range = tuple[float, float]


def _sample_pose(r: _Random) -> _Pose:
    """A sports-like pose: one of :data:`POSE_KINDS` with random variation inside joint limits."""

    def leg(el: _Range, az: _Range, knee: _Range) -> _Limb:
        return _Limb(r.u(*el), r.u(*az), r.u(-20, 20), r.u(*knee), r.u(-35, 20))

    def arm(el: _Range, az: _Range, elbow: _Range) -> _Limb:
        return _Limb(r.u(*el), r.u(*az), r.u(-70, 35), r.u(*elbow), r.u(-30, 40))

    def both(make: Any, *ranges: _Range) -> list[_Limb]:
        return [make(*ranges), make(*ranges)]

    kind = r.pick(list(POSE_KINDS), list(POSE_KINDS.values()))
    front = r.i(0, 2)  # the side that leads: forward leg, throwing arm, ...
    legs = both(leg, (0, 15), (-30, 120), (0, 25))
    arms = both(arm, (5, 45), (-20, 110), (0, 60))
    bend, side, twist = r.u(-5, 12), r.u(-8, 8), r.u(-15, 15)
    roll = max(-35.0, min(35.0, r.normal(0.0, 9.0)))

    if kind == "run":
        legs[front] = leg((25, 85), (-15, 15), (10, 100))
        legs[1 - front] = leg((10, 45), (165, 195), (40, 130))
        arms[front] = arm((20, 60), (150, 200), (60, 115))
        arms[1 - front] = arm((20, 85), (-25, 30), (50, 125))
        bend = r.u(5, 25)
    elif kind == "jump":
        legs = both(leg, (0, 70), (-20, 40), (20, 130))
        arms = both(arm, (100, 178), (-20, 100), (0, 60))
        roll = r.normal(0.0, 12.0)
    elif kind == "arms_up":
        arms = both(arm, (120, 178), (0, 110), (0, 45))
        if r.chance(0.5):
            arms[front] = arm((40, 110), (0, 100), (0, 90))
        legs[front] = leg((0, 30), (-20, 100), (0, 60))
    elif kind == "bend":
        bend = r.u(35, 100)
        legs = both(leg, (0, 35), (-10, 60), (0, 50))
        arms = both(arm, (0, 110), (-30, 70), (0, 80))
    elif kind == "squat":
        legs = both(leg, (50, 110), (0, 50), (70, 140))
        arms = both(arm, (20, 100), (-10, 70), (0, 110))
        bend = r.u(10, 45)
    elif kind == "kick":
        legs[front] = leg((60, 120), (-10, 70), (0, 60))
        legs[1 - front] = leg((0, 15), (-10, 40), (0, 30))
        arms = both(arm, (40, 110), (40, 110), (0, 50))
        bend = r.u(-15, 15)
    elif kind == "throw":
        twist = r.u(-45, 45)
        arms[front] = arm((90, 170), (100, 200), (30, 130))
        arms[1 - front] = arm((40, 110), (-30, 60), (0, 70))
        legs = both(leg, (10, 40), (30, 110), (0, 50))
        bend = r.u(0, 25)
    elif kind == "dive":
        arms = both(arm, (150, 178), (-10, 40), (0, 25))
        legs = both(leg, (0, 25), (150, 210), (0, 40))
        bend = r.u(-10, 20)
        roll = r.pick((-1.0, 1.0)) * r.u(60, 120)
    elif kind == "inverted":
        arms = both(arm, (150, 178), (60, 100), (0, 30))
        legs = both(leg, (15, 60), (60, 100), (0, 60))
        roll = r.u(140, 220)
    elif kind == "random":
        legs = both(leg, (0, 120), (-30, 180), (0, 150))
        arms = both(arm, (0, 178), (-40, 180), (0, 150))
        bend = r.u(-20, 90)
    # joint limits: limbs reach only so far backwards
    legs = [_limit(limb, max_back_elevation=50.0) for limb in legs]
    arms = [_limit(limb, max_back_elevation=90.0) for limb in arms]
    return _Pose(
        arms=(arms[0], arms[1]),
        legs=(legs[0], legs[1]),
        torso_bend=bend,
        torso_side=side,
        torso_twist=twist,
        head_nod=r.u(-20, 30),
        head_tilt=r.u(-15, 15),
        yaw=r.u(0, 360),
        roll=roll,
    )


def _limit(limb: _Limb, max_back_elevation: float) -> _Limb:
    """Clamp a limb that swings backwards (azimuth past 120 degrees) to a reachable elevation."""
    if limb.azimuth > 120.0 and limb.elevation > max_back_elevation:
        return _Limb(max_back_elevation, limb.azimuth, limb.twist, limb.bend, limb.end)
    return limb


@dataclass(frozen=True)
class _Skeleton:
    """3-D points of a posed body in the body frame (x: person's left, y: up, z: forward)."""

    joints: np.ndarray  # (14, 3)
    hands: np.ndarray  # (2, 3) finger tips, right then left
    toes: np.ndarray  # (2, 3)
    heels: np.ndarray  # (2, 3)
    torso: np.ndarray  # (4, 4, 3) rings of four corners: hips, waist, chest, neck base
    pelvis: np.ndarray  # (3, 4, 3) rings of the trousers' top: crotch, hips, belt
    shoulder_centre: np.ndarray
    head_centre: np.ndarray
    head_forward: np.ndarray  # unit vector the face looks along


def _ring(centre: np.ndarray, ex: np.ndarray, ez: np.ndarray, half_width: float, half_depth: float) -> np.ndarray:
    """Four corners (4, 3) of a cross-section round *centre* spanned by axes *ex*, *ez*."""
    signs = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    return centre + (signs[:, :1] * half_width) * ex + (signs[:, 1:] * half_depth) * ez


def _forward_kinematics(body: _Body, pose: _Pose) -> _Skeleton:
    """Place every joint from the pelvis (the origin) outwards."""
    joints = np.zeros((NUM_JOINTS, 3))
    hands, toes, heels = np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3))
    torso_frame = _rx(pose.torso_bend) @ _rz(pose.torso_side) @ _ry(pose.torso_twist)
    ex, ey, ez = torso_frame[:, 0], torso_frame[:, 1], torso_frame[:, 2]
    shoulder_centre = body.torso * ey
    for index, side in enumerate(SIDE_SIGN):
        hip_j, knee_j, ankle_j = LEG_JOINTS[index]
        leg = pose.legs[index]
        hip = np.array([side * body.hip_width / 2, 0.0, 0.0])
        thigh_frame = _swing(leg.elevation, leg.azimuth, side) @ _ry(side * leg.twist)
        knee = hip + body.thigh * (thigh_frame @ _DOWN)
        shin_frame = thigh_frame @ _rx(leg.bend)
        ankle = knee + body.shin * (shin_frame @ _DOWN)
        joints[hip_j], joints[knee_j], joints[ankle_j] = hip, knee, ankle
        toes[index] = ankle + shin_frame @ (_rx(-leg.end) @ np.array([0.0, -0.03, body.foot]))
        heels[index] = ankle + shin_frame @ np.array([0.0, -0.03, -0.03])

        shoulder_j, elbow_j, wrist_j = ARM_JOINTS[index]
        arm = pose.arms[index]
        shoulder = shoulder_centre + side * body.shoulder_width / 2 * ex - 0.01 * ey
        upper_frame = torso_frame @ _swing(arm.elevation, arm.azimuth, side) @ _ry(side * arm.twist)
        elbow = shoulder + body.upper_arm * (upper_frame @ _DOWN)
        fore_frame = upper_frame @ _rx(-arm.bend)
        wrist = elbow + body.forearm * (fore_frame @ _DOWN)
        joints[shoulder_j], joints[elbow_j], joints[wrist_j] = shoulder, elbow, wrist
        hands[index] = wrist + body.hand * (fore_frame @ (_rx(-arm.end) @ _DOWN))

    neck = shoulder_centre + body.neck * ey
    head_frame = torso_frame @ _rx(pose.head_nod) @ _rz(pose.head_tilt)
    joints[NECK] = neck
    joints[HEAD_TOP] = neck + body.head * head_frame[:, 1]
    head_centre = neck + 0.5 * body.head * head_frame[:, 1] + 0.01 * head_frame[:, 2]

    half_depth = body.depth / 2
    hip_out = body.hip_width / 2 + 0.045 * body.bulk
    waist = 0.8 * body.shoulder_width / 2 + 0.01 * body.bulk
    x_axis, z_axis = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])
    hips_ring = _ring(np.array([0.0, -0.02, 0.0]), x_axis, z_axis, hip_out, 1.1 * half_depth)
    torso = np.stack(
        [
            hips_ring,
            _ring(0.45 * body.torso * ey, ex, ez, waist, half_depth),
            _ring(shoulder_centre - 0.02 * ey, ex, ez, body.shoulder_width / 2 + 0.025 * body.bulk, half_depth),
            _ring(shoulder_centre + 0.025 * ey, ex, ez, 0.3 * body.shoulder_width, 0.8 * half_depth),
        ]
    )
    pelvis = np.stack(
        [
            _ring(np.array([0.0, -0.07, 0.0]), x_axis, z_axis, 0.4 * hip_out, 1.1 * half_depth),
            hips_ring * np.array([1.03, 1.0, 1.03]),
            _ring(0.2 * body.torso * ey, ex, ez, 1.03 * (0.6 * hip_out + 0.4 * waist), 1.05 * half_depth),
        ]
    )
    return _Skeleton(
        joints=joints,
        hands=hands,
        toes=toes,
        heels=heels,
        torso=torso,
        pelvis=pelvis,
        shoulder_centre=shoulder_centre,
        head_centre=head_centre,
        head_forward=head_frame[:, 2],
    )


@dataclass
class _Part:
    """One body part ready to draw: polygons of its rim and of its fill (pixels), depth, joints."""

    outer: list[list[float]]
    inner: list[list[float]]
    depth: float
    group: str
    owners: tuple[int, ...]
    #: a body volume (torso, pelvis) hides a joint only well inside its outline, not at its edge
    volume: bool = False


@dataclass
class _Figure:
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
    parts: list[_Part]
    reach: float  # pixels round a joint that must be covered too for a body volume to hide it


class _Projection:
    """Body frame -> image: turn by yaw, project along z, roll in-plane, scale to pixels, shift."""

    def __init__(self, yaw: float, roll: float, scale: float, offset: np.ndarray) -> None:
        self.turn = _ry(yaw).T  # applied to row vectors
        c, s = math.cos(math.radians(roll)), math.sin(math.radians(roll))
        # body x stays image x, body up (+y) becomes image up (-y), then the in-plane roll
        self.plane = (scale * np.array([[c, -s], [s, c]]) @ np.array([[1.0, 0.0], [0.0, -1.0]])).T
        self.scale = scale
        self.offset = offset

    def shifted(self, by: np.ndarray) -> "_Projection":
        """The same projection with the image origin moved by *by* pixels."""
        moved = _Projection(0.0, 0.0, self.scale, self.offset + by)
        moved.turn, moved.plane = self.turn, self.plane
        return moved

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return (points @ self.turn)[..., :2] @ self.plane + self.offset

    def depth(self, points: np.ndarray) -> Any:
        """Distance towards the viewer (larger is nearer)."""
        return points @ self.turn[:, 2]


@dataclass(frozen=True)
class _Look:
    """Colours and clothing of one person."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    shirt: tuple[int, int, int]
    trousers: tuple[int, int, int]
    shoes: tuple[int, int, int]
    sleeves: str  # none | short | long
    long_trousers: bool
    shirt_pattern: str  # plain | stripes | noise
    trouser_pattern: str


SKIN_TONES = ((255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 134, 96), (141, 85, 54), (94, 58, 38))
HAIR_COLOURS = ((20, 16, 14), (60, 40, 25), (110, 75, 40), (200, 165, 100), (150, 150, 150), (150, 60, 30))
Colour = tuple[int, int, int]


def _hsv(r: _Random, sat: _Range, val: _Range) -> Colour:
    """A colour of random hue with saturation and value (0..255) drawn from the given ranges."""
    hue, s, v = r.u(0, 6), r.u(*sat), r.u(*val)
    x = 1 - abs(hue % 2 - 1)
    rgb = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(hue) % 6]
    red, green, blue = (int(v * (1 - s + s * c)) for c in rgb)
    return (red, green, blue)


def _clothing(r: _Random) -> Colour:
    """A clothing colour: a saturated hue, or now and then black, white or grey."""
    if r.chance(0.25):
        v = r.pick((25, 45, 200, 235, r.i(60, 180)))
        return (v, v, v)
    return _hsv(r, (0.45, 1.0), (90, 250))


def _jitter(colour: Colour, r: _Random, amount: int) -> Colour:
    """*colour* with each channel moved by up to *amount*."""
    red, green, blue = (min(255, max(0, c + r.i(-amount, amount + 1))) for c in colour)
    return (red, green, blue)


def _scaled(colour: Colour, factor: float) -> Colour:
    red, green, blue = (min(255, int(c * factor)) for c in colour)
    return (red, green, blue)


def _sample_look(r: _Random) -> _Look:
    return _Look(
        skin=_jitter(r.pick(SKIN_TONES), r, 12),
        hair=_jitter(r.pick(HAIR_COLOURS), r, 10),
        shirt=_clothing(r),
        trousers=_clothing(r),
        shoes=_clothing(r),
        sleeves=r.pick(("none", "short", "long"), (0.2, 0.5, 0.3)),
        long_trousers=r.chance(0.5),
        shirt_pattern=r.pick(("plain", "stripes", "noise"), (0.4, 0.35, 0.25)),
        trouser_pattern=r.pick(("plain", "stripes", "noise"), (0.6, 0.15, 0.25)),
    )


def _figure(skeleton: _Skeleton, body: _Body, look: _Look, project: _Projection) -> _Figure:
    """Project the skeleton and build every part's polygons (pixels), depth and owned joints."""
    px = project.scale
    lo, hi = _extent(skeleton, project)
    pad = 0.08 * max(body.bulk, 1.0) * px + 2.0  # limb, head and rim thickness beyond the outline points
    corner = np.floor(lo - pad)
    origin = (int(corner[0]), int(corner[1]))
    size = (int(math.ceil(hi[0] + pad - corner[0])), int(math.ceil(hi[1] + pad - corner[1])))
    project = project.shifted(-corner)
    rim = max(1.0, 0.011 * px)
    j2 = project(skeleton.joints)
    jz = project.depth(skeleton.joints)
    parts: list[_Part] = []

    def capsule(
        a: np.ndarray, b: np.ndarray, ra: float, rb: float, depth: float, group: str, owners: tuple[int, ...]
    ) -> None:
        ra, rb = ra * px * body.bulk, rb * px * body.bulk
        outer = _capsule(a, b, ra, rb)
        inner = _capsule(a, b, max(ra - rim, 0.5), max(rb - rim, 0.5))
        parts.append(_Part([outer], [inner], depth, group, owners))

    def prism(rings: np.ndarray, depth: float, group: str, owners: tuple[int, ...]) -> None:
        # the fill: every ring's corners pulled towards the ring's centre by the rim width
        centres = rings.mean(axis=1, keepdims=True)
        radius = np.linalg.norm(rings - centres, axis=2, keepdims=True).clip(1e-6)
        inner = centres + (rings - centres) * np.maximum(1 - rim / (px * radius), 0.3)
        outer_faces, inner_faces = _prism_faces(project(rings)), _prism_faces(project(inner))
        parts.append(_Part(outer_faces, inner_faces, depth, group, owners, volume=True))

    torso_depth = float(project.depth(skeleton.torso.reshape(-1, 3)).mean())
    # hips and shoulders lie on the torso's surface: whether it hides them is decided by depth
    prism(skeleton.torso, torso_depth, "shirt", (NECK,))
    prism(skeleton.pelvis, float(project.depth(skeleton.pelvis.reshape(-1, 3)).mean()), "trousers", ())
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
        capsule(j2[hip], j2[knee], 0.05, 0.037, (jz[hip] + jz[knee]) / 2, "trousers", (hip, knee))
        capsule(j2[knee], j2[ankle], 0.036, 0.025, (jz[knee] + jz[ankle]) / 2, shin_group, (knee, ankle))
        capsule(heels[index], toes[index], 0.022, 0.016, toes_z[index] + 1e-4, "shoes", (ankle,))
        shoulder, elbow, wrist = ARM_JOINTS[index]
        capsule(j2[shoulder], j2[elbow], 0.033, 0.026, (jz[shoulder] + jz[elbow]) / 2, upper_group, (shoulder, elbow))
        capsule(j2[elbow], j2[wrist], 0.026, 0.019, (jz[elbow] + jz[wrist]) / 2, fore_group, (elbow, wrist))
        capsule(j2[wrist], hands[index], 0.019, 0.015, hands_z[index] + 1e-4, "skin", (wrist,))
    capsule(project(skeleton.shoulder_centre), j2[NECK], 0.03, 0.027, torso_depth + 2e-4, "skin", (NECK,))

    # head: an ellipse along the neck -> head-top axis, hair over the side facing away from the viewer
    centre = project(skeleton.head_centre)
    axis = j2[HEAD_TOP] - j2[NECK]
    length = float(np.hypot(*axis))
    axis = axis / length if length > 1e-6 else np.array([0.0, -1.0])
    minor = 0.40 * body.head * px
    major = max(0.52 * length, minor * 1.05)
    head_depth = float(project.depth(skeleton.head_centre))
    outline = _ellipse(centre, axis, major, minor)
    inner = _shrink(outline, rim)
    parts.append(_Part([outline.ravel().tolist()], [inner.ravel().tolist()], head_depth, "skin", (NECK, HEAD_TOP)))
    facing = float(project.depth(skeleton.head_forward))
    threshold = min(0.55, 0.1 + 0.9 * facing)
    cos_t = np.cos(np.linspace(0.0, 2 * math.pi, len(outline), endpoint=False))
    hair = outline[cos_t >= threshold]
    if len(hair) >= 3:
        if threshold > -1:  # close the cap with a hairline across the face
            hair = np.concatenate([hair, [centre + axis * major * threshold]])
        flat = hair.ravel().tolist()
        parts.append(_Part([flat], [flat], head_depth + 1e-4, "hair", (NECK, HEAD_TOP)))
    parts.sort(key=lambda part: part.depth)
    return _Figure(origin=origin, size=size, joints=j2, depths=jz, mid_depths=mid_depths, parts=parts, reach=0.05 * px)


def _extent(skeleton: _Skeleton, project: _Projection) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) corners of the points that outline a person (widths not included)."""
    points = np.concatenate(
        [
            skeleton.joints,
            skeleton.hands,
            skeleton.toes,
            skeleton.heels,
            skeleton.torso.reshape(-1, 3),
            skeleton.head_centre[None],
        ]
    )
    p2 = project(points)
    return p2.min(axis=0), p2.max(axis=0)


# ------------------------------------------------------------------------------ drawing


@functools.lru_cache(maxsize=1)
def _noise_tiles() -> tuple[Image.Image, Image.Image]:
    """Fixed noise images, cropped at random offsets: RGB pixel noise round 128, blotchy grey noise."""
    rng = np.random.default_rng(20240229)
    side = MAX_SIDE + 64
    pixel = np.clip(rng.normal(128.0, 40.0, (side, side, 3)), 0, 255).astype(np.uint8)
    coarse = Image.fromarray(rng.integers(0, 256, (side // 6, side // 6), dtype=np.uint8))
    fine = Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8))
    return Image.fromarray(pixel), Image.blend(coarse.resize((side, side), Image.Resampling.BICUBIC), fine, 0.35)


def _crop(tile: Image.Image, size: tuple[int, int], r: _Random) -> Image.Image:
    """A *size* window of *tile* at a random offset (the tile is stretched if it is too small)."""
    if size[0] > tile.width or size[1] > tile.height:
        tile = tile.resize((max(size[0], tile.width), max(size[1], tile.height)))
    x, y = r.i(0, tile.width - size[0] + 1), r.i(0, tile.height - size[1] + 1)
    return tile.crop((x, y, x + size[0], y + size[1]))


def _any_colour(r: _Random) -> Colour:
    return (r.i(0, 256), r.i(0, 256), r.i(0, 256))


def _background(r: _Random, size: tuple[int, int]) -> Image.Image:
    """A scene: smooth colour field, maybe a floor with court lines, many random shapes.

    Colours come from a per-image theme (a base colour and a spread) so scenes range
    from muted to garish; a share of the shapes ignore the theme.
    """
    w, h = size
    base, spread = _hsv(r, (0.0, 0.8), (40, 230)), r.u(25, 140)

    def themed() -> Colour:
        return _jitter(base, r, int(spread)) if r.chance(0.7) else _any_colour(r)

    k = r.i(2, 7)
    field = np.array(base) + spread * (2 * r.rng.random((k, k, 3)) - 1)
    if r.chance(0.4):  # a few cells of any colour at all
        field = np.where(r.rng.random((k, k, 1)) < 0.3, r.rng.random((k, k, 3)) * 255, field)
    field = field.clip(0, 255).astype(np.uint8)
    canvas = Image.fromarray(field).resize(size, Image.Resampling.BICUBIC if k > 2 else Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(canvas)
    if r.chance(0.6):  # a floor, maybe sloping, with a few lines on it
        y0, y1 = r.u(0.45, 0.95) * h, r.u(0.45, 0.95) * h
        draw.polygon([(0, y0), (w, y1), (w, h), (0, h)], fill=themed())
        for _ in range(r.i(0, 4)):
            ya, yb = r.u(max(y0, y1), h), r.u(max(y0, y1), h)
            draw.line([(0, ya), (w, yb)], fill=_jitter((235, 235, 235), r, 20), width=r.i(1, 4))
    for _ in range(r.i(6, 22)):
        x0, y0 = r.u(-20, w), r.u(-20, h)
        box = (x0, y0, x0 + r.u(4, 0.5 * w), y0 + r.u(4, 0.5 * h))
        shape, fill = r.i(0, 5), themed()
        if shape == 0:
            draw.rectangle(box, fill=fill)
        elif shape == 1:
            draw.ellipse(box, fill=fill)
        elif shape == 2:
            draw.line([(x0, y0), (x0 + r.u(-w, w) / 2, y0 + r.u(-h, h) / 2)], fill=fill, width=r.i(1, 7))
        elif shape == 3:
            draw.polygon([(r.u(box[0], box[2]), r.u(box[1], box[3])) for _ in range(3)], fill=fill)
        else:
            draw.rectangle(box, outline=fill, width=r.i(1, 5))
    return canvas


def _draw_distractors(canvas: Image.Image, r: _Random, look: _Look, height: float) -> None:
    """Limb-like rimmed capsules that belong to nobody, in skin and clothing colours."""
    draw = ImageDraw.Draw(canvas)
    w, h = canvas.size
    for _ in range(r.i(1, 5)):
        a = (r.u(0, w), r.u(0, h))
        angle, length = r.u(0, 2 * math.pi), r.u(0.1, 0.3) * height
        b = (a[0] + length * math.cos(angle), a[1] + length * math.sin(angle))
        ra, rb = r.u(0.015, 0.05) * height, r.u(0.015, 0.05) * height
        colour = r.pick((look.skin, look.shirt, _clothing(r), _any_colour(r)))
        draw.polygon(_capsule(a, b, ra, rb), fill=_scaled(colour, 0.55))
        draw.polygon(_capsule(a, b, max(ra - 1.5, 0.5), max(rb - 1.5, 0.5)), fill=colour)


def _pattern(kind: str, size: tuple[int, int], r: _Random, angle: float) -> Image.Image | None:
    """A grey multiplier image for clothing: stripes across *angle* (radians) or blotchy noise."""
    if kind == "stripes":
        pattern = Image.new("L", size, 255)
        draw = ImageDraw.Draw(pattern)
        period = r.u(5, 14)
        width, value = r.i(2, max(3, int(period / 1.6))), r.i(90, 200)
        if r.chance(0.3):
            angle += math.pi / 2
        nx, ny = math.cos(angle), math.sin(angle)
        diag = math.hypot(*size)
        cx, cy = size[0] / 2, size[1] / 2
        for offset in np.arange(-diag / 2, diag / 2, period).tolist():
            px, py = cx + offset * nx, cy + offset * ny
            draw.line([(px + diag * ny, py - diag * nx), (px - diag * ny, py + diag * nx)], fill=value, width=width)
        return pattern
    if kind == "noise":
        low = r.i(60, 170)
        return _crop(_noise_tiles()[1], size, r).point([low + (255 - low) * v // 255 for v in range(256)])
    return None


#: point table: 255 wherever anything was drawn
_ANYTHING = [0] + [255] * 255


def _paint_figure(canvas: Image.Image, figure: _Figure, look: _Look, r: _Random, height: float) -> Image.Image:
    """Draw *figure* onto *canvas* far to near and return its label image.

    Part k (1 is the farthest) is drawn with label 2k (its darker rim) and 2k + 1 (its
    fill); 0 is background. Parts are lit from a random side: brighter towards the light.
    """
    size = figure.size
    label = Image.new("L", size, 0)
    draw = ImageDraw.Draw(label)
    palette = [0] * 768
    group_colour = {
        "skin": look.skin,
        "hair": look.hair,
        "shirt": look.shirt,
        "trousers": look.trousers,
        "shoes": look.shoes,
    }
    in_group: dict[str, list[int]] = {"shirt": [0] * 256, "trousers": [0] * 256}
    light = r.u(0, 2 * math.pi)
    lx, ly = math.cos(light) * 0.5 / height, math.sin(light) * 0.5 / height
    centre = figure.joints.mean(axis=0)
    for k, part in enumerate(figure.parts, start=1):
        for polygon in part.outer:
            draw.polygon(polygon, fill=2 * k)
        for polygon in part.inner:
            draw.polygon(polygon, fill=2 * k + 1)
        x, y = part.outer[0][0] - centre[0], part.outer[0][1] - centre[1]
        colour = _scaled(_jitter(group_colour[part.group], r, 6), 1.0 + lx * x + ly * y)
        palette[6 * k : 6 * k + 3] = _scaled(colour, 0.6)
        palette[6 * k + 3 : 6 * k + 6] = colour
        if part.group in in_group:
            in_group[part.group][2 * k] = in_group[part.group][2 * k + 1] = 255
    coloured = label.copy()
    coloured.putpalette(palette)
    person = coloured.convert("RGB")

    # clothing patterns multiply the flat colours
    spine = figure.joints[NECK] - (figure.joints[R_HIP] + figure.joints[L_HIP]) / 2
    spine_angle = math.atan2(spine[1], spine[0])
    shade: Image.Image | None = None
    for group, kind in (("shirt", look.shirt_pattern), ("trousers", look.trouser_pattern)):
        pattern = _pattern(kind, size, r, spine_angle if group == "shirt" else spine_angle + math.pi / 2)
        if pattern is not None:
            shade = shade or Image.new("L", size, 255)
            shade.paste(pattern, mask=label.point(in_group[group]))
    if shade is not None:
        person = ImageChops.multiply(person, shade.convert("RGB"))
    canvas.paste(person, figure.origin, mask=label.point(_ANYTHING))
    return label


def _draw_occluder(canvas: Image.Image, label: Image.Image, figure: _Figure, r: _Random, height: float) -> None:
    """A ball, post or board in front of part of the person; its pixels get :data:`OCCLUDER_LABEL`.

    *label* is the figure's local label image; the shape is placed in its coordinates.
    """
    tx, ty = figure.joints[r.i(0, NUM_JOINTS)].tolist()
    tx, ty = tx + r.normal(0, 0.08 * height), ty + r.normal(0, 0.08 * height)
    kind = r.i(0, 3)
    if kind == 0:  # ball
        radius = r.u(0.06, 0.14) * height
        shape = [tx - radius, ty - radius, tx + radius, ty + radius]
    elif kind == 1:  # post
        half, tilt = r.u(0.025, 0.06) * height, r.u(-0.3, 0.3)
        dx, dy = 3 * height * math.sin(tilt), -3 * height * math.cos(tilt)
        shape = _capsule((tx + dx, ty + dy), (tx - dx, ty - dy), half, half, square=True)
    else:  # board
        hw, hh = r.u(0.05, 0.15) * height, r.u(0.05, 0.15) * height
        shape = [tx - hw, ty - hh, tx + hw, ty + hh]
    ox, oy = figure.origin
    on_canvas = [v + (ox if i % 2 == 0 else oy) for i, v in enumerate(shape)]
    for image, points, fill in ((canvas, on_canvas, _any_colour(r)), (label, shape, OCCLUDER_LABEL)):
        draw = ImageDraw.Draw(image)
        if kind == 0:
            draw.ellipse(points, fill=fill)
        elif kind == 1:
            draw.polygon(points, fill=fill)
        else:
            draw.rectangle(points, fill=fill)


def _visibility(label: Image.Image, figure: _Figure) -> np.ndarray:
    """Visibility flags: 0 where a joint's pixel shows something in front of the joint, else 1.

    In front means: a foreground object, or a body part drawn after every part the joint
    belongs to and nearer to the viewer than the joint by :data:`DEPTH_MARGIN`. The torso
    hides a hip or shoulder only well inside its outline: a hip on the edge of the torso
    stays visible, the far hip in a side view does not.
    """
    labels = np.asarray(label)
    last_owner = [0] * NUM_JOINTS
    for k, part in enumerate(figure.parts, start=1):
        for joint in part.owners:
            last_owner[joint] = k
    h, w = labels.shape
    # each joint's pixel and four pixels round it (right, left, down, up)
    steps = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) * figure.reach
    points = np.rint(figure.joints[:, None, :] + steps).astype(int)
    xs, ys = np.clip(points[..., 0], 0, w - 1), np.clip(points[..., 1], 0, h - 1)
    covering = (labels[ys, xs] // 2).tolist()
    visible = np.ones(NUM_JOINTS, dtype=np.float32)
    for joint, (k, *around) in enumerate(covering):
        if k > len(figure.parts):
            visible[joint] = 0.0
            continue
        if k <= last_owner[joint]:
            continue
        part = figure.parts[k - 1]
        if not part.volume:
            in_front = part.depth > figure.depths[joint] + DEPTH_MARGIN
        else:
            mid = figure.mid_depths[joint]
            in_front = (part.depth if np.isnan(mid) else mid) > figure.depths[joint] + DEPTH_MARGIN and min(around) >= k
        if in_front:
            visible[joint] = 0.0
    return visible


def _posed_person(r: _Random) -> tuple[_Body, _Pose, _Look, _Skeleton]:
    body, pose, look = _sample_body(r), _sample_pose(r), _sample_look(r)
    return body, pose, look, _forward_kinematics(body, pose)


def render_person(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic sports image: RGB ``uint8`` (H, W, 3) and ``float32`` (14, 3) joints.

    Joints are x, y (pixel centres at integer coordinates) and visibility (1 visible,
    0 hidden by a nearer body part or a foreground object), in LSP order, all inside
    the image. The result depends only on the state of *rng*.
    """
    r = _Random(rng)
    body, pose, look, skeleton = _posed_person(r)
    unit = _Projection(pose.yaw, pose.roll, 1.0, np.zeros(2))
    torso = unit(skeleton.joints[[L_SHOULDER, R_HIP]])
    if np.hypot(*(torso[0] - torso[1])) < MIN_TORSO:  # the torso points at the camera: view from the side
        pose = dataclasses.replace(pose, yaw=pose.yaw + 90.0)
        unit = _Projection(pose.yaw, pose.roll, 1.0, np.zeros(2))
    # fit the person (shrunk if needed) into an image of random size around them
    lo, hi = _extent(skeleton, unit)
    span = np.maximum(hi - lo, 1e-3)
    pad = 0.07 * body.bulk  # limb and head thickness beyond the outline points, in heights
    height = min(r.u(*HEIGHT_RANGE), float(np.min((MAX_SIDE - 2 * MARGIN) / (span + 2 * pad))))
    need = (span + 2 * pad) * height + 2 * MARGIN
    width = int(min(MAX_SIDE, max(r.u(MIN_SIDE, MAX_SIDE), need[0])))
    tall = int(min(MAX_SIDE, max(r.u(MIN_SIDE, MAX_SIDE), need[1])))
    slack = np.maximum(np.array([width, tall]) - 1 - need, 0)
    offset = MARGIN + (pad - lo) * height + np.array([r.random(), r.random()]) * slack
    figure = _figure(skeleton, body, look, _Projection(pose.yaw, pose.roll, height, offset))
    size = (width, tall)

    canvas = _background(r, size)
    if r.chance(0.3):  # another, unlabelled person somewhere behind
        body2, pose2, look2, skeleton2 = _posed_person(r)
        height2 = height * r.u(0.5, 1.1)
        project2 = _Projection(pose2.yaw, pose2.roll, height2, np.array([r.u(0, width), r.u(0, tall)]))
        _paint_figure(canvas, _figure(skeleton2, body2, look2, project2), look2, r, height2)
    _draw_distractors(canvas, r, look, height)
    label = _paint_figure(canvas, figure, look, r, height)
    if r.chance(0.15):
        _draw_occluder(canvas, label, figure, r, height)
    visible = _visibility(label, figure)

    canvas = canvas.filter(ImageFilter.BoxBlur(r.u(0.3, 0.9)))
    grain = Image.blend(Image.new("RGB", size, (128, 128, 128)), _crop(_noise_tiles()[0], size, r), r.u(0.05, 0.25))
    canvas = ImageChops.add(canvas, grain, scale=1.0, offset=-128)
    joints = np.concatenate([figure.joints + figure.origin, visible[:, None]], axis=1).astype(np.float32)
    return np.array(canvas), joints


# ------------------------------------------------------------------------------ dataset


class SyntheticPeople(ImageDataset):
    """Procedurally rendered people with 14 LSP joints, generated on the fly; no files needed.

    Image *i* depends only on (*seed*, *i*, labelled or not): the unlabelled variant
    draws a different stream of images, so pretext training on it never sees the
    labelled test images.
    """

    name = "synthetic"
    protocols = ("standard",)
    version = RENDER_VERSION

    def __init__(
        self,
        root: Path | str | None = None,
        skip_bad: bool = False,
        size: int = 2000,
        seed: int = 0,
        labelled: bool = True,
    ) -> None:
        super().__init__(None)  # nothing on disk: root is accepted and ignored, like skip_bad
        if isinstance(size, bool) or not isinstance(size, int) or size < 4:
            raise ConfigError(f"synthetic dataset: size must be an integer >= 4, got {size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"synthetic dataset: seed must be an integer >= 0, got {seed!r}")
        self.size = size
        self.seed = seed
        self._labelled = bool(labelled)
        self._recent: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    @property
    def labelled(self) -> bool:
        return self._labelled

    def __len__(self) -> int:
        return self.size

    def _check(self, index: int) -> None:
        if not 0 <= index < self.size:
            raise IndexError(f"synthetic dataset: index {index} out of range 0..{self.size - 1}")

    def _render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Render image *index*, keeping the last few so image() then joints() renders once."""
        self._check(index)
        if index in self._recent:
            self._recent.move_to_end(index)
            return self._recent[index]
        stream = 0 if self._labelled else 1
        result = render_person(np.random.default_rng(np.random.SeedSequence([self.seed, index, stream])))
        self._recent[index] = result
        if len(self._recent) > 4:
            self._recent.popitem(last=False)
        return result

    def image(self, index: int) -> np.ndarray:
        return self._render(index)[0].copy()

    def joints(self, index: int) -> np.ndarray:
        if not self._labelled:
            raise DataError("dataset 'synthetic-unlabelled' has no joint labels (use 'synthetic' for labelled images)")
        return self._render(index)[1].copy()

    def image_id(self, index: int) -> str:
        self._check(index)
        return f"synth{index + 1:05d}.png"

    def splits(self, protocol: str, train_size: int | None, seed: int) -> Splits:
        """LSP's standard split: first half is the train pool (10% of it validation), second half test."""
        if protocol not in self.protocols:
            raise ConfigError(f"--protocol: dataset 'synthetic' has no protocol {protocol!r} (available: standard)")
        half = self.size // 2
        return train_val_test(range(half), range(half, self.size), max(1, half // 10), train_size, seed)

    def describe(self) -> dict[str, Any]:
        return {
            "name": "synthetic" if self._labelled else "synthetic-unlabelled",
            "root": None,
            "size": self.size,
            "seed": self.seed,
            "labelled": self._labelled,
            "render_version": RENDER_VERSION,
        }


@hookimpl
def sslbench_datasets() -> list[Entry]:
    return [
        Entry(
            "synthetic",
            "Procedurally rendered people with 14 LSP joints, made on the fly (no download)",
            SyntheticPeople,
        ),
        Entry(
            "synthetic-unlabelled",
            "Synthetic people without labels, a separate image stream for pretext training",
            functools.partial(SyntheticPeople, labelled=False),
        ),
    ]
