"""Pictures of samples as the network sees them: skeletons drawn in the dataset's colours, tiles in a grid.

What ``sslbench data preview`` writes and ``sslbench predict`` overlays (:mod:`sslbench.cli.data`,
:mod:`sslbench.cli.model`): the left side blue, the right side red, the middle yellow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sslbench.contract.errors import ConfigError
from sslbench.contract.interfaces import Geometry, ImageDataset, SampleKey
from sslbench.contract.registry import Registry
from sslbench.contract.skeleton import LSP, Skeleton
from sslbench.data.imageio import progress_bar
from sslbench.data.pipeline import centre_square, crop_matrix, decode_maps, map_to_input, to_image, warp
from sslbench.tasks.pose import PoseTask
from sslbench.tasks.semi import pose_task_for

#: colours of the preview skeleton: the person's left side, right side, and the middle
LEFT_COLOUR = (40, 140, 255)
RIGHT_COLOUR = (255, 60, 40)
MIDDLE_COLOUR = (255, 215, 0)
#: a decoded target peak below this is a joint outside the crop (its map is all zero)
PRESENT_SCORE = 0.5


_SIDE_COLOURS = {"left": LEFT_COLOUR, "right": RIGHT_COLOUR, None: MIDDLE_COLOUR}


def limb_colour(a: int, b: int, skeleton: Skeleton = LSP) -> tuple[int, int, int]:
    """Left colour when both joints are on the person's left, right colour for the right, else middle."""
    sides = {skeleton.side(a), skeleton.side(b)}
    return _SIDE_COLOURS[sides.pop()] if len(sides) == 1 else MIDDLE_COLOUR


def joint_colour(index: int, skeleton: Skeleton = LSP) -> tuple[int, int, int]:
    return _SIDE_COLOURS[skeleton.side(index)]


def draw_skeleton(
    image: Image.Image,
    points: np.ndarray,
    present: np.ndarray,
    visible: np.ndarray | None = None,
    skeleton: Skeleton = LSP,
) -> None:
    """Draw the limbs and joints (filled: visible, hollow: occluded) of *points* (the skeleton's order) onto *image*."""
    draw = ImageDraw.Draw(image)
    width = max(1, round(image.width / 128))
    radius = max(2, round(image.width / 80))
    for a, b in skeleton.limbs:
        if present[a] and present[b]:
            draw.line([tuple(points[a]), tuple(points[b])], fill=limb_colour(a, b, skeleton), width=width)
    for j in range(skeleton.num_joints):
        if not present[j]:
            continue
        x, y = points[j]
        box = (x - radius, y - radius, x + radius, y + radius)
        if visible is None or visible[j] >= 0.5:
            draw.ellipse(box, fill=joint_colour(j, skeleton), outline=(0, 0, 0))
        else:
            draw.ellipse(box, outline=joint_colour(j, skeleton), width=width)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


@dataclass
class Tile:
    """One preview cell: the network input as an image, and a caption."""

    image: Image.Image
    caption: str


def pose_tile(
    task: PoseTask, dataset: ImageDataset, index: int, key: SampleKey, geometry: Geometry, train: bool
) -> tuple[Tile, float]:
    """The pose sample exactly as the network gets it, with joints decoded from its target maps.

    Returns the tile and the largest distance (input pixels) between a decoded target
    peak and the augmented joint position, a check of the target rendering.
    """
    sample = task.make_sample(
        dataset.image(index), dataset.joints(index), key, train, geometry, **dataset.annotation(index)
    )
    target = sample["target"][None, : task.skeleton.num_joints]
    coords, scores = decode_maps(target)
    points = map_to_input(coords[0].numpy(), geometry.stride)
    present = scores[0].numpy() >= PRESENT_SCORE
    input_joints = sample["input_joints"].numpy()
    error = float(np.abs(points[present] - input_joints[present, :2]).max()) if present.any() else 0.0
    picture = Image.fromarray(to_image(sample["image"]))
    draw_skeleton(picture, points, present, input_joints[:, 2], task.skeleton)
    return Tile(picture, dataset.image_id(index) + (" (flip)" if bool(sample["flip"]) else "")), error


