"""Sweeps: many benchmark cells from one spec, run resumably into a results directory.

A sweep is the cartesian product backbones x pretexts x policies (with modes) x train
sizes x seeds, written on the command line or in a TOML spec (``benchmarks/*.toml``)::

    name = "example-synthetic"
    profile = "smoke"
    pretexts = ["none", "jigsaw-heatmap"]
    policies = ["none", "first", "first+middle:frozen"]
    train_sizes = [8, 16]
    seeds = [0, 1]
    [set]                      # any RunConfig setting, applied to every cell
    downstream.epochs = 3
    [pretext_options.jigsaw-heatmap]   # options for one pretext only
    tile_crop = true

Pairs that make no sense (a transfer policy without pretraining, a pretext whose
weights no policy uses) are pruned and listed. Cells are ordered so that cells
sharing a pretext pretraining are adjacent: the runner's pretext cache trains it once.

Running a sweep again skips finished cells and resumes unfinished ones from their last
epoch. Each cell is claimed with an OS file lock while it runs, so several sweeps (or
``--shard`` machines on shared storage) can write into one results directory.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import re
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import tomllib
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

from sslbench import strategies
from sslbench.config import RunConfig, TrainSettings, check_setting, config_hash, set_path, setting_types
from sslbench.errors import ConfigError, SSLBenchError
from sslbench.errors import did_you_mean as _hint
from sslbench.joints import NUM_JOINTS
from sslbench.profiles import profile_config
from sslbench.registry import Registry
from sslbench.results import SCHEMA, ResultsStore, Warn, iter_records
from sslbench.transfer import parse_policy

#: a runner trains one cell and returns its result record (see :func:`sslbench.runner.run_cell`)
Runner = Callable[..., dict]

#: environment variable read by the training code: cap on data-loader worker processes
LOADER_WORKERS_ENV = "SSLBENCH_MAX_LOADER_WORKERS"

#: top-level keys of a sweep spec and what they mean (unknown keys get a "did you mean")
SPEC_KEYS: dict[str, str] = {
    "name": "sweep name; results go to ./results/<name>/",
    "description": "free text",
    "profile": "paper | cpu | demo | smoke",
    "backbones": "backbone plugin names",
    "pretexts": "pretext plugin names (none: supervised)",
    "policies": "transfer policies, ':frozen' suffix freezes (none: supervised)",
    "train_sizes": "labelled training images per cell ('all': the whole pool)",
    "seeds": "run seeds",
    "data": "labelled dataset plugin",
    "root": "folder of the labelled dataset",
    "protocol": "split protocol of the labelled dataset",
    "pretext_data": "unlabelled dataset plugin",
    "pretext_root": "folder of the unlabelled images",
    "strategies": "strategy plugin names (supervised, transfer, pseudo-label, ...); default: the pretext decides",
    "rows": "optional list of row labels to keep (e.g. supervised, rotation/first+middle:frozen)",
    "unlabelled_data": "unlabelled dataset plugin of semi-supervised strategies' pose phase",
    "unlabelled_root": "folder of those unlabelled images",
    "strategy_options": "tables of options per strategy name",
    "set": "table of settings applied to every cell (downstream.epochs = 3)",
    "backbone_options": "tables of options per backbone name",
    "pretext_options": "tables of options per pretext name",
}

#: evaluation (forward, decoding, PCK) runs about this many times faster than training, per image
#: (measured about 1.8x for cpm6 on a CPU; the backward pass alone would suggest 3x)
EVAL_SPEEDUP = 2.0

# ----------------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class Override:
    """One setting applied to every cell: ``path`` like ``["downstream", "lr"]``; ``origin`` for errors."""

    path: tuple[str, ...]
    value: Any
    origin: str


@dataclass
class SweepSpec:
    """The axes and settings of a sweep; None axes fall back to the profile's value."""

    name: str = "sweep"
    description: str = ""
    profile: str = "cpu"
    backbones: list[str] | None = None
    pretexts: list[str] = field(default_factory=lambda: ["none"])
    policies: list[str] = field(default_factory=lambda: ["none"])
    train_sizes: list[int | None] | None = None
    seeds: list[int] | None = None
    data: str | None = None
    root: str | None = None
    protocol: str | None = None
    pretext_data: str | None = None
    pretext_root: str | None = None
    #: strategy plugins; None: the pretext decides (supervised for none, transfer otherwise)
    strategies: list[str] | None = None
    #: when given, only cells whose row label is listed (a subset of the product)
    rows: list[str] | None = None
    unlabelled_data: str | None = None
    unlabelled_root: str | None = None
    strategy_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    overrides: list[Override] = field(default_factory=list)
    backbone_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    pretext_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: spec file and its text, for line numbers in errors
    source: Path | None = None
    text: str = ""
    #: axis name -> "--option" when it came from the command line (errors then name the option)
    from_cli: dict[str, str] = field(default_factory=dict)

    def where(self, *path: str, value: Any = None) -> str:
        """Where a setting came from: ``--option``, ``spec.toml:LINE: key`` or ``spec.toml: key``."""
        if path and path[0] in self.from_cli:
            return self.from_cli[path[0]]
        label = ".".join(path)
        if self.source is None:
            return label
        line = find_line(self.text, list(path), value)
        return f"{self.source}:{line}: {label}" if line else f"{self.source}: {label}"


