"""``consistency``: easy-to-hard heatmap consistency on unlabelled images (PoseCons, Xie et al., ICCV 2021).

One network. Every labelled training sample of an epoch is paired with one unlabelled image
(drawn by seed, epoch and position) seen twice: an *easy* view (the centred square of at most
``crop`` pixels, unaugmented) and a *hard* view of the same square under the labelled
augmentation (rotation up to 40 degrees, scale 0.7-1.3, flip) with a Joint Cutout: with
probability ``cutout`` a square of ``cutout_size`` x the input side is blanked around where the
easy view puts one random joint. The easy view's final maps are predicted without gradients and
with the network in eval mode (BatchNorm from its running statistics). With ``targets`` ``peaks``
(the default) every joint whose easy peak reaches ``threshold`` becomes a target of the hard
view: a Gaussian of peak 1 where the easy view puts it, moved into the hard view's frame with the
exact affine map between the two crops (and left/right swapped when the hard view is mirrored),
drawn like a labelled target; the other joints are left out of the loss. With ``maps`` the easy
maps themselves are moved into the hard frame and are the targets (the paper's form; here it
collapsed: see results/lsp-cpu-semi). The hard view's maps of every stage are trained towards the
targets (MSE); the unlabelled term is weighted by ``weight`` times the usual sigmoid ramp-up over
``rampup`` epochs, and added to the labelled pose loss. With ``batchnorm`` ``separate`` (the
default) the labelled and the hard views go through the network as two batches, and only the
labelled one moves the BatchNorm running statistics that validation and test images are scored
with; ``joint`` normalises them as one batch.

Collapse (the paper's failure: every map drifting to background) is measured after training:
the mean joint-map peak of the selected network on the labelled validation images and on
unlabelled easy views (``strategy_metrics``), next to its validation PCK.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslbench.contract.errors import ConfigError
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.interfaces import Geometry, ImageDataset
from sslbench.contract.networks import Backbone
from sslbench.contract.registry import Entry
from sslbench.data.joints import FLIP_INDEX, NUM_JOINTS
from sslbench.data.loaders import TaskDataset
from sslbench.data.pipeline import (
    Augment,
    centre_map_tensor,
    crop_matrix,
    decode_maps,
    to_tensor,
    warp,
)
from sslbench.experiment.strategies import Cell, SemiSupervised
from sslbench.tasks.pose import PoseTask
from sslbench.tasks.semi import unlabelled_crop
from sslbench.training import distributed
from sslbench.training.loop import FitResult

#: mixed into the seed of each sample's unlabelled pair
_PAIR_WORD = 32452843


def map_affine(easy: np.ndarray, hard: np.ndarray, stride: int, map_size: int) -> np.ndarray:
    """(2, 3) affine from the hard view's map to the easy view's map, in grid_sample's normalised
    coordinates (``align_corners=True``): where each hard-map pixel lies on the easy map."""
    half = (stride - 1) / 2.0
    to_input = np.array([[stride, 0, half], [0, stride, half], [0, 0, 1]], dtype=np.float64)
    pixels = np.linalg.inv(to_input) @ easy @ np.linalg.inv(hard) @ to_input
    scale = 2.0 / max(1, map_size - 1)
    normalise = np.array([[scale, 0, -1], [0, scale, -1], [0, 0, 1]], dtype=np.float64)
    return (normalise @ pixels @ np.linalg.inv(normalise))[:2].astype(np.float32)


def easy_to_hard(points: torch.Tensor, theta: torch.Tensor, map_size: int) -> torch.Tensor:
    """Easy-map pixel positions (B, K, 2) moved onto the hard view's map through the inverse of
    *theta* (B, 2, 3, :func:`map_affine`), computed in the points' dtype."""
    scale = 2.0 / max(1, map_size - 1)
    theta = theta.to(points.dtype)
    normalised = torch.cat([points * scale - 1, torch.ones_like(points[..., :1])], dim=-1)  # (B, K, 3)
    bottom = torch.tensor([0.0, 0.0, 1.0], dtype=theta.dtype, device=theta.device).expand(len(theta), 1, 3)
    to_hard = torch.linalg.inv(torch.cat([theta, bottom], dim=1))
    return ((to_hard[:, None] @ normalised[..., None])[..., :2, 0] + 1) / scale


