"""MPII Human Pose, the official release layout::

    root/mpii_human_pose_v1_u12_1.mat    RELEASE: annolist, img_train, single_person (read with scipy.io.loadmat)
    root/images/*.jpg

Samples are the single-person annotated people (``single_person``) of the training images
(``img_train == 1``; the test images' joints are withheld): 16 joints in MPII order, their head box
(``x1, y1, x2, y2``), centre (``objpos``) and scale (``scale``: the person is about 200 x scale px tall).
A joint without an annotated point is unknown (NaN); ``is_visible == 0`` marks an occluded one.
Each person is cropped around the square of side 200 x scale at its centre (:mod:`sslbench.data.instances`).

PCK is normalised by the head size, 0.6 x the head box diagonal, as the official evaluation
(``pckh@0.5``: every joint but pelvis and thorax). Protocol ``standard``: the split of Tompson et al.
(22,246 train / 2,958 validation people) is a list outside the release. Give it as the option
``test_images`` (``--set data_options.test_images=FILE``: a text file of image names, one per line,
``#`` starts a comment), and the people of those images are the test split; without it sslbench
holds out a fixed, seeded 11.7 % of the images (their people) as test, about its size. 5 % of the
remaining images are validation (model selection); no image is shared between splits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from sslbench.contract.errors import DataError
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.interfaces import Splits
from sslbench.contract.registry import Entry
from sslbench.contract.skeleton import Skeleton
from sslbench.data import splits as splitting
from sslbench.data.imageio import reject_options, require_root
from sslbench.data.instances import Instance, InstanceDataset, split_images

ANNOTATION_FILE = "mpii_human_pose_v1_u12_1.mat"
#: test share of the images, the size of the usual validation split (2,958 of 25,204 people)
TEST_SHARE = 0.117
VAL_SHARE = 0.05
#: the official evaluation's head size: 0.6 x the head box diagonal
HEAD_FACTOR = 0.6

MPII_SKELETON = Skeleton(
    name="mpii",
    joints=(
        "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
        "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
    ),
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    limbs=(
        (0, 1), (1, 2), (2, 6), (5, 4), (4, 3), (3, 6), (6, 7), (7, 8), (8, 9),
        (10, 11), (11, 12), (12, 7), (15, 14), (14, 13), (13, 7),
    ),
    parts=(
        ("Head", (8, 9)), ("Shoulder", (12, 13)), ("Elbow", (11, 14)), ("Wrist", (10, 15)),
        ("Hip", (2, 3)), ("Knee", (1, 4)), ("Ankle", (0, 5)),
    ),
    normalise="head",
)  # fmt: skip


def _items(value: Any) -> list[Any]:
    """A MATLAB struct array, cell array or single struct (as loadmat with squeeze_me gives them) as a list."""
    if isinstance(value, np.ndarray):
        return list(value.ravel())
    return [value]


def _number(value: Any) -> float | None:
    array = np.asarray(value, dtype=object).ravel()
    if array.size != 1:
        return None
    try:
        return float(array[0])
    except (TypeError, ValueError):
        return None


def person(rect: Any, image_path: Path, name: str, where: str) -> Instance | None:
    """One annotated person of ``annolist(i).annorect(r)``, or None when it lacks points, head box or scale."""
    head = [_number(getattr(rect, k, None)) for k in ("x1", "y1", "x2", "y2")]
    scale = _number(getattr(rect, "scale", None))
    objpos = getattr(rect, "objpos", None)
    centre = [_number(getattr(objpos, k, None)) for k in ("x", "y")]
    points = getattr(getattr(rect, "annopoints", None), "point", None)
    if None in head or scale is None or None in centre or points is None:
        return None
    joints = np.full((MPII_SKELETON.num_joints, 3), np.nan, dtype=np.float32)
    joints[:, 2] = 0.0
    for point in _items(points):
        joint = _number(getattr(point, "id", None))
        if joint is None or not 0 <= joint < MPII_SKELETON.num_joints or joint != int(joint):
            raise DataError(
                f"{where}: point id {getattr(point, 'id', None)!r} is not a joint (0-{MPII_SKELETON.num_joints - 1})"
            )
        visible = _number(getattr(point, "is_visible", None))
        joints[int(joint)] = (_number(point.x), _number(point.y), 0.0 if visible == 0 else 1.0)
    if not np.isfinite(joints[:, :2]).any():
        return None
    side = 200.0 * scale
    x1, y1, x2, y2 = head
    box = (centre[0] - side / 2, centre[1] - side / 2, side, side)
    return Instance(image_path, joints, box, name, scale=HEAD_FACTOR * float(np.hypot(x2 - x1, y2 - y1)))


class MPIIHumanPose(InstanceDataset):
    """MPII single-person annotated people; see the module docstring for layout and split."""

    name = "mpii"
    protocols = ("standard",)

    def __init__(
        self,
        root: Path | str | None,
        skip_bad: bool = False,
        cache_bytes: int | None = None,
        test_images: Path | str | None = None,
    ) -> None:
        root = require_root(root, self.name)
        super().__init__(root, MPII_SKELETON, cache_bytes)
        self.test_images = None if test_images is None else read_image_list(Path(test_images))
        path, images_dir = root / ANNOTATION_FILE, root / "images"
        if not images_dir.is_dir():
            raise DataError(f"{images_dir}: image folder not found (mpii expects images/ and {ANNOTATION_FILE})")
        if not path.is_file():
            raise DataError(f"{path}: not found (mpii expects the official {ANNOTATION_FILE})")
        try:
            release = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)["RELEASE"]
            annolist, train = _items(release.annolist), np.atleast_1d(release.img_train).ravel()
            single = _items(release.single_person)
        except (KeyError, AttributeError) as exc:
            raise DataError(f"{path}: not the MPII release (no RELEASE.{exc.args[0] if exc.args else '?'})") from None
        except (OSError, ValueError, TypeError) as exc:
            raise DataError(f"{path}: cannot read annotations ({exc})") from None
        if not len(annolist) == len(train) == len(single):
            raise DataError(f"{path}: annolist ({len(annolist)}), img_train ({len(train)}) and single_person "
                            f"({len(single)}) differ in length")  # fmt: skip
        instances = []
        for i, (entry, is_train, chosen) in enumerate(zip(annolist, train, single)):
            if int(is_train) != 1:
                continue
            rects = _items(getattr(entry, "annorect", np.empty(0)))
            for r in (int(v) for v in np.atleast_1d(chosen).ravel() if np.isfinite(v)):
                where = f"{path}: annolist({i + 1}).annorect({r})"
                if not 1 <= r <= len(rects):
                    raise DataError(f"{where}: single_person names rectangle {r}, the image has {len(rects)}")
                name = getattr(getattr(entry, "image", None), "name", None)
                if not isinstance(name, str):
                    raise DataError(f"{path}: annolist({i + 1}).image has no name")
                image_path = images_dir / name
                if not image_path.is_file():
                    raise DataError(f"{where}: its image {image_path} not found")
                found = person(rects[r - 1], image_path, f"{name}#{r}", where)
                if found is not None:
                    instances.append(found)
        if not instances:
            raise DataError(f"{path}: no single-person annotated training people")
        self._set_instances(instances)
        if skip_bad:
            self._drop_unreadable_instances()
        if self.test_images is not None:
            unknown = sorted(self.test_images - {i.path.name for i in self.instances})
            if unknown:
                raise DataError(
                    f"{test_images}: {len(unknown)} listed image(s) hold no single-person training people "
                    f"here (e.g. {unknown[0]})"
                )

    @classmethod
    def create(cls, root: Path | str | None = None, skip_bad: bool = False, **options: Any) -> MPIIHumanPose:
        """Registry factory: options ``test_images`` (the split list) and ``cache_bytes``."""
        test_images, cache_bytes = options.pop("test_images", None), options.pop("cache_bytes", None)
        reject_options(cls.name, options)
        return cls(root, skip_bad=skip_bad, cache_bytes=cache_bytes, test_images=test_images)

    def splits(self, protocol: str, train_size: int | None, seed: int) -> Splits:
        self._check_protocol(protocol)
        if self.test_images is None:
            pool, test = split_images(self, range(len(self)), TEST_SHARE)
        else:
            held = [i.path.name in self.test_images for i in self.instances]
            pool = [i for i, is_test in enumerate(held) if not is_test]
            test = [i for i, is_test in enumerate(held) if is_test]
        rest, val = split_images(self, pool, VAL_SHARE)
        return Splits(train=splitting.budget(rest, train_size, seed), val=val, test=test, pool_size=len(rest))


def read_image_list(path: Path) -> set[str]:
    """The image names of a split list (one per line, ``#`` comments), or a DataError naming the file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the test image list ({exc.strerror or exc})") from None
    names = {line.split("#", 1)[0].strip() for line in lines} - {""}
    if not names:
        raise DataError(f"{path}: the test image list names no image")
    return names


@hookimpl
def sslbench_datasets() -> list[Entry]:
    return [
        MPIIHumanPose.entry(
            f"MPII Human Pose ({ANNOTATION_FILE} + images/): single-person annotated people, 16 joints, PCKh@0.5"
        )
    ]
