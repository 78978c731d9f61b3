"""The results store: one JSON record per benchmark cell, and a flat table for pandas.

Layout of a results directory (default ``./results/<sweep name>/``)::

    cells/<cell_id>.json   one record per cell (the source of truth), written atomically
    curves/<cell_id>.jsonl per-epoch training and validation metrics of the cell (JSON lines)
    results.csv            the flat table of them, regenerated after every finished cell
    logs/<cell_id>.log     output of cells run in worker processes, and tracebacks of failures
    locks/                 claim locks: a cell is run by one process at a time

Read it with plain pandas, either the derived table or the records themselves::

    import pandas as pd
    df = pd.read_csv("results/example-synthetic/results.csv")
    # or, straight from the records (same columns before renaming):
    import glob, json
    df = pd.json_normalize([json.load(open(p)) for p in glob.glob("results/example-synthetic/cells/*.json")])
    # or: sslbench.results.store.load_results("results/example-synthetic")

The columns of that table are documented in :mod:`sslbench.results.records`.

Records are written atomically (temporary file in the same directory, fsync, ``os.replace``),
so a process killed at any moment leaves either the old record or the new one, never a
truncated file.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

import filelock
import pandas as pd

from sslbench.contract.errors import DataError
from sslbench.results.records import Warn, _default_warn, records_dataframe
from sslbench.training.atomic import write_bytes, write_text

# ------------------------------------------------------------------------------- writing


def write_record(results_dir: Path | str, record: dict[str, Any]) -> Path:
    """Atomically write *record* to ``<results_dir>/cells/<cell_id>.json``; returns the path."""
    cell_id = record.get("cell_id")
    if not isinstance(cell_id, str) or not cell_id or "/" in cell_id or cell_id.startswith("."):
        raise DataError(f"result record has no valid cell_id: {cell_id!r}")
    curves = (record.get("files") or {}).get("metrics_jsonl")
    if curves and Path(curves).is_file():  # keep the per-epoch curves with the results (run dirs are not shared)
        copy = Path("curves") / f"{cell_id}.jsonl"
        write_bytes(Path(results_dir) / copy, Path(curves).read_bytes())
        record = {**record, "files": {**record["files"], "curves": str(copy)}}
    path = Path(results_dir) / "cells" / f"{cell_id}.json"
    write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return path


# ------------------------------------------------------------------------------- reading


def read_record(path: Path | str) -> dict[str, Any]:
    """One record; :class:`DataError` when the file is unreadable, truncated or not a record."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: corrupt result record ({type(exc).__name__}: {exc})") from exc
    if not isinstance(record, dict) or not isinstance(record.get("cell_id"), str):
        raise DataError(f"{path}: not a result record (no cell_id)")
    bad = _non_numeric_metric(record)
    if bad is not None:
        raise DataError(f"{path}: corrupt result record ({bad})")
    return record


def _non_numeric_metric(record: dict[str, Any]) -> str | None:
    """What is wrong when a metric of *record* is not a number (None when all are, or are empty)."""

    def number(value: Any) -> bool:
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))

    for section in ("metrics", "pretext_metrics"):
        values = record.get(section)
        if values is None:
            continue
        if not isinstance(values, dict):
            return f"{section} is {values!r}, not a table of numbers"
        for name, value in values.items():
            if name in ("per_joint", "per_part") and isinstance(value, dict):
                inner = next(((k, v) for k, v in value.items() if not number(v)), None)
                if inner is not None:
                    return f"{section}.{name}.{inner[0]} is {inner[1]!r}, not a number"
            elif not number(value):
                return f"{section}.{name} is {value!r}, not a number"
    return None


def iter_records(results_dir: Path | str, warn: Warn | None = None) -> Iterator[tuple[Path, dict[str, Any]]]:
    """``(path, record)`` for every readable record in ``cells/``, sorted by file name.

    Leftover temporary files of interrupted writes and corrupt records are skipped with a
    warning naming the file.
    """
    warn = _default_warn if warn is None else warn
    cells = Path(results_dir) / "cells"
    if not cells.is_dir():
        return
    for path in sorted(cells.iterdir()):
        if path.name.endswith(".tmp"):
            if _is_stale(path):  # no write takes this long: a process was killed while writing
                try:
                    path.unlink()
                except OSError:
                    pass
                else:
                    warn(f"{path}: leftover temporary file of an interrupted write; removed")
                    continue
            warn(f"{path}: leftover temporary file of an interrupted write; ignored (safe to delete)")
            continue
        if path.suffix != ".json" or not path.is_file():
            continue
        try:
            yield path, read_record(path)
        except DataError as exc:
            warn(f"{exc}; skipped")


