"""Sweep plans: a spec expanded into benchmark cells, pruned, ordered and sharded.

Pairs that make no sense (a transfer policy without pretraining, a pretext whose weights no
policy uses) are pruned and listed. Cells are ordered so that cells sharing a pretext
pretraining are adjacent: the runner's pretext cache trains it once. ``--shard I/N`` splits
the plan between machines on shared storage.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sslbench.contract.config import RunConfig, config_hash
from sslbench.contract.errors import ConfigError, SSLBenchError
from sslbench.contract.errors import did_you_mean as _hint
from sslbench.contract.registry import Registry
from sslbench.experiment import strategies
from sslbench.experiment.phases import open_dataset
from sslbench.experiment.spec import Override, SweepSpec
from sslbench.experiment.transfer import check_adapter_maps, parse_policy
from sslbench.overrides import check_setting, set_path
from sslbench.profiles import profile_config
from sslbench.tasks.semi import pose_task_for

# ---------------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    """One benchmark cell: a full run config and its id (the config hash)."""

    cell_id: str
    config: RunConfig
    #: the row label of its strategy (:func:`sslbench.experiment.strategies.label`)
    row: str
    #: whether it needs a pretext pretraining
    pretrains: bool = False

    @classmethod
    def of(cls, config: RunConfig, registry: Registry) -> "Cell":
        return cls(config.cell_id, config, strategies.label(config, registry), strategies.pretrains(config, registry))

    @property
    def pretrain_key(self) -> str | None:
        """Hash of the pretext pretraining this cell needs (None when it needs none)."""
        return config_hash(self.config.pretext_key()) if self.pretrains else None

    @property
    def label(self) -> str:
        c = self.config
        size = "all" if c.train_size is None else c.train_size
        return f"{self.row} · {c.backbone} · n={size} · seed {c.seed}"


@dataclass
class Plan:
    """The cells of a sweep, in run order, and the combinations pruned from its product."""

    name: str
    cells: list[Cell]
    #: (combination, reason) of every pruned pretext x policy pair
    pruned: list[tuple[str, str]] = field(default_factory=list)
    description: str = ""

    def pretrainings(self) -> dict[str, list[Cell]]:
        """Pretraining key -> the cells sharing it, in run order."""
        groups: dict[str, list[Cell]] = {}
        for cell in self.cells:
            if cell.pretrain_key is not None:
                groups.setdefault(cell.pretrain_key, []).append(cell)
        return groups


def split_policy(text: str, where: str = "--policies") -> tuple[str, bool]:
    """``"first+middle:frozen"`` -> ``("first+middle", True)``, the spellings of ``run --policy``."""
    try:
        return parse_policy(text)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {str(exc).removeprefix('--policy ')}") from None


def _apply_override(config: RunConfig, override: Override) -> RunConfig:
    check_setting(override.path, override.value, override.origin)  # the same check as `run --set`
    try:
        return set_path(config, list(override.path), override.value, override.origin)
    except ConfigError as exc:
        raise ConfigError(f"{override.origin}: {exc}") from None


def expand(spec: SweepSpec, registry: Registry) -> Plan:
    """All sensible cells of *spec*, validated against the installed plugins, in run order.

    Supervised cells take the profile's pretext settings (they train no pretext), so
    sweeps that differ only in their pretraining share the same baseline cells.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", spec.name):
        raise ConfigError(
            f"{spec.where('name')}: {spec.name!r} is not a usable directory name (letters, digits, . _ + -)"
        )
    profile = profile_config(spec.profile)
    base = profile
    for override in spec.overrides:
        base = _apply_override(base, override)

    backbones = spec.backbones or [base.backbone]
    policies = [(text, *split_policy(text, spec.where("policies", value=text))) for text in spec.policies]
    train_sizes = spec.train_sizes or [base.train_size]
    seeds = spec.seeds or [base.seed]
    # the options the profile gives each backbone (a CPM's width and norm are not a timm backbone's), then [set]
    backbone_options = {}
    for name in backbones:
        config = profile_config(spec.profile, name)
        for override in spec.overrides:
            config = _apply_override(config, override)
        backbone_options[name] = config.backbone_options
    data = spec.data or base.data
    pretext_data = spec.pretext_data or base.pretext_data

    for name in backbones:
        registry.get("backbone", name, spec.where("backbones", value=name))
    strategy_names: list[str | None] = list(spec.strategies) if spec.strategies else [None]
    for name in spec.strategies or []:
        try:
            registry.get("strategy", name, spec.where("strategies", value=name))
        except ConfigError as exc:
            if "/" in name or name in registry.names("pretext"):  # a row label, as specs wrote before
                raise ConfigError(
                    f"{spec.where('strategies', value=name)}: {name!r} is a row label, and `strategies` names "
                    f"strategy plugins ({', '.join(registry.names('strategy'))}); to keep only some rows of the "
                    "product write `rows = [...]`"
                ) from None
            raise exc
    for name in spec.pretexts:
        registry.get("pretext", name, spec.where("pretexts", value=name))
    for _, name, _ in policies:
        registry.get("policy", name, spec.where("policies", value=name))
    registry.get("dataset", data, spec.where("data"))
    if spec.unlabelled_data:
        registry.get("dataset", spec.unlabelled_data, spec.where("unlabelled_data"))
    for kind, tables in (("backbone", spec.backbone_options), ("pretext", spec.pretext_options),
                         ("strategy", spec.strategy_options)):  # fmt: skip
        for name in tables:
            registry.get(kind, name, spec.where(f"{kind}_options", name))
    trains = {name: registry.get("pretext", name).factory().trains for name in spec.pretexts}
    if any(trains.values()):
        registry.get("dataset", pretext_data, spec.where("pretext_data"))
    for name in spec.pretexts:  # options are checked by building the task: cheap, and fails in a second
        if trains[name]:
            options = {**base.pretext_options, **spec.pretext_options.get(name, {})}
            where = (
                spec.where("pretext_options", name)
                if name in spec.pretext_options
                else spec.where("pretexts", value=name)
            )
            try:
                registry.create("pretext", name, where, **options)
            except TypeError as exc:
                raise ConfigError(f"{where}: pretext {name!r} does not accept options {options}: {exc}") from None
            except SSLBenchError as exc:
                raise ConfigError(f"{where}: {exc}") from None

    from sslbench.training.device import resolve_precision  # late: torch

    pruned: dict[str, str] = {}
    cells: dict[str, Cell] = {}
    pose_maps: dict[str, int | None] = {}
    profile_fields = profile.to_dict()
    command_line = [override for override in spec.overrides if override.command_line]
    for backbone, strategy_name, pretext, (text, policy, freeze), size, seed in itertools.product(
        backbones, strategy_names, spec.pretexts, policies, train_sizes, seeds
    ):
        combination = f"pretext {pretext} x policy {text}" + (f" x strategy {strategy_name}" if spec.strategies else "")
        fields = base.to_dict()
        fields.update(backbone=backbone, pretext=pretext, policy=policy, freeze=freeze, train_size=size, seed=seed)
        fields.update(data=data, pretext_data=pretext_data, strategy=strategy_name)
        for key in ("root", "protocol", "pretext_root", "unlabelled_data", "unlabelled_root"):
            if getattr(spec, key) is not None:
                fields[key] = getattr(spec, key)
        fields["backbone_options"] = {**backbone_options[backbone], **spec.backbone_options.get(backbone, {})}
        fields["pretext_options"] = {**base.pretext_options, **spec.pretext_options.get(pretext, {})}
        name = RunConfig(pretext=pretext, strategy=strategy_name).strategy_name
        fields["strategy_options"] = {**base.strategy_options, **spec.strategy_options.get(name, {})}
        config = RunConfig.from_dict(fields)
        for override in command_line:  # the command line has the last word over the spec's tables
            config = _apply_override(config, override)
        fields = config.to_dict()
        try:
            strategy = strategies.strategy_of(config, registry)
        except ConfigError as exc:
            if "option" in str(exc) and name in spec.strategy_options:  # the options themselves are wrong
                raise ConfigError(f"{spec.where('strategy_options', strategy_name)}: {exc}") from None
            pruned.setdefault(combination, str(exc))
            continue
        if trains[pretext]:
            try:  # a policy that copies the task adapters and a pretext of another map count: no cell
                _check_adapter_maps(config, registry, pose_maps)
            except ConfigError as exc:
                pruned.setdefault(combination, str(exc))
                continue
        # what a cell does not use takes the profile's value, so cells that differ only there are one cell
        unused = []
        if not trains[pretext]:
            unused += ["pretext_options", "pretext_data", "pretext_root", "pretext_images", "pretrain",
                       "pretrain_seed", "pretext_data_options"]  # fmt: skip
        if not trains[pretext] or freeze:  # transfer_lr scales fine-tuned transferred layers; these have none
            unused.append("transfer_lr")
        if not strategy.uses_unlabelled:
            unused += ["unlabelled_data", "unlabelled_root", "unlabelled_data_options"]
        fields.update({key: profile_fields[key] for key in unused})
        config = RunConfig.from_dict(fields)
        try:
            config.validate()
            config = resolve_precision(config)  # precision auto -> bf16/fp32 here: the id the runner will record
            cell = Cell.of(config, registry)
        except ConfigError as exc:
            raise ConfigError(f"sweep {spec.name}, cell {combination}: {exc}") from None
        if spec.rows is not None and cell.row not in spec.rows:
            pruned.setdefault(combination, "not in the spec's rows")
            continue
        cells.setdefault(cell.cell_id, cell)
    kept = {cell.row for cell in cells.values()}
    narrowed = any(
        axis in spec.from_cli for axis in ("pretexts", "policies", "strategies")
    )  # a subset run from the CLI
    for row in [] if narrowed else spec.rows or []:
        if row not in kept:
            raise ConfigError(f"{spec.where('rows', value=row)}: row {row!r} matches no cell "
                              f"of the product.{_hint(row, kept)}")  # fmt: skip
    if not cells:
        reasons = "; ".join(f"{combination}: {reason}" for combination, reason in pruned.items())
        raise ConfigError(f"sweep {spec.name} has no cells, every pretext x policy pair was pruned ({reasons})")
    ordered = order_cells(cells.values(), backbones, spec.pretexts, [text for text, *_ in policies])
    return Plan(spec.name, ordered, list(pruned.items()), spec.description)


