"""Shared fixtures: tiny fake datasets in the real on-disk layouts (no real data needed).

Builders (importable: ``from conftest import make_lsp``) and fixtures:

- :func:`make_lsp` / ``lsp_root``: ``images/im0001.jpg..`` plus ``joints.mat`` with
  ``joints`` 3x14xN, flag 1 = occluded (LSP's convention).
- :func:`make_lspet` / ``lspet_root``: ``images/im00001.jpg..``; with ``labelled=True``
  also ``joints.mat`` 14x3xN, flag 1 = visible (LSP-extended's convention).
- :func:`make_folder` / ``folder_root``: a flat folder of jpg/png/bmp/webp images.
- :func:`make_coco` / ``coco_root``: ``images/`` plus ``annotations.json`` (or ``train.json`` +
  ``val.json``) in COCO's keypoint format, two people a picture, some ``v = 0`` joints.
- :func:`make_mpii` / ``mpii_root``: ``images/`` plus ``mpii_human_pose_v1_u12_1.mat`` (RELEASE
  with annolist, img_train, single_person), MPII's 16 joints, a few points left out.
- :func:`smoke_pretraining`: held-out metrics of a one-epoch smoke pretraining of a pretext.

Images are small (about 80x100 px) JPEGs of a coloured background with a stick figure
drawn on the joints, so previews are easy to read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image, ImageDraw

from sslbench.data.joints import NUM_JOINTS, SKELETON

#: a standing person facing the camera, in (x, y) fractions of the image: its right side on the image left
_TEMPLATE = np.array(
    [
        (0.40, 0.92), (0.41, 0.74), (0.43, 0.55), (0.57, 0.55), (0.59, 0.74), (0.60, 0.92),  # legs
        (0.24, 0.55), (0.30, 0.42), (0.38, 0.30), (0.62, 0.30), (0.70, 0.42), (0.76, 0.55),  # arms
        (0.50, 0.27), (0.50, 0.10),  # neck, head top
    ]
)  # fmt: skip


def fake_joints(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(14, 3) x, y inside a width x height image and visibility (1 = visible, about 10% occluded)."""
    xy = _TEMPLATE * [width - 1, height - 1] + rng.normal(0.0, 1.5, size=(NUM_JOINTS, 2))
    xy = np.clip(xy, 1.0, [width - 2, height - 2])
    visible = (rng.random(NUM_JOINTS) > 0.1).astype(np.float64)
    return np.concatenate([xy, visible[:, None]], axis=1)


def fake_image(rng: np.random.Generator, width: int, height: int, joints: np.ndarray | None = None) -> Image.Image:
    """A flat random background with a darker stick figure on *joints* (if given)."""
    colour = tuple(int(c) for c in rng.integers(60, 230, size=3))
    image = Image.new("RGB", (width, height), colour)
    if joints is not None:
        draw = ImageDraw.Draw(image)
        for a, b in SKELETON:
            draw.line([tuple(joints[a, :2]), tuple(joints[b, :2])], fill=(20, 20, 20), width=3)
    return image


def _sizes(rng: np.random.Generator, width: int, height: int) -> tuple[int, int]:
    return int(width + rng.integers(-8, 9)), int(height + rng.integers(-8, 9))


def make_lsp(
    tmp_path: Path,
    n: int = 40,
    *,
    name: str = "lsp",
    width: int = 80,
    height: int = 100,
    seed: int = 0,
    placeholder_images: bool = False,
) -> Path:
    """An LSP-layout dataset of *n* images under ``tmp_path/name``; returns its root.

    ``placeholder_images=True`` writes empty image files (fast; for tests of layout and
    splits only, which never decode images).
    """
    root = tmp_path / name
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    joints = np.zeros((3, NUM_JOINTS, n))
    for i in range(n):
        w, h = _sizes(rng, width, height)
        person = fake_joints(rng, w, h)
        joints[0, :, i], joints[1, :, i] = person[:, 0], person[:, 1]
        joints[2, :, i] = 1.0 - person[:, 2]  # LSP: 1 = occluded
        path = images / f"im{i + 1:04d}.jpg"
        if placeholder_images:
            path.touch()
        else:
            fake_image(rng, w, h, person).save(path, quality=85)
    scipy.io.savemat(root / "joints.mat", {"joints": joints})
    return root


