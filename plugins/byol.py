"""``byol``: bootstrap your own latent, no negatives (Grill et al., NeurIPS 2020).

The online network (backbone, projection, prediction head) predicts the target network's
projection of the other view; the target is a momentum copy of the online backbone and
projection. Symmetrised negative cosine similarity. From lightly: ``BYOLProjectionHead``,
``BYOLPredictionHead``, ``NegativeCosineSimilarity``, ``update_momentum`` and
``cosine_schedule`` (momentum from ``momentum`` to 1, as BYOL). Options: those of
:class:`~sslbench.tasks.embedding.JointEmbedding` and ``momentum`` (0.99). Metric: ``retrieval``
(the online prediction of view 0 against the target projections of view 1) and ``loss``.
"""

from __future__ import annotations

from typing import Any

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from torch import nn

from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.networks import Backbone
from sslbench.contract.registry import Entry
from sslbench.tasks.embedding import MomentumEmbedding
from sslbench.tasks.pretexts import pretext_entry


class BYOL(MomentumEmbedding):
    """Online predictor against a momentum target, both views each way."""

    name = "byol"

    def make_parts(self, backbone: Backbone, channels: int) -> nn.Module:
        projection = BYOLProjectionHead(channels, self.hidden_dim, self.output_dim)
        return nn.ModuleDict({
            "projection": projection,
            "prediction": BYOLPredictionHead(self.output_dim, self.hidden_dim, self.output_dim),
            "target_backbone": self.momentum_copy(backbone),
            "target_projection": self.momentum_copy(projection),
            "criterion": NegativeCosineSimilarity(),
        })  # fmt: skip

    def embed(self, net: nn.Module, batch: dict[str, Any]) -> list[torch.Tensor]:
        """[prediction of view 0, target of view 1, prediction of view 1, target of view 0]."""
        both = torch.cat([batch["image"], batch["view1"]])
        predicted = self.parts["prediction"](self.parts["projection"](self.pooled(net, both))).float()
        with torch.no_grad():
            target = self.parts["target_projection"](self.target_pooled(both)).float()
        p0, p1 = predicted.chunk(2)
        t0, t1 = target.chunk(2)
        return [p0, t1, p1, t0]

    def loss(self, outputs: list[torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        criterion = self.parts["criterion"]
        return 0.5 * (criterion(outputs[0], outputs[1]) + criterion(outputs[2], outputs[3]))


@hookimpl
def sslbench_pretexts() -> list[Entry]:
    return [pretext_entry(BYOL, "BYOL: predict a momentum target's projection of the other view, no negatives (Grill "
                                "et al. 2020), lightly's heads, loss and momentum update; options: momentum, layers, "
                                "min_scale, cj_strength, hidden_dim, output_dim")]  # fmt: skip
