"""Painting one image: the figure far to near, occluders, joint visibility, and :func:`render_person` itself."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from sslbench.data.joints import NUM_JOINTS
from sslbench_plugins.synthetic_people.appearance import (
    MAX_SIDE,
    MIN_SIDE,
    Look,
    any_colour,
    background,
    clothing_pattern,
    crop,
    draw_distractors,
    jitter,
    noise_tiles,
    sample_look,
    scaled,
)
from sslbench_plugins.synthetic_people.body import L_HIP, L_SHOULDER, NECK, R_HIP, Body, Pose, sample_body, sample_pose
from sslbench_plugins.synthetic_people.draws import Random
from sslbench_plugins.synthetic_people.figure import Figure, build_figure
from sslbench_plugins.synthetic_people.kinematics import Projection, Skeleton, extent, forward_kinematics
from sslbench_plugins.synthetic_people.shapes import capsule

#: standing height of the person in pixels (LSP people are about 150 px tall)
HEIGHT_RANGE = (115.0, 170.0)
#: joints keep at least this distance (pixels) from the image border
MARGIN = 4.0
#: shortest projected torso (left shoulder to right hip, in standing heights): PCK divides by it
MIN_TORSO = 0.15

#: a part hides a joint only if it is this much nearer the viewer (in standing heights)
DEPTH_MARGIN = 0.02
#: label of a foreground object drawn over the person (occludes every joint it covers)
OCCLUDER_LABEL = 254


#: point table: 255 wherever anything was drawn
_ANYTHING = [0] + [255] * 255


def _paint_figure(canvas: Image.Image, figure: Figure, look: Look, r: Random, height: float) -> Image.Image:
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
        colour = scaled(jitter(group_colour[part.group], r, 6), 1.0 + lx * x + ly * y)
        palette[6 * k : 6 * k + 3] = scaled(colour, 0.6)
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
        pattern = clothing_pattern(kind, size, r, spine_angle if group == "shirt" else spine_angle + math.pi / 2)
        if pattern is not None:
            shade = shade or Image.new("L", size, 255)
            shade.paste(pattern, mask=label.point(in_group[group]))
    if shade is not None:
        person = ImageChops.multiply(person, shade.convert("RGB"))
    canvas.paste(person, figure.origin, mask=label.point(_ANYTHING))
    return label


def _draw_occluder(canvas: Image.Image, label: Image.Image, figure: Figure, r: Random, height: float) -> None:
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
        shape = capsule((tx + dx, ty + dy), (tx - dx, ty - dy), half, half, square=True)
    else:  # board
        hw, hh = r.u(0.05, 0.15) * height, r.u(0.05, 0.15) * height
        shape = [tx - hw, ty - hh, tx + hw, ty + hh]
    ox, oy = figure.origin
    on_canvas = [v + (ox if i % 2 == 0 else oy) for i, v in enumerate(shape)]
    for image, points, fill in ((canvas, on_canvas, any_colour(r)), (label, shape, OCCLUDER_LABEL)):
        draw = ImageDraw.Draw(image)
        if kind == 0:
            draw.ellipse(points, fill=fill)
        elif kind == 1:
            draw.polygon(points, fill=fill)
        else:
            draw.rectangle(points, fill=fill)


def _visibility(label: Image.Image, figure: Figure) -> np.ndarray:
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


def _posed_person(r: Random) -> tuple[Body, Pose, Look, Skeleton]:
    body, pose, look = sample_body(r), sample_pose(r), sample_look(r)
    return body, pose, look, forward_kinematics(body, pose)


def render_person(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic sports image: RGB ``uint8`` (H, W, 3) and ``float32`` (14, 3) joints.

    Joints are x, y (pixel centres at integer coordinates) and visibility (1 visible,
    0 hidden by a nearer body part or a foreground object), in LSP order, all inside
    the image. The result depends only on the state of *rng*.
    """
    r = Random(rng)
    body, pose, look, skeleton = _posed_person(r)
    unit = Projection(pose.yaw, pose.roll, 1.0, np.zeros(2))
    torso = unit(skeleton.joints[[L_SHOULDER, R_HIP]])
    if np.hypot(*(torso[0] - torso[1])) < MIN_TORSO:  # the torso points at the camera: view from the side
        pose = dataclasses.replace(pose, yaw=pose.yaw + 90.0)
        unit = Projection(pose.yaw, pose.roll, 1.0, np.zeros(2))
    # fit the person (shrunk if needed) into an image of random size around them
    lo, hi = extent(skeleton, unit)
    span = np.maximum(hi - lo, 1e-3)
    pad = 0.07 * body.bulk  # limb and head thickness beyond the outline points, in heights
    height = min(r.u(*HEIGHT_RANGE), float(np.min((MAX_SIDE - 2 * MARGIN) / (span + 2 * pad))))
    need = (span + 2 * pad) * height + 2 * MARGIN
    width = int(min(MAX_SIDE, max(r.u(MIN_SIDE, MAX_SIDE), need[0])))
    tall = int(min(MAX_SIDE, max(r.u(MIN_SIDE, MAX_SIDE), need[1])))
    slack = np.maximum(np.array([width, tall]) - 1 - need, 0)
    offset = MARGIN + (pad - lo) * height + np.array([r.random(), r.random()]) * slack
    figure = build_figure(skeleton, body, look, Projection(pose.yaw, pose.roll, height, offset))
    size = (width, tall)

    canvas = background(r, size)
    if r.chance(0.3):  # another, unlabelled person somewhere behind
        body2, pose2, look2, skeleton2 = _posed_person(r)
        height2 = height * r.u(0.5, 1.1)
        project2 = Projection(pose2.yaw, pose2.roll, height2, np.array([r.u(0, width), r.u(0, tall)]))
        _paint_figure(canvas, build_figure(skeleton2, body2, look2, project2), look2, r, height2)
    draw_distractors(canvas, r, look, height)
    label = _paint_figure(canvas, figure, look, r, height)
    if r.chance(0.15):
        _draw_occluder(canvas, label, figure, r, height)
    visible = _visibility(label, figure)

    canvas = canvas.filter(ImageFilter.BoxBlur(r.u(0.3, 0.9)))
    grain = Image.blend(Image.new("RGB", size, (128, 128, 128)), crop(noise_tiles()[0], size, r), r.u(0.05, 0.25))
    canvas = ImageChops.add(canvas, grain, scale=1.0, offset=-128)
    joints = np.concatenate([figure.joints + figure.origin, visible[:, None]], axis=1).astype(np.float32)
    return np.array(canvas), joints
