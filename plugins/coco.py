"""COCO-format keypoints: any keypoint annotation JSON and its images (COCO, CrowdPose, OCHuman, animal or
hand datasets as converted by mmpose).

Layout::

    root/images/...            the images; each ``file_name`` is relative to this folder
    root/annotations.json      one file: split by image with a fixed seed (10 % test, 10 % of the rest
                               validation), or
    root/train.json, root/val.json [, root/test.json]
                               separate files: with test.json, each file is its split; without it,
                               val.json is the test split (as COCO papers report on val2017) and
                               validation holds out 10 % of train.json's images

(COCO 2017: ``person_keypoints_train2017.json`` as train.json, ``person_keypoints_val2017.json`` as
val.json, both image folders' files in images/.) A file has ``images`` (``id``, ``file_name``),
``categories`` with one category carrying ``keypoints`` (joint names) and ``skeleton`` (limbs,
1-based, as COCO writes them), and ``annotations`` (``image_id``, ``category_id``, ``bbox`` x, y, w, h,
``keypoints`` as x, y, v triples, ``area``, ``iscrowd``).

Each person with a box and at least one labelled joint (``v > 0``; crowds left out) is a sample,
cropped around its box (:mod:`sslbench.data.instances`); ``v = 0`` joints are unknown (NaN): out of the
loss and the metrics. ``v = 1`` (labelled, not visible) counts as occluded. The skeleton comes from
the file: flip pairs join names that differ only in a ``left``/``right`` prefix, parts group joints by
name without it (Nose, Eye, Ear, Shoulder, ... for COCO), PCK is normalised by the box's longer side
(mmpose's bbox PCK), and OKS AP/AR (pycocotools) uses COCO's 17 person sigmas when the names are
COCO's, or the category's own ``sigmas`` list when it has one (else PCK only). As an unlabelled pool
the same samples serve, keypoints ignored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from sslbench.contract.errors import DataError
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.interfaces import Splits
from sslbench.contract.registry import Entry
from sslbench.contract.skeleton import Skeleton
from sslbench.data import splits as splitting
from sslbench.data.imageio import require_root
from sslbench.data.instances import Instance, InstanceDataset, split_images

#: COCO person keypoints and their OKS sigmas (pycocotools' defaults)
COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
COCO_SIGMAS = (0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89)
HELD_OUT = 0.1
_SIDE = re.compile(r"^(left|right|l|r)[_\- ]?", re.IGNORECASE)


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise DataError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise DataError(f"{path}: not a COCO annotation file (needs lists 'images', 'annotations', 'categories')")
    return data


def _unsided(name: str) -> str:
    return _SIDE.sub("", name)


def skeleton_of(category: dict[str, Any], where: str) -> Skeleton:
    """The skeleton a COCO keypoint category declares; *where* names the file and entry in errors."""
    names = category.get("keypoints")
    if not isinstance(names, list) or not names:
        raise DataError(f"{where} has no 'keypoints' list: not a keypoint category")
    names = [str(n) for n in names]
    count = len(names)
    limbs = []
    for limb in category.get("skeleton") or []:
        if not (
            isinstance(limb, list) and len(limb) == 2 and all(isinstance(j, int) and 1 <= j <= count for j in limb)
        ):
            raise DataError(
                f"{where}: skeleton limb {limb!r} names a joint outside 1-{count} ({count} keypoints, 1-based)"
            )
        limbs.append((limb[0] - 1, limb[1] - 1))
    position = {n.lower(): i for i, n in enumerate(names)}
    pairs = []
    for i, name in enumerate(names):
        match = _SIDE.match(name)
        side = match.group(1) if match else ""
        if side.lower() in ("left", "l"):
            other = ("right" if side.lower() == "left" else "r") + name[len(side) :]
            if other.lower() in position:
                pairs.append((i, position[other.lower()]))
    parts: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        parts.setdefault(_unsided(name).replace("_", " ").strip().capitalize() or name, []).append(i)
    sigmas = category.get("sigmas")
    if sigmas is None and tuple(names) == COCO_KEYPOINTS:
        sigmas = [s / 10 for s in COCO_SIGMAS]
    if sigmas is not None and (not isinstance(sigmas, list) or len(sigmas) != count):
        raise DataError(f"{where}: 'sigmas' must list one OKS sigma per keypoint ({count})")
    name = "coco" if tuple(names) == COCO_KEYPOINTS else f"coco:{category.get('name', 'keypoints')}"
    return Skeleton(
        name=name, joints=tuple(names), flip_pairs=tuple(pairs), limbs=tuple(limbs),
        parts=tuple((p, tuple(m)) for p, m in parts.items()), normalise="box",
        sigmas=tuple(float(s) for s in sigmas) if sigmas is not None else None,
    )  # fmt: skip


def read_instances(path: Path, images_dir: Path, skeleton: Skeleton | None) -> tuple[Skeleton, list[Instance]]:
    """The skeleton and the labelled people of one annotation file (checked against *skeleton* if given)."""
    data = _load(path)
    categories = [(i, c) for i, c in enumerate(data["categories"]) if isinstance(c, dict)]
    keypointed = [(i, c) for i, c in categories if c.get("keypoints")]
    if not keypointed:
        i, first = categories[0] if categories else (0, {})
        raise DataError(f"{path}: categories[{i}] (id {first.get('id')}, {first.get('name')!r}) has no 'keypoints' list: "
                        "not a keypoint annotation file")  # fmt: skip
    if len(keypointed) > 1:
        raise DataError(f"{path}: {len(keypointed)} categories have keypoints (ids {[c.get('id') for _, c in keypointed]}); "
                        "sslbench reads files of one keypoint category")  # fmt: skip
    index, category = keypointed[0]
    found = skeleton_of(category, f"{path}: categories[{index}] ({category.get('name')!r})")
    if skeleton is not None and found.joints != skeleton.joints:
        raise DataError(
            f"{path}: categories[{index}] has keypoints {list(found.joints)}, the other files {list(skeleton.joints)}"
        )
    count = found.num_joints
    files = {}
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise DataError(f"{path}: images[{i}] needs 'id' and 'file_name'")
        files[image["id"]] = image["file_name"]
    plain = {c.get("id") for _, c in categories if not c.get("keypoints")}
    instances, checked = [], set()
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}] (id {ann.get('id') if isinstance(ann, dict) else '?'})"
        if not isinstance(ann, dict) or ann.get("category_id") in plain and "keypoints" not in ann:
            continue  # a box of another category
        if ann.get("category_id") != category.get("id"):
            raise DataError(
                f"{where}: category_id {ann.get('category_id')!r} is not the keypoint category {category.get('id')!r}"
            )
        values = ann.get("keypoints")
        if not isinstance(values, list) or len(values) != 3 * count:
            got = len(values) if isinstance(values, list) else type(values).__name__
            raise DataError(f"{where}: 'keypoints' has {got} values, expected {3 * count} (x, y, v for {count} joints)")
        if ann.get("image_id") not in files:
            raise DataError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        image_path = images_dir / files[ann["image_id"]]
        if image_path not in checked:
            if not image_path.is_file():
                raise DataError(f"{where}: its image {image_path} (image_id {ann['image_id']}) not found")
            checked.add(image_path)
        triples = np.asarray(values, dtype=np.float32).reshape(count, 3)
        box = ann.get("bbox")
        if ann.get("iscrowd") or not (triples[:, 2] > 0).any():
            continue
        if not (isinstance(box, list) and len(box) == 4 and box[2] >= 1 and box[3] >= 1):
            raise DataError(f"{where}: 'bbox' must be [x, y, w, h] with w, h >= 1, got {box!r}")
        joints = triples.copy()
        joints[triples[:, 2] == 0, :2] = np.nan
        joints[:, 2] = (triples[:, 2] >= 2).astype(np.float32)
        x, y, w, h = (float(v) for v in box)
        instances.append(Instance(image_path, joints, (x, y, w, h), f"{files[ann['image_id']]}#{ann.get('id', i)}",
                                  scale=max(w, h), area=float(ann.get("area") or w * h)))  # fmt: skip
    return found, instances


class COCOKeypoints(InstanceDataset):
    """People of a COCO-format keypoint dataset; see the module docstring for layout and splits."""

    name = "coco"
    protocols = ("standard",)

    def __init__(self, root: Path | str | None, skip_bad: bool = False, cache_bytes: int | None = None) -> None:
        root = require_root(root, self.name)
        images_dir = root / "images"
        if not images_dir.is_dir():
            raise DataError(
                f"{images_dir}: image folder not found (coco expects images/ and annotations.json or train.json + val.json)"
            )
        single = root / "annotations.json"
        named = [root / f"{part}.json" for part in ("train", "val", "test")]
        if single.is_file():
            files = {"all": single}
        elif named[0].is_file() and named[1].is_file():
            files = {part: p for part, p in zip(("train", "val", "test"), named) if p.is_file()}
        else:
            raise DataError(f"{root}: no annotations.json, nor train.json and val.json (coco layout)")
        skeleton, instances, self._parts = None, [], {}
        for part, path in files.items():
            skeleton, found = read_instances(path, images_dir, skeleton)
            if not found:
                raise DataError(f"{path}: no person with a box and a labelled keypoint")
            self._parts[part] = len(found)
            instances += found
        assert skeleton is not None
        super().__init__(root, skeleton, cache_bytes)
        self._set_instances(instances)
        #: the file (split) each person comes from
        self._part_of = [part for part, count in self._parts.items() for _ in range(count)]
        if skip_bad:
            self._part_of = [self._part_of[i] for i in self._drop_unreadable_instances()]

    def _members(self, part: str) -> list[int]:
        return [i for i, p in enumerate(self._part_of) if p == part]

    def splits(self, protocol: str, train_size: int | None, seed: int) -> Splits:
        self._check_protocol(protocol)
        if "all" in self._parts:
            pool, test = split_images(self, self._members("all"), HELD_OUT)
            rest, val = split_images(self, pool, HELD_OUT)
        elif "test" in self._parts:
            rest, val, test = self._members("train"), self._members("val"), self._members("test")
        else:
            (rest, val), test = split_images(self, self._members("train"), HELD_OUT), self._members("val")
        return Splits(train=splitting.budget(rest, train_size, seed), val=val, test=test, pool_size=len(rest))


@hookimpl
def sslbench_datasets() -> list[Entry]:
    return [
        COCOKeypoints.entry(
            "COCO-format keypoints (images/ + annotations.json, or train.json + val.json (+ test.json)): people cropped by box, "
            "PCK by box size, OKS AP/AR"
        )
    ]
