"""``sslbench evaluate`` and ``sslbench predict``: use a trained pose checkpoint.

``evaluate`` scores a checkpoint on a labelled split (PCK@0.2, PCK@0.1, AUC and the
per-part table, at original image resolution). ``predict`` writes joint positions for
any images, in their original pixel coordinates, and can draw the skeletons.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch.utils.data import default_collate

from sslbench.contract.config import TrainSettings
from sslbench.contract.errors import CheckpointError, ConfigError, DataError, SSLBenchError
from sslbench.contract.interfaces import Geometry
from sslbench.contract.networks import Backbone
from sslbench.contract.registry import Registry, default_registry
from sslbench.contract.skeleton import LSP, Skeleton
from sslbench.data.imageio import read_image
from sslbench.data.loaders import TaskDataset, cap_loader_workers
from sslbench.results.drawing import draw_skeleton
from sslbench.results.report import part_names
from sslbench.tasks.pose import PoseTask, decode_joints
from sslbench.tasks.semi import MaskedPoseTask
from sslbench.training import atomic
from sslbench.training.checkpoint import (
    Checkpoint,
    build_model,
    describe_backbone,
    load_checkpoint,
)
from sslbench.training.device import (
    autocast_context,
    batch_to_device,
    prepare_model,
    resolve_device,
)
from sslbench.training.steps import evaluate

#: files picked up from a directory given to ``predict`` (subfolders are not searched)
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
BOX_COLUMNS: tuple[str, ...] = ("image", "x", "y", "w", "h")


# ------------------------------------------------------------------------------ helpers


def registry() -> Registry:
    """The plugin registry the commands use (a seam for tests)."""
    return default_registry()


def load_pose_model(path: Path, plugins: Registry) -> tuple[Backbone, PoseTask, Checkpoint]:
    """The pose backbone of a checkpoint, with its weights, and the task it was trained with."""
    checkpoint = load_checkpoint(path)
    task_config = checkpoint.meta.get("task") or {"name": "pose"}
    # pose-masked: the pose task of datasets with unknown joints (COCO, MPII), same outputs
    tasks = {task.name: task for task in (PoseTask, MaskedPoseTask)}
    if task_config.get("name") not in tasks:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} was trained for {task_config.get('name')!r}, not pose estimation "
            "(use the downstream best checkpoint of a run)"
        )
    try:
        task = tasks[task_config["name"]].from_config(task_config)
    except SSLBenchError as exc:
        raise CheckpointError(f"checkpoint {checkpoint.path}: {exc}") from None
    expected = task.num_outputs
    if checkpoint.meta.get("num_outputs") != expected:
        held = describe_backbone(checkpoint.backbone, checkpoint.meta.get("num_outputs"))
        raise CheckpointError(
            f"checkpoint {checkpoint.path} holds {held}, but a pose model of skeleton {task.skeleton.name} "
            f"needs {expected} output maps"
        )
    model = build_model(checkpoint, plugins)
    return model.eval(), task, checkpoint


def _metric_views(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """(flat headline metrics, per-part table) from a metric dict or a result record."""
    flat = metrics.get("metrics", metrics) if isinstance(metrics.get("metrics"), dict) else metrics
    if isinstance(flat.get("per_part"), dict):
        parts = dict(flat["per_part"])
    else:
        parts = {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith("part.")}
    return flat, parts


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def print_metrics(console: Console, metrics: dict[str, Any], title: str = "pose metrics") -> None:
    """Headline table (PCK@0.2, PCK@0.1, AUC@0.2, losses) and the per-part PCK@0.2 table.

    *metrics* is what :class:`sslbench.tasks.pose.PoseMetric` computes (``part.Head`` ...) or
    a result record of ``sslbench run`` (``metrics.per_part``).
    """
    flat, parts = _metric_views(metrics)
    console.print(f"[bold]{title}[/]", highlight=False, soft_wrap=True)
    headline = Table()
    columns = [("PCK@0.2", "pck@0.2", 1), ("PCK@0.1", "pck@0.1", 1), ("AUC@0.2", "auc@0.2", 1)]
    columns += [("PCKh@0.5", "pckh@0.5", 1), ("OKS AP", "oks.ap", 1), ("OKS AR", "oks.ar", 1)]  # MPII, COCO format
    loss_key = "loss" if "loss" in flat else "test_loss"
    columns += [("loss", loss_key, 4), ("report loss", "report_loss", 1)]
    shown = [(label, key, digits) for label, key, digits in columns if key in flat]
    for label, _, _ in shown:
        headline.add_column(label, justify="right")
    headline.add_row(*(_fmt(flat[key], digits) for _, key, digits in shown))
    console.print(headline)
    if "report_loss" in flat:
        console.print(
            "report loss: the final stage's MSE x 46*46*15, the scale of the loss figures of the report this "
            "project grew out of (lower is better; comparable in spirit only at other input sizes)",
            highlight=False,
            style="dim",
        )
    if parts:
        table = Table(title="PCK@0.2 per part (left and right averaged)", title_justify="left", min_width=60)
        order = part_names(f"part.{p}" for p in parts)
        for part in order:
            table.add_column(part, justify="right")
        table.add_row(*(_fmt(parts[p]) for p in order))
        console.print(table)


# ----------------------------------------------------------------------------- evaluate


@click.command("evaluate")
@click.option("--checkpoint", "checkpoint_path", required=True, type=click.Path(path_type=Path),
              help="Pose checkpoint: STEM, STEM.json or STEM.safetensors (e.g. a run's downstream/best).")
@click.option("--data", default="lsp", show_default=True, help="Labelled dataset plugin.")
@click.option("--root", type=click.Path(path_type=Path), default=None, help="Dataset directory.")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--protocol", default=None, help="Split protocol (default: the dataset's first, e.g. standard).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the train split (only for --split train).")  # fmt: skip
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="DataLoader workers.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "auto"]), default="fp32", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the metrics to this JSON file.")  # fmt: skip
def evaluate_command(
    checkpoint_path: Path,
    data: str,
    root: Path | None,
    split: str,
    protocol: str | None,
    seed: int,
    batch_size: int,
    workers: int,
    device: str,
    precision: str,
    json_path: Path | None,
) -> None:
    """Score a pose checkpoint on a labelled split: PCK@0.2, PCK@0.1, AUC and per-part PCK."""
    if json_path is not None:
        atomic.check_writable(json_path, "--json", is_file=True)
    workers = cap_loader_workers(
        workers, "--workers", lambda m: Console(stderr=True).print(f"[yellow]warning:[/] {m}", highlight=False, soft_wrap=True)
    )
    plugins = registry()
    settings = TrainSettings(batch_size=batch_size, num_workers=workers, device=device, precision=precision)
    resolve_device(device)
    model, task, checkpoint = load_pose_model(checkpoint_path, plugins)
    dataset = plugins.create("dataset", data, "--data", root=root, skip_bad=False)
    if not dataset.labelled:
        raise DataError(f"--data {data}: dataset at {root} has no joint labels to evaluate against")
    if dataset.skeleton.joints != task.skeleton.joints:
        raise DataError(f"--data {data}: its skeleton {dataset.skeleton.name} ({dataset.skeleton.num_joints} joints) is not "
                        f"the one checkpoint {checkpoint.path} was trained for ({task.skeleton.name})")  # fmt: skip
    protocol = protocol or dataset.protocols[0]
    if protocol not in dataset.protocols:
        raise ConfigError(f"--protocol {protocol!r}: dataset {data!r} knows {', '.join(dataset.protocols)}")
    splits = dataset.splits(protocol, None, seed)
    indices = list(getattr(splits, split))
    if not indices:
        raise DataError(f"--split {split}: dataset {data!r} ({protocol}) has no {split} images")
    geometry = Geometry(model.input_size, model.stride)
    images = TaskDataset(dataset, indices, task, geometry, seed=seed, train=False)
    metrics = evaluate(model, task, images, settings)

    console = Console()
    title = f"{describe_backbone(checkpoint.backbone)} on {data} {split} ({protocol}, {len(indices)} images)"
    print_metrics(console, metrics, title=title)
    if json_path is not None:
        document = {
            "checkpoint": str(checkpoint.path),
            "backbone": checkpoint.backbone,
            "data": data,
            "root": str(root) if root else None,
            "protocol": protocol,
            "split": split,
            "images": len(indices),
            "metrics": metrics,
        }
        atomic.write_text(json_path, json.dumps(document, indent=2) + "\n")
        console.print(f"metrics written to {json_path}", highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------ predict


def collect_images(inputs: Sequence[Path]) -> list[Path]:
    """Image files from files and directories (a directory's images, sorted, not recursive)."""
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or directory")
    return files


def read_boxes(path: Path) -> dict[str, tuple[float, float, float, float]]:
    """Person boxes from a CSV with header ``image,x,y,w,h`` (top-left corner and size, pixels)."""
    try:
        table = pd.read_csv(path, dtype={"image": str})
    except FileNotFoundError:
        raise DataError(f"--boxes {path}: file not found") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"--boxes {path}: not a readable CSV ({str(exc).strip() or type(exc).__name__})") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in BOX_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"--boxes {path}: missing column(s) {', '.join(missing)} (header must be image,x,y,w,h)")
    boxes: dict[str, tuple[float, float, float, float]] = {}
    for row_number, row in enumerate(table.itertuples(index=False), start=2):
        name = str(row.image).strip()
        try:
            x, y, w, h = (float(getattr(row, c)) for c in ("x", "y", "w", "h"))
        except (TypeError, ValueError):
            raise DataError(f"--boxes {path}, line {row_number}: x, y, w, h must be numbers") from None
        if not all(np.isfinite([x, y, w, h])) or w <= 0 or h <= 0:
            raise DataError(f"--boxes {path}, line {row_number}: need finite x, y and w, h > 0")
        if name in boxes:
            raise DataError(f"--boxes {path}, line {row_number}: image {name!r} has two boxes")
        boxes[name] = (x, y, w, h)
    return boxes


