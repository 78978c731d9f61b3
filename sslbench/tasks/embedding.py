"""The kit of joint-embedding pretexts (SimCLR, MoCo, BYOL, VICReg, DenseCL): two views, the
features a head reads, the retrieval metric.

**Two views.** :class:`TwoViews` turns one unlabelled image into two augmented views in the
manner of lightly's ``SimCLRViewTransform`` and keeps the exact affine map between them, so a
dense method can match locations by geometry::

    view_affine @ [x0, y0, 1]  =  [x1, y1, 1]     (input pixels of view 0 -> view 1)

Each view is a random resized crop (torchvision's ``RandomResizedCrop.get_params``: area in
``[min_scale, 1]`` of the image, aspect ratio in [3/4, 4/3]) mirrored half of the time,
resampled by :func:`sslbench.data.pipeline.warp` through its affine matrix; then the photometric
transforms of lightly's own ``SimCLRViewTransform`` (colour jitter with probability 0.8,
grey with 0.2, Gaussian blur with 0.5, at lightly's default strengths times ``cj_strength``;
its default here is 0.5, lightly's advice for small images, as views are 128 px at the
``cpu`` profile). The flip probability is lightly's default, 0.5.
lightly's transforms draw from the global torch, numpy and Python generators; here they run
with those generators seeded from the :class:`~sslbench.contract.interfaces.SampleKey` (and restored
afterwards), so every view is deterministic by (seed, image index, epoch). Evaluation views
are drawn the same way with the epoch-0 key: the same pairs at every evaluation.

**Features.** A head reads :meth:`~sslbench.contract.networks.Backbone.feature_maps` of the pretext's
``layers`` (default: every layer group whose role is ``first`` or ``middle``, which the
``first+middle`` policy transfers: CPM ``stage1`` and ``middle``, parallel branches from the
image that each need a gradient; timm ``stem`` and ``blocks``), pooled to the coarsest map
and concatenated along channels (:func:`feature_grid`). Global methods average it over
locations.

**Metric.** ``retrieval``: percent of view-0 images whose nearest view-1 image within the
batch (cosine of the backbone's pooled features) is their own pair; ``retrieval_head`` the
same on the embeddings the loss compares; ``retrieval_chance`` is 100 / batch size.
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from lightly.transforms import SimCLRViewTransform
from lightly.transforms.gaussian_blur import GaussianBlur
from lightly.transforms.torchvision_v2_compatibility import torchvision_transforms as T
from PIL import Image
from torch import nn

from sslbench.contract.errors import ConfigError, DataError
from sslbench.contract.interfaces import Geometry, Metric, Pretext, SampleKey
from sslbench.contract.networks import Backbone
from sslbench.data.pipeline import crop_matrix, to_tensor, warp
from sslbench.tasks.pretexts import PretextMetric, base_sample, batch_size, check_image, option_float, option_int

#: aspect ratios of the random resized crop (torchvision's and lightly's default)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
#: roles of the layer groups a head reads by default (what the ``first+middle`` policy moves)
DEFAULT_ROLES = ("first", "middle")


# ------------------------------------------------------------------------------ views


@contextlib.contextmanager
def seeded_global_rng(key: SampleKey) -> Iterator[None]:
    """Run a block with torch's, numpy's and Python's global generators seeded from *key*; restore them after."""
    seed = int(key.rng().integers(2**63 - 1))
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


def crop_affine(top: int, left: int, height: int, width: int, size: int, flip: bool) -> np.ndarray:
    """(3, 3) affine from original pixels to a *size* x *size* view of the box, mirrored when *flip*."""
    centre = (left + (width - 1) / 2.0, top + (height - 1) / 2.0)
    matrix = crop_matrix(centre, height, size, flip=flip)  # zoom size / height on both axes
    half = (size - 1) / 2.0
    stretch = height / width  # then x by size / width: about the view's centre
    return np.array([[stretch, 0, half * (1 - stretch)], [0, 1, 0], [0, 0, 1]]) @ matrix