def make_lspet(
    tmp_path: Path,
    n: int = 30,
    *,
    name: str = "lspet",
    labelled: bool = False,
    transposed: bool = False,
    width: int = 80,
    height: int = 100,
    seed: int = 1,
) -> Path:
    """An LSP-extended-layout dataset under ``tmp_path/name``; returns its root.

    ``labelled`` adds ``joints.mat`` 14x3xN (flag 1 = visible); ``transposed`` writes it
    3x14xN instead (same flag meaning).
    """
    root = tmp_path / name
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    joints = np.zeros((NUM_JOINTS, 3, n))
    for i in range(n):
        w, h = _sizes(rng, width, height)
        person = fake_joints(rng, w, h)
        joints[:, :, i] = person  # LSP-extended: 1 = visible
        fake_image(rng, w, h, person).save(images / f"im{i + 1:05d}.jpg", quality=85)
    if labelled:
        array = joints.transpose(1, 0, 2) if transposed else joints
        scipy.io.savemat(root / "joints.mat", {"joints": array})
    return root


def make_folder(tmp_path: Path, n: int = 12, *, name: str = "folder", seed: int = 2) -> Path:
    """A flat folder of *n* images cycling through jpg, png, bmp and webp (plus a text file to ignore)."""
    root = tmp_path / name
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    suffixes = (".jpg", ".png", ".bmp", ".webp")
    for i in range(n):
        w, h = _sizes(rng, 80, 100)
        fake_image(rng, w, h).save(root / f"photo_{i:03d}{suffixes[i % len(suffixes)]}")
    (root / "notes.txt").write_text("not an image\n")
    return root


#: COCO person keypoints as (x, y) fractions of the person box, facing the camera
_COCO_TEMPLATE = np.array(
    [
        (0.50, 0.10), (0.55, 0.08), (0.45, 0.08), (0.60, 0.10), (0.40, 0.10), (0.65, 0.25), (0.35, 0.25),
        (0.72, 0.40), (0.28, 0.40), (0.76, 0.55), (0.24, 0.55), (0.58, 0.55), (0.42, 0.55),
        (0.59, 0.75), (0.41, 0.75), (0.60, 0.95), (0.40, 0.95),
    ]
)  # fmt: skip
COCO_LIMBS = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
              [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]  # fmt: skip


def _draw_limbs(image: Image.Image, xy: np.ndarray, limbs: list[tuple[int, int]]) -> None:
    draw = ImageDraw.Draw(image)
    for a, b in limbs:
        draw.line([tuple(xy[a]), tuple(xy[b])], fill=(20, 20, 20), width=3)


def coco_document(rng: np.random.Generator, images: Path, first_image: int, count: int) -> dict:
    """A COCO keypoint file of *count* new 160x120 pictures (ids from *first_image*), two people each."""
    from sslbench_plugins.coco import COCO_KEYPOINTS

    document: dict = {"images": [], "annotations": [],
                      "categories": [{"id": 1, "name": "person", "keypoints": list(COCO_KEYPOINTS), "skeleton": COCO_LIMBS}]}  # fmt: skip
    for image_id in range(first_image, first_image + count):
        name = f"{image_id:012d}.jpg"
        picture = fake_image(rng, 160, 120)
        for slot in range(2):
            box = [float(8 + 78 * slot + rng.integers(0, 6)), float(6 + rng.integers(0, 6)), 60.0, 100.0]
            xy = _COCO_TEMPLATE * box[2:] + box[:2] + rng.normal(0.0, 1.0, size=(17, 2))
            v = np.where(rng.random(17) < 0.15, 0, np.where(rng.random(17) < 0.2, 1, 2))
            _draw_limbs(picture, xy, [(a - 1, b - 1) for a, b in COCO_LIMBS])
            keypoints = np.column_stack([np.where(v[:, None] > 0, xy, 0.0), v]).ravel()
            document["annotations"].append({
                "id": 100 * image_id + slot, "image_id": image_id, "category_id": 1, "iscrowd": 0, "bbox": box,
                "area": box[2] * box[3] * 0.6, "num_keypoints": int((v > 0).sum()),
                "keypoints": [round(float(k), 2) for k in keypoints],
            })  # fmt: skip
        picture.save(images / name, quality=90)
        document["images"].append({"id": image_id, "file_name": name, "width": 160, "height": 120})
    return document


def make_coco(tmp_path: Path, n: int = 12, *, name: str = "coco", split_files: bool = False, seed: int = 3) -> Path:
    """A COCO-format keypoint dataset of *n* pictures (2 people each) under ``tmp_path/name``: one
    ``annotations.json``, or with *split_files* ``train.json`` (n - 3 pictures) and ``val.json`` (3)."""
    import json

    root = tmp_path / name
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    parts = {"train": (1, n - 3), "val": (n - 2, 3)} if split_files else {"annotations": (1, n)}
    for part, (first, count) in parts.items():
        (root / f"{part}.json").write_text(json.dumps(coco_document(rng, images, first, count)))
    return root


