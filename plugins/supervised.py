"""The supervised baseline: strategy ``supervised`` and its pretext ``none``.

The pose network starts from random initialisation and trains on the labelled images
only. Pretext ``none`` means "no pretraining": :attr:`Pretext.trains` is False and the
runner never asks it for samples; if anything does, it gets a clear error instead of a
silent dummy task.
"""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np
import torch

from sslbench.contract.errors import ConfigError
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.interfaces import Geometry, Metric, Pretext, SampleKey, Strategy
from sslbench.contract.registry import Entry, Registry
from sslbench.experiment.strategies import check_transfer_pair, pretrains
from sslbench.tasks.pretexts import pretext_entry


def _does_not_train(what: str) -> NoReturn:
    raise ConfigError(f"pretext none does not train (asked for its {what}); it means: no pretraining")


class NoPretext(Pretext):
    """No pretraining: ``trains`` is False and every training method raises ConfigError."""

    name = "none"
    trains = False

    @property
    def num_outputs(self) -> int:
        _does_not_train("number of outputs")

    def make_sample(
        self, image: np.ndarray, joints: np.ndarray | None, key: SampleKey, train: bool, geometry: Geometry
    ) -> dict[str, Any]:
        _does_not_train("samples")

    def loss(self, outputs: list[torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        _does_not_train("loss")

    def new_metric(self) -> Metric:
        _does_not_train("metric")

    def config(self) -> dict[str, Any]:
        return {"name": self.name}


class Supervised(Strategy):
    """Random initialisation, the labelled budget only: what every other strategy is compared with."""

    name = "supervised"
    uses_pretraining = False

    def validate(self, config: Any, registry: Registry) -> None:
        check_transfer_pair(config, registry, required=False)
        if pretrains(config, registry):
            raise ConfigError(
                f"strategy supervised trains from scratch, but --pretext is {config.pretext} "
                "(use --pretext none --policy none, or strategy transfer)"
            )

    def label(self, config: Any) -> str:
        return "supervised"


@hookimpl
def sslbench_strategies() -> list[Entry]:
    return [Entry("supervised", "random initialisation, trained on the labelled budget only (the baseline)", Supervised)]


@hookimpl
def sslbench_pretexts() -> list[Entry]:
    return [pretext_entry(NoPretext, "no pretraining: the supervised baseline, trained from random initialisation")]
