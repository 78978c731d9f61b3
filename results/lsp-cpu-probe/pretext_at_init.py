"""Held-out pretext metrics of a network at initialisation, and of the trivial predictor, on the 500 held-out
LSP-extended images: what the short pretrainings of README.md are measured against.

    OMP_NUM_THREADS=1 python results/lsp-cpu-probe/pretext_at_init.py inpaint spark equivariance

Each pretext gets the cpu profile's network, initialised like its pretraining (seed 0, the pretext's number of
outputs), evaluated exactly as a pretraining's held-out metric is (sslbench.training.steps.evaluate on the held-out
split). ``trivial``: inpaint predicting 0 everywhere (the mean colour), spark predicting every patch's own mean
(0 in per-patch normalised units), equivariance mapping every landmark to the centre of both views.
Each pretext at its defaults: pretext-at-init.json's equivariance entry is of the first defaults (temperature
1, concentration 1; README section 3).
"""

from __future__ import annotations

import json
import sys

import torch

from sslbench.contract.interfaces import Geometry
from sslbench.contract.registry import default_registry
from sslbench.experiment.phases import build_backbone, open_dataset, train_and_val
from sslbench.profiles import profile_config
from sslbench.training.steps import evaluate


def at_init(name: str) -> dict[str, float]:
    config = profile_config("cpu")
    config.pretrain.precision = "fp32"
    config.pretext, config.pretext_data, config.pretext_root = name, "lspet", "../shared/data/lspet"
    registry = default_registry()
    pretext = registry.create("pretext", name, "--pretext")
    pool = open_dataset(registry, config.pretext_data, config.pretext_root, {}, "--pretext-data")
    splits = pool.splits("standard", None, 0)
    torch.manual_seed(0)
    model = build_backbone(registry, config, pretext.num_outputs)
    geometry = Geometry(model.input_size, model.stride)
    _, held_out = train_and_val(pool, splits, pretext, geometry, 0, config.pretrain)
    result = {"held_out_images": len(held_out), **evaluate(model, pretext, held_out, config.pretrain)}

    class Trivial(torch.nn.Module):  # the same outputs for every image
        def __init__(self) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))

        def forward(self, image: torch.Tensor, centermap: torch.Tensor | None = None) -> list[torch.Tensor]:
            m = model.map_size
            return [torch.zeros(image.shape[0], pretext.num_outputs, m, m) + self.anchor]

        def layer_groups(self) -> list:  # no encoder for spark to re-mask
            return []

    trivial = evaluate(Trivial(), pretext, held_out, config.pretrain)
    result.update({f"trivial.{key}": value for key, value in trivial.items()})
    return result


if __name__ == "__main__":
    print(json.dumps({name: at_init(name) for name in sys.argv[1:]}, indent=2))