#: a temporary file of an atomic write older than this was left by a killed process (a write takes milliseconds)
STALE_TEMP_S = 600.0


def _is_stale(path: Path) -> bool:
    import time

    try:
        return time.time() - path.stat().st_mtime > STALE_TEMP_S
    except OSError:
        return False


def _record_dirs(path: Path) -> list[Path]:
    if (path / "cells").is_dir():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if (p / "cells").is_dir())
    return []


def load_results(*results_dirs: Path | str, warn: Warn | None = None) -> pd.DataFrame:
    """The flat table of every record under *results_dirs* (columns documented above).

    A directory is a results directory (with ``cells/``) or a parent of several (e.g.
    ``./results``). A cell found twice keeps its newest record. Raises :class:`DataError`
    when nothing can be read, with one line saying where it looked.
    """
    warn = _default_warn if warn is None else warn
    if not results_dirs:
        raise DataError("no results directory given")
    records: dict[str, tuple[str, dict[str, Any]]] = {}
    for given in results_dirs:
        given = Path(given)
        if not given.exists():
            raise DataError(f"results directory {given} does not exist")
        dirs = _record_dirs(given)
        if not dirs:
            raise DataError(f"{given} holds no result records (no cells/ directory); run `sslbench sweep` first")
        for directory in dirs:
            for path, record in iter_records(directory, warn):
                previous = records.get(record["cell_id"])
                if previous is None or str(record.get("created", "")) >= str(previous[1].get("created", "")):
                    records[record["cell_id"]] = (str(path), record)
    if not records:
        where = ", ".join(str(Path(d)) for d in results_dirs)
        raise DataError(f"{where}: no readable result records in cells/; run `sslbench sweep` first")
    ordered = sorted(records.values(), key=lambda item: item[0])
    return records_dataframe([r for _, r in ordered], [s for s, _ in ordered], warn)


# ---------------------------------------------------------------------------- the store


class ResultsStore:
    """One results directory: per-cell records, claim locks, and the derived ``results.csv``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @property
    def cells_dir(self) -> Path:
        return self.root / "cells"

    @property
    def csv_path(self) -> Path:
        return self.root / "results.csv"

    def record_path(self, cell_id: str) -> Path:
        return self.cells_dir / f"{cell_id}.json"

    def log_path(self, cell_id: str) -> Path:
        return self.root / "logs" / f"{cell_id}.log"

    def read(self, cell_id: str, warn: Warn | None = None) -> dict[str, Any] | None:
        """The record of *cell_id*, or None when there is none (a corrupt one is warned about)."""
        path = self.record_path(cell_id)
        if not path.exists():
            return None
        try:
            return read_record(path)
        except DataError as exc:
            (_default_warn if warn is None else warn)(f"{exc}; the cell will run again")
            return None

    def status(self, cell_id: str, warn: Warn | None = None) -> str | None:
        """``"done"``, ``"failed"`` or None (never finished)."""
        record = self.read(cell_id, warn)
        return None if record is None else str(record.get("status"))

    def write(self, record: dict[str, Any]) -> Path:
        return write_record(self.root, record)

    @contextlib.contextmanager
    def claim(self, cell_id: str) -> Iterator[bool]:
        """Hold the claim on *cell_id* while the block runs; yields False when another process holds it.

        The lock is an OS file lock: it is released when its process dies, even by SIGKILL.
        """
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.root / "locks" / f"{cell_id}.lock"), timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def records(self, warn: Warn | None = None) -> list[dict[str, Any]]:
        return [record for _, record in iter_records(self.root, warn)]

    def dataframe(self, warn: Warn | None = None) -> pd.DataFrame:
        return load_results(self.root, warn=warn)

    def write_csv(self, warn: Warn | None = None) -> Path | None:
        """Regenerate ``results.csv`` from the records (under a lock, atomically); None when empty."""
        self.root.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(str(self.root / ".results.csv.lock")):
            loaded = list(iter_records(self.root, (lambda message: None) if warn is None else warn))
            if not loaded:
                return None
            df = records_dataframe([r for _, r in loaded], [str(p) for p, _ in loaded], lambda message: None)
            write_text(self.csv_path, df.to_csv(index=False))
        return self.csv_path
