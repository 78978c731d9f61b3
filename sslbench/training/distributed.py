"""Data-parallel training across processes with torch.distributed, launched by ``torchrun``.

::

    torchrun --nproc-per-node 2 -m sslbench run --profile cpu ...          # one machine
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 -m sslbench run ...                      # several machines

``torchrun`` starts the processes and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_from_env` joins the process group when
``WORLD_SIZE`` > 1 (gloo on CPUs, NCCL when every phase trains on CUDA; each process
takes the GPU ``LOCAL_RANK``). :func:`sslbench.training.loop.fit` then wraps the model in
DistributedDataParallel and gives every rank its shard of each epoch; rank 0 alone
evaluates, decides (best epoch, early stopping) and writes files, which is why the run
and work directories must be on storage every node sees.

Without torchrun (or with one process) every helper here is a no-op, so code can call
them unconditionally.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from sslbench.contract.errors import ConfigError

T = TypeVar("T")

#: environment variables torchrun sets for every process
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

#: how long a rank waits for the others at a collective (rank 0 evaluates while the others wait)
TIMEOUT = dt.timedelta(minutes=60)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer (set by torchrun)") from None


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    return _env_int("WORLD_SIZE", 1)


def is_initialized() -> bool:
    """Whether this process is part of an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes training together (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes files and prints: rank 0, or the only process."""
    return rank() == 0


def choose_backend(device_names: Iterable[str]) -> str:
    """``nccl`` when every training device resolves to CUDA (and NCCL exists), else ``gloo``."""
    names = list(device_names) or ["auto"]
    on_cuda = torch.cuda.is_available() and all(name != "cpu" and not name.startswith("cpu") for name in names)
    return "nccl" if on_cuda and dist.is_nccl_available() else "gloo"


def init_from_env(device_names: Iterable[str] = ("auto",)) -> bool:
    """Join the process group described by torchrun's environment; returns whether distributed.

    Does nothing (False) when ``WORLD_SIZE`` is unset or 1, and returns True at once when
    a group already exists. Under NCCL the process's CUDA device becomes ``LOCAL_RANK``.
    """
    if is_initialized():
        return True
    size = env_world_size()
    if size <= 1:
        return False
    if not dist.is_available():
        raise ConfigError(f"WORLD_SIZE={size}, but this torch build has no torch.distributed")
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={size}, but {', '.join(missing)} are not set: launch with torchrun "
            "(torchrun --nproc-per-node N -m sslbench run ...)"
        )
    backend = choose_backend(device_names)
    if backend == "nccl":
        local = _env_int("LOCAL_RANK", 0)
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local}, but only {torch.cuda.device_count()} CUDA device(s) are visible")
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, init_method="env://", timeout=TIMEOUT)
    return True


def barrier() -> None:
    """Wait until every rank gets here (no-op without a process group)."""
    if is_initialized():
        dist.barrier()


def broadcast(value: T, src: int = 0) -> T:
    """*value* of rank *src* on every rank (picklable objects; no-op without a process group)."""
    if not is_initialized():
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(function: Callable[[], T]) -> T:
    """Run *function* on rank 0 only and give its result to every rank.

    For work that must happen once (evaluation on the test set, writing a file); the
    other ranks wait in the broadcast. An exception on rank 0 is re-raised there and
    handed to the other ranks as a :class:`RuntimeError`, so no rank hangs.
    """
    if not is_initialized():
        return function()
    outcome: tuple[bool, Any] = (True, None)
    if is_main():
        try:
            outcome = (True, function())
        except Exception as exc:
            broadcast((False, f"{type(exc).__name__}: {exc}"))
            raise
    ok, value = broadcast(outcome)
    if not ok:
        raise RuntimeError(f"rank 0 failed: {value}")
    return value


def teardown() -> None:
    """Leave the process group (safe to call when there is none)."""
    if is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device_names: Iterable[str] = ("auto",)) -> Iterator[bool]:
    """:func:`init_from_env` on entry, :func:`teardown` on exit; yields whether distributed."""
    started = init_from_env(device_names)
    try:
        yield started
    finally:
        if started:
            teardown()