MPII_TEMPLATE = np.array(
    [
        (0.40, 0.95), (0.41, 0.75), (0.43, 0.55), (0.57, 0.55), (0.59, 0.75), (0.60, 0.95), (0.50, 0.55),
        (0.50, 0.28), (0.50, 0.22), (0.50, 0.05), (0.24, 0.55), (0.30, 0.42), (0.36, 0.28), (0.64, 0.28),
        (0.70, 0.42), (0.76, 0.55),
    ]
)  # fmt: skip


def make_mpii(tmp_path: Path, n: int = 12, *, name: str = "mpii", seed: int = 4) -> Path:
    """An MPII-release-layout dataset of *n* 120x120 pictures under ``tmp_path/name``: one person each
    (single_person), joint 6 (pelvis) of every third left out; the last picture a test one (img_train 0)."""
    from sslbench_plugins.mpii import ANNOTATION_FILE, MPII_SKELETON

    root = tmp_path / name
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    annolist = np.empty(n, dtype=object)
    single = np.empty(n, dtype=object)
    for i in range(n):
        name_i = f"{i + 1:09d}.jpg"
        left, top = 20 + rng.integers(0, 8), 8 + rng.integers(0, 6)
        xy = MPII_TEMPLATE * [70, 100] + [left, top] + rng.normal(0.0, 1.0, size=(16, 2))
        picture = fake_image(rng, 120, 120)
        _draw_limbs(picture, xy, list(MPII_SKELETON.limbs))
        picture.save(images / name_i, quality=90)
        points = [{"x": float(x), "y": float(y), "id": j, "is_visible": int(j % 5 != 0)}
                  for j, (x, y) in enumerate(xy) if not (j == 6 and i % 3 == 0)]  # fmt: skip
        head = xy[9]
        rect = {"x1": float(head[0] - 8), "y1": float(head[1]), "x2": float(head[0] + 8), "y2": float(head[1] + 16),
                "scale": 0.5, "objpos": {"x": float(left + 35), "y": float(top + 50)}, "annopoints": {"point": points}}  # fmt: skip
        annolist[i] = {"image": {"name": name_i}, "annorect": [rect]}
        single[i] = np.array([1.0])
    release = {"annolist": annolist, "img_train": np.array([1] * (n - 1) + [0]), "single_person": single}
    scipy.io.savemat(root / ANNOTATION_FILE, {"RELEASE": release})
    return root


def smoke_pretraining(tmp_path: Path, plugin: object, pretext: object) -> dict:
    """Held-out metrics of a one-epoch smoke pretraining of *pretext* (from the module *plugin*) on 16
    synthetic images at 32 px, through the cell's own pretraining path (sslbench.experiment.phases.pretrain)."""
    from rich.console import Console

    from sslbench.contract.registry import Registry
    from sslbench.experiment.phases import pretrain
    from sslbench.overrides import set_path
    from sslbench.profiles import profile_config
    from sslbench_plugins import cpm, synthetic

    config = profile_config("smoke")
    for path, value in {"pretext": pretext.name, "backbone_options.input_size": 32, "pretext_images": 16,
                        "pretext_data_options.size": 24, "pretrain.precision": "fp32"}.items():  # fmt: skip
        config = set_path(config, path.split("."), value)
    registry = Registry(plugins=[cpm, plugin, synthetic], load_entrypoints=False)
    return pretrain(config, pretext, tmp_path, registry, Console(quiet=True))["metrics"]


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut a file to *keep* of its length (a truncated download)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def lsp_root(tmp_path: Path) -> Path:
    """40 LSP-layout images (~80x100 px) with joints.mat 3x14x40."""
    return make_lsp(tmp_path)


@pytest.fixture
def lspet_root(tmp_path: Path) -> Path:
    """30 unlabelled LSP-extended-layout images."""
    return make_lspet(tmp_path)


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    """12 images in a flat folder, mixed formats."""
    return make_folder(tmp_path)


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    """12 COCO-format pictures, 2 people each, one annotations.json."""
    return make_coco(tmp_path)


@pytest.fixture
def mpii_root(tmp_path: Path) -> Path:
    """12 MPII-layout pictures, one person each, 11 of them training images."""
    return make_mpii(tmp_path)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread avoids OpenMP spin-waiting on a shared 2-core machine."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
