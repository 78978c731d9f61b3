"""``sslbench data``: check a dataset (``verify``), look at what the network is fed (``preview``), fetch one.

``verify`` decodes every image and exits 1 when it finds problems (unreadable images,
splits that cannot be made), 0 when the data is clean; a broken layout (missing
folder, bad ``joints.mat``, image count not matching the annotations, NaN
coordinates) is a one-line error with exit code 2, raised by the dataset plugin itself.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import click
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from sslbench.errors import ConfigError, DataError, SSLBenchError
from sslbench.imageio import DataWarning, ImageFileDataset, read_image, shape_text
from sslbench.interfaces import Geometry, ImageDataset, SampleKey
from sslbench.pipeline import centre_square, crop_matrix, decode_maps, map_to_input, to_image, warp
from sslbench.pose import PoseTask
from sslbench.registry import Registry, default_registry
from sslbench.semi import pose_task_for
from sslbench.skeleton import LSP, Skeleton

console = Console()
err_console = Console(stderr=True)

#: colours of the preview skeleton: the person's left side, right side, and the middle
LEFT_COLOUR = (40, 140, 255)
RIGHT_COLOUR = (255, 60, 40)
MIDDLE_COLOUR = (255, 215, 0)
#: a decoded target peak below this is a joint outside the crop (its map is all zero)
PRESENT_SCORE = 0.5


@dataclass(frozen=True)
class Download:
    """An official archive and, when known, its SHA-256."""

    url: str
    sha256: str | None
    note: str


#: default archives; hashes only where a published record exists
DOWNLOADS: dict[str, Download] = {
    "lsp": Download(
        "http://sam.johnson.io/research/lsp_dataset.zip",
        # 35,416,832 bytes; as recorded by TensorFlow Datasets (url_checksums/leeds_sports_pose.txt)
        "07cba8044f153e48aec3d02cf2ab4c2c86dbf15edae5699e77b684562851676e",
        "Leeds Sports Pose, 2000 images (about 35 MB)",
    ),
    "lspet": Download(
        "http://sam.johnson.io/research/lspet_dataset.zip",
        None,  # no published hash found: the computed one is printed for the record
        "LSP-extended, 10,000 images",
    ),
}


def registry() -> Registry:
    """The registry the data commands use (a function so tests can substitute one)."""
    return default_registry()


@click.group("data")
def data_group() -> None:
    """Check, preview and download datasets."""


# ----------------------------------------------------------------------------- opening


def open_dataset(name: str, root: str | Path | None, skip_bad: bool = False) -> tuple[ImageDataset, list[str]]:
    """Create dataset *name*; returns it and the messages of the data warnings it raised (skipped images)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        dataset = registry().create(
            "dataset", name, "--data", root=Path(root).expanduser() if root else None, skip_bad=skip_bad
        )
    messages = []
    for warning in caught:
        if issubclass(warning.category, DataWarning):
            messages.append(str(warning.message))
        else:  # not ours to swallow
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return dataset, messages


def _progress(transient: bool = True) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
    )


# ------------------------------------------------------------------------------ verify


@dataclass
class VerifyReport:
    """What ``sslbench data verify`` found in one dataset."""

    name: str
    root: str | None
    images: int
    labelled: bool
    annotation_shape: tuple[int, ...] | None = None
    #: (image id, reason) of images that could not be decoded
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    #: warnings from opening the dataset (images skipped by --skip-bad)
    skipped_messages: list[str] = field(default_factory=list)
    skipped: int = 0
    joints_outside: int = 0
    images_with_joints_outside: list[str] = field(default_factory=list)
    occluded_fraction: float | None = None
    widths: list[int] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)
    #: protocol -> (train pool, val, test) sizes, or the error message
    splits: dict[str, tuple[int, int, int] | str] = field(default_factory=dict)
    split_warnings: dict[str, str] = field(default_factory=dict)
    #: images that decode without error but show nothing (one colour, or one 16 x 16 tile repeated)
    uniform: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """Findings that make the data unfit as it is (exit code 1)."""
        found = [f"{image}: cannot read image: {reason}" for image, reason in self.unreadable]
        found += [f"protocol {p}: {v}" for p, v in self.splits.items() if isinstance(v, str)]
        return found


