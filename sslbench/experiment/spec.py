"""Sweep specs: the axes and settings of a sweep, from a TOML file or the command line.

A sweep is the cartesian product backbones x strategies (pretexts x policies with modes for
transfer) x train sizes x seeds, written on the command line or in a TOML spec
(``benchmarks/*.toml``)::

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

:func:`load_spec` reads and checks a spec file (errors name the file, the line and the key);
:mod:`sslbench.experiment.plan` expands it into cells.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from sslbench.contract.errors import ConfigError
from sslbench.contract.errors import did_you_mean as _hint

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

# ----------------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class Override:
    """One setting applied to every cell: ``path`` like ``["downstream", "lr"]``; ``origin`` for errors."""

    path: tuple[str, ...]
    value: Any
    origin: str
    #: given as ``--set`` on the command line: applied again after the spec's per-plugin tables
    command_line: bool = False


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
        raise ConfigError(
            f"sweep spec {path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
        ) from None
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
