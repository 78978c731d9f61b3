"""``moco``: MoCo v2, contrast against a momentum encoder and a queue (He et al. 2020; Chen et al. 2020).

View 0 goes through the backbone and a projection head (the query), view 1 through their
momentum copies (the key, no gradient); the NT-Xent loss contrasts each query with its key
against a queue of ``queue`` keys of earlier batches: the standard answer to small batches.
From lightly: ``MoCoProjectionHead``, ``NTXentLoss`` with its memory bank (the queue, kept
in the run's checkpoints), ``update_momentum`` and ``cosine_schedule`` (momentum from
``momentum`` to 1). Options: those of :class:`~sslbench.tasks.embedding.JointEmbedding`,
``momentum`` (0.99), ``temperature`` (MoCo v2's 0.2), ``queue`` (4096). Metric: ``retrieval``
(query of view 0 against the keys of view 1 in the batch) and ``loss``.
"""

from __future__ import annotations

from typing import Any

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from torch import nn

from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.networks import Backbone
from sslbench.contract.registry import Entry
from sslbench.tasks.embedding import MomentumEmbedding
from sslbench.tasks.pretexts import option_float, option_int, pretext_entry


class MoCo(MomentumEmbedding):
    """Query encoder, momentum key encoder, a queue of negatives."""

    name = "moco"
    #: MoCo v2 crops at scale [0.2, 1]
    min_scale_default = 0.2

    def __init__(self, temperature: float = 0.2, queue: int = 4096, **options: Any) -> None:
        super().__init__(**options)
        self.temperature = option_float(self.name, "temperature", temperature, 0.0, 10.0, open_low=True)
        self.queue = option_int(self.name, "queue", queue, 1, 1 << 20)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "temperature": self.temperature, "queue": self.queue}

    def make_parts(self, backbone: Backbone, channels: int) -> nn.Module:
        projection = MoCoProjectionHead(channels, self.hidden_dim, self.output_dim)
        return nn.ModuleDict({
            "projection": projection,
            "target_backbone": self.momentum_copy(backbone),
            "target_projection": self.momentum_copy(projection),
            "criterion": NTXentLoss(temperature=self.temperature, memory_bank_size=(self.queue, self.output_dim)),
        })  # fmt: skip

    def embed(self, net: nn.Module, batch: dict[str, Any]) -> list[torch.Tensor]:
        """[query of view 0, key of view 1]; the loss (the parts' criterion) contrasts them against the
        queue, which takes the keys in training only (lightly updates its bank when the query has a gradient)."""
        query = self.parts["projection"](self.pooled(net, batch["image"]))
        with torch.no_grad():
            key = self.parts["target_projection"](self.target_pooled(batch["view1"]))
        return [query.float(), key.float()]


@hookimpl
def sslbench_pretexts() -> list[Entry]:
    return [pretext_entry(MoCo, "MoCo v2: momentum encoder and a queue of negatives (He et al. 2020), lightly's head, "
                                "loss, memory bank and momentum update; options: momentum, temperature, queue, layers, "
                                "min_scale, cj_strength, hidden_dim, output_dim")]  # fmt: skip