class TwoViews:
    """Two augmented views of an image and the affine between them (see the module doc)."""

    def __init__(self, size: int, min_scale: float, cj_strength: float) -> None:
        self.size = size
        self.min_scale = min_scale
        lightly_view = SimCLRViewTransform(
            input_size=size, min_scale=min_scale, cj_strength=cj_strength, normalize=None
        )
        # lightly's photometric steps; its crop and flip are drawn here, where the affine is known
        self.photometric = T.Compose([step for step in lightly_view.transform.transforms if _photometric(step)])

    def __call__(self, image: np.ndarray, key: SampleKey) -> dict[str, torch.Tensor]:
        """``image`` (view 0), ``view1``, ``view_affine`` (3, 3) float32 from view-0 to view-1 input pixels."""
        check_image(image)
        picture = Image.fromarray(image)
        views, matrices = [], []
        with seeded_global_rng(key):
            for _ in range(2):
                top, left, height, width = T.RandomResizedCrop.get_params(picture, [self.min_scale, 1.0], CROP_RATIO)
                if height < 1 or width < 1:
                    raise DataError(f"view crop of image {key.index} is empty ({width}x{height} px)")
                flip = bool(torch.rand(1) < 0.5)
                matrix = crop_affine(top, left, height, width, self.size, flip)
                view = self.photometric(Image.fromarray(warp(image, matrix, self.size)))
                views.append(to_tensor(np.asarray(view)))
                matrices.append(matrix)
        between = matrices[1] @ np.linalg.inv(matrices[0])
        return {"image": views[0], "view1": views[1], "view_affine": torch.from_numpy(between.astype(np.float32))}


def _photometric(step: Any) -> bool:
    if isinstance(step, (T.RandomGrayscale, GaussianBlur)):
        return True
    return isinstance(step, T.RandomApply) and any(isinstance(t, T.ColorJitter) for t in step.transforms)


# ---------------------------------------------------------------------------- features


def default_layers(backbone: Backbone) -> list[str]:
    """The backbone's layer groups with a role in :data:`DEFAULT_ROLES`."""
    return [group.name for group in backbone.layer_groups() if group.role in DEFAULT_ROLES]


def feature_grid(maps: list[torch.Tensor]) -> torch.Tensor:
    """Feature maps average-pooled to the smallest of them and concatenated along channels, float32."""
    height = min(m.shape[-2] for m in maps)
    width = min(m.shape[-1] for m in maps)
    pooled = [m if m.shape[-2:] == (height, width) else F.adaptive_avg_pool2d(m, (height, width)) for m in maps]
    return torch.cat(pooled, dim=1).float()


# ---------------------------------------------------------------------------- pretext


