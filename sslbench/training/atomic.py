"""Crash-safe file writes: a reader sees the old file or the new one, never half of one.

Each write goes to a temporary file in the same directory, is flushed and fsynced,
then renamed over the target (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from sslbench.contract.errors import ConfigError, SSLBenchError


def write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SSLBenchError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SSLBenchError(f"{path}: not valid JSON ({exc})") from None


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (best effort: not every platform allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)



def check_writable(path: Path | str, option: str, *, is_file: bool = False) -> None:
    """Raise :class:`ConfigError` naming *option* unless *path* can be written (checked before any work).

    *path* is a folder (created later if missing), or with ``is_file`` a file. The nearest
    existing folder on the way is probed by creating and removing a temporary file, which
    also catches read-only mounts and permissions that ``os.access`` misjudges.
    """
    path = Path(path)
    what = "file" if is_file else "folder"
    if is_file and path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder, expected a file")
    if not is_file and path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: is a file, expected a folder")
    if is_file and path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{option} {path}: the file is not writable")
    probe = path.parent if is_file else path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{option} {path}: cannot create the {what}, {probe} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".sslbench-write-check-", suffix=".tmp")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{option} {path}: not writable ({reason} in {probe})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)
