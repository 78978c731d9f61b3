"""``vicreg``: variance-invariance-covariance regularisation (Bardes et al., ICLR 2022).

Both views through the backbone and an expander (projection head); the loss asks the two
embeddings to agree (invariance), every dimension to keep a standard deviation of at least 1
over the batch (variance) and the dimensions to be uncorrelated (covariance): no negatives,
no momentum. From lightly: ``VICRegProjectionHead`` (3 layers) and ``VICRegLoss`` (weights
25, 25, 1). Options: those of :class:`~sslbench.tasks.embedding.JointEmbedding` (``output_dim``
512 here). Metric: ``retrieval`` and ``loss``.
"""

from __future__ import annotations

from typing import Any

from lightly.loss import VICRegLoss
from lightly.models.modules.heads import VICRegProjectionHead
from torch import nn

from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.networks import Backbone
from sslbench.contract.registry import Entry
from sslbench.tasks.embedding import JointEmbedding
from sslbench.tasks.pretexts import pretext_entry


class VICReg(JointEmbedding):
    """Two views, one encoder and expander, the VICReg loss."""

    name = "vicreg"

    def __init__(self, output_dim: int = 512, **options: Any) -> None:
        super().__init__(output_dim=output_dim, **options)

    def make_parts(self, backbone: Backbone, channels: int) -> nn.Module:
        return nn.ModuleDict({
            "projection": VICRegProjectionHead(channels, self.hidden_dim, self.output_dim),
            "criterion": VICRegLoss(),
        })  # fmt: skip


@hookimpl
def sslbench_pretexts() -> list[Entry]:
    return [pretext_entry(VICReg, "VICReg: invariance, variance and covariance terms on two views (Bardes et al. "
                                  "2022), lightly's expander and loss; options: layers, min_scale, cj_strength, "
                                  "hidden_dim, output_dim")]  # fmt: skip
