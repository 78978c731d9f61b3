"""Checkpoints: safetensors weights plus a JSON sidecar; loading never unpickles.

A checkpoint called ``STEM`` is two files:

- ``STEM.safetensors``: the model's state dict under its own keys (a plain safetensors
  file any tool can read), optimiser tensors under ``optim.`` and other tensors (RNG
  states) under ``extra.``;
- ``STEM.json``: the metadata (backbone config, task config, run config, metrics, epoch,
  library versions, the optimiser's non-tensor structure) and the SHA-256 of the
  weights file.

Both are written atomically with :mod:`sslbench.training.atomic` (temporary file in the same
directory, fsync, rename),
weights first and JSON last: the JSON is the commit marker, and its hash catches a
weights file that does not belong to it (a write interrupted between the two renames).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from sslbench.contract.errors import CheckpointError, ConfigError
from sslbench.contract.networks import Backbone
from sslbench.training import atomic

FORMAT = "sslbench-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
META_SUFFIX = ".json"
OPTIM_PREFIX = "optim."
EXTRA_PREFIX = "extra."


# ----------------------------------------------------------------------------- paths


def checkpoint_paths(path: Path | str) -> tuple[Path, Path]:
    """(weights, meta) paths from a stem, a ``.json`` or a ``.safetensors`` path."""
    path = Path(path)
    if path.suffix in (WEIGHTS_SUFFIX, META_SUFFIX):
        path = path.with_suffix("")
    return path.parent / (path.name + WEIGHTS_SUFFIX), path.parent / (path.name + META_SUFFIX)


def checkpoint_exists(path: Path | str) -> bool:
    """Whether both files of the checkpoint exist (it may still be corrupt)."""
    weights, meta = checkpoint_paths(path)
    return weights.is_file() and meta.is_file()


def library_versions() -> dict[str, str]:
    """Versions stored in every checkpoint, for reproducing it."""
    from sslbench import __version__

    return {
        "sslbench": __version__,
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
    }


# ------------------------------------------------------------------------------ save

#: metadata key, inside the weights file (so under the weights hash), of the hash of the model description
MODEL_HASH_KEY = "sslbench_model_sha256"
#: the sidecar fields :func:`build_model` follows to rebuild the network: covered by :data:`MODEL_HASH_KEY`
MODEL_FIELDS = ("backbone", "num_outputs", "input_size", "stride")


def model_hash(meta: dict[str, Any]) -> str:
    """SHA-256 of the sidecar fields that describe the model (key order does not matter)."""
    described = {key: meta.get(key) for key in MODEL_FIELDS}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()



def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy that shares storage with nothing (safetensors needs that)."""
    return tensor.detach().cpu().clone(memory_format=torch.contiguous_format)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state dict into tensors (``optim.state.<param>.<name>``) and JSON."""
    tensors: dict[str, torch.Tensor] = {}
    state: dict[str, dict[str, Any]] = {}
    for param_id, entries in state_dict["state"].items():
        described: dict[str, Any] = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                key = f"{OPTIM_PREFIX}state.{param_id}.{name}"
                tensors[key] = _cpu_copy(value)
                described[name] = {"tensor": key}
            else:
                described[name] = {"value": _jsonable(value)}
        state[str(param_id)] = described
    structure = {"state": state, "param_groups": _jsonable(state_dict["param_groups"])}
    return tensors, structure


def _unflatten_optimizer(structure: dict[str, Any], tensors: dict[str, torch.Tensor], where: Path) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for param_id, described in structure["state"].items():
        entries: dict[str, Any] = {}
        for name, item in described.items():
            if "tensor" in item:
                if item["tensor"] not in tensors:
                    raise CheckpointError(f"checkpoint {where}: optimiser tensor {item['tensor']!r} is missing")
                entries[name] = tensors[item["tensor"]]
            else:
                entries[name] = item["value"]
        state[int(param_id)] = entries
    groups = []
    for group in structure["param_groups"]:
        groups.append({k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in group.items()})
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    path: Path | str,
    model: nn.Module | dict[str, torch.Tensor],
    meta: dict[str, Any] | None = None,
    *,
    optimizer: dict[str, Any] | None = None,
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``<stem>.safetensors`` then ``<stem>.json`` atomically; returns the JSON path.

    *model* is a module (a :class:`Backbone` also records ``backbone`` = its
    ``config()``, ``num_outputs``, ``input_size`` and ``stride`` in the metadata) or a
    state dict. *optimizer* is an optimiser ``state_dict()``; *extra* more tensors
    (stored under ``extra.``). *meta* must be JSON-serialisable.
    """
    weights_path, meta_path = checkpoint_paths(path)
    state = model.state_dict() if isinstance(model, nn.Module) else model
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith((OPTIM_PREFIX, EXTRA_PREFIX)):
            raise ValueError(f"model state key {key!r} uses a reserved checkpoint prefix")
        tensors[key] = _cpu_copy(value)
    info: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION}
    if isinstance(model, Backbone):
        info.update(
            backbone=model.config(),
            num_outputs=model.num_outputs,
            input_size=model.input_size,
            stride=model.stride,
        )
    info.update(meta or {})
    if optimizer is not None:
        optim_tensors, structure = _flatten_optimizer(optimizer)
        tensors.update(optim_tensors)
        info["optimizer"] = structure
    for key, value in (extra or {}).items():
        tensors[EXTRA_PREFIX + key] = _cpu_copy(value)
    data = safetensors.torch.save(tensors, metadata={"format": FORMAT, MODEL_HASH_KEY: model_hash(info)})
    info["versions"] = library_versions()
    info["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    info["weights"] = {"file": weights_path.name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    try:
        text = json.dumps(info, indent=2, sort_keys=True, allow_nan=True)
    except TypeError as exc:
        raise ValueError(f"checkpoint metadata is not JSON-serialisable: {exc}") from None
    atomic.write_bytes(weights_path, data)
    atomic.write_text(meta_path, text + "\n")
    return meta_path


# ------------------------------------------------------------------------------ load


@dataclass
class Checkpoint:
    """A loaded checkpoint: model weights, metadata, and optionally optimiser and extra state."""

    state: dict[str, torch.Tensor]
    meta: dict[str, Any]
    optimizer: dict[str, Any] | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    path: Path = Path()

    @property
    def backbone(self) -> dict[str, Any] | None:
        """The backbone's ``config()`` as saved (``{"name": ..., **options}``), if any."""
        return self.meta.get("backbone")


def load_checkpoint(path: Path | str) -> Checkpoint:
    """Read and verify a checkpoint (stem, ``.json`` or ``.safetensors`` path).

    Raises :class:`CheckpointError` naming the file when either file is missing,
    unreadable, not a sslbench checkpoint, or the weights do not match the recorded hash.
    """
    weights_path, meta_path = checkpoint_paths(path)
    if not meta_path.is_file():
        if weights_path.is_file():
            raise CheckpointError(
                f"checkpoint {meta_path} is missing: {weights_path.name} has no metadata (interrupted write?)"
            )
        raise CheckpointError(f"checkpoint {meta_path} not found")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {meta_path} is unreadable: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {meta_path} is not an sslbench checkpoint (no format {FORMAT!r})")
    if not weights_path.is_file():
        raise CheckpointError(f"checkpoint weights {weights_path} not found")
    try:
        data = weights_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint weights {weights_path} are unreadable: {exc}") from None
    expected = meta.get("weights", {}).get("sha256")
    if hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(f"checkpoint weights {weights_path} are corrupt: SHA-256 differs from {meta_path.name}")
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"checkpoint weights {weights_path} are unreadable: {exc}") from None
    recorded = _weights_metadata(data).get(MODEL_HASH_KEY)
    if recorded is not None and recorded != model_hash(meta):
        raise CheckpointError(
            f"checkpoint {meta_path} is corrupt: its model description ({', '.join(MODEL_FIELDS)}) was changed "
            f"after it was written (it differs from the hash stored in {weights_path.name})"
        )
    state = {k: v for k, v in tensors.items() if not k.startswith((OPTIM_PREFIX, EXTRA_PREFIX))}
    extra = {k[len(EXTRA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    optimizer = None
    if meta.get("optimizer") is not None:
        optimizer = _unflatten_optimizer(meta["optimizer"], tensors, weights_path)
    return Checkpoint(state=state, meta=meta, optimizer=optimizer, extra=extra, path=weights_path.with_suffix(""))


# ---------------------------------------------------------------------------- models


def describe_backbone(config: dict[str, Any] | None, num_outputs: int | None = None) -> str:
    """``cpm6(stages=6, width=0.25, ...)``: a backbone config as one short phrase."""
    if not config:
        return "an unknown backbone"
    options = {k: v for k, v in config.items() if k != "name"}
    if num_outputs is not None:
        options["num_outputs"] = num_outputs
    inner = ", ".join(f"{k}={v}" for k, v in sorted(options.items()))  # sorted: the same config, the same text
    return f"{config.get('name', '?')}({inner})"


def _model_description(model: nn.Module) -> str:
    if isinstance(model, Backbone):
        return describe_backbone(model.config(), model.num_outputs)
    return type(model).__name__


def load_weights(model: nn.Module, checkpoint: Checkpoint) -> None:
    """Load the checkpoint's weights into *model* strictly (every key, every shape).

    A mismatch raises :class:`CheckpointError` naming the checkpoint's backbone and
    the model's, with the first differing keys.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(checkpoint.state))
    unexpected = sorted(set(checkpoint.state) - set(own))
    reshaped = sorted(
        k for k in set(own) & set(checkpoint.state) if tuple(own[k].shape) != tuple(checkpoint.state[k].shape)
    )
    if missing or unexpected or reshaped:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", reshaped)):
            if keys:
                details.append(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}")
        ckpt_desc = describe_backbone(checkpoint.backbone, checkpoint.meta.get("num_outputs"))
        model_desc = _model_description(model)
        if ckpt_desc == model_desc:
            raise CheckpointError(
                f"checkpoint {checkpoint.path}: its weights do not fit the backbone it records, {ckpt_desc} "
                f"({'; '.join(details)})"
            )
        raise CheckpointError(
            f"checkpoint {checkpoint.path} holds {ckpt_desc}, which does not fit {model_desc} ({'; '.join(details)})"
        )
    model.load_state_dict(checkpoint.state, strict=True)


def _weights_metadata(data: bytes) -> dict[str, str]:
    """The string metadata in a safetensors file's header (``__metadata__``)."""
    try:
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
        metadata = header.get("__metadata__") or {}
        return metadata if isinstance(metadata, dict) else {}
    except (ValueError, UnicodeDecodeError, AttributeError):
        return {}


def build_model(checkpoint: Checkpoint, registry: Any | None = None) -> Backbone:
    """Rebuild the checkpoint's backbone from its saved config and load its weights."""
    from sslbench.contract.registry import default_registry

    registry = registry or default_registry()
    config = checkpoint.backbone
    if not config or "name" not in config or "num_outputs" not in checkpoint.meta:
        raise CheckpointError(f"checkpoint {checkpoint.path} does not record its backbone (no 'backbone' config)")
    # ``init`` (a file the trunk was initialised from) is never followed: every weight comes from the checkpoint
    options = {k: v for k, v in config.items() if k not in ("name", "init")}
    try:
        model = registry.create("backbone", config["name"], num_outputs=checkpoint.meta["num_outputs"], **options)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {checkpoint.path} needs backbone {config['name']!r}: {exc}") from None
    load_weights(model, checkpoint)
    return model