class PairedTaskDataset(TaskDataset):
    """Labelled pose samples, each with an unlabelled image's easy and hard views (``u_*`` keys)."""

    def __init__(self, labelled: ImageDataset, indices: list[int], task: PoseTask, geometry: Geometry, seed: int,
                 pool: ImageDataset, pool_indices: list[int], options: dict[str, Any]) -> None:  # fmt: skip
        super().__init__(labelled, indices, task, geometry, seed, train=True)
        self.pool, self.pool_indices, self.options = pool, pool_indices, options
        self.augment = Augment()

    def __getitem__(self, position: int) -> dict[str, Any]:
        sample = super().__getitem__(position)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, position, _PAIR_WORD]))
        index = self.pool_indices[int(rng.integers(len(self.pool_indices)))]
        image = np.ascontiguousarray(self.pool.image(index))
        size, stride = self.geometry.input_size, self.geometry.stride
        centre, side = unlabelled_crop(image, self.options["crop"])
        rotation, scale, flip = self.augment.draw(rng)
        easy = crop_matrix(centre, side, size)
        hard = crop_matrix(centre, side, size, rotation=rotation, scale=scale, flip=flip)
        cut = int(rng.integers(NUM_JOINTS)) if rng.random() < self.options["cutout"] else -1
        sample.update(
            u_easy=to_tensor(warp(image, easy, size)),
            u_hard=to_tensor(warp(image, hard, size)),
            u_theta=torch.from_numpy(map_affine(easy, hard, stride, self.geometry.map_size)),
            u_flip=torch.tensor(flip),
            u_cut=torch.tensor(cut),
            u_epoch=torch.tensor(self.epoch),
            u_index=torch.tensor(index),
        )
        return sample


