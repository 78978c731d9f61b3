"""Forward kinematics and projection: a posed 3-D skeleton in the body frame, and the camera that flattens it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sslbench.data.joints import NUM_JOINTS
from sslbench_plugins.synthetic_people.body import ARM_JOINTS, HEAD_TOP, LEG_JOINTS, NECK, Body, Pose

#: x of the body frame points to the person's left, so their right side is at -x
SIDE_SIGN = (-1.0, 1.0)

_DOWN = np.array([0.0, -1.0, 0.0])


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
    """The smallest rotation taking straight down onto the limb direction (angles as in ``body.Limb``).

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


@dataclass(frozen=True)
class Skeleton:
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


def forward_kinematics(body: Body, pose: Pose) -> Skeleton:
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
    return Skeleton(
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


class Projection:
    """Body frame -> image: turn by yaw, project along z, roll in-plane, scale to pixels, shift."""

    def __init__(self, yaw: float, roll: float, scale: float, offset: np.ndarray) -> None:
        self.turn = _ry(yaw).T  # applied to row vectors
        c, s = math.cos(math.radians(roll)), math.sin(math.radians(roll))
        # body x stays image x, body up (+y) becomes image up (-y), then the in-plane roll
        self.plane = (scale * np.array([[c, -s], [s, c]]) @ np.array([[1.0, 0.0], [0.0, -1.0]])).T
        self.scale = scale
        self.offset = offset

    def shifted(self, by: np.ndarray) -> Projection:
        """The same projection with the image origin moved by *by* pixels."""
        moved = Projection(0.0, 0.0, self.scale, self.offset + by)
        moved.turn, moved.plane = self.turn, self.plane
        return moved

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return (points @ self.turn)[..., :2] @ self.plane + self.offset

    def depth(self, points: np.ndarray) -> Any:
        """Distance towards the viewer (larger is nearer)."""
        return points @ self.turn[:, 2]


def extent(skeleton: Skeleton, project: Projection) -> tuple[np.ndarray, np.ndarray]:
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