def _check_adapter_maps(config: RunConfig, registry: Registry, pose_maps: dict[str, int | None]) -> None:
    """:func:`~sslbench.experiment.transfer.check_adapter_maps` at plan time, before any pretraining. The pose
    task's map count comes from the labelled dataset (opened once per dataset, into *pose_maps*); one that
    cannot be opened is left to the run, which says why."""
    policy = registry.create("policy", config.policy, "--policy")
    if not policy.includes_adapters:
        return
    key = json.dumps([config.data, config.root, config.data_options], sort_keys=True, default=str)
    if key not in pose_maps:
        try:
            data = open_dataset(registry, config.data, config.root, config.data_options, "--data")
            pose_maps[key] = pose_task_for(data).num_outputs
        except (SSLBenchError, OSError):
            pose_maps[key] = None
    task_maps = pose_maps[key]
    if task_maps is not None:
        pretext = registry.create("pretext", config.pretext, "--pretext", **config.pretext_options)
        check_adapter_maps(policy, config.pretext, pretext.num_outputs, task_maps)


def order_cells(
    cells: Iterable[Cell], backbones: Sequence[str] = (), pretexts: Sequence[str] = (), policies: Sequence[str] = ()
) -> list[Cell]:
    """Run order: seed by seed, supervised first, then one pretext pretraining after another.

    Cells sharing a pretraining are adjacent, so it is trained once and reused while cached.
    """

    def rank(sequence: Sequence[str], name: str) -> int:
        return sequence.index(name) if name in sequence else len(sequence)

    def key(cell: Cell) -> tuple:
        c = cell.config
        policy = f"{c.policy}{':frozen' if c.freeze else ''}"
        return (
            c.seed, rank(backbones, c.backbone), c.backbone, cell.pretrains, rank(pretexts, c.pretext),
            c.pretext, cell.pretrain_key or "", rank(policies, policy), policy,
            c.train_size is None, c.train_size or 0, cell.cell_id,
        )  # fmt: skip

    return sorted(cells, key=key)