class ConsistencyTask(PoseTask):
    """The pose loss on labelled samples plus the easy-to-hard consistency loss on their unlabelled pairs."""

    name = "pose-consistency"

    def __init__(self, options: dict[str, Any], **pose: Any) -> None:
        super().__init__(**pose)
        self.options = options

    def config(self) -> dict[str, Any]:
        return {**super().config(), "name": self.name, "consistency": dict(sorted(self.options.items()))}

    def ramp(self, epoch: int) -> float:
        """``weight`` x exp(-5 (1 - t)^2), t the share of the ramp-up epochs done (1 after it)."""
        rampup = self.options["rampup"]
        t = 1.0 if rampup == 0 else min(1.0, epoch / rampup)
        return self.options["weight"] * math.exp(-5.0 * (1.0 - t) ** 2)

    def forward(self, net: nn.Module, batch: dict[str, Any]) -> list[torch.Tensor]:
        if "u_easy" not in batch:
            return super().forward(net, batch)
        n = batch["image"].shape[0]
        centremap = batch["centermap"]
        training = net.training
        net.eval()  # targets from the running statistics: an unlabelled-only batch never updates them
        try:
            with torch.no_grad():
                easy = net(batch["u_easy"], centremap)[-1].float()
        finally:
            net.train(training)
        theta = batch["u_theta"].float()
        flipped = batch["u_flip"].bool()
        order = torch.tensor([*FLIP_INDEX, NUM_JOINTS], device=easy.device)
        peaks = easy[:, :NUM_JOINTS].amax(dim=(2, 3))
        peaks = torch.where(flipped[:, None], peaks[:, order[:NUM_JOINTS]], peaks)  # in the hard view's channels
        confident = (peaks >= self.options["threshold"]).float()
        if self.options["targets"] == "maps":
            grid = F.affine_grid(theta, list(easy.shape), align_corners=True)
            target = F.grid_sample(easy, grid, align_corners=True, padding_mode="zeros")
            target = torch.where(flipped[:, None, None, None], target[:, order], target)
            inside = (grid.abs() <= 1).all(dim=-1, keepdim=True).permute(0, 3, 1, 2).float()  # (B, 1, m, m)
            weight = inside * torch.cat([confident, torch.ones_like(confident[:, :1])], dim=1)[:, :, None, None]
        else:
            target, weight = self._peak_targets(easy, theta, flipped, order, confident)
        hard = self._cut_out(batch["u_hard"], easy, theta, batch["u_cut"])
        batch["u_target"], batch["u_weight"] = target, weight
        if self.options["batchnorm"] == "joint":
            outputs = net(torch.cat([batch["image"], hard]), torch.cat([centremap, centremap]))
        else:  # labelled and unlabelled views normalised apart; only labelled batches move the statistics
            labelled = net(batch["image"], centremap)
            with running_statistics_kept(net):
                unlabelled = net(hard, centremap)
            outputs = [torch.cat([a, b]) for a, b in zip(labelled, unlabelled)]
        batch["u_split"] = n
        return outputs

    def _peak_targets(
        self, easy: torch.Tensor, theta: torch.Tensor, flipped: torch.Tensor, order: torch.Tensor, confident: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pose targets drawn at the easy view's peaks, moved into the hard view: a Gaussian of peak 1 per
        confident joint, as a labelled target; unconfident joints (and then the background) weigh 0."""
        m = easy.shape[-1]
        coords, _ = decode_maps(easy[:, :NUM_JOINTS])  # (B, K, 2) easy-map pixels
        hard = easy_to_hard(coords, theta, m)
        hard = torch.where(flipped[:, None, None], hard[:, order[:NUM_JOINTS]], hard)
        grid = torch.arange(m, dtype=hard.dtype, device=hard.device)
        gx = torch.exp(-((grid[None, None, :] - hard[..., :1]) ** 2) / (2 * self.sigma**2))  # (B, K, m)
        gy = torch.exp(-((grid[None, None, :] - hard[..., 1:]) ** 2) / (2 * self.sigma**2))
        joints = gy[..., :, None] * gx[..., None, :] * confident[:, :, None, None]
        target = torch.cat([joints, 1 - joints.amax(dim=1, keepdim=True)], dim=1)
        background = confident.min(dim=1, keepdim=True).values  # known only when every joint is
        weight = torch.cat([confident, background], dim=1)[:, :, None, None]
        return target, weight

    def _cut_out(self, hard: torch.Tensor, easy: torch.Tensor, theta: torch.Tensor, cut: torch.Tensor) -> torch.Tensor:
        """Blank a square around the chosen joint of the easy view, moved into the hard view (mean colour: 0)."""
        chosen = (cut >= 0).nonzero().flatten()
        if chosen.numel() == 0:
            return hard
        hard = hard.clone()
        m, size = easy.shape[-1], hard.shape[-1]
        stride = size // m
        half = max(1, round(self.options["cutout_size"] * size / 2))
        flat = easy[chosen, cut[chosen]].flatten(1).argmax(dim=1).cpu()
        peaks = torch.stack([flat % m, flat // m], dim=1).double()[:, None]  # (N, 1, 2) easy-map pixels
        centres = easy_to_hard(peaks, theta[chosen].cpu(), m)[:, 0] * stride + (stride - 1) / 2  # hard input pixels
        for b, (x, y) in zip(chosen.tolist(), centres.tolist()):
            x0, y0 = int(round(x)) - half, int(round(y)) - half
            hard[b, :, max(0, y0) : max(0, y0 + 2 * half), max(0, x0) : max(0, x0 + 2 * half)] = 0.0
        return hard

    def loss(self, outputs: list[torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        if "u_split" not in batch:
            return super().loss(outputs, batch)
        n = batch["u_split"]
        labelled = super().loss([o[:n] for o in outputs], batch)
        target, weight = batch["u_target"], batch["u_weight"]
        unlabelled = sum(((o[n:].float() - target) ** 2 * weight).mean() for o in outputs)
        if self.loss_scale == "sum":
            unlabelled = unlabelled * target[0].numel()
        return labelled + self.ramp(int(batch["u_epoch"][0])) * unlabelled


@contextlib.contextmanager
def running_statistics_kept(net: nn.Module) -> Iterator[None]:
    """BatchNorm layers normalise with the batch's statistics but leave their running ones as they are."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


def mean_peak(model: Backbone, images: list[torch.Tensor], batch: int = 32) -> float:
    """Mean over images and joints of the final stage's joint-map maximum (collapse: near 0)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    peaks = []
    try:
        centremap = centre_map_tensor(model.input_size).to(device)
        with torch.inference_mode():
            for start in range(0, len(images), batch):
                inputs = torch.stack(images[start : start + batch]).to(device)
                maps = model(inputs, centremap.expand(len(inputs), -1, -1, -1))[-1].float()
                peaks.append(maps[:, :NUM_JOINTS].amax(dim=(2, 3)).cpu())
    finally:
        model.train(was_training)
    return float(torch.cat(peaks).mean())


class Consistency(SemiSupervised):
    """Labelled pose loss plus easy-to-hard heatmap consistency on unlabelled images."""

    name = "consistency"
    #: 2: easy views predicted in eval mode (version 1 predicted them in training mode, so batches of
    #: unlabelled images alone moved the BatchNorm statistics the validation and test images are scored with);
    #: 3: option targets, default peaks (version 2 trained towards the warped maps, which collapsed);
    #: 4: option batchnorm, default separate (version 3 normalised labelled and hard views as one batch,
    #: and that alone cost about 3 points: results/lsp-cpu-semi)
    version = 4
    OPTIONS = {
        "weight": (1.0, 0.0, 1000.0), "rampup": (10, 0, 10_000), "threshold": (0.25, 0.0, 1.0),
        "targets": ("peaks", ("peaks", "maps")),
        "batchnorm": ("separate", ("separate", "joint")),
        "cutout": (0.5, 0.0, 1.0), "cutout_size": (0.2, 0.0, 1.0),
        # 0: the whole image padded to a square; else the centred square of at most that many pixels
        "crop": (220.0, 0.0, 10_000.0),
    }  # fmt: skip

    def cost(self, config: Any) -> float:
        return 2.3  # labelled step + easy forward (no gradients, ~1/3) + hard step

    def train(self, cell: Cell, model: Backbone) -> FitResult:
        o = self.options(cell.config)
        self.require_lsp_skeleton(cell)
        if o["batchnorm"] == "separate" and distributed.world_size() > 1:
            raise ConfigError(
                "strategy consistency: option batchnorm=separate runs the network twice a step, which "
                "DistributedDataParallel does not support; use --strategy-opt batchnorm=joint"
            )
        c = cell.config
        task = ConsistencyTask(o, sigma=cell.pose.sigma, loss_scale=cell.pose.loss_scale)
        pool, pool_indices = cell.unlabelled_pool()
        geometry = cell.geometry(model)
        train_set = PairedTaskDataset(cell.data, list(cell.splits.train), task, geometry, c.seed, pool, pool_indices, o)
        _, val_set = cell.labelled_sets(model, task)
        fitted = cell.fit(model, task, train_set, val_set, "downstream", f"pose {cell.label}")
        probe = [train_set[k]["u_easy"] for k in range(min(len(train_set), 200))]
        val_images = [val_set[k]["image"] for k in range(len(val_set))]
        cell.metrics.update(unlabelled_peak=mean_peak(model, probe), val_peak=mean_peak(model, val_images))
        return fitted


@hookimpl
def sslbench_strategies() -> list[Entry]:
    return [Entry("consistency", "easy-to-hard heatmap consistency on unlabelled images (PoseCons)", Consistency)]