def _decode(dataset: ImageDataset, index: int) -> np.ndarray:
    """Decode image *index* without filling the dataset's cache (verify reads everything once)."""
    if isinstance(dataset, ImageFileDataset) and index not in dataset.cache:
        return read_image(dataset.path(index))
    return dataset.image(index)


def looks_blank(image: np.ndarray, block: int = 16) -> bool:
    """Whether *image* holds no picture: every *block* x *block* tile has the same mean colour.

    A JPEG whose scan data was zeroed but whose header survived decodes without an error, to
    a flat grey or to one tile repeated (every 8 x 8 block decoded from the same zero bits);
    either way its tile means do not vary. Cheap next to decoding; images smaller than two
    tiles are not judged.
    """
    height, width = (image.shape[0] // block) * block, (image.shape[1] // block) * block
    if height < block or width < block or height * width < 2 * block * block:
        return False
    tiles = image[:height, :width].reshape(height // block, block, width // block, block, -1).mean(axis=(1, 3))
    return bool(np.ptp(tiles, axis=(0, 1)).max() < 1.0)


def verify_dataset(
    dataset: ImageDataset, skipped_messages: list[str] | None = None, progress: bool = True
) -> VerifyReport:
    """Decode every image, check joints against image bounds, size statistics and splits."""
    report = VerifyReport(
        name=dataset.name,
        root=str(dataset.root) if dataset.root is not None else None,
        images=len(dataset),
        labelled=dataset.labelled,
        annotation_shape=getattr(dataset, "annotation_shape", None),
        skipped_messages=list(skipped_messages or []),
        skipped=len(getattr(dataset, "skipped", [])),
    )
    occluded = total_joints = 0
    with _progress() as bar:
        task = bar.add_task(f"decoding {dataset.name} images", total=len(dataset), visible=progress)
        for index in range(len(dataset)):
            bar.advance(task)
            try:
                image = _decode(dataset, index)
            except DataError as exc:
                where = dataset.path(index) if isinstance(dataset, ImageFileDataset) else dataset.image_id(index)
                report.unreadable.append((str(where), str(exc).split("cannot read image: ", 1)[-1]))
                continue
            height, width = image.shape[:2]
            if looks_blank(image):
                report.uniform.append(str(dataset.image_id(index)))
            report.widths.append(width)
            report.heights.append(height)
            if not dataset.labelled:
                continue
            joints = dataset.joints(index)
            x, y = joints[:, 0], joints[:, 1]
            # pixels cover -0.5..W-0.5 with 0-based centres, 0.5..W+0.5 with MATLAB's 1-based ones:
            # a joint is outside when it is outside both
            outside = int(((x < -0.5) | (y < -0.5) | (x > width + 0.5) | (y > height + 0.5)).sum())
            if outside:
                report.joints_outside += outside
                report.images_with_joints_outside.append(dataset.image_id(index))
            occluded += int((joints[:, 2] < 0.5).sum())
            total_joints += len(joints)
    if total_joints:
        report.occluded_fraction = occluded / total_joints
    for protocol in dataset.protocols:
        try:
            splits = dataset.splits(protocol, None, 0)
        except SSLBenchError as exc:
            report.splits[protocol] = str(exc)
            continue
        report.splits[protocol] = (splits.pool_size or len(splits.train), len(splits.val), len(splits.test))
        if splits.warning:
            report.split_warnings[protocol] = splits.warning
    return report


def _stats(values: list[int]) -> str:
    if not values:
        return "-"
    array = np.asarray(values)
    return f"{array.min()} / {int(np.median(array))} / {array.max()} (min / median / max)"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _names(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def render_report(report: VerifyReport) -> Table:
    """The summary table of :func:`verify_dataset`."""
    table = Table(title=f"sslbench data verify: {report.name}", show_header=True)
    table.add_column("check")
    table.add_column("result", overflow="fold")
    table.add_row("root", report.root or "-")
    table.add_row("images", str(report.images))
    if report.labelled:
        shape = shape_text(report.annotation_shape) if report.annotation_shape else "labelled"
        table.add_row("annotations", f"joints.mat {shape}" if report.annotation_shape else shape)
    else:
        table.add_row("annotations", "none (unlabelled)")
    table.add_row("unreadable images", str(len(report.unreadable)))
    table.add_row("skipped (--skip-bad)", str(report.skipped))
    if report.labelled:
        outside = str(report.joints_outside)
        if report.joints_outside:
            images = report.images_with_joints_outside
            outside += f" in {_plural(len(images), 'image')} ({_names(images)})"
        table.add_row("joints outside image", outside)
        if report.occluded_fraction is not None:
            table.add_row("occluded joints", f"{100 * report.occluded_fraction:.1f}%")
    table.add_row("image width", _stats(report.widths))
    table.add_row("image height", _stats(report.heights))
    for protocol, sizes in report.splits.items():
        if isinstance(sizes, str):
            table.add_row(f"split {protocol}", f"[red]{sizes}[/]")
        else:
            pool, val, test = sizes
            table.add_row(f"split {protocol}", f"train pool {pool}, val {val}, test {test}")
    return table


def print_report(report: VerifyReport) -> None:
    """Table, then warnings and problems as plain lines (never wrapped, so paths stay whole)."""
    console.print(render_report(report))
    for message in report.skipped_messages:
        console.print(f"[yellow]warning:[/] {message}", soft_wrap=True, highlight=False)
    if report.joints_outside:
        console.print(
            f"[yellow]warning:[/] {_plural(report.joints_outside, 'joint')} outside the picture "
            f"({_names(report.images_with_joints_outside)})",
            soft_wrap=True,
            highlight=False,
        )
    if report.uniform:
        console.print(
            f"[yellow]warning:[/] {_plural(len(report.uniform), 'image')} decode to a blank picture, one colour or "
            f"one tile repeated (suspicious: damaged or zeroed image data?): {_names(report.uniform)}",
            soft_wrap=True,
            highlight=False,
        )
    for protocol, message in report.split_warnings.items():
        console.print(f"[yellow]note:[/] protocol {protocol}: {message}", soft_wrap=True, highlight=False)
    problems = report.problems
    for problem in problems[:20]:
        console.print(f"[red]problem:[/] {problem}", soft_wrap=True, highlight=False)
    if len(problems) > 20:
        console.print(f"[red]problem:[/] ... and {len(problems) - 20} more", highlight=False)
    if problems:
        console.print(
            f"[bold red]{_plural(len(problems), 'problem')} found[/] "
            "(use --skip-bad to leave unreadable images out)",
            highlight=False,
        )
    else:
        console.print("[bold green]no problems found[/]", highlight=False)


@data_group.command("verify")
@click.option("--data", "name", required=True, help="Dataset plugin name (lsp, lspet, folder, ...).")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), help="Folder of the dataset.")
@click.option("--skip-bad", is_flag=True, help="Leave unreadable images out (reported) instead of failing on them.")
@click.pass_context
def verify_command(ctx: click.Context, name: str, root: Path | None, skip_bad: bool) -> None:
    """Decode every image and check the annotations; exit 1 when problems are found."""
    dataset, messages = open_dataset(name, root, skip_bad)
    report = verify_dataset(dataset, messages)
    print_report(report)
    if report.problems:
        ctx.exit(1)


# ----------------------------------------------------------------------------- preview


_SIDE_COLOURS = {"left": LEFT_COLOUR, "right": RIGHT_COLOUR, None: MIDDLE_COLOUR}


def limb_colour(a: int, b: int, skeleton: Skeleton = LSP) -> tuple[int, int, int]:
    """Left colour when both joints are on the person's left, right colour for the right, else middle."""
    sides = {skeleton.side(a), skeleton.side(b)}
    return _SIDE_COLOURS[sides.pop()] if len(sides) == 1 else MIDDLE_COLOUR


def joint_colour(index: int, skeleton: Skeleton = LSP) -> tuple[int, int, int]:
    return _SIDE_COLOURS[skeleton.side(index)]


def draw_skeleton(
    image: Image.Image, points: np.ndarray, present: np.ndarray, visible: np.ndarray | None = None,
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
    sample = task.make_sample(dataset.image(index), dataset.joints(index), key, train, geometry, **dataset.annotation(index))
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


def pretext_tile(
    task: Any, dataset: ImageDataset, index: int, key: SampleKey, geometry: Geometry, train: bool
) -> Tile:
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
    dataset: ImageDataset, task_name: str, indices: list[int], seed: int, geometry: Geometry, augment: bool
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
        task = registry().create("pretext", task_name, "--task")
        if not getattr(task, "trains", True):
            raise ConfigError(f"--task {task_name}: this pretext makes no samples; choose pose, crop or a pretext")
        if task.needs_labels and not dataset.labelled:
            raise ConfigError(f"--task {task_name} needs joint labels, but dataset {name} has none")
        legend = f"pretext {task_name} input"
    tiles: list[Tile] = []
    worst: float | None = 0.0 if task_name == "pose" else None
    with _progress() as bar:
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


@data_group.command("preview")
@click.option("--data", "name", required=True, help="Dataset plugin name (lsp, lspet, folder, synthetic, ...).")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), help="Folder of the dataset.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="PNG to write [<data>_preview.png]."
)
@click.option("--count", type=click.IntRange(1, 400), default=16, show_default=True, help="Number of samples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Picks the images and their augmentation.")
@click.option(
    "--task",
    "task_name",
    default=None,
    help="pose (labelled data), crop (centre squares), or a pretext name; default pose if labelled, else crop.",
)
@click.option("--input-size", type=click.IntRange(16, 1024), default=256, show_default=True, help="Input size.")
@click.option("--stride", type=click.IntRange(1, 64), default=8, show_default=True, help="Network output stride.")
@click.option("--augment/--no-augment", default=True, show_default=True, help="Random rotation, scale and flip.")
@click.option("--skip-bad", is_flag=True, help="Leave unreadable images out.")
@click.option("--pseudo-labels", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A pseudo-label cell's pseudo-labels-round<r>.json: draw its confident joints on --data's images.")  # fmt: skip
def preview_command(
    name: str,
    root: Path | None,
    out: Path | None,
    count: int,
    seed: int,
    task_name: str | None,
    input_size: int,
    stride: int,
    augment: bool,
    skip_bad: bool,
    pseudo_labels: Path | None,
) -> None:
    """Write a grid of samples as the network sees them, skeletons drawn (left blue, right red)."""
    if input_size % stride:
        raise ConfigError(f"--input-size {input_size} must be a multiple of --stride {stride}")
    dataset, messages = open_dataset(name, root, skip_bad)
    for message in messages:
        err_console.print(f"[yellow]warning:[/] {message}", soft_wrap=True, highlight=False)
    pool = list(range(len(dataset)))
    if pseudo_labels is not None:
        dataset, pool = pseudo_labelled(dataset, pseudo_labels)
        task_name = "pose"
    task_name = task_name or ("pose" if dataset.labelled else "crop")
    geometry = Geometry(input_size=input_size, stride=stride)
    chosen = np.random.default_rng(seed).choice(len(pool), size=min(count, len(pool)), replace=False)
    indices = sorted(pool[int(i)] for i in chosen)
    out = out or Path(f"{name}_preview.png")

    tiles, legend, worst = preview_tiles(dataset, task_name, indices, seed, geometry, augment)
    if pseudo_labels is not None:
        legend = f"pseudo-labels of {pseudo_labels.name}, joints with a peak of at least the threshold"
    grid = make_grid(tiles, f"{name}: {legend}")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        grid.save(out)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--out {out}: cannot write the preview: {exc}") from None
    console.print(f"wrote {out} ({len(tiles)} samples, {task_name}, {input_size} px)", soft_wrap=True, highlight=False)
    if worst is not None:
        console.print(f"target peaks decode to within {worst:.2f} input px of the augmented joints", highlight=False)


def pseudo_labelled(dataset: ImageDataset, path: Path) -> tuple[ImageDataset, list[int]]:
    """*dataset* with the confident joints of a pseudo-label file (others unknown), and the images it labels."""
    from sslbench.semi import JointsOverride

    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        threshold = float(stored["threshold"])
        joints = {}
        for item in stored["images"]:
            array = np.asarray(item["joints"], dtype=np.float32).reshape(dataset.skeleton.num_joints, 3)
            if item["image"] != dataset.image_id(int(item["index"])):
                raise ConfigError(f"--pseudo-labels {path}: image {item['index']} is {item['image']}, "
                                  f"but --data {dataset.name} has {dataset.image_id(int(item['index']))} there")  # fmt: skip
            confident = array[:, 2] >= threshold
            if confident.any():
                array[~confident, :2] = np.nan
                joints[int(item["index"])] = array
    except OSError as exc:
        raise ConfigError(f"--pseudo-labels {path}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ConfigError(f"--pseudo-labels {path}: not a pseudo-label file ({type(exc).__name__}: {exc})") from None
    if not joints:
        raise ConfigError(f"--pseudo-labels {path}: no image has a joint at or above the threshold {threshold}")
    return JointsOverride(dataset, joints), sorted(joints)


# ---------------------------------------------------------------------------- download


def _fetch(url: str, part: Path) -> str:
    """Stream *url* into *part* with a progress bar; returns the SHA-256 hex digest."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, part.open("wb") as sink:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
            with Progress(*columns, console=err_console, transient=True) as bar:
                task = bar.add_task(f"downloading {PurePosixPath(url).name}", total=total)
                while chunk := response.read(1 << 20):
                    sink.write(chunk)
                    digest.update(chunk)
                    bar.advance(task, len(chunk))
            if total is not None and sink.tell() != total:
                raise DataError(f"{url}: download incomplete: got {sink.tell()} of {total} bytes")
    except urllib.error.HTTPError as exc:
        raise DataError(f"{url}: download failed: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DataError(f"{url}: download failed: {exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{url}: download failed: {type(exc).__name__}: {exc}") from None
    return digest.hexdigest()


def _safe_target(root: Path, name: str, archive: str) -> Path | None:
    """Where member *name* goes under *root* (None for the archive's top folder itself)."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise DataError(f"{archive}: unsafe member {name!r} would be written outside {root}")
    if not pure.parts or pure.parts == (".",):
        return None
    target = (root / Path(*pure.parts)).resolve()
    if not target.is_relative_to(root.resolve()):
        raise DataError(f"{archive}: unsafe member {name!r} would be written outside {root}")
    return target


def _strip_prefix(names: list[str]) -> str:
    """``"x/"`` when every member lies in one top folder x that is not ``images`` itself (a wrapped archive)."""
    tops = {PurePosixPath(n).parts[0] for n in names if PurePosixPath(n).parts}
    if len(tops) == 1:
        top = next(iter(tops))
        if top != "images" and all(PurePosixPath(n).parts[0] == top for n in names):
            if any(len(PurePosixPath(n).parts) > 1 for n in names):
                return top + "/"
    return ""


def _members(archive: Path, label: str | None = None) -> tuple[list[tuple[str, bool, Any]], Any]:
    """(name, is_dir, handle) of every member, and the open archive; links and devices are refused.

    Errors name *label* (the URL of a download, whose temporary file is removed), else the file.
    """
    label = label or archive.name
    try:
        return _open_members(archive, label)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{label}: not a readable zip or tar archive (truncated download?): {type(exc).__name__}: {exc}") from None


def _open_members(archive: Path, label: str) -> tuple[list[tuple[str, bool, Any]], Any]:
    if zipfile.is_zipfile(archive):
        opened: Any = zipfile.ZipFile(archive)
        members = []
        for info in opened.infolist():
            mode = (info.external_attr >> 16) & 0o170000
            if mode == 0o120000:
                opened.close()
                raise DataError(f"{label}: member {info.filename!r} is a symbolic link; refusing to extract")
            members.append((info.filename, info.is_dir(), info))
        return members, opened
    if tarfile.is_tarfile(archive):
        opened = tarfile.open(archive)
        members = []
        for info in opened.getmembers():
            if not (info.isfile() or info.isdir()):
                opened.close()
                raise DataError(f"{label}: member {info.name!r} is a link or device; refusing to extract")
            members.append((info.name, info.isdir(), info))
        return members, opened
    raise DataError(f"{label}: not a zip or tar archive (an HTML page or a truncated download?)")


def _open_member(opened: Any, handle: Any) -> IO[bytes]:
    if isinstance(opened, zipfile.ZipFile):
        return opened.open(handle)
    stream = opened.extractfile(handle)
    assert stream is not None  # regular files always have a stream
    return stream


def extract_archive(archive: Path, root: Path, label: str | None = None) -> int:
    """Extract a zip or tar archive into *root*; every member is checked before anything is written.

    Members escaping *root* (absolute paths, ``..``), links and devices are refused; an
    archive wrapped in one top folder is unwrapped so ``root/images`` is the image folder.
    Returns the number of files written.
    """
    label = label or archive.name
    members, opened = _members(archive, label)
    try:
        prefix = _strip_prefix([name for name, _, _ in members])
        planned: list[tuple[Path, bool, Any]] = []
        for name, is_dir, handle in members:
            inner = name[len(prefix) :] if prefix and name.startswith(prefix) else name
            target = _safe_target(root, inner, label)
            if target is not None:
                planned.append((target, is_dir, handle))
        written = 0
        for target, is_dir, handle in planned:
            if is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with _open_member(opened, handle) as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink)
            written += 1
        return written
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{label}: cannot extract: {type(exc).__name__}: {exc}") from None
    finally:
        opened.close()


def _check_sha256(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.strip().lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ConfigError(f"--sha256 must be 64 hexadecimal digits, got {text!r}")
    return text


def download_dataset(name: str, root: Path, url: str | None = None, sha256: str | None = None) -> int:
    """Fetch, check and extract dataset *name* into *root*; returns the number of files written.

    The archive is streamed to a temporary file inside *root* and removed afterwards,
    whatever happens; on a failed download or hash mismatch nothing else is left
    behind (an empty *root* this call created is removed too).
    """
    known = DOWNLOADS[name]
    expected = _check_sha256(sha256)
    source = url or known.url
    if expected is None and url is None:
        expected = known.sha256
    images = root / "images"
    if images.exists():
        raise DataError(f"{images}: already exists; remove it or choose another --root (or run sslbench data verify)")
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{root}: cannot create the folder: {exc}") from None
    handle, part_name = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=root)
    part = Path(part_name)
    try:
        with open(handle, "wb"):
            pass
        digest = _fetch(source, part)
        if expected is not None and digest != expected:
            raise DataError(
                f"{source}: SHA-256 mismatch: got {digest}, expected {expected}; the download was removed"
            )
        if expected is None:
            console.print(
                f"SHA-256 {digest} (not checked: no known hash for this archive; pass --sha256 to check it)",
                soft_wrap=True,
                highlight=False,
            )
        else:
            console.print(f"SHA-256 {digest} checked", highlight=False)
        return extract_archive(part, root, source)
    except BaseException:
        part.unlink(missing_ok=True)
        if created and root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        raise
    finally:
        part.unlink(missing_ok=True)


@data_group.command("download")
@click.argument("name", type=click.Choice(sorted(DOWNLOADS)))
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder to extract into.")
@click.option("--url", default=None, help="Archive to fetch instead of the official one (zip or tar).")
@click.option("--sha256", default=None, help="Expected SHA-256 of the archive (checked; mismatch removes it).")
@click.pass_context
def download_command(ctx: click.Context, name: str, root: Path, url: str | None, sha256: str | None) -> None:
    """Download an official archive, check its hash, extract it safely, then verify it."""
    written = download_dataset(name, root.expanduser(), url, sha256)
    console.print(f"extracted {written} files into {root}", soft_wrap=True, highlight=False)
    dataset, messages = open_dataset(name, root)
    report = verify_dataset(dataset, messages)
    print_report(report)
    if report.problems:
        ctx.exit(1)
