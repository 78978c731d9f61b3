"""The five things plugins provide, and the task contract shared by pose and pretext training.

Data flows like this::

    ImageDataset --(Task.make_sample)--> sample dict --(DataLoader)--> batch
        --> Backbone(image, centermap) -> list of stage maps --> Task.loss / Task.new_metric

Pose estimation (:mod:`sslbench.tasks.pose`) and every pretext are :class:`Task` objects, so
one training loop (:func:`sslbench.training.loop.fit`) trains both. A :class:`Strategy` decides how
a cell's pose network starts and what its pose phase trains on
(:mod:`sslbench.experiment.strategies` gives it the cell's data and the shared steps).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from sslbench.contract.networks import Backbone
from sslbench.contract.skeleton import LSP, Skeleton

# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Splits:
    """Image indices of one protocol: ``train`` (already cut to the budget), ``val``, ``test``."""

    train: list[int]
    val: list[int]
    test: list[int] = field(default_factory=list)
    #: size of the pool the train budget was drawn from (train sizes above it are errors)
    pool_size: int = 0
    warning: str | None = None


class ImageDataset(ABC):
    """Images on disk (or generated), optionally labelled with the joints of its :attr:`skeleton`."""

    name: ClassVar[str]
    #: split protocols this dataset understands, first is the default
    protocols: ClassVar[tuple[str, ...]] = ("standard",)
    #: bumped when the images or labels this dataset yields change (e.g. a generator's renderer);
    #: when set, cell ids and pretext cache keys include it. None: files on disk, named by root.
    version: ClassVar[int | str | None] = None
    #: whether :meth:`joints` may hold NaN positions (joints without a label: COCO ``v = 0``, MPII's
    #: unannotated ones); the pose task then leaves them out of its loss (metrics never score NaN)
    unknown_joints: ClassVar[bool] = False

    def __init__(self, root: Path | None) -> None:
        self.root = root

    @property
    def skeleton(self) -> Skeleton:
        """The joints :meth:`joints` returns, how they flip, are drawn, tabulated and scored (LSP's 14 by default)."""
        return LSP

    def annotation(self, index: int) -> dict[str, Any]:
        """What a label-needing task gets besides the joints, as keywords of its ``make_sample``:
        ``box`` (x, y, w, h in original pixels: the pose task crops around it instead of the joints'
        extent), ``scale`` (the PCK normaliser of a ``head`` or ``box`` skeleton), ``area`` (the
        object area OKS uses). Empty by default: crop around the joints, torso-normalised PCK."""
        return {}

    @property
    @abstractmethod
    def labelled(self) -> bool:
        """Whether :meth:`joints` is available."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def image(self, index: int) -> np.ndarray:
        """RGB ``uint8`` array of shape (H, W, 3)."""

    @abstractmethod
    def image_id(self, index: int) -> str:
        """A stable name for image *index*, e.g. ``im0001.jpg``."""

    def joints(self, index: int) -> np.ndarray:
        """``float32`` (K, 3) for the K joints of :attr:`skeleton`: x, y in original pixels (NaN: unknown,
        see :attr:`unknown_joints`), visibility (1 = visible, 0 = occluded)."""
        from sslbench.contract.errors import DataError

        raise DataError(f"dataset {self.name!r} at {self.root} has no joint labels")

    @abstractmethod
    def splits(self, protocol: str, train_size: int | None, seed: int) -> Splits:
        """Deterministic split; the train subset depends on *seed* and is nested across sizes."""

    def describe(self) -> dict[str, Any]:
        """Identity of the data for config hashes (name, root, size)."""
        return {"name": self.name, "root": str(self.root) if self.root else None, "size": len(self)}


# ---------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class SampleKey:
    """Identifies one draw of one sample, so every random choice is reproducible.

    ``rng()`` changes every epoch (fresh augmentation); ``rng(per_epoch=False)`` is the
    same for an image in every epoch (for example a fixed set of permutations per image).
    Evaluation samples always use epoch 0.
    """

    seed: int
    index: int
    epoch: int = 0

    def rng(self, per_epoch: bool = True) -> np.random.Generator:
        words = (self.seed, self.index, self.epoch) if per_epoch else (self.seed, self.index)
        return np.random.default_rng(np.random.SeedSequence(list(words)))


@dataclass(frozen=True)
class Geometry:
    """What a task needs to know about the network it feeds."""

    input_size: int
    stride: int

    @property
    def map_size(self) -> int:
        return self.input_size // self.stride


class Metric(ABC):
    """Accumulates over batches, then computes named floats."""

    @abstractmethod
    def update(self, outputs: list[torch.Tensor], batch: dict[str, Any]) -> None: ...

    @abstractmethod
    def compute(self) -> dict[str, float]: ...


class Task(ABC):
    """Something a backbone is trained on: a sample transform, an output size, a loss and a metric.

    Samples are dicts of tensors (collated by the default collate function). Every
    sample has ``image`` (3, S, S) float32 and ``centermap`` (1, S, S) float32; the
    rest is the task's own (targets, labels, geometry for decoding).
    """

    name: ClassVar[str]
    #: whether :meth:`make_sample` needs joints
    needs_labels: ClassVar[bool] = False
    #: metric used for model selection on validation, and whether higher is better
    monitor: ClassVar[str] = "loss"
    monitor_mode: ClassVar[Literal["min", "max"]] = "min"

    @property
    @abstractmethod
    def num_outputs(self) -> int:
        """Number of output maps the backbone must produce for this task."""

    @abstractmethod
    def make_sample(
        self, image: np.ndarray, joints: np.ndarray | None, key: SampleKey, train: bool, geometry: Geometry
    ) -> dict[str, Any]: ...

    def forward(self, net: nn.Module, batch: dict[str, Any]) -> list[torch.Tensor]:
        """The outputs :meth:`loss` is computed from (run under autocast by the training step).

        Plain tasks run the network once on the batch's ``image``; a task whose samples hold
        more (an unlabelled view to predict, say) may run it more often.
        """
        return net(batch["image"], batch.get("centermap"))

    def predict(self, net: nn.Module, batch: dict[str, Any]) -> list[torch.Tensor]:
        """The outputs the metric sees at evaluation (in eval and inference mode): by default the
        network on the batch's ``image``; a task whose metric compares its own embeddings (two
        views, say) returns those."""
        return net(batch["image"], batch.get("centermap"))

    # -- the task's own trainable parts --------------------------------------------------
    #: the modules :meth:`build_parts` made for the current training (None: the task has none)
    parts: nn.Module | None = None

    def build_parts(self, backbone: Backbone) -> nn.Module | None:
        """Make fresh trainable parts of the task's own for *backbone*, keep them as :attr:`parts`
        and return them: projection and prediction heads, a momentum encoder, a queue.

        :func:`sslbench.training.loop.fit` calls this once before it makes the optimiser (after
        seeding, so initial weights are reproducible) and then: moves the parts to the
        training device, switches them between train and eval mode with the backbone,
        optimises their parameters that require gradients alongside the backbone's,
        calls :meth:`after_step` after every optimiser step, and saves every parameter
        and buffer of the parts (persistent or not, so a queue is kept) beside the
        weights of the run's ``last`` and ``best`` checkpoints (their extra tensors), so
        a resumed run continues exactly and the best epoch's parts come back with its
        weights. They are never among the weights themselves, which are all that the
        pretext cache stores and a transfer policy reads (backbone layer groups only).
        Under torch.distributed, fit refuses a task with parts. Buffers a task updates
        itself (a queue) must change only in training mode.
        """
        self.parts = None
        return None

    def after_step(self, step: int, total_steps: int) -> None:
        """Called by the training step after every optimiser step, *step* counting from 0 over the
        whole run of *total_steps*: for momentum (EMA) updates of a target network."""

    @abstractmethod
    def loss(self, outputs: list[torch.Tensor], batch: dict[str, Any]) -> torch.Tensor: ...

    @abstractmethod
    def new_metric(self) -> Metric: ...

    def config(self) -> dict[str, Any]:
        """Everything that determines this task's samples and loss (hashed for caches)."""
        return {"name": self.name}


