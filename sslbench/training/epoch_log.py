"""The per-epoch log of a training run: ``metrics.jsonl``, one JSON object per epoch.

Each line is made durable before the epoch's checkpoint is written, so a kill can only cut
the line being written; a resumed run drops the lines after its last checkpoint's epoch.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from sslbench.training import atomic

METRICS_FILE = "metrics.jsonl"


def _finite(value: Any) -> Any:
    """JSON-safe: non-finite floats become None (JSON Lines stay strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and make it durable, so a kill can only cut the line being written."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(_finite(record), sort_keys=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete, parseable lines of a JSON Lines file (a cut-off last line is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def truncate_jsonl(path: Path, last_epoch: int) -> None:
    """Keep only whole lines of epochs up to *last_epoch* (those the last checkpoint knows)."""
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if int(r.get("epoch", 0)) <= last_epoch]
    atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
