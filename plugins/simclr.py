"""``simclr``: contrastive learning of two views with the NT-Xent loss (Chen et al., ICML 2020).

Both views of an image (:class:`sslbench.tasks.embedding.TwoViews`) go through the backbone and a
projection head; the NT-Xent loss pulls each view's embedding towards its pair and away from
the other 2B - 2 embeddings of the batch. From lightly: ``SimCLRProjectionHead`` (2 layers,
batch norm) and ``NTXentLoss``. Options: those of :class:`~sslbench.tasks.embedding.JointEmbedding`
and ``temperature`` (lightly's default 0.5). Metric: ``retrieval`` (percent; chance
``retrieval_chance``) and ``loss``.
"""

from __future__ import annotations

from typing import Any

from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import nn

from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.networks import Backbone
from sslbench.contract.registry import Entry
from sslbench.tasks.embedding import JointEmbedding
from sslbench.tasks.pretexts import option_float, pretext_entry


class SimCLR(JointEmbedding):
    """Two views, one encoder, NT-Xent over the batch."""

    name = "simclr"

    def __init__(self, temperature: float = 0.5, **options: Any) -> None:
        super().__init__(**options)
        self.temperature = option_float(self.name, "temperature", temperature, 0.0, 10.0, open_low=True)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "temperature": self.temperature}

    def make_parts(self, backbone: Backbone, channels: int) -> nn.Module:
        return nn.ModuleDict({
            "projection": SimCLRProjectionHead(channels, self.hidden_dim, self.output_dim),
            "criterion": NTXentLoss(temperature=self.temperature),
        })  # fmt: skip


@hookimpl
def sslbench_pretexts() -> list[Entry]:
    return [pretext_entry(SimCLR, "SimCLR: NT-Xent between two augmented views (Chen et al. 2020), lightly's head and "
                                  "loss; options: temperature, layers, min_scale, cj_strength, hidden_dim, "
                                  "output_dim")]  # fmt: skip
