"""``pseudo-label``: a teacher trained on the labelled budget labels the unlabelled pool, a student
trains on both.

1. Teacher: the cell's initialisation (random, or a pretext pretraining transferred by the policy),
   trained on the labelled budget: exactly the supervised (or transfer) cell of the same seed and
   budget, so it is trained in that cell's run directory, once, and reused by every cell that
   needs it (``timing.teacher_s`` is its training time when this cell trained it, 0 when it was
   reused, like a cached pretraining; ``timing.teacher_train_s`` is its training time either way).
2. Pseudo-labels: on ``images`` images of the unlabelled pool's training split (a seeded subset;
   held-out images are never used) the teacher predicts on the whole image padded to a square
   (``crop`` 0; or the centred square of at most ``crop`` pixels), averaging the maps of the image
   and its mirror; ``passes`` > 1 predicts again on the box around the joints found. A joint whose
   heatmap peak reaches ``threshold`` becomes a target; the others are unknown and left out of
   the loss. Images with fewer than ``min_joints`` targets are dropped. The labels are stored in
   the cell (``pseudo-labels-round<r>.json``: image, x, y, peak), so a resumed cell reuses them
   and a reader can inspect them.
3. Student: the same initialisation again, trained on the labelled budget plus ``per_epoch``
   pseudo-labelled images a epoch (drawn anew each epoch), model selection on the labelled
   validation images. ``rounds`` > 1 makes each student the next round's teacher.

The same labeller is scored on the labelled validation images from their whole image (no
ground-truth box): PCK@0.2 of the kept joints and the share kept (``strategy_metrics``).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

from sslbench.contract.errors import ConfigError
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.interfaces import Geometry, ImageDataset
from sslbench.contract.networks import Backbone
from sslbench.contract.registry import Entry
from sslbench.data.joints import FLIP_INDEX, NUM_JOINTS
from sslbench.data.pipeline import (
    centre_map_tensor,
    crop_matrix,
    person_box,
    to_tensor,
    warp,
)
from sslbench.data.splits import budget
from sslbench.experiment.strategies import Cell, SemiSupervised
from sslbench.tasks import metrics as pose_metrics
from sslbench.tasks.pose import decode_joints
from sslbench.tasks.semi import (
    Concat,
    JointsOverride,
    MaskedPoseTask,
    MixedTaskDataset,
    unlabelled_crop,
)
from sslbench.training.atomic import read_json, write_json
from sslbench.training.device import resolve_device
from sslbench.training.loop import FitResult
from sslbench.training.run_files import finished


def predict_joints(
    model: Backbone, images: ImageDataset, indices: list[int], crop: float, passes: int, device: torch.device,
    batch: int = 32, progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Joints (N, 14, 2) in original pixels and heatmap peaks (N, 14) of *images* at *indices*.

    The first prediction is on the square :func:`unlabelled_crop` cuts (*crop*), each further pass on
    the box around the joints found before; every prediction averages the maps of the crop and of
    its mirror image (left and right channels swapped back).
    """
    size, stride = model.input_size, model.stride
    centremap = centre_map_tensor(size)
    swap = [*FLIP_INDEX, NUM_JOINTS]
    was_training = model.training
    model.eval()
    joints_out, scores_out = [], []
    try:
        for start in range(0, len(indices), batch):
            chunk = [np.ascontiguousarray(images.image(i)) for i in indices[start : start + batch]]
            boxes = [unlabelled_crop(image, crop) for image in chunk]
            for _ in range(passes):
                matrices = np.stack([crop_matrix(centre, side, size) for centre, side in boxes])
                inputs = torch.stack([to_tensor(warp(im, m, size)) for im, m in zip(chunk, matrices)]).to(device)
                centres = centremap.expand(len(chunk), -1, -1, -1).to(device)
                with torch.inference_mode():
                    maps = model(inputs, centres)[-1].float()
                    mirrored = model(inputs.flip(-1), centres)[-1].float().flip(-1)[:, swap]
                joints, scores = decode_joints(((maps + mirrored) / 2).cpu(), matrices, stride)
                boxes = [person_box(j) for j in joints]
            joints_out.append(joints)
            scores_out.append(scores)
            if progress is not None:
                progress(start + len(chunk), len(indices))
    finally:
        model.train(was_training)
    return np.concatenate(joints_out), np.concatenate(scores_out)


