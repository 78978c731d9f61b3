"""Where and how a training step runs: device, precision and memory format.

``precision`` ``auto`` means bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16 /
AMX) and fp32 elsewhere (emulated bf16 is slower than fp32); runs resolve it before taking a
cell id (:func:`resolve_precision`), so a record says which precision ran. ``channels_last``
None means on CUDA only. Losses and metrics are always computed in float32.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslbench.contract.config import RunConfig, TrainSettings
from sslbench.contract.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``, ``cuda``, ``cuda:N`` checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available on this machine (use auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type != "cpu":
        raise ConfigError(f"device {name!r} is not supported (use auto, cpu, cuda or cuda:N)")
    return device


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def use_bf16(settings: TrainSettings, device: torch.device) -> bool:
    """``precision``: ``bf16``/``fp32`` as given; ``auto`` is bf16 autocast on CUDA (when the
    GPU supports it) and on CPUs with native bf16, fp32 elsewhere (emulated bf16 is slower)."""
    if settings.precision == "auto":
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return cpu_has_native_bf16()
    return settings.precision == "bf16"


def resolve_precision(config: RunConfig) -> RunConfig:
    """A copy of *config* with each phase's precision ``auto`` replaced by what it means on this
    machine and that phase's device (``bf16`` or ``fp32``, :func:`use_bf16`).

    Runs and sweeps resolve a config before taking its cell id and storing it, so a record says
    which precision ran and cells that ran at different precisions differ.
    """
    if "auto" not in (config.pretrain.precision, config.downstream.precision):
        return config
    data = config.to_dict()
    for section in ("pretrain", "downstream"):
        settings: TrainSettings = getattr(config, section)
        if settings.precision == "auto":
            try:
                device = resolve_device(settings.device)
            except ConfigError as exc:
                raise ConfigError(f"{section}.precision auto: cannot tell what it means here ({exc}); "
                                  f"set {section}.precision to bf16 or fp32") from None  # fmt: skip
            data[section]["precision"] = "bf16" if use_bf16(settings, device) else "fp32"
    return RunConfig.from_dict(data)


def use_channels_last(settings: TrainSettings, device: torch.device) -> bool:
    """``channels_last`` as configured (kept a function so callers need not know the setting's name)."""
    return bool(settings.channels_last)


def autocast_context(device: torch.device, settings: TrainSettings) -> contextlib.AbstractContextManager:
    """bf16 autocast on *device* when :func:`use_bf16`, else a no-op context."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16(settings, device))


def batch_to_device(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    """Every tensor of *batch* on *device*; the ``image`` in channels_last format when asked."""
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and value.dim() == 4 and key == "image":
                value = value.contiguous(memory_format=torch.channels_last)
        moved[key] = value
    return moved


def prepare_model(model: nn.Module, device: torch.device, settings: TrainSettings) -> bool:
    """Move *model* to *device* (and memory format); returns whether channels_last is used."""
    model.to(device)
    channels_last = use_channels_last(settings, device)
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return channels_last


# -------------------------------------------------------------------- optimiser, schedule


def training_device(settings: TrainSettings, is_distributed: bool) -> torch.device:
    """:func:`resolve_device`; under torch.distributed, plain ``cuda`` means this rank's GPU (``LOCAL_RANK``)."""
    device = resolve_device(settings.device)
    if is_distributed and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
        torch.cuda.set_device(device)
    return device