def _key_parts(text: str) -> list[str]:
    return [a or b or c for a, b, c in re.findall(r'"([^"]*)"|\'([^\']*)\'|([A-Za-z0-9_\-+@]+)', text)]


def find_line(text: str, path: list[str], value: Any = None) -> int | None:
    """1-based line of the TOML key at *path* (tomllib gives no positions), optionally of *value* in it.

    Understands ``[table.headers]`` and dotted keys; a value inside a multi-line list is
    found by scanning from the key's line to the next key.
    """
    header: list[str] = []
    lines = text.splitlines()
    found: int | None = None
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip() if '"' not in raw and "'" not in raw else raw.strip()
        if not line or line.startswith("#"):
            continue
        table = re.match(r"^\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$", line)
        if table:
            header = _key_parts(table.group(1))
            if header == path:
                found = number
                break
            continue
        key = re.match(r"^([^=]+?)\s*=", line)
        if key and header + _key_parts(key.group(1)) == path:
            found = number
            break
    if found is None or value is None:
        return found
    needle = json.dumps(value) if isinstance(value, str) else str(value)
    for number in range(found, len(lines) + 1):
        line = lines[number - 1]
        if number > found and re.match(r"^\s*(\[|[^=\[\]\"']+=)", line):
            break
        if needle in line or (isinstance(value, str) and f"'{value}'" in line):
            return number
    return found


def _names(spec: SweepSpec, key: str, value: Any) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise ConfigError(f"{spec.where(key)}: expected a name or a non-empty list of names, got {value!r}")
    return list(values)


def _ints(spec: SweepSpec, key: str, value: Any, allow_all: bool = False) -> list[Any]:
    values = value if isinstance(value, list) else [value]
    out: list[Any] = []
    for item in values:
        if allow_all and item == "all":
            out.append(None)
        elif isinstance(item, int) and not isinstance(item, bool):
            out.append(item)
        else:
            also = " or 'all'" if allow_all else ""
            raise ConfigError(f"{spec.where(key, value=item)}: expected integers{also}, got {item!r}")
    if not out:
        raise ConfigError(f"{spec.where(key)}: empty list")
    return out