def _box_for(path: Path, label: str, boxes: dict[str, tuple[float, float, float, float]]):
    return boxes.get(label) or boxes.get(path.name)


def predict_images(
    model: Backbone,
    task: PoseTask,
    images: Sequence[np.ndarray],
    boxes: Sequence[tuple[float, float, float, float] | None],
    settings: TrainSettings,
) -> tuple[np.ndarray, np.ndarray]:
    """Joint positions (N, 14, 2) in each image's own pixels and peak scores (N, 14)."""
    device = resolve_device(settings.device)
    channels_last = prepare_model(model, device, settings)
    model.eval()
    geometry = Geometry(model.input_size, model.stride)
    positions, scores = [], []
    with torch.inference_mode():
        for start in range(0, len(images), settings.batch_size):
            chunk = range(start, min(start + settings.batch_size, len(images)))
            batch = default_collate([task.predict_sample(images[i], geometry, box=boxes[i]) for i in chunk])
            batch = batch_to_device(batch, device, channels_last)
            with autocast_context(device, settings):
                outputs = model(batch["image"], batch["centermap"])
            xy, score = decode_joints(outputs[-1].float(), batch["matrix"], model.stride, batch["flip"], task.skeleton)
            positions.append(xy)
            scores.append(score)
    return np.concatenate(positions), np.concatenate(scores)


