"""``equivariance``: landmark heatmaps that move with the image (Thewlis et al., ICCV 2017; Zhang et al., CVPR 2018).

Each sample is the centre square of an unlabelled image (lightly augmented when training) and a randomly
warped copy of it: a rotation by up to ``rotation`` degrees, a scaling by a factor in ``[1 - scale, 1 +
scale]`` and a shift by up to ``shift`` of the input, all about the centre, built and applied with the
sample pipeline's own affine maps (:func:`sslbench.data.pipeline.crop_matrix`, :func:`~sslbench.data.pipeline.warp`;
the sample keeps the exact 3 x 3 matrix from the first view's input pixels to the second's). The network
outputs ``landmarks`` maps on both views (one forward pass on the two stacked); each map, scaled by
``temperature`` and put through a softmax over its positions, gives a landmark: its expected position
(soft-argmax, in input pixels at the pipeline's map convention) and its spread. The loss, per stage and
summed over stages, in output-map cells:

- equivariance: squared distance between the warped first-view landmark and the second-view landmark
  (landmarks the warp moves out of the second view are left out);
- concentration (Zhang et al.): the spatial variance of each map, weighted by ``concentration``, so maps peak;
- separation (Zhang et al.): for each landmark, the sum over the others of ``exp(-d² / (2 sigma²))`` with
  ``sigma = separation_sigma`` cells, weighted by ``separation``, so landmarks stay apart.

The defaults, ``temperature`` 30 and ``concentration`` 0.05, are measured; the first defaults (temperature 1,
concentration 1.0, the options of results/lsp-cpu-probe's equivariance rows) collapse. A pose network's output
layers start near zero (CPM's: standard deviation 0.03-0.05 at the cpu profile), so at temperature 1 every
softmax is nearly uniform and every landmark starts at the centre of the map. There the separation term has
no gradient (a Gaussian is flat at its peak), and a concentration weight of 1 peaks the maps before the
equivariance term can move them. On LSP-extended (15,000 samples) all 15 landmarks then sat on the same
pixel of every image, with an equivariance error of 10.1 px, that of landmarks fixed at the centre. With
temperature 30 and concentration 0.05, 3,000 samples gave 8.8 px, spread 8.9 px, landmarks 32 px apart.
On images of one moving disc, one landmark learns to follow it at the defaults and not at the first ones
(``tests/test_equivariance.py``).

With ``landmarks`` equal to the pose task's number of maps (15, the default) the outputs have the shape of
the pose network's belief maps, and policy ``all+adapters`` transfers the task adapters as well. Metric
(held out, last stage): ``equivariance_px``, the mean distance in input pixels between the warped
first-view landmark and the second-view one (the monitor, lower is better); ``spread_px``, the mean
standard deviation of a map in input pixels; ``apart_px``, the mean distance between two landmarks of an
image in input pixels (0: collapsed onto one point); ``loss``.

``tps`` > 0 adds a random thin-plate spline T (Zhang et al.; kornia's): the second view's pixel p shows the
first view at ``T(A^-1 p)``, T moving a 3 x 3 grid of control points by up to ``tps`` of the input size. That
map is exact in this direction only, so the equivariance term then compares the first-view landmark with the
second-view landmark's preimage, both carried through the affine part A (second-view pixels, as without T).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.interfaces import Geometry, Metric, SampleKey
from sslbench.contract.registry import Entry
from sslbench.data.joints import NUM_JOINTS
from sslbench.data.pipeline import FILL, crop_matrix, to_tensor, warp
from sslbench.tasks.pretexts import KitPretext, PretextMetric, base_sample, check_geometry, pretext_entry


def soft_landmarks(maps: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected positions (B, K, 2) in input pixels and spatial variances (B, K) in map cells² of the
    softmax of each (B, K, h, w) map; map pixel u sits at input pixel ``stride * u + (stride - 1) / 2``."""
    b, k, h, w = maps.shape
    p = maps.float().flatten(2).softmax(dim=2).view(b, k, h, w)
    ys = torch.arange(h, dtype=p.dtype, device=p.device)
    xs = torch.arange(w, dtype=p.dtype, device=p.device)
    py, px = p.sum(dim=3), p.sum(dim=2)  # marginals (B, K, h) and (B, K, w)
    mx, my = (px * xs).sum(-1), (py * ys).sum(-1)
    variance = (px * (xs - mx[..., None]) ** 2).sum(-1) + (py * (ys - my[..., None]) ** 2).sum(-1)
    cells = torch.stack([mx, my], dim=-1)
    return cells * stride + (stride - 1) / 2.0, variance