class PseudoLabel(SemiSupervised):
    """Teacher on the labelled budget, pseudo-labels on the unlabelled pool, student on both."""

    name = "pseudo-label"
    OPTIONS = {
        "threshold": (0.25, 0.0, 1.0), "min_joints": (4, 1, NUM_JOINTS), "images": (3000, 1, 10**7),
        "per_epoch": (0, 0, 10**7),  # 0: as many pseudo-labelled images a epoch as the labelled budget has
        "rounds": (1, 1, 10),
        "crop": (0.0, 0.0, 10_000.0),  # 0: the whole image padded to a square; else the centred square of at most that
        "passes": (1, 1, 5),
    }  # fmt: skip

    def cost(self, config: Any) -> float:
        o = self.options(config)
        per_epoch = o["per_epoch"] or (config.train_size or 1)
        return o["rounds"] * (1 + per_epoch / max(1, config.train_size or per_epoch)) + 1

    def train(self, cell: Cell, model: Backbone) -> FitResult:
        o = self.options(cell.config)
        self.require_lsp_skeleton(cell)
        reused = finished(cell.shared_labelled_dir())
        teacher_fit = cell.fit_labelled(model, "teacher", shared=True)  # the supervised (or transfer) cell's run
        # like a cached pretraining, a teacher trained by another cell costs this one nothing
        cell.timings.update(teacher_s=0.0 if reused else teacher_fit.train_seconds, teacher_cached=reused,
                            teacher_train_s=teacher_fit.train_seconds)  # fmt: skip
        cell.metrics["teacher_val_pck@0.2"] = teacher_fit.best_metrics.get("pck@0.2")
        pool, pool_indices = cell.unlabelled_pool()
        chosen = budget(pool_indices, min(o["images"], len(pool_indices)), cell.config.seed, "strategy option images")
        teacher, fitted = model, teacher_fit
        labelling_s = 0.0
        for round_ in range(1, o["rounds"] + 1):
            t0 = time.perf_counter()
            joints = self._pseudo_labels(cell, teacher, pool, chosen, o, round_)
            labelling_s += time.perf_counter() - t0
            student = cell.initial_network()
            fitted = self._train_student(cell, student, pool, joints, o, round_)
            teacher = student
        cell.timings["pseudo_label_s"] = labelling_s
        model.load_state_dict(teacher.state_dict())
        return fitted

    # -- pseudo-labels -------------------------------------------------------------------------
    def _pseudo_labels(
        self, cell: Cell, teacher: Backbone, pool: ImageDataset, indices: list[int], o: dict[str, Any], round_: int
    ) -> dict[int, np.ndarray]:
        """Pool index -> (14, 3) joints (NaN below the threshold) for the images kept; stored in the cell."""
        path = cell.run_dir / f"pseudo-labels-round{round_}.json"
        device = resolve_device(cell.config.downstream.device)
        teacher.to(device)
        stored = read_json(path) if path.exists() and cell.resume else None
        made_by = {"crop": o["crop"], "passes": o["passes"], "round": round_}
        if stored is not None and {k: stored.get(k) for k in made_by} != made_by:
            stored = None  # labelled another way (the threshold only filters, it is applied below)
        if stored is None:
            xy, peaks = predict_joints(teacher, pool, indices, o["crop"], o["passes"], device,
                                       progress=self._progress_lines(cell, f"pseudo-labelling round {round_}"))  # fmt: skip
            stored = {
                "threshold": o["threshold"], "crop": o["crop"], "passes": o["passes"], "round": round_,
                "images": [{"index": int(i), "image": pool.image_id(i),
                            "joints": np.concatenate([xy[k], peaks[k][:, None]], axis=1).round(3).tolist()}
                           for k, i in enumerate(indices)],
                "validation": self._validation_check(cell, teacher, o, device),
            }  # fmt: skip
            write_json(path, stored)
        if "validation" in stored:  # files of session 9-10 cells lack it
            self._score_on_validation(cell, stored["validation"], o["threshold"], round_)
        kept: dict[int, np.ndarray] = {}
        counts = []
        for item in stored["images"]:
            joints = np.asarray(item["joints"], dtype=np.float32)
            confident = joints[:, 2] >= o["threshold"]
            counts.append(int(confident.sum()))
            if confident.sum() >= o["min_joints"]:
                joints[~confident, :2] = np.nan
                joints[:, 2] = 1.0
                kept[int(item["index"])] = joints
        if not kept:
            raise ConfigError(
                f"strategy pseudo-label: no unlabelled image has {o['min_joints']} joints with a peak of at least "
                f"{o['threshold']} (lower the threshold or min_joints)"
            )
        cell.metrics[f"round{round_}.images_kept"] = len(kept)
        cell.metrics[f"round{round_}.joints_kept"] = float(np.mean(counts)) / 14
        return kept

    @staticmethod
    def _progress_lines(cell: Cell, what: str, every_s: float = 30.0) -> Callable[[int, int], None]:
        """A callback printing ``what: done/total images`` at most every *every_s* seconds, and at the end."""
        last = [time.perf_counter()]

        def report(done: int, total: int) -> None:
            now = time.perf_counter()
            if now - last[0] >= every_s or done == total:
                last[0] = now
                cell.console.print(f"{what}: {done}/{total} images", highlight=False)

        return report

    def _validation_check(
        self, cell: Cell, teacher: Backbone, o: dict[str, Any], device: torch.device
    ) -> dict[str, Any]:
        """The labeller run on the labelled validation images (whole images, no box), as the pool is labelled:
        per joint, whether it lands within 0.2 torso of the truth, and its peak. Stored with the pseudo-labels."""
        val = list(cell.splits.val)
        xy, peaks = predict_joints(teacher, cell.data, val, o["crop"], o["passes"], device)
        truth = np.stack([cell.data.joints(i) for i in val]).astype(np.float64)
        distances = pose_metrics.joint_distances(xy, truth)
        correct = distances <= 0.2 * pose_metrics.torso_sizes(truth)[:, None]
        return {"correct": correct.tolist(), "peaks": peaks.round(4).tolist()}

    @staticmethod
    def _score_on_validation(cell: Cell, check: dict[str, Any], threshold: float, round_: int) -> None:
        """PCK@0.2 of all the labeller's validation joints and of those at least *threshold* confident."""
        correct, peaks = np.asarray(check["correct"], dtype=bool), np.asarray(check["peaks"], dtype=np.float64)
        kept = peaks >= threshold
        cell.metrics[f"round{round_}.val_pck@0.2_all"] = float(correct.mean() * 100)
        cell.metrics[f"round{round_}.val_pck@0.2_kept"] = float(correct[kept].mean() * 100) if kept.any() else None
        cell.metrics[f"round{round_}.val_kept"] = float(kept.mean() * 100)

    # -- student -------------------------------------------------------------------------------
    def _train_student(
        self, cell: Cell, student: Backbone, pool: ImageDataset, joints: dict[int, np.ndarray], o: dict[str, Any], round_: int
    ) -> FitResult:
        task = MaskedPoseTask(sigma=cell.pose.sigma, loss_scale=cell.pose.loss_scale)
        pseudo = JointsOverride(pool, joints)
        images = Concat(cell.data, pseudo)
        geometry = Geometry(student.input_size, student.stride)
        per_epoch = o["per_epoch"] or len(cell.splits.train)
        train_set = MixedTaskDataset(
            images, cell.splits.train, [images.offset + i for i in sorted(joints)], per_epoch, task, geometry, cell.config.seed
        )
        _, val_set = cell.labelled_sets(student, task)
        fitted = cell.fit(student, task, train_set, val_set, f"student{round_}", f"pose {cell.label} student {round_}")
        cell.timings[f"student{round_}_s"] = fitted.train_seconds
        return fitted


@hookimpl
def sslbench_strategies() -> list[Entry]:
    return [Entry("pseudo-label", "teacher on the labels, pseudo-labels on the unlabelled pool, student on both", PseudoLabel)]