def overlay_image(image: np.ndarray, joints: np.ndarray, skeleton: Skeleton = LSP) -> Image.Image:
    """*image* with the predicted skeleton drawn (the colours of ``sslbench data preview``:
    the person's right side red, left side blue, the centre line yellow)."""
    canvas = Image.fromarray(image).convert("RGB")
    draw_skeleton(canvas, np.asarray(joints, dtype=np.float64)[:, :2], np.ones(skeleton.num_joints, dtype=bool), skeleton=skeleton)
    return canvas


def _image_bytes(image: Image.Image, name: str) -> tuple[bytes, str]:
    """Encoded image in the format of *name*'s extension (PNG when unknown); returns (data, name)."""
    fmt = Image.registered_extensions().get(Path(name).suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        fmt, name = "PNG", Path(name).stem + ".png"
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buffer.getvalue(), name


@click.command("predict")
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE_OR_DIR...", type=click.Path(path_type=Path))
@click.option("--checkpoint", "checkpoint_path", required=True, type=click.Path(path_type=Path),
              help="Pose checkpoint: STEM, STEM.json or STEM.safetensors.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="CSV to write: image, joint, x, y, score (original image pixels).")
@click.option("--overlay", "overlay_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write each image with its predicted skeleton into this folder.")
@click.option("--boxes", "boxes_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV image,x,y,w,h: a person box per image (matched by path or file name).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "auto"]), default="fp32", show_default=True)
def predict_command(
    inputs: tuple[Path, ...],
    checkpoint_path: Path,
    out_path: Path,
    overlay_dir: Path | None,
    boxes_path: Path | None,
    batch_size: int,
    device: str,
    precision: str,
) -> None:
    """Predict the 14 joints of the person in each image (IMAGE_OR_DIR...).

    The person is taken as centred in the image (the largest centred square is the
    network's view) unless --boxes gives a box for the image; then the square around
    the box plus the model's margin is used. Coordinates are in the original image's
    pixels (pixel centres at integers) whatever its size. Nothing is written unless
    every image could be read and predicted.
    """
    atomic.check_writable(out_path, "--out", is_file=True)
    if overlay_dir is not None:
        atomic.check_writable(overlay_dir, "--overlay")
    settings = TrainSettings(batch_size=batch_size, device=device, precision=precision, num_workers=0)
    resolve_device(device)
    files = collect_images(inputs)
    boxes = read_boxes(boxes_path) if boxes_path is not None else {}
    labels = [str(p) for p in files]
    if overlay_dir is not None:
        names = [p.name for p in files]
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise DataError(f"--overlay: several input images are named {clash[0]!r}; their overlays would collide")
    model, task, _ = load_pose_model(checkpoint_path, registry())

    chosen = [_box_for(p, label, boxes) for p, label in zip(files, labels)]
    parts = []
    for start in range(0, len(files), batch_size):  # decode one batch at a time: any number of images
        chunk = slice(start, start + batch_size)
        parts.append(predict_images(model, task, [read_image(p) for p in files[chunk]], chosen[chunk], settings))
    positions = np.concatenate([p for p, _ in parts])
    scores = np.concatenate([s for _, s in parts])

    rows = [
        {"image": label, "joint": name, "x": float(positions[i, j, 0]), "y": float(positions[i, j, 1]),
         "score": float(scores[i, j])}
        for i, label in enumerate(labels)
        for j, name in enumerate(task.skeleton.joints)
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=["image", "joint", "x", "y", "score"])
    atomic.write_text(out_path, table.to_csv(index=False, float_format="%.2f"))

    console = Console(stderr=True)
    if boxes_path is not None:
        unboxed = sum(box is None for box in chosen)
        if unboxed:
            console.print(
                f"[yellow]warning:[/] {unboxed} image(s) have no box in {boxes_path}; assumed centred",
                highlight=False,
                soft_wrap=True,
            )
    if overlay_dir is not None:
        overlay_dir.mkdir(parents=True, exist_ok=True)
        for path, xy in zip(files, positions):
            data, name = _image_bytes(overlay_image(read_image(path), xy, task.skeleton), path.name)
            atomic.write_bytes(overlay_dir / name, data)
    console.print(
        f"wrote {len(table)} rows for {len(files)} image(s) to {out_path}"
        + (f"; overlays in {overlay_dir}" if overlay_dir is not None else ""),
        highlight=False,
        soft_wrap=True,
    )