class JointEmbedding(Pretext):
    """Base of the two-view pretexts: views, the features the heads read, the metric.

    A method implements :meth:`make_parts` (its heads and loss modules, see
    :meth:`~sslbench.contract.interfaces.Task.build_parts`) and, when it does more than project both
    views with a ``projection`` head and compare them with a ``criterion``, :meth:`embed` (the
    outputs the loss needs; the first two are the view-0 and view-1 embeddings the metric
    matches) and :meth:`loss`; it may set :attr:`min_scale_default`. Options shared by all: ``layers`` (layer-group names; default see the
    module doc), ``min_scale``, ``cj_strength``, ``hidden_dim``, ``output_dim``.
    """

    monitor = "retrieval"
    monitor_mode = "max"
    #: lightly's SimCLR default; methods whose recipe crops less set their own
    min_scale_default: ClassVar[float] = 0.08

    def __init__(
        self,
        layers: list[str] | None = None,
        min_scale: float | None = None,
        cj_strength: float = 0.5,
        hidden_dim: int = 512,
        output_dim: int = 128,
    ) -> None:
        if layers is not None and (
            not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(x, str) for x in layers)
        ):
            raise ConfigError(f"pretext {self.name}: option layers must be a non-empty list of layer-group names, "
                              f"got {layers!r}")  # fmt: skip
        self.layers = list(layers) if layers is not None else None
        scale = self.min_scale_default if min_scale is None else min_scale
        self.min_scale = option_float(self.name, "min_scale", scale, 0.0, 1.0, open_low=True)
        self.cj_strength = option_float(self.name, "cj_strength", cj_strength, 0.0, 1.0)
        self.hidden_dim = option_int(self.name, "hidden_dim", hidden_dim, 1, 1 << 16)
        self.output_dim = option_int(self.name, "output_dim", output_dim, 1, 1 << 16)
        self._views: dict[int, TwoViews] = {}
        self.backbone: Backbone | None = None

    @property
    def num_outputs(self) -> int:
        return 1  # the backbone's own outputs are not used: the heads read its features

    def __getstate__(self) -> dict[str, Any]:
        """Loader workers only make samples: the backbone and the parts stay in the training process."""
        return {**self.__dict__, "parts": None, "backbone": None}

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **self.options()}

    def options(self) -> dict[str, Any]:
        return {"layers": self.layers, "min_scale": self.min_scale, "cj_strength": self.cj_strength,
                "hidden_dim": self.hidden_dim, "output_dim": self.output_dim}  # fmt: skip

    # -- samples -----------------------------------------------------------------------
    def make_sample(
        self, image: np.ndarray, joints: np.ndarray | None, key: SampleKey, train: bool, geometry: Geometry
    ) -> dict[str, Any]:
        """Two views (:class:`TwoViews`): ``image``, ``view1``, ``view_affine``, ``centermap``."""
        views = self._views.get(geometry.input_size)
        if views is None:
            views = self._views[geometry.input_size] = TwoViews(geometry.input_size, self.min_scale, self.cj_strength)
        sample = views(image, key)
        return {**base_sample(sample.pop("image"), geometry), **sample}

    # -- parts -------------------------------------------------------------------------
    def build_parts(self, backbone: Backbone) -> nn.Module:
        """The method's :meth:`make_parts` for *backbone*'s feature width; the task keeps *backbone*
        (for momentum updates) and the parts."""
        self.backbone = backbone
        self.groups = self.layers or default_layers(backbone)
        try:
            channels = sum(backbone.feature_shape(group)[0] for group in self.groups)
        except ConfigError as exc:
            raise ConfigError(f"pretext {self.name}: option layers: {exc}") from None
        self.parts = self.make_parts(backbone, channels)
        return self.parts

    def make_parts(self, backbone: Backbone, channels: int) -> nn.Module:
        """The method's heads (and loss modules with state) for *channels*-wide features."""
        raise NotImplementedError

    def grid(self, net: nn.Module, image: torch.Tensor) -> torch.Tensor:
        """:func:`feature_grid` of *net*'s layer groups on *image*."""
        return feature_grid(net.feature_maps(image, self.groups))

    def pooled(self, net: nn.Module, image: torch.Tensor) -> torch.Tensor:
        return self.grid(net, image).mean(dim=(2, 3))

    # -- forward, loss, metric ------------------------------------------------------------
    def forward(self, net: nn.Module, batch: dict[str, Any]) -> list[torch.Tensor]:
        if self.parts is None:
            raise ConfigError(f"pretext {self.name}: its heads exist only in training (call build_parts first)")
        n = batch_size(batch)
        if n < 2 and net.training:
            raise ConfigError(
                f"pretext {self.name}: a training batch of {n} image; it compares the images of a batch and needs "
                "at least 2 (raise pretrain.batch_size, or change samples_per_epoch so no last batch holds one)"
            )
        return self.embed(net, batch)

    def predict(self, net: nn.Module, batch: dict[str, Any]) -> list[torch.Tensor]:
        """:meth:`forward`'s outputs, then the backbone's pooled features of view 0 and of view 1."""
        features = self.pooled(net, torch.cat([batch["image"], batch["view1"]]))
        return [*self.forward(net, batch), *features.chunk(2)]

    def embed(self, net: nn.Module, batch: dict[str, Any]) -> list[torch.Tensor]:
        """[z0, z1]: both views in one pass through the backbone and the ``projection`` head."""
        both = torch.cat([batch["image"], batch["view1"]])
        return list(self.parts["projection"](self.pooled(net, both)).float().chunk(2))

    def loss(self, outputs: list[torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        """The parts' ``criterion`` (a lightly loss) of the first two outputs."""
        return self.parts["criterion"](outputs[0], outputs[1])

    def new_metric(self) -> Metric:
        return RetrievalMetric(self)


def retrieval_hits(view0: torch.Tensor, view1: torch.Tensor) -> int:
    """How many rows of *view0* have their own row of *view1* as nearest neighbour (cosine)."""
    similarity = F.normalize(view0.float(), dim=1) @ F.normalize(view1.float(), dim=1).T
    return int((similarity.argmax(dim=1) == torch.arange(len(view0), device=similarity.device)).sum())


class RetrievalMetric(PretextMetric):
    """Positive-pair retrieval within each batch (percent), its chance level, and the loss.

    ``retrieval`` (monitored) matches the backbone's pooled features of the two views, what
    a transfer policy moves, the same measure for every method (for a momentum method it
    compares the online network with itself, not with its lagging target);
    ``retrieval_head`` matches the embeddings the loss compares (:meth:`JointEmbedding.embed`'s
    first two). Batches of one image are skipped (no loss, and retrieval among one is certain).
    """

    @torch.no_grad()
    def update(self, outputs: list[torch.Tensor], batch: dict[str, Any]) -> None:
        n = batch_size(batch)
        if n < 2:
            return
        embedded, features = outputs[:-2], outputs[-2:]
        self.averages.add("loss", float(self.task.loss(embedded, batch)) * n, n)
        self.averages.add("retrieval", 100.0 * retrieval_hits(*features), n)
        self.averages.add("retrieval_head", 100.0 * retrieval_hits(embedded[0], embedded[1]), n)
        self.averages.add("retrieval_chance", 100.0, n)  # 100/n per image, n images


class MomentumEmbedding(JointEmbedding):
    """A joint-embedding method with a momentum (EMA) target network: MoCo, BYOL, DenseCL.

    :meth:`momentum_copy` makes a target (lightly's ``deactivate_requires_grad``: not
    optimised); after every step each target moves towards its online module with lightly's
    ``update_momentum``, the momentum rising from ``momentum`` to 1 along lightly's
    ``cosine_schedule`` over the run.
    """

    def __init__(self, momentum: float = 0.99, **options: Any) -> None:
        super().__init__(**options)
        self.momentum = option_float(self.name, "momentum", momentum, 0.0, 1.0)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "momentum": self.momentum}

    @staticmethod
    def momentum_copy(module: nn.Module) -> nn.Module:
        from lightly.models.utils import deactivate_requires_grad

        target = copy.deepcopy(module)
        deactivate_requires_grad(target)
        return target

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, target) modules; by default the backbone and the ``projection`` head."""
        assert self.parts is not None and self.backbone is not None
        return [(self.backbone, self.parts.target_backbone), (self.parts.projection, self.parts.target_projection)]

    def after_step(self, step: int, total_steps: int) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(step, max(1, total_steps), self.momentum, 1.0)
        with torch.no_grad():
            for online, target in self.momentum_pairs():
                update_momentum(online, target, m)

    def target_pooled(self, image: torch.Tensor) -> torch.Tensor:
        """The target backbone's pooled features (no gradient)."""
        assert self.parts is not None
        with torch.no_grad():
            return self.pooled(self.parts.target_backbone, image)
