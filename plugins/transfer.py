"""``transfer``: pretrain on a pretext over the unlabelled pool, transfer layer groups, train for pose.

The report this project grew out of compares exactly this: a pretext pretraining (cached by
its configuration, shared by every cell that needs the same one), the layer groups a transfer
policy picks copied into a fresh pose network (frozen or fine-tuned, ``transfer_lr``), then
pose training on the labelled budget. Rows are named ``pretext/policy`` plus ``:frozen``.
"""

from __future__ import annotations

from typing import Any

from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.interfaces import Strategy
from sslbench.contract.registry import Entry, Registry
from sslbench.experiment.strategies import check_transfer_pair, transfer_label


class Transfer(Strategy):
    """Pretext pretraining transferred by a policy, then the labelled budget only."""

    name = "transfer"

    def validate(self, config: Any, registry: Registry) -> None:
        check_transfer_pair(config, registry, required=True)

    def label(self, config: Any) -> str:
        return transfer_label(config)


@hookimpl
def sslbench_strategies() -> list[Entry]:
    return [
        Entry("transfer", "pretext pretraining on the unlabelled pool, layers transferred by the policy", Transfer)
    ]
