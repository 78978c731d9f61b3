"""Transfer policies: which layer groups of a pretrained backbone initialise the pose network.

Policies speak only about layer-group *roles* (``first``, ``middle``, ``later``, see
:class:`sslbench.contract.networks.LayerGroup`), never about one network's layer names, so they
apply to every backbone: for the CPM ``first`` is stage 1 and ``middle`` the shared
image trunk of stages >= 2; for the timm backbone they are its stem and blocks. Task
adapters (layers whose shape depends on the number of outputs) are never in a group
and never transferred.

Whether the transferred layers are frozen or fine-tuned is the run's ``freeze`` setting
(``--freeze``, or a ``:frozen`` suffix: ``--policy first+middle:frozen``; see
:func:`sslbench.experiment.transfer.parse_policy`).
"""

from __future__ import annotations

from typing import ClassVar

from sslbench.contract.errors import ConfigError
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.networks import LayerGroup, LayerRole, TransferPolicy
from sslbench.contract.registry import Entry


class RolePolicy(TransferPolicy):
    """Transfer every group whose role is in :attr:`roles`."""

    name: ClassVar[str]
    roles: ClassVar[frozenset[LayerRole]]

    def select(self, groups: list[LayerGroup]) -> list[LayerGroup]:
        return [group for group in groups if group.role in self.roles]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class AllPolicy(RolePolicy):
    """Every layer group: all layers except the task adapters (the report's sec. 4.2)."""

    name = "all"
    roles = frozenset({"first", "middle", "later"})


class FirstPolicy(RolePolicy):
    """Groups with role ``first``: the CPM's stage 1 without its output layer (sec. 4.3)."""

    name = "first"
    roles = frozenset({"first"})


class FirstMiddlePolicy(RolePolicy):
    """Roles ``first`` and ``middle``: stage 1 and the shared trunk of stages >= 2 (sec. 4.4)."""

    name = "first+middle"
    roles = frozenset({"first", "middle"})


class AllWithAdaptersPolicy(RolePolicy):
    """Every layer group and the task adapters too: the whole network, for a pretext whose outputs have the
    task's shape (``equivariance`` with 15 landmarks); refused when the adapters' shapes differ."""

    name = "all+adapters"
    roles = AllPolicy.roles
    includes_adapters = True


class NoTransferPolicy(RolePolicy):
    """Nothing: the pose network keeps its random initialisation."""

    name = "none"
    roles = frozenset()


POLICIES: tuple[type[RolePolicy], ...] = (
    AllPolicy,
    AllWithAdaptersPolicy,
    FirstPolicy,
    FirstMiddlePolicy,
    NoTransferPolicy,
)


def _factory(cls: type[RolePolicy]):
    def factory(**options: object) -> RolePolicy:
        if options:
            raise ConfigError(f"policy {cls.name} takes no options, got {', '.join(sorted(options))}")
        return cls()

    return factory


@hookimpl
def sslbench_policies() -> list[Entry]:
    descriptions = {
        "all": "transfer every layer group except the task adapters (report sec. 4.2)",
        "all+adapters": "transfer every layer group and the task adapters (a pretext with as many output maps "
        "as the task, e.g. equivariance with 15 landmarks)",
        "first": "transfer the first group only (CPM stage 1; report sec. 4.3)",
        "first+middle": "transfer the first and middle groups (CPM stage 1 + shared trunk; report sec. 4.4)",
        "none": "transfer nothing: random initialisation",
    }
    return [Entry(cls.name, descriptions[cls.name], _factory(cls)) for cls in POLICIES]
