"""What a result was measured on: library versions, device, processor and sslbench commit."""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import sslbench


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def commit() -> str | None:
    """The git commit of the sslbench source tree (with ``+dirty`` for local changes), if it is a checkout."""
    source = Path(sslbench.__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def describe(device: torch.device | str | None = None, precision: str | None = None) -> dict[str, Any]:
    """The machine; *precision* (``bf16``/``fp32``, what a run's downstream phase trained at) is added when given."""
    from sslbench.training.device import (
        cpu_has_native_bf16,  # late: train imports much of sslbench
    )

    device = torch.device(device) if device is not None else torch.device("cpu")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "sslbench": sslbench.__version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(device),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "gpu": gpu,
        #: processes that trained together (torchrun); the effective batch is world_size x batch_size
        "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
        "commit": commit(),
        #: whether the CPU computes bf16 natively (AVX512-BF16 / AMX): what precision auto resolves to on a CPU
        "cpu_bf16": cpu_has_native_bf16(),
        **({"precision": precision} if precision is not None else {}),
    }