def apply_affine(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) affine maps applied to (B, K, 2) points."""
    matrix = matrix.to(points.dtype)
    return points @ matrix[:, :2, :2].transpose(1, 2) + matrix[:, None, :2, 2]


#: control points per side of the thin-plate spline's grid
TPS_GRID = 3


def first_view_points(spline: dict[str, torch.Tensor], points: torch.Tensor) -> torch.Tensor:
    """Where (B, K, 2) second-view pixels were sampled from in the first view: ``T(A^-1 p)`` for the
    sample's affine warp A and thin-plate spline T (batched parameters in *spline*)."""
    from kornia.geometry.transform import warp_points_tps

    flat = apply_affine(torch.linalg.inv(spline["warp"].double()), points.double()).to(points.dtype)
    return warp_points_tps(flat, *(spline[k].to(points.dtype) for k in ("tps_centers", "tps_kernel", "tps_affine")))


@functools.cache
def pixel_centres(size: int) -> torch.Tensor:
    """(1, size², 2) the (x, y) of every pixel of a size x size image, row by row (read only: shared)."""
    ys, xs = np.mgrid[:size, :size].astype(np.float32)
    return torch.from_numpy(np.stack([xs, ys], axis=-1).reshape(1, -1, 2))


def spline_warp(view: np.ndarray, matrix: np.ndarray, spline: dict[str, torch.Tensor]) -> np.ndarray:
    """The (size, size, 3) second view of *view*: pixel p takes the first view's colour at ``T(A^-1 p)``
    (bilinear, the pipeline's fill outside), pixel centres at integer coordinates as in :func:`warp`."""
    size = view.shape[0]
    batch = {"warp": torch.from_numpy(matrix)[None], **{k: v[None] for k, v in spline.items()}}
    source = first_view_points(batch, pixel_centres(size)).view(1, size, size, 2) * (2.0 / (size - 1)) - 1.0
    fill = torch.tensor(FILL, dtype=torch.float32).view(1, 3, 1, 1)
    image = torch.tensor(view, dtype=torch.float32).permute(2, 0, 1)[None] - fill
    sampled = torch.nn.functional.grid_sample(image, source.float(), mode="bilinear", align_corners=True) + fill
    return sampled[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


class Equivariance(KitPretext):
    """Heatmaps equivariant to affine (and thin-plate-spline) warps, peaked and apart."""

    name = "equivariance"
    monitor = "equivariance_px"
    monitor_mode = "min"

    def __init__(
        self,
        landmarks: int = NUM_JOINTS + 1,
        rotation: float = 30.0,
        scale: float = 0.2,
        shift: float = 0.1,
        concentration: float = 0.05,
        separation: float = 1.0,
        separation_sigma: float = 1.0,
        augment: bool = True,
        temperature: float = 30.0,
        tps: float = 0.0,
    ) -> None:
        self.landmarks = self.option_int("landmarks", landmarks, 1, 1024)
        self.rotation = self.option_float("rotation", rotation, 0.0, 180.0)
        self.scale = self.option_float("scale", scale, 0.0, 0.9)
        self.shift = self.option_float("shift", shift, 0.0, 0.5)
        self.concentration = self.option_float("concentration", concentration, 0.0, 1e6)
        self.separation = self.option_float("separation", separation, 0.0, 1e6)
        self.separation_sigma = self.option_float("separation_sigma", separation_sigma, 0.0, 1e3, open_low=True)
        self.augment = self.option_bool("augment", augment)
        self.temperature = self.option_float("temperature", temperature, 0.0, 1e4, open_low=True)
        self.tps = self.option_float("tps", tps, 0.0, 0.25)

    @property
    def num_outputs(self) -> int:
        return self.landmarks

    # -- samples ------------------------------------------------------------------------
    def draw_warp(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """(3, 3) from the first view's input pixels to the second's: rotation, scale, shift about the centre."""
        half = (size - 1) / 2.0
        dx, dy = rng.uniform(-self.shift, self.shift, size=2) * size
        rotation = float(rng.uniform(-self.rotation, self.rotation))
        scale = float(rng.uniform(1.0 - self.scale, 1.0 + self.scale))
        return crop_matrix((half + dx, half + dy), size, size, rotation=rotation, scale=scale)

    def draw_tps(self, size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """A thin-plate spline T of the first view's pixels onto themselves: the 3 x 3 grid of control points
        over the view, each moved by up to ``tps`` of the input size. Its parameters (kornia's convention:
        ``T(x) = warp_points_tps(x, tps_centers, tps_kernel, tps_affine)``) travel with the sample."""
        from kornia.geometry.transform import get_tps_transform

        grid = np.linspace(0.0, size - 1.0, TPS_GRID)
        control = np.stack(np.meshgrid(grid, grid), axis=-1).reshape(-1, 2)
        moved = control + rng.uniform(-self.tps, self.tps, size=control.shape) * size
        source, target = (torch.from_numpy(points).float()[None] for points in (control, moved))
        kernel, affine = get_tps_transform(source, target)
        return {"tps_centers": target[0], "tps_kernel": kernel[0], "tps_affine": affine[0]}

    def make_sample(
        self, image: np.ndarray, joints: np.ndarray | None, key: SampleKey, train: bool, geometry: Geometry
    ) -> dict[str, Any]:
        """``image`` (first view), ``warped`` (second view), ``centermap``, ``warp`` (3, 3) first -> second
        (with ``tps``: the affine part) and the spline's ``tps_*`` parameters."""
        check_geometry(self.name, geometry)
        size = geometry.input_size
        rng = key.rng()
        view = self.view(image, size, rng, train)
        matrix = self.draw_warp(size, rng)
        sample = {**base_sample(to_tensor(view), geometry), "warp": torch.from_numpy(matrix)}
        if not self.tps:
            return {**sample, "warped": to_tensor(warp(view, matrix, size))}
        spline = self.draw_tps(size, rng)  # drawn after the affine warp: tps = 0 keeps every other draw
        return {**sample, **spline, "warped": to_tensor(spline_warp(view, matrix, spline))}

    # -- training -----------------------------------------------------------------------
    def forward(self, net: nn.Module, batch: dict[str, Any]) -> list[torch.Tensor]:
        """Both views in one pass: every output is (2B, K, m, m), the first views then the warped ones."""
        images = torch.cat([batch["image"], batch["warped"].to(batch["image"].dtype)])
        centermap = batch.get("centermap")
        return net(images, None if centermap is None else torch.cat([centermap, centermap]))

    def predict(self, net: nn.Module, batch: dict[str, Any]) -> list[torch.Tensor]:
        """Evaluation sees both views as well: its metric compares them."""
        return self.forward(net, batch)

    def terms(self, output: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per-landmark quantities of one stage: ``error`` (B, K) input pixels, ``inside`` (B, K), ``variance``
        (2B, K) cells², ``crowding`` (2B, K), ``distance2`` (2B, K, K) squared landmark distances in cells."""
        size, m = batch["image"].shape[-1], output.shape[-1]
        stride = size // m
        points, variance = soft_landmarks(output * self.temperature, stride)
        first, second = points.chunk(2)
        moved = apply_affine(batch["warp"], first)
        if "tps_centers" in batch:  # the second-view landmark's preimage, seen through the warp's affine part
            second = apply_affine(batch["warp"], first_view_points(batch, second))
        inside = ((moved >= 0) & (moved <= size - 1)).all(dim=-1).float()
        cells = points / stride
        distance2 = (cells[:, :, None] - cells[:, None]).pow(2).sum(-1)  # (2B, K, K)
        off_diagonal = 1.0 - torch.eye(cells.shape[1], device=cells.device, dtype=cells.dtype)
        crowding = (torch.exp(-distance2 / (2 * self.separation_sigma**2)) * off_diagonal).sum(-1)
        return {"error": (moved - second).norm(dim=-1), "inside": inside, "variance": variance, "crowding": crowding,
                "distance2": distance2}  # fmt: skip

    def loss(self, outputs: list[torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        """Equivariance + concentration + separation (map cells), summed over stages."""
        losses = []
        for output in outputs:
            t = self.terms(output, batch)
            stride = batch["image"].shape[-1] // output.shape[-1]
            equivariance = ((t["error"] / stride) ** 2 * t["inside"]).sum() / t["inside"].sum().clamp_min(1.0)
            losses.append(
                equivariance + self.concentration * t["variance"].mean() + self.separation * t["crowding"].mean()
            )
        return torch.stack(losses).sum()

    def new_metric(self) -> Metric:
        return EquivarianceMetric(self)


class EquivarianceMetric(PretextMetric):
    """Held-out equivariance error and map spread in input pixels (last stage), and the loss."""

    def update(self, outputs: list[torch.Tensor], batch: dict[str, Any]) -> None:
        with torch.no_grad():
            self.averages.add(
                "loss", float(self.task.loss(outputs, batch)) * batch["image"].shape[0], batch["image"].shape[0]
            )
            last = outputs[-1]
            t = self.task.terms(last, batch)
            stride = batch["image"].shape[-1] // last.shape[-1]
            self.averages.add("equivariance_px", float((t["error"] * t["inside"]).sum()), float(t["inside"].sum()))
            spread = t["variance"].clamp_min(0).sqrt() * stride / math.sqrt(2)  # per-axis standard deviation
            self.averages.add("spread_px", float(spread.sum()), spread.numel())
            apart = t["distance2"].clamp_min(0).sqrt() * stride  # (2B, K, K) input pixels, 0 on the diagonal
            k = apart.shape[1]
            self.averages.add("apart_px", float(apart.sum()) / max(k * (k - 1), 1), apart.shape[0])


@hookimpl
def sslbench_pretexts() -> list[Entry]:
    return [
        pretext_entry(
            Equivariance,
            "landmark heatmaps that move with a random affine warp, peaked and apart (Thewlis et al. 2017; "
            "Zhang et al. 2018); with 15 maps policy all+adapters transfers the output layers too; options: "
            "landmarks, rotation, scale, shift, concentration, separation, separation_sigma, augment, temperature, tps",
        )
    ]
