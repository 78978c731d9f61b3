"""Overrides: the ``--set section.field=value`` changes a run or a sweep makes to a run config.

The one parser and type check of every setting given on the command line, in a sweep spec or by
a profile (:mod:`sslbench.profiles`): a wrong name gets "did you mean", a wrong type names the
setting and the type it must have.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from sslbench.contract.config import RunConfig, TrainSettings
from sslbench.contract.errors import ConfigError, did_you_mean


def apply_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """A copy of *config* with nested *overrides* merged in (dict options are merged key by key)."""
    data = config.to_dict()
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return RunConfig.from_dict(data)


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """``"downstream.lr=0.01"`` -> (["downstream", "lr"], 0.01); values are parsed as JSON when possible."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. downstream.lr=0.001")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().split("."), value


def setting_types() -> dict[str, str]:
    """Dotted setting path -> annotation text (``"int | None"``), for type checks of ``--set`` values.

    The sections ``pretrain`` and ``downstream`` are listed by their fields only: a section
    itself is not a value.
    """
    types = {f.name: str(f.type) for f in dataclasses.fields(RunConfig)}
    for section in SECTIONS:
        types.pop(section)
        types.update({f"{section}.{f.name}": str(f.type) for f in dataclasses.fields(TrainSettings)})
    return types


#: the RunConfig fields that are TrainSettings tables
SECTIONS = ("pretrain", "downstream")

_TYPE_NAMES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),),
    "dict[str, Any]": (dict,),
}  # fmt: skip


def check_setting(path: list[str] | tuple[str, ...], value: Any, where: str) -> None:
    """Raise :class:`ConfigError` (prefixed by *where*) when *path* is no setting or *value* has the wrong type.

    The one check of every ``--set`` value, whether from ``sslbench run``, ``bench`` or a sweep spec.
    """
    path = list(path)
    dotted = ".".join(path)
    types = setting_types()
    if len(path) == 1 and path[0] in SECTIONS:
        fields = ", ".join(f.name for f in dataclasses.fields(TrainSettings))
        raise ConfigError(f"{where}: {dotted} is a section, not a value; set one of its fields "
                          f"({dotted}.epochs=3; fields: {fields})")  # fmt: skip
    options = len(path) == 2 and path[0].endswith("_options") and path[0] in types
    if dotted not in types:
        if options:
            return
        raise ConfigError(f"{where}: no such setting {dotted!r}.{did_you_mean(dotted, types)}")
    allowed = [_TYPE_NAMES.get(part.strip()) for part in types[dotted].split("|")]
    if not all(allowed):
        return
    kinds = tuple(t for group in allowed for t in group)  # type: ignore[union-attr]
    wrong_bool = isinstance(value, bool) and bool not in kinds
    if wrong_bool or not isinstance(value, kinds):
        raise ConfigError(f"{where}: {dotted} must be {types[dotted]}, got {value!r}")


def set_path(config: RunConfig, path: list[str], value: Any, where: str | None = None) -> RunConfig:
    """A copy of *config* with the field at *path* (e.g. ``["downstream", "lr"]``) set to *value*.

    *value* is type-checked against the field (:func:`check_setting`); *where* names the
    option in errors (default ``--set PATH``).
    """
    check_setting(path, value, where or f"--set {'.'.join(path)}")
    data = config.to_dict()
    node: Any = data
    for i, part in enumerate(path[:-1]):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"--set {'.'.join(path)}: no such setting {'.'.join(path[: i + 1])!r}")
        if node[part] is None:
            node[part] = {}
        node = node[part]
    leaf = path[-1]
    is_options = len(path) == 2 and path[0].endswith("_options")
    if not isinstance(node, dict) or (leaf not in node and not is_options):
        raise ConfigError(f"--set {'.'.join(path)}: no such setting")
    node[leaf] = value
    return RunConfig.from_dict(data)
