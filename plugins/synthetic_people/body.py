"""The person to draw: LSP joint indices, body proportions and sports-like poses within joint limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sslbench_plugins.synthetic_people.draws import Random, Range

# LSP joint indices
R_ANKLE, R_KNEE, R_HIP, L_HIP, L_KNEE, L_ANKLE = 0, 1, 2, 3, 4, 5
R_WRIST, R_ELBOW, R_SHOULDER, L_SHOULDER, L_ELBOW, L_WRIST = 6, 7, 8, 9, 10, 11
NECK, HEAD_TOP = 12, 13
#: (hip, knee, ankle) and (shoulder, elbow, wrist) per side; side 0 is the person's right
LEG_JOINTS = ((R_HIP, R_KNEE, R_ANKLE), (L_HIP, L_KNEE, L_ANKLE))
ARM_JOINTS = ((R_SHOULDER, R_ELBOW, R_WRIST), (L_SHOULDER, L_ELBOW, L_WRIST))


@dataclass(frozen=True)
class Body:
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


def sample_body(r: Random) -> Body:
    """Plausible adult proportions, varied per person (limb ratios, build, torso width)."""
    arms, legs, bulk = r.u(0.92, 1.08), r.u(0.93, 1.07), r.u(0.8, 1.3)
    return Body(
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
class Limb:
    """Angles (degrees) of one arm or leg: swing of the upper segment, twist, and the two bends."""

    elevation: float  # 0 hangs straight down, 90 horizontal, 180 straight up
    azimuth: float  # 0 forward, 90 outward, 180 backward
    twist: float  # turns the bending plane about the upper segment (negative: inwards)
    bend: float  # knee or elbow flexion, >= 0: these joints bend one way only
    end: float  # ankle or wrist flexion


@dataclass(frozen=True)
class Pose:
    arms: tuple[Limb, Limb]  # right, left
    legs: tuple[Limb, Limb]
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


def sample_pose(r: Random) -> Pose:
    """A sports-like pose: one of :data:`POSE_KINDS` with random variation inside joint limits."""

    def leg(el: Range, az: Range, knee: Range) -> Limb:
        return Limb(r.u(*el), r.u(*az), r.u(-20, 20), r.u(*knee), r.u(-35, 20))

    def arm(el: Range, az: Range, elbow: Range) -> Limb:
        return Limb(r.u(*el), r.u(*az), r.u(-70, 35), r.u(*elbow), r.u(-30, 40))

    def both(make: Any, *ranges: Range) -> list[Limb]:
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
    return Pose(
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


def _limit(limb: Limb, max_back_elevation: float) -> Limb:
    """Clamp a limb that swings backwards (azimuth past 120 degrees) to a reachable elevation."""
    if limb.azimuth > 120.0 and limb.elevation > max_back_elevation:
        return Limb(max_back_elevation, limb.azimuth, limb.twist, limb.bend, limb.end)
    return limb
