"""The pose-estimation task: samples of any skeleton, the CPM heatmap loss and the PCK metric.

A sample is the person's box, cut square around the ground-truth joints or the dataset's
person box (plus a margin), warped to the network input (with random rotation, scale and flip when
training), and one Gaussian heatmap per joint at the network's stride plus the CPM
background map. Predictions go back the same way: peak of each map (sub-pixel) ->
input pixels -> original image pixels through the inverse crop matrix, so PCK is
measured at the original resolution.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from sslbench.contract.errors import ConfigError, DataError
from sslbench.contract.interfaces import Geometry, Metric, SampleKey, Task
from sslbench.contract.skeleton import LSP, Skeleton
from sslbench.data.pipeline import (
    Augment,
    box_square,
    centre_map_tensor,
    centre_square,
    crop_matrix,
    decode_maps,
    gaussian_maps,
    input_to_map,
    map_to_input,
    person_box,
    to_tensor,
    transform_points,
    warp,
    with_background,
)
from sslbench.tasks import metrics as pose_metrics

#: the reference (namedBen) scales its per-stage MSE by the number of target values of
#: one image at 368 px: 46 x 46 maps x 15 channels
REFERENCE_SCALE = 46 * 46 * 15

LossScale = Literal["mean", "sum"]


def decode_joints(
    maps: torch.Tensor,
    matrix: torch.Tensor | np.ndarray,
    stride: int,
    flip: torch.Tensor | np.ndarray | None = None,
    skeleton: Skeleton = LSP,
) -> tuple[np.ndarray, np.ndarray]:
    """Joint positions in original image pixels from predicted maps.

    *maps* is (B, >=K, m, m) for the K joints of *skeleton* (a background map after the joints
    is ignored), *matrix* (B, 3, 3) the original->input crop matrices, *flip* (B,) whether a
    sample was mirrored (its channel i then holds original joint ``skeleton.flip_index[i]``).
    Returns positions (B, K, 2) float64 and peak scores (B, K) float64, in the skeleton's order.
    """
    coords, scores = decode_maps(maps[:, : skeleton.num_joints].detach().float().cpu())
    input_xy = map_to_input(coords.numpy(), stride)  # (B, 14, 2)
    matrix = matrix.detach().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
    inverse = np.linalg.inv(matrix.astype(np.float64))  # (B, 3, 3)
    original = np.einsum("bij,bkj->bki", inverse[:, :2, :2], input_xy) + inverse[:, None, :2, 2]
    scores_np = scores.numpy().astype(np.float64)
    if flip is not None:
        flip = flip.detach().cpu().numpy() if isinstance(flip, torch.Tensor) else np.asarray(flip)
        order = np.asarray(skeleton.flip_index)
        mirrored = flip.astype(bool)
        original[mirrored] = original[mirrored][:, order]
        scores_np[mirrored] = scores_np[mirrored][:, order]
    return original, scores_np


class PoseTask(Task):
    """Heatmap regression of the joints of *skeleton* (LSP's 14 by default; plus the CPM background map).

    Targets: a Gaussian of peak 1 and *sigma* heatmap pixels at every joint that lies
    inside the network input after cropping and augmentation. Visible and occluded
    joints both get a target, because LSP annotates the position of all 14 joints
    (occluded ones included) and PCK scores all 14; joints pushed outside the input by
    augmentation get an all-zero map (unknown joints, NaN, too: datasets that have them
    train :class:`sslbench.tasks.semi.MaskedPoseTask`, which leaves them out of the loss). The
    background map is ``1 - max`` over the joint maps, as in CPM.

    ``loss_scale`` chooses how the loss the optimiser sees is scaled:

    - ``"mean"``: the sum over stages of the mean squared error (mean over every element
      of the batch): values near 1e-2, suited to Adam at lr ~1e-3.
    - ``"sum"``: the reference's scaling (namedBen ``cpm``: ``MSELoss() x 46*46*15`` per
      stage), i.e. per stage the MSE times ``m*m*15`` for ``m x m`` maps, which is the
      per-image sum of squared errors averaged over the batch; for SGD at lr 4e-6
      (the ``paper`` profile).
    """

    name = "pose"
    needs_labels = True
    monitor = "pck@0.2"
    monitor_mode = "max"

    def __init__(
        self,
        sigma: float = 1.0,
        augment: Augment | None = Augment(),
        margin: float = 0.2,
        centermap_sigma: float | None = None,
        loss_scale: LossScale = "mean",
        skeleton: Skeleton = LSP,
    ) -> None:
        if not sigma > 0:
            raise ConfigError(f"pose sigma must be > 0, got {sigma!r}")
        if not margin >= 0:
            raise ConfigError(f"pose margin must be >= 0, got {margin!r}")
        if centermap_sigma is not None and not centermap_sigma > 0:
            raise ConfigError(f"pose centermap_sigma must be > 0, got {centermap_sigma!r}")
        if loss_scale not in ("mean", "sum"):
            raise ConfigError(f"pose loss_scale must be 'mean' or 'sum', got {loss_scale!r}")
        self.sigma = float(sigma)
        self.augment = augment
        self.margin = float(margin)
        self.centermap_sigma = None if centermap_sigma is None else float(centermap_sigma)
        self.loss_scale: LossScale = loss_scale
        self.skeleton = skeleton

    # -- contract ------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        return self.skeleton.num_joints + 1

    def config(self) -> dict[str, Any]:
        """The task's settings; ``skeleton`` only when it is not LSP's (LSP configs and run hashes are
        those of sslbench before skeletons were data)."""
        return {
            "name": self.name,
            "sigma": self.sigma,
            "augment": dataclasses.asdict(self.augment) if self.augment is not None else None,
            "margin": self.margin,
            "centermap_sigma": self.centermap_sigma,
            "loss_scale": self.loss_scale,
            **({"skeleton": self.skeleton.to_dict()} if self.skeleton != LSP else {}),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "PoseTask":
        """Rebuild from :meth:`config` (as stored in checkpoints)."""
        options = {k: v for k, v in config.items() if k != "name"}
        if config.get("name", cls.name) != cls.name:
            raise ConfigError(f"task config is for {config.get('name')!r}, not {cls.name!r}")
        augment = options.pop("augment", None)
        if augment is not None:
            augment = Augment(**{**augment, "scale": tuple(augment.get("scale", Augment().scale))})
        if "skeleton" in options:
            options["skeleton"] = Skeleton.from_dict(options["skeleton"])
        try:
            return cls(augment=augment, **options)
        except TypeError as exc:
            raise ConfigError(f"pose task config {config!r} is invalid: {exc}") from None

    def centermap(self, input_size: int) -> torch.Tensor:
        """(1, S, S) Gaussian at the input centre; sigma 21 px at 368 px, scaled with S."""
        return centre_map_tensor(input_size, self.centermap_sigma)

    # -- samples -------------------------------------------------------------------------
    def make_sample(
        self,
        image: np.ndarray,
        joints: np.ndarray | None,
        key: SampleKey,
        train: bool,
        geometry: Geometry,
        box: tuple[float, float, float, float] | None = None,
        scale: float | None = None,
        area: float | None = None,
    ) -> dict[str, Any]:
        """Crop around the person (its *box* when the dataset has one), augment when *train*, render targets.

        Keys: ``image`` (3, S, S), ``centermap`` (1, S, S), ``target`` (K+1, m, m),
        ``matrix`` (3, 3) float64 original->input, ``flip`` (bool), ``joints`` (K, 3)
        original, ``input_joints`` (K, 3): x, y in input pixels after augmentation and
        visibility, in the joint order of the (possibly mirrored) input; and the dataset's
        ``scale`` (PCK normaliser) and ``area`` (OKS) when it gives them
        (:meth:`~sslbench.contract.interfaces.ImageDataset.annotation`).
        """
        if joints is None:
            raise DataError("the pose task needs joint labels, but the dataset gave none")
        joints = np.asarray(joints, dtype=np.float32)
        count = self.skeleton.num_joints
        if joints.shape != (count, 3):
            raise DataError(f"pose joints must have shape ({count}, 3) for skeleton {self.skeleton.name}, got {joints.shape}")
        if box is None and not np.isfinite(joints[:, :2]).any():
            raise DataError(f"image {key.index}: no joint has a finite position")
        # the dataset's PCK normaliser and OKS area, before "scale" names the augmentation's zoom
        extras = {name: torch.tensor(float(value), dtype=torch.float64) for name, value in
                  (("scale", scale), ("area", area)) if value is not None}  # fmt: skip
        size, stride = geometry.input_size, geometry.stride
        centre, side = person_box(joints, self.margin) if box is None else box_square(*box, margin=self.margin)
        rotation, scale, flip = 0.0, 1.0, False
        if train and self.augment is not None:
            rotation, scale, flip = self.augment.draw(key.rng())
        matrix = crop_matrix(centre, side, size, rotation=rotation, scale=scale, flip=flip)
        crop = warp(np.ascontiguousarray(image), matrix, size)

        input_xy = transform_points(joints[:, :2], matrix)
        visible = joints[:, 2].copy()
        if flip:  # the person's left is now on the right: swap the labels
            order = list(self.skeleton.flip_index)
            input_xy, visible = input_xy[order], visible[order]
        with np.errstate(invalid="ignore"):
            inside = np.isfinite(input_xy).all(axis=1) & ((input_xy >= 0) & (input_xy <= size - 1)).all(axis=1)
        map_xy = np.nan_to_num(input_to_map(input_xy, stride), nan=-1e6)
        target = with_background(gaussian_maps(map_xy, geometry.map_size, self.sigma, present=inside))

        input_joints = np.concatenate([input_xy, visible[:, None]], axis=1).astype(np.float32)
        return {
            **extras,
            "image": to_tensor(crop),
            "centermap": self.centermap(size),
            "target": torch.from_numpy(target),
            "matrix": torch.from_numpy(matrix),
            "flip": torch.tensor(flip),
            "joints": torch.from_numpy(joints.copy()),
            "input_joints": torch.from_numpy(input_joints),
        }

    def predict_sample(
        self,
        image: np.ndarray,
        geometry: Geometry,
        box: tuple[float, float, float, float] | None = None,
    ) -> dict[str, Any]:
        """An inference sample without joints: ``image``, ``centermap``, ``matrix``, ``flip``.

        The person is assumed centred: the largest centred square of the image is used,
        or, when *box* (x, y, w, h: top-left corner and size in original pixels) is given,
        the square around it with the task's margin added on each side.
        """
        height, width = image.shape[:2]
        if box is None:
            centre, side = centre_square(height, width)
        else:
            centre, side = box_square(*box, margin=self.margin)
        matrix = crop_matrix(centre, side, geometry.input_size)
        crop = warp(np.ascontiguousarray(image), matrix, geometry.input_size)
        return {
            "image": to_tensor(crop),
            "centermap": self.centermap(geometry.input_size),
            "matrix": torch.from_numpy(matrix),
            "flip": torch.tensor(False),
        }

    # -- loss ----------------------------------------------------------------------------
    def loss(self, outputs: list[torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        """Sum over stages of the stage MSE (``loss_scale="sum"``: times ``m*m*15`` per stage)."""
        target = batch["target"].float()
        total = sum(F.mse_loss(output.float(), target) for output in outputs)
        if self.loss_scale == "sum":
            total = total * target[0].numel()
        return total

    @staticmethod
    def report_losses(outputs: list[torch.Tensor], batch: dict[str, Any]) -> list[float]:
        """Per-stage report-comparable loss: that stage's MSE x (46*46*15).

        The MSE is the mean over every element of the batch (all 15 maps, all map
        pixels); multiplying by 46*46*15 = 31,740 gives what the reference code
        (namedBen) logs per stage at 368 px: the sum of squared errors of one image's
        targets. At other input sizes the maps have ``(S/8)^2`` pixels and usually another
        sigma, so the figure is only comparable in spirit (same scaling constant, not
        the same per-image sum).
        """
        target = batch["target"].float()
        return [float(F.mse_loss(output.float(), target)) * REFERENCE_SCALE for output in outputs]

    def new_metric(self) -> "PoseMetric":
        return PoseMetric(self)


class PoseMetric(Metric):
    """PCK and friends at original image resolution, plus the task loss.

    ``compute()`` returns (percentages on a 0-100 scale):

    - ``pck@0.2``, ``pck@0.1``: PCK over all joints of all images, normalised as the skeleton says
      (LSP: torso = ground-truth left shoulder to right hip; others by the samples' ``scale``);
      unknown (NaN) joints are not scored;
    - ``pckh@0.5`` (head-normalised skeletons, MPII) and ``oks.*`` (skeletons with OKS sigmas, COCO:
      pycocotools' keypoint AP/AR, :mod:`sslbench.tasks.oks`);
    - ``auc@0.2``: area under PCK(t) for t in [0, 0.2] (41 thresholds, trapezoid),
      normalised to 0-100;
    - ``joint.<name>``: PCK@0.2 per joint; ``part.<Part>``: per part (left/right averaged)
      and ``part.Mean``;
    - ``loss``: the task loss, averaged over images (batches weighted by their size);
    - ``report_loss``: the last stage's report-comparable loss (see
      :meth:`PoseTask.report_losses`), ``report_loss.stage<t>`` for every stage.
    """

    def __init__(self, task: PoseTask) -> None:
        self.task = task
        self._predicted: list[np.ndarray] = []
        self._truth: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._extras: dict[str, list[np.ndarray]] = {}
        self._loss_sum = 0.0
        self._report_sums: np.ndarray | None = None
        self._count = 0

    def update(self, outputs: list[torch.Tensor], batch: dict[str, Any]) -> None:
        last = outputs[-1]
        stride = batch["image"].shape[-1] // last.shape[-1]
        predicted, scores = decode_joints(last, batch["matrix"], stride, batch.get("flip"), self.task.skeleton)
        self._predicted.append(predicted)
        self._scores.append(scores)
        self._truth.append(batch["joints"].detach().cpu().numpy().astype(np.float64))
        for name in ("scale", "area"):
            if name in batch:
                self._extras.setdefault(name, []).append(batch[name].detach().cpu().numpy().astype(np.float64))
        n = last.shape[0]
        self._loss_sum += float(self.task.loss(outputs, batch)) * n
        report = np.asarray(self.task.report_losses(outputs, batch)) * n
        self._report_sums = report if self._report_sums is None else self._report_sums + report
        self._count += n

    def predictions(self) -> tuple[np.ndarray, np.ndarray]:
        """(predicted (N, K, 2), ground truth (N, K, 3)) in original pixels, update order."""
        if not self._count:
            count = self.task.skeleton.num_joints
            return np.zeros((0, count, 2)), np.zeros((0, count, 3))
        return np.concatenate(self._predicted), np.concatenate(self._truth)

    def compute(self) -> dict[str, float]:
        if not self._count:
            raise DataError("pose metric: no samples were evaluated (empty split?)")
        predicted, truth = self.predictions()
        skeleton = self.task.skeleton
        extras = {name: np.concatenate(values) for name, values in self._extras.items()}
        distances = pose_metrics.joint_distances(predicted, truth)
        torso = pose_metrics.normalisers(truth, skeleton, extras.get("scale"))
        per_joint = pose_metrics.pck_per_joint(distances, torso, 0.2)
        result = {
            "pck@0.2": pose_metrics.pck(distances, torso, 0.2),
            "pck@0.1": pose_metrics.pck(distances, torso, 0.1),
            "auc@0.2": pose_metrics.auc(distances, torso, 0.2, steps=41),
        }
        result.update(pose_metrics.skeleton_metrics(distances, torso, skeleton))
        if skeleton.sigmas is not None and "area" in extras:
            from sslbench.tasks.oks import oks_metrics  # pycocotools, only for skeletons with OKS sigmas

            result.update(oks_metrics(predicted, np.concatenate(self._scores), truth, extras["area"], skeleton.sigmas))
        result.update({f"part.{part}": value for part, value in pose_metrics.per_part(per_joint, skeleton).items()})
        result.update({f"joint.{name}": float(value) for name, value in zip(skeleton.joints, per_joint)})
        result["loss"] = self._loss_sum / self._count
        assert self._report_sums is not None
        reports = self._report_sums / self._count
        result["report_loss"] = float(reports[-1])
        result.update({f"report_loss.stage{t}": float(v) for t, v in enumerate(reports, start=1)})
        return result
