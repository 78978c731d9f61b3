"""``sslbench data``: check a dataset (``verify``), look at what the network is fed (``preview``), fetch one.

``verify`` decodes every image and exits 1 when it finds problems (unreadable images,
splits that cannot be made), 0 when the data is clean; a broken layout (missing
folder, bad ``joints.mat``, image count not matching the annotations, NaN
coordinates) is a one-line error with exit code 2, raised by the dataset plugin itself.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from sslbench.contract.errors import ConfigError
from sslbench.contract.interfaces import Geometry, ImageDataset
from sslbench.contract.registry import Registry, default_registry
from sslbench.data.download import DOWNLOADS, download_dataset
from sslbench.data.imageio import DataWarning, shape_text
from sslbench.data.verify import VerifyReport, verify_dataset
from sslbench.results.drawing import make_grid, preview_tiles

console = Console()
err_console = Console(stderr=True)


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


# ------------------------------------------------------------------------------ verify


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
            f"[bold red]{_plural(len(problems), 'problem')} found[/] (use --skip-bad to leave unreadable images out)",
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

    tiles, legend, worst = preview_tiles(dataset, task_name, indices, seed, geometry, augment, registry())
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
    from sslbench.tasks.semi import JointsOverride

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