# --------------------------------------------------------------------------------- shards


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> (2, 4): the second of four shards (counted from 1)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise ConfigError(f"--shard {text!r}: expected I/N, e.g. 1/4 (shards count from 1)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(f"--shard {text!r}: need 1 <= I <= N")
    return index, count


def shard_cells(cells: Sequence[Cell], index: int, count: int) -> list[Cell]:
    """The cells of shard *index* of *count* (from 1): disjoint shards that together cover *cells*.

    Deterministic: it depends only on the set of cell ids. Cells sharing a pretext
    pretraining go to the same shard (so no pretraining runs on two machines); units
    are dealt largest first to the least loaded shard, ties broken by sorted cell id.
    """
    if not 1 <= index <= count:
        raise ConfigError(f"--shard {index}/{count}: need 1 <= I <= N")
    units: dict[str, list[str]] = {}
    for cell in cells:
        units.setdefault(cell.pretrain_key or f"cell:{cell.cell_id}", []).append(cell.cell_id)
    loads = [0] * count
    mine: set[str] = set()
    for ids in sorted(units.values(), key=lambda ids: (-len(ids), min(ids))):
        target = min(range(count), key=lambda i: (loads[i], i))
        loads[target] += len(ids)
        if target == index - 1:
            mine.update(ids)
    return [cell for cell in cells if cell.cell_id in mine]