class Pretext(Task):
    """A self-supervised task: pseudo-labels made from unlabelled images."""

    #: ``False`` only for ``none``: no pretraining at all (the supervised baseline)
    trains: ClassVar[bool] = True


# ----------------------------------------------------------------------------- strategies


class Strategy(ABC):
    """How one benchmark cell uses unlabelled images: how its pose network starts, and what the
    pose phase trains on.

    The runner (:func:`sslbench.experiment.runner.run_cell`) opens the labelled data, then calls
    :meth:`initialise` and :meth:`train` with a :class:`sslbench.experiment.strategies.Cell`, then evaluates
    the returned network on the test split once. :class:`sslbench.experiment.strategies.Cell` holds the
    steps strategies share (random initialisation, pretraining + transfer, the labelled train
    and validation sets, the one training loop), so a strategy is only what it does differently.
    """

    name: ClassVar[str]
    #: whether the cell's pretext fields (``pretext``, ``policy``, ``pretrain``, ...) take part:
    #: when False a sweep gives them the profile's values and reports pair on none of them
    uses_pretraining: ClassVar[bool] = True
    #: whether the cell's unlabelled pose-phase pool (``unlabelled_data``, ``unlabelled_root``) takes part
    uses_unlabelled: ClassVar[bool] = False

    def validate(self, config: Any, registry: Any) -> None:
        """Raise :class:`sslbench.contract.errors.ConfigError` when *config* (a RunConfig) makes no sense for
        this strategy; *registry* resolves the plugins it names."""

    def options(self, config: Any) -> dict[str, Any]:
        """The strategy's options from ``config.strategy_options``, checked, with defaults filled in."""
        if config.strategy_options:
            from sslbench.contract.errors import ConfigError

            raise ConfigError(
                f"strategy {self.name} takes no options, got {', '.join(sorted(config.strategy_options))}"
            )
        return {}

    def cost(self, config: Any) -> float:
        """Time of the pose phase as a multiple of training on the labelled budget alone (for
        sweep time estimates)."""
        return 1.0

    @abstractmethod
    def label(self, config: Any) -> str:
        """The row label of result tables, e.g. ``supervised`` or ``rotation/first+middle:frozen``."""

    def initialise(self, cell: Any) -> Backbone:
        """The pose network before pose training: by default a random initialisation, or the
        pretext pretraining transferred by the policy when the config names one."""
        return cell.initial_network()

    def train(self, cell: Any, model: Backbone) -> Any:
        """Train *model* for pose in place; return the :class:`sslbench.training.loop.FitResult` whose best
        validation epoch is loaded. By default: the labelled budget only."""
        return cell.fit_labelled(model)