def crop_tile(dataset: ImageDataset, index: int, geometry: Geometry) -> Tile:
    """The largest centred square of the image, resized to the input size (unlabelled pools)."""
    image = dataset.image(index)
    centre, side = centre_square(*image.shape[:2])
    matrix = crop_matrix(centre, side, geometry.input_size)
    return Tile(Image.fromarray(warp(image, matrix, geometry.input_size)), dataset.image_id(index))


def pretext_tile(task: Any, dataset: ImageDataset, index: int, key: SampleKey, geometry: Geometry, train: bool) -> Tile:
    """The ``image`` a pretext task feeds the network."""
    joints = dataset.joints(index) if dataset.labelled else None
    sample = task.make_sample(dataset.image(index), joints, key, train, geometry)
    if "image" not in sample:
        raise ConfigError(f"--task {task.name}: its samples have no 'image' to show")
    return Tile(Image.fromarray(to_image(sample["image"])), dataset.image_id(index))


def make_grid(tiles: list[Tile], title: str) -> Image.Image:
    """Tiles in a near-square grid with captions and a title line."""
    size = tiles[0].image.width
    columns = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    font_size = max(10, min(16, size // 12))
    font = _font(font_size)
    caption, gap = font_size + 6, 4
    header = 2 * font_size + 12
    title_width = math.ceil(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title, font=font))
    width = max(columns * (size + gap) + gap, title_width + 2 * gap)
    grid = Image.new("RGB", (width, header + rows * (size + caption + gap)), (24, 24, 24))
    draw = ImageDraw.Draw(grid)
    draw.text((gap, 4), title, fill=(235, 235, 235), font=font)
    for i, tile in enumerate(tiles):
        x = gap + (i % columns) * (size + gap)
        y = header + (i // columns) * (size + caption + gap)
        grid.paste(tile.image, (x, y))
        text = tile.caption
        while len(text) > 1 and draw.textlength(text, font=font) > size:  # keep captions inside their tile
            text = text[:-2] + "…"
        draw.text((x, y + size + 2), text, fill=(200, 200, 200), font=font)
    return grid


def preview_tiles(
    dataset: ImageDataset,
    task_name: str,
    indices: list[int],
    seed: int,
    geometry: Geometry,
    augment: bool,
    registry: Registry,
) -> tuple[list[Tile], str, float | None]:
    """Tiles of images *indices* for ``--task`` *task_name* (pose, crop or a pretext), the grid's legend,
    and for pose the largest distance between decoded target peaks and augmented joints."""
    name = dataset.name
    task: Any = None
    if task_name == "pose":
        if not dataset.labelled:
            raise ConfigError(f"--task pose needs joint labels, but dataset {name} has none (use crop or a pretext)")
        task = pose_task_for(dataset)
        legend = "pose input + target peaks: blue = left, red = right, hollow = occluded"
    elif task_name == "crop":
        legend = "centre-square crops"
    else:
        task = registry.create("pretext", task_name, "--task")
        if not getattr(task, "trains", True):
            raise ConfigError(f"--task {task_name}: this pretext makes no samples; choose pose, crop or a pretext")
        if task.needs_labels and not dataset.labelled:
            raise ConfigError(f"--task {task_name} needs joint labels, but dataset {name} has none")
        legend = f"pretext {task_name} input"
    tiles: list[Tile] = []
    worst: float | None = 0.0 if task_name == "pose" else None
    with progress_bar() as bar:
        progress = bar.add_task("building samples", total=len(indices))
        for index in indices:
            key = SampleKey(seed, index)
            if task_name == "pose":
                tile, error = pose_tile(task, dataset, index, key, geometry, augment)
                worst = max(worst or 0.0, error)
            elif task_name == "crop":
                tile = crop_tile(dataset, index, geometry)
            else:
                tile = pretext_tile(task, dataset, index, key, geometry, augment)
            tiles.append(tile)
            bar.advance(progress)
    return tiles, legend, worst