def _flatten(table: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], Any]]:
    for key, value in table.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def load_spec(path: Path | str) -> SweepSpec:
    """Parse a sweep spec; unknown keys and wrong types are :class:`ConfigError` with file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"sweep spec {path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"sweep spec {path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"sweep spec {path}: invalid TOML: {exc}") from None
    spec = SweepSpec(name=path.stem, source=path, text=text)
    for key, value in data.items():
        if key not in SPEC_KEYS:
            raise ConfigError(
                f"{spec.where(key)}: unknown key {key!r}.{_hint(key, SPEC_KEYS)} Known keys: {', '.join(SPEC_KEYS)}"
            )
    for key in ("name", "description", "profile", "data", "root", "protocol", "pretext_data", "pretext_root",
                "unlabelled_data", "unlabelled_root"):  # fmt: skip
        if key in data:
            if not isinstance(data[key], str):
                raise ConfigError(f"{spec.where(key)}: expected a string, got {data[key]!r}")
            setattr(spec, key, data[key])
    for key in ("backbones", "pretexts", "policies", "strategies", "rows"):
        if key in data:
            setattr(spec, key, _names(spec, key, data[key]))
    if "train_sizes" in data:
        spec.train_sizes = _ints(spec, "train_sizes", data["train_sizes"], allow_all=True)
    if "seeds" in data:
        spec.seeds = _ints(spec, "seeds", data["seeds"])
    settings = data.get("set", {})
    if not isinstance(settings, dict):
        raise ConfigError(f"{spec.where('set')}: expected a table of settings, e.g. [set] downstream.epochs = 3")
    for keys, value in _flatten(settings):
        spec.overrides.append(Override(keys, value, spec.where("set", *keys)))
    for key in ("backbone_options", "pretext_options", "strategy_options"):
        tables = data.get(key, {})
        if not isinstance(tables, dict) or not all(isinstance(v, dict) for v in tables.values()):
            raise ConfigError(f"{spec.where(key)}: expected tables per plugin name, e.g. [{key}.NAME]")
        setattr(spec, key, tables)
    return spec


# ---------------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    """One benchmark cell: a full run config and its id (the config hash)."""

    cell_id: str
    config: RunConfig
    #: the row label of its strategy (:func:`sslbench.strategies.label`)
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


def _setting_types() -> dict[str, str]:
    """Dotted setting path -> annotation text (see :func:`sslbench.config.setting_types`)."""
    return setting_types()


def _apply_override(config: RunConfig, override: Override, types: dict[str, str] | None = None) -> RunConfig:
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
        raise ConfigError(f"{spec.where('name')}: {spec.name!r} is not a usable directory name (letters, digits, . _ + -)")
    profile = profile_config(spec.profile)
    base = profile
    types = _setting_types()
    for override in spec.overrides:
        base = _apply_override(base, override, types)

    backbones = spec.backbones or [base.backbone]
    policies = [(text, *split_policy(text, spec.where("policies", value=text))) for text in spec.policies]
    train_sizes = spec.train_sizes or [base.train_size]
    seeds = spec.seeds or [base.seed]
    # the options the profile gives each backbone (a CPM's width and norm are not a timm backbone's), then [set]
    backbone_options = {}
    for name in backbones:
        config = profile_config(spec.profile, name)
        for override in spec.overrides:
            config = _apply_override(config, override, types)
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
            where = spec.where("pretext_options", name) if name in spec.pretext_options else spec.where("pretexts", value=name)
            try:
                registry.create("pretext", name, where, **options)
            except TypeError as exc:
                raise ConfigError(f"{where}: pretext {name!r} does not accept options {options}: {exc}") from None
            except SSLBenchError as exc:
                raise ConfigError(f"{where}: {exc}") from None

    from sslbench.train import resolve_precision  # late: torch

    pruned: dict[str, str] = {}
    cells: dict[str, Cell] = {}
    profile_fields = profile.to_dict()
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
        try:
            strategy = strategies.strategy_of(config, registry)
        except ConfigError as exc:
            if "option" in str(exc) and name in spec.strategy_options:  # the options themselves are wrong
                raise ConfigError(f"{spec.where('strategy_options', strategy_name)}: {exc}") from None
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
            unused += ["unlabelled_data", "unlabelled_root"]
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
    narrowed = any(axis in spec.from_cli for axis in ("pretexts", "policies", "strategies"))  # a subset run from the CLI
    for row in [] if narrowed else spec.rows or []:
        if row not in kept:
            raise ConfigError(f"{spec.where('rows', value=row)}: row {row!r} matches no cell "
                              f"of the product.{_hint(row, kept)}")  # fmt: skip
    if not cells:
        reasons = "; ".join(f"{combination}: {reason}" for combination, reason in pruned.items())
        raise ConfigError(f"sweep {spec.name} has no cells, every pretext x policy pair was pruned ({reasons})")
    ordered = order_cells(cells.values(), backbones, spec.pretexts, [text for text, *_ in policies])
    return Plan(spec.name, ordered, list(pruned.items()), spec.description)


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


# ------------------------------------------------------------------------------ estimates


@dataclass
class CellEstimate:
    """Seconds a cell is expected to take (None where unknown); pretraining counted separately."""

    pretrain_s: float | None
    downstream_s: float | None


def measure_throughput(config: RunConfig, registry: Registry, budget_s: float = 3.0, max_batch: int = 8) -> float:
    """Training images per second of the config's backbone, timed on random tensors.

    The step and its timing are those of ``sslbench bench`` (:func:`sslbench.bench.time_training`):
    real optimiser steps of :func:`sslbench.train.train_step` (the step ``fit`` takes: forward, pose
    loss on every stage, backward, the downstream optimiser) on the device, in the precision and
    memory format the downstream training would use, after an untimed warm-up; the median step
    (robust to other processes' bursts) gives the speed. About *budget_s* seconds (3 to 20 steps);
    a network that needs more than that for one image is timed on single images (a slight
    underestimate of its batched speed).
    """
    import torch

    from sslbench.bench import PROFILE, time_training
    from sslbench.pose import PoseTask
    from sslbench.train import resolve_device

    device = resolve_device(config.downstream.device)
    net = registry.create("backbone", config.backbone, "--backbones", num_outputs=NUM_JOINTS + 1, **config.backbone_options)
    size, maps = int(net.input_size), int(net.input_size) // int(net.stride)

    def timed(batch: int, steps: int) -> dict[str, Any]:
        data = {"image": torch.randn(batch, 3, size, size), "centermap": torch.rand(batch, 1, size, size),
                "target": torch.rand(batch, NUM_JOINTS + 1, maps, maps)}  # fmt: skip
        settings = dataclasses.replace(config.downstream, batch_size=batch)
        (run,) = time_training(net, PoseTask(), data, settings, [PROFILE], steps, device)
        if run["error"]:
            raise RuntimeError(run["error"])
        return run

    single = timed(1, 1)
    batch = max(1, min(config.downstream.batch_size, max_batch))
    if batch == 1 or single["step_s"] > budget_s:  # e.g. the paper's network on a CPU: seconds per image
        return single["images_per_s"]
    steps = max(3, min(20, int(budget_s / (single["step_s"] * batch))))  # a batch takes at most batch x one image
    return timed(batch, steps)["images_per_s"]


class Estimator:
    """Seconds per cell from measured throughput: earlier records first, else a short timing run."""

    def __init__(self, registry: Registry, results_dir: Path | None, measure: bool = True) -> None:
        self.registry = registry
        self.measure = measure
        self.records = [r for _, r in iter_records(results_dir, lambda m: None)] if results_dir else []
        self.sources: dict[str, str] = {}
        self._speed: dict[str, float | None] = {}
        self._sizes: dict[str, tuple[int, int, int] | None] = {}

    @staticmethod
    def _backbone_key(config: RunConfig) -> str:
        return json.dumps([config.profile, config.backbone, config.backbone_options], sort_keys=True, default=str)

    def _label(self, config: RunConfig) -> str:
        options = ", ".join(f"{k}={v}" for k, v in sorted(config.backbone_options.items()))
        return f"{config.backbone} ({options}; profile {config.profile})"

    def _from_records(self, config: RunConfig, field_name: str, pretext: str | None) -> list[float]:
        key = self._backbone_key(config)
        speeds = []
        for record in self.records:
            try:
                other = RunConfig.from_dict(record["config"])
                value = record["timing"][field_name]
            except (KeyError, TypeError, SSLBenchError):
                continue
            if record.get("status") != "done" or not isinstance(value, (int, float)) or value <= 0:
                continue
            if self._backbone_key(other) == key and (pretext is None or other.pretext == pretext):
                speeds.append(float(value))
        return speeds

    def speed(self, config: RunConfig, phase: str = "downstream") -> float | None:
        """Training images/s for *phase* (``downstream`` or ``pretrain``), or None when unknown.

        Pretraining uses earlier records of the same pretext when there are some, else the
        backbone's downstream speed (same network, a different output layer).
        """
        cache_key = f"{phase}:{config.pretext if phase == 'pretrain' else ''}:{self._backbone_key(config)}"
        if cache_key not in self._speed:
            speeds = self._from_records(config, "pretrain_img_per_s", config.pretext) if phase == "pretrain" else []
            label = f"{self._label(config)}, pretext {config.pretext}" if speeds else self._label(config)
            speeds = speeds or self._from_records(config, "downstream_img_per_s", None)
            if speeds:
                speed: float | None = statistics.median(speeds)
                self.sources[label] = f"{speed:.1f} img/s, median of {len(speeds)} earlier record(s)"
            else:
                speed = self._measured(config) if self.measure else None
            self._speed[cache_key] = speed
        return self._speed[cache_key]

    def _measured(self, config: RunConfig) -> float | None:
        key = f"measured:{self._backbone_key(config)}"
        if key not in self._speed:
            label = self._label(config)
            try:
                self._speed[key] = measure_throughput(config, self.registry)
                self.sources[label] = f"{self._speed[key]:.1f} img/s, measured on random tensors just now"
            except Exception as exc:  # an estimate must never stop a dry run
                self._speed[key] = None
                self.sources[label] = f"unknown (timing failed: {type(exc).__name__}: {exc})"
        return self._speed[key]

    def _split_sizes(self, name: str, root: str | None, protocol: str, size: int | None, seed: int) -> tuple[int, int, int] | None:
        """(train, val, test) image counts of a dataset split, or None when it cannot be opened."""
        key = json.dumps([name, root, protocol, size, seed])
        if key not in self._sizes:
            try:
                dataset = self.registry.create("dataset", name, root=Path(root) if root else None)
                splits = dataset.splits(protocol, size, seed)
                self._sizes[key] = (len(splits.train), len(splits.val), len(splits.test))
            except Exception:  # unknown sizes leave the estimate open, they do not stop the plan
                self._sizes[key] = None
        return self._sizes[key]

    @staticmethod
    def _phase_seconds(settings: TrainSettings, speed: float | None, train: int | None, val: int, test: int) -> float | None:
        """All epochs of training plus validation passes, plus the test pass (at :data:`EVAL_SPEEDUP` x)."""
        if not speed or not train:
            return None
        if settings.samples_per_epoch:
            train = min(train, settings.samples_per_epoch)
        if settings.val_samples is not None:
            val = min(val, settings.val_samples)
        return settings.epochs * (train + val / EVAL_SPEEDUP) / speed + test / (EVAL_SPEEDUP * speed)

    def estimate(self, cell: Cell) -> CellEstimate:
        """Upper bound in seconds (all epochs run; early stopping ends sooner)."""
        c = cell.config
        pretrain_s = None
        if cell.pretrains:
            sizes = self._split_sizes(c.pretext_data, c.pretext_root, "standard", c.pretext_images, c.seed)
            train = sizes[0] if sizes else (c.pretrain.samples_per_epoch or c.pretext_images)
            val = sizes[1] if sizes else (c.pretrain.val_samples or 0)
            pretrain_s = self._phase_seconds(c.pretrain, self.speed(c, "pretrain"), train, val, val)
        sizes = self._split_sizes(c.data, c.root, c.protocol, c.train_size, c.seed)
        train = sizes[0] if sizes else c.train_size
        val, test = (sizes[1], sizes[2]) if sizes else (c.downstream.val_samples or 0, 0)
        downstream_s = self._phase_seconds(c.downstream, self.speed(c, "downstream"), train, val, test)
        if downstream_s is not None:  # semi-supervised strategies train on more than the labelled budget
            downstream_s *= strategies.strategy_of(c, self.registry).cost(c)
        return CellEstimate(pretrain_s, downstream_s)

    def estimates(self, cells: Sequence[Cell], cached: Iterable[str] = ()) -> dict[str, float | None]:
        """Cell id -> seconds, the shared pretraining charged to the first cell that needs it.

        Pretrainings whose keys are in *cached* (see :func:`cached_pretrainings`) cost nothing.
        """
        out: dict[str, float | None] = {}
        charged: set[str] = set(cached)
        for cell in cells:
            estimate = self.estimate(cell)
            seconds = estimate.downstream_s
            key = cell.pretrain_key
            if key is not None and key not in charged:
                charged.add(key)
                seconds = None if seconds is None or estimate.pretrain_s is None else seconds + estimate.pretrain_s
            out[cell.cell_id] = seconds
        return out


def cached_pretrainings(cells: Iterable[Cell], workdir: Path) -> set[str]:
    """Pretraining keys of *cells* already cached under *workdir* (a sweep reuses them)."""
    from sslbench.phases import is_pretrained

    return {cell.pretrain_key for cell in cells if cell.pretrain_key and is_pretrained(workdir, cell.config)}


def format_seconds(seconds: float | None) -> str:
    """``3725`` -> ``1h 02m``; None -> ``?``."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    return f"{hours // 24}d {hours % 24:02d}h"


# -------------------------------------------------------------------------------- running


@dataclass
class SweepOutcome:
    """What a sweep run did, by cell id."""

    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    #: finished earlier (done, or failed without --retry-failed)
    skipped: list[str] = field(default_factory=list)
    #: claimed by another process while this one wanted to run it
    busy: list[str] = field(default_factory=list)


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def failed_record(cell: Cell, error: str, seconds: float, log: Path | None = None) -> dict[str, Any]:
    """The record of a cell that raised: what is known about it, the error, no metrics."""
    config = cell.config
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "precision": config.downstream.precision}  # fmt: skip
    if "torch" in sys.modules:  # the full description needs torch: only when it is loaded anyway
        try:
            from sslbench import environment
            from sslbench.train import resolve_device

            env = environment.describe(resolve_device(config.downstream.device), config.downstream.precision)
        except Exception:  # describing the machine must not hide the real error
            pass
    return {
        "schema": SCHEMA,
        "cell_id": cell.cell_id,
        "status": "failed",
        "error": error,
        "strategy": cell.row,
        "config": config.to_dict(),
        "seed": config.seed,
        "train_size": train_budget(config),
        "metrics": {},
        "pretext_metrics": {},
        "timing": {"total_s": seconds},
        "env": env,
        "files": {"log": str(log)} if log else {},
        "created": _now(),
    }


def train_budget(config: RunConfig) -> int | None:
    """Labelled training images of *config*'s cell, as its record states them: ``train_size``, or the
    whole pool when that is None (None when the dataset cannot be opened, e.g. what made it fail)."""
    if config.train_size is not None:
        return config.train_size
    try:
        from sslbench.registry import default_registry

        root = Path(config.root) if config.root else None
        data = default_registry().create("dataset", config.data, "--data", root=root, **config.data_options)
        return len(data.splits(config.protocol, None, config.seed).train)
    except Exception:  # the record of a failure must not fail
        return None


def _default_runner() -> Runner:
    from sslbench.runner import run_cell

    return run_cell


def execute_cell(
    cell: Cell,
    store: ResultsStore,
    workdir: Path,
    runner: Runner,
    *,
    retry_failed: bool = False,
    console: Console | None = None,
) -> str:
    """Claim, run and record one cell; returns ``done``, ``failed``, ``skipped`` or ``busy``.

    An exception in the runner becomes a failed record (traceback in the cell's log);
    KeyboardInterrupt is not a failure: the cell stays unfinished and resumes next time.
    """
    with store.claim(cell.cell_id) as mine:
        if not mine:
            return "busy"
        status = store.status(cell.cell_id)
        if status == "done" or (status == "failed" and not retry_failed):
            return "skipped"
        start = time.perf_counter()
        try:
            record = runner(cell.config, Path(workdir), resume=True, console=console)
        except Exception as exc:
            if (interrupt := _interruption_behind(exc)) is not None:
                raise interrupt from None
            log = store.log_path(cell.cell_id)
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a", encoding="utf-8") as handle:
                handle.write(f"--- {_now()} cell {cell.cell_id} failed\n{traceback.format_exc()}\n")
            message = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
            store.write(failed_record(cell, message, time.perf_counter() - start, log))
            store.write_csv()
            return "failed"
        record = dict(record)
        record.setdefault("schema", SCHEMA)
        record.setdefault("status", "done")
        record.setdefault("created", _now())
        record["cell_id"] = cell.cell_id
        store.write(record)
        store.write_csv()
        return str(record["status"]) if record["status"] in ("done", "failed") else "done"


def _interruption_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that *exc* was raised while unwinding, if any.

    A SIGTERM to the whole process group (``kill -- -PGID``, ``pkill -f``, a batch scheduler)
    also reaches the data-loader workers; should one die before the main process has stopped
    it, torch reports its death as a RuntimeError raised while the interrupt unwinds, which
    must not make the interrupted cell a failed one.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def cpu_count() -> int:
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def worker_threads(workers: int, cores: int | None = None) -> tuple[int, int]:
    """(torch threads, data-loader workers) per worker so *workers* cells share the cores."""
    cores = cores or cpu_count()
    threads = max(1, cores // max(1, workers))
    return threads, threads // 2


_EXIT = {"done": 0, "failed": 10, "skipped": 11, "busy": 12}


def _cell_process(cell: Cell, root: str, workdir: str, runner: Runner | None,
                  retry_failed: bool, threads: int, loaders: int) -> None:  # fmt: skip
    """Entry point of a worker process: limit threads before torch starts, then run one cell."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)  # read by torch when it is imported
    os.environ[LOADER_WORKERS_ENV] = str(loaders)
    runner = runner or _default_runner()
    if "torch" in sys.modules:  # imported with the runner: set the limit explicitly too
        sys.modules["torch"].set_num_threads(threads)
    store = ResultsStore(root)
    log = store.log_path(cell.cell_id)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as handle:
        console = Console(file=handle, width=120, force_terminal=False, color_system=None)
        status = execute_cell(cell, store, Path(workdir), runner, retry_failed=retry_failed, console=console)
    sys.exit(_EXIT[status])


class _Display:
    """The overall sweep progress line: done / running / failed / left and a time estimate."""

    #: without a terminal (a log, a pipe, CI) a plain progress line is printed at least this often
    LINE_EVERY_S = 60.0

    def __init__(self, progress: Progress, name: str, total: int, estimates: dict[str, float | None], workers: int) -> None:
        self.progress = progress
        self.estimates = estimates
        self.workers = workers
        self.counts = collections.Counter()
        self.actual: dict[str, float] = {}
        self.task = progress.add_task(f"sweep {name}", total=total, status="")
        self.name, self.total = name, total
        self.started = time.perf_counter()
        self._last_line: tuple[str, float] | None = None
        self._estimated: tuple[int, float | None, float] | None = None

    def update(self, unfinished: Sequence[str], running: int) -> None:
        """*unfinished*: ids of the cells running or waiting; *running*: how many of them run."""
        c = self.counts
        eta = self._countdown(self.eta(unfinished), len(unfinished))
        status = (
            f"done {c['done'] + c['skipped']} · running {running} · failed {c['failed']} · left {len(unfinished) - running}"
            + (f" · ~{format_seconds(eta)} left" if eta is not None else "")
        )
        completed = c["done"] + c["failed"] + c["skipped"] + c["busy"]
        self.progress.update(self.task, completed=completed, status=status)
        if not self.progress.console.is_terminal:
            self._plain_line(completed, running, len(unfinished) - running, eta)

    def _countdown(self, eta: float | None, unfinished: int) -> float | None:
        """*eta* as estimated when the last cell finished, less the time since (estimates change per cell)."""
        now = time.perf_counter()
        if self._estimated is None or self._estimated[0] != unfinished:
            self._estimated = (unfinished, eta, now)
        _, then, since = self._estimated
        return None if then is None else max(0.0, then - (now - since))

    def _plain_line(self, completed: int, running: int, waiting: int, eta: float | None) -> None:
        """The progress as one plain line when it changed, else once a minute (rich draws no bar here)."""
        c = self.counts
        elapsed = time.perf_counter() - self.started
        if not running + waiting:
            guess = "nothing left"
        elif eta is None:
            guess = "time left unknown until a cell has finished"
        else:
            guess = f"~{format_seconds(eta)} left"
        key = f"{completed}/{running}/{waiting}/{c['failed']}"
        now = time.perf_counter()
        if self._last_line is not None and self._last_line[0] == key and now - self._last_line[1] < self.LINE_EVERY_S:
            return
        self._last_line = (key, now)
        self.progress.console.print(
            f"sweep {self.name}: {completed}/{self.total} cells finished (done {c['done'] + c['skipped']}, failed "
            f"{c['failed']}), {running} running, {waiting} waiting; {format_seconds(elapsed)} elapsed, {guess}",
            highlight=False,
            soft_wrap=True,
        )

    def finish(self, cell_id: str, status: str, seconds: float) -> None:
        self.counts[status] += 1
        if status in ("done", "failed"):
            self.actual[cell_id] = seconds

    def eta(self, left: Sequence[str]) -> float | None:
        """Remaining estimates scaled by how the finished cells compared with theirs, else the mean cell."""
        if not left:
            return None
        known = [self.estimates.get(i) for i in left]
        if all(e is not None for e in known):
            pairs = [(self.actual[i], self.estimates[i]) for i in self.actual if self.estimates.get(i)]
            ratio = sum(a for a, _ in pairs) / sum(e for _, e in pairs) if pairs else 1.0  # type: ignore[misc]
            return ratio * sum(known) / self.workers  # type: ignore[arg-type]
        if self.actual:
            return statistics.mean(self.actual.values()) * len(left) / self.workers
        return None


def run_sweep(
    cells: Sequence[Cell],
    results_dir: Path | str,
    workdir: Path | str,
    runner: Runner | None = None,
    *,
    workers: int = 1,
    retry_failed: bool = False,
    name: str = "sweep",
    console: Console | None = None,
    estimates: dict[str, float | None] | None = None,
    warn: Warn | None = None,
) -> SweepOutcome:
    """Run every unfinished cell of *cells*, recording each in *results_dir*; returns what happened.

    *runner* is called as ``runner(config, workdir, resume=True, console=console)`` and
    returns the cell's record (default :func:`sslbench.runner.run_cell`). With
    ``workers > 1`` each cell runs in its own spawned process with ``cores // workers``
    torch threads (a crashed process is recorded as a failed cell); the runner must
    then be a module-level function.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    store = ResultsStore(results_dir)
    store.root.mkdir(parents=True, exist_ok=True)
    console = console or Console(quiet=True)
    outcome = SweepOutcome()
    pending: list[Cell] = []
    for cell in cells:
        status = store.status(cell.cell_id, warn)
        if status == "done" or (status == "failed" and not retry_failed):
            outcome.skipped.append(cell.cell_id)
        else:
            pending.append(cell)
    columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"))  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        display = _Display(progress, name, len(cells), estimates or {}, workers)
        display.counts["skipped"] = len(outcome.skipped)
        if workers == 1:
            resolved = runner or _default_runner()
            for position, cell in enumerate(pending):
                display.update([c.cell_id for c in pending[position:]], running=1)
                console.print(f"[bold]cell {cell.cell_id}[/] {cell.label}")
                start = time.perf_counter()
                status = execute_cell(cell, store, Path(workdir), resolved, retry_failed=retry_failed, console=console)
                _note(outcome, cell.cell_id, status)
                display.finish(cell.cell_id, status, time.perf_counter() - start)
                if status == "failed":
                    record = store.read(cell.cell_id) or {}
                    console.print(f"[red]cell {cell.cell_id} failed:[/] {record.get('error')}", highlight=False)
            display.update([], running=0)
        else:
            _run_parallel(pending, store, Path(workdir), runner, workers, retry_failed, outcome, display, console)
    return outcome


def _note(outcome: SweepOutcome, cell_id: str, status: str) -> None:
    {"done": outcome.done, "failed": outcome.failed, "skipped": outcome.skipped, "busy": outcome.busy}[status].append(cell_id)


def next_cell(queue: collections.deque[Cell], running: Sequence[Cell]) -> Cell:
    """Take the next cell to start from *queue*, preferring one that will not wait on a running cell.

    Cells sharing a pretext pretraining serialise on its cache lock: a second such cell
    would sit idle until the first has pretrained. So the first queued cell whose
    pretraining no running cell holds goes first (supervised cells hold none); only
    when every queued cell shares one does the head of the queue start (it then waits,
    and reuses the pretraining the moment it is cached).
    """
    busy = {c.pretrain_key for c in running if c.pretrain_key is not None}
    for index, cell in enumerate(queue):
        if cell.pretrain_key is None or cell.pretrain_key not in busy:
            del queue[index]
            return cell
    return queue.popleft()


def _run_parallel(
    pending: list[Cell], store: ResultsStore, workdir: Path, runner: Runner | None, workers: int,
    retry_failed: bool, outcome: SweepOutcome, display: _Display, console: Console,
) -> None:  # fmt: skip
    threads, loaders = worker_threads(workers)
    context = multiprocessing.get_context("spawn")
    queue = collections.deque(pending)
    running: dict[str, tuple[Any, Cell, float]] = {}
    try:
        while queue or running:
            while queue and len(running) < workers:
                cell = next_cell(queue, [c for _, c, _ in running.values()])
                args = (cell, str(store.root), str(workdir), runner, retry_failed, threads, loaders)
                process = context.Process(target=_cell_process, args=args, name=f"sslbench-cell-{cell.cell_id}")
                process.start()
                running[cell.cell_id] = (process, cell, time.perf_counter())
                console.print(f"[bold]cell {cell.cell_id}[/] {cell.label} (log: {store.log_path(cell.cell_id)})")
            display.update([c.cell_id for c in queue] + list(running), running=len(running))
            multiprocessing.connection.wait([p.sentinel for p, _, _ in running.values()], timeout=1.0)
            for cell_id, (process, cell, start) in list(running.items()):
                if process.is_alive():
                    continue
                process.join()
                del running[cell_id]
                status = next((s for s, code in _EXIT.items() if code == process.exitcode), None)
                if status is None:
                    status = _record_crash(store, cell, process.exitcode, time.perf_counter() - start)
                _note(outcome, cell_id, status)
                display.finish(cell_id, status, time.perf_counter() - start)
                if status == "failed":
                    record = store.read(cell_id) or {}
                    console.print(f"[red]cell {cell_id} failed:[/] {record.get('error')}", highlight=False)
        display.update([], running=0)
    finally:
        for process, _, _ in running.values():
            process.terminate()
        for process, _, _ in running.values():
            process.join()


def _record_crash(store: ResultsStore, cell: Cell, exitcode: int | None, seconds: float) -> str:
    """A worker process died without recording its cell (killed, out of memory, segfault)."""
    with store.claim(cell.cell_id) as mine:
        if not mine:
            return "busy"
        if store.status(cell.cell_id) == "done":
            return "done"
        log = store.log_path(cell.cell_id)
        how = f"killed by signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
        error = f"worker process died ({how}); output in {log}"
        store.write(failed_record(cell, error, seconds, log))
        store.write_csv()
    return "failed"
