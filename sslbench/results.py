"""The results store: one JSON record per benchmark cell, and a flat table for pandas.

Layout of a results directory (default ``./results/<sweep name>/``)::

    cells/<cell_id>.json   one record per cell (the source of truth), written atomically
    curves/<cell_id>.jsonl per-epoch training and validation metrics of the cell (JSON lines)
    results.csv            the flat table below, regenerated after every finished cell
    logs/<cell_id>.log     output of cells run in worker processes, and tracebacks of failures
    locks/                 claim locks: a cell is run by one process at a time

Read it with plain pandas, either the derived table or the records themselves::

    import pandas as pd
    df = pd.read_csv("results/example-synthetic/results.csv")
    # or, straight from the records (same columns before renaming):
    import glob, json
    df = pd.json_normalize([json.load(open(p)) for p in glob.glob("results/example-synthetic/cells/*.json")])
    # or: sslbench.results.load_results("results/example-synthetic")

Columns of ``results.csv`` / :func:`load_results` (one row per cell; PCK and AUC in percent, 0-100):

==============================  =====================================================================
column                          meaning
==============================  =====================================================================
``cell_id``                     hash of the full run config (``RunConfig.cell_id``); the record's file name
``status``                      ``done`` or ``failed`` (failed cells have no metrics)
``error``                       why a failed cell failed (empty when done)
``strategy``                    ``supervised`` or ``<pretext>/<policy>`` plus ``:frozen`` when transferred layers were frozen
``pretext``                     pretext task (``none`` for supervised training from scratch)
``policy``                      transfer policy (``none``, ``all``, ``first``, ``first+middle``, or a plugin's)
``freeze``                      whether the transferred layers were frozen downstream
``mode``                        ``scratch``, ``fine-tuned`` or ``frozen``
``backbone``                    network name (``cpm6``, ...); options are in ``config.backbone_options.*``
``profile``                     profile the config was built from (``paper``, ``cpu``, ``smoke``)
``data`` / ``protocol``         labelled dataset and its split protocol
``pretext_data``                unlabelled dataset of the pretext phase
``train_size``                  the labelled budget: training images drawn for the cell (the whole pool
                                when ``config.train_size`` is empty), in done and failed records alike
``seed``                        run seed (training budget subset, initialisation, augmentation)
``pck@0.2`` ``pck@0.1``         test PCK at 0.2 / 0.1 x torso size, all 14 joints (other skeletons: all
                                their labelled joints, x their normaliser: MPII head size, COCO box side)
``pckh@0.5``                    MPII: PCKh@0.5, every joint but pelvis and thorax (head-normalised skeletons)
``oks.*``                       COCO-format data: pycocotools' keypoint AP and AR (``oks.ap``, ``oks.ap50``,
                                ``oks.ap75``, ``oks.ap_medium``, ``oks.ap_large``, ``oks.ar``, ...), in percent
``auc@0.2``                     area under the PCK curve for thresholds 0..0.2
``val_pck@0.2``                 validation PCK@0.2 of the selected (best) epoch
``test_loss``                   test loss of the selected checkpoint
``report_loss``                 the original report's scaled MSE on the test set (lower is better)
``best_epoch``                  epoch selected on validation
``converge_epoch``              epoch after which validation stopped improving (the report's "converge epochs")
``epochs_run``                  downstream epochs actually trained (early stopping ends sooner)
``joint.<name>``                test PCK@0.2 of one joint (``joint.r_ankle`` ... ``joint.head_top``; the
                                dataset skeleton's joint names, in its order)
``part.<Part>``                 test PCK@0.2 per part, left and right averaged: Head, Shoulder, Elbow,
                                Wrist, Hip, Knee, Ankle, and Mean (the skeleton's parts, in its order)
``skeleton``                    the dataset's skeleton when it is not LSP's (``coco``, ``mpii``; records of
                                such cells also name its joints and parts in order)
``pretext.<name>``              held-out metrics of the pretext task (e.g. ``pretext.loss``,
                                ``pretext.tile_acc`` of jigsaw-heatmap); empty for supervised cells
``strategy_metrics.<name>``     a strategy's own diagnostics (pseudo-label accuracy, collapse)
``timing.pretrain_s``           seconds of pretext training (0 when it came from the cache)
``timing.pretrain_cached``      whether the pretrained weights were reused from an earlier cell
``timing.downstream_s``         seconds of downstream training
``timing.eval_s``               seconds of the final test evaluation
``timing.total_s``              wall seconds of the whole cell
``timing.downstream_img_per_s`` downstream training throughput (images per second)
``timing.pretrain_img_per_s``   pretext training throughput of the run that trained the weights
                                (also when reused from the cache; empty for supervised cells)
``env.*``                       where it ran: ``env.sslbench``, ``env.torch``, ``env.python``,
                                ``env.platform``, ``env.device``, ``env.cpu``, ``env.threads``,
                                ``env.gpu``, ``env.commit`` (``+dirty`` marks local changes),
                                ``env.precision`` (``bf16`` or ``fp32``: what the downstream phase
                                trained at; the pretext phase's is ``config.pretrain.precision``),
                                ``env.cpu_bf16`` (whether the CPU has native bf16). Records from before
                                precision was recorded say ``auto`` in their config: that ran fp32, and
                                loads as fp32
``files.*``                     ``files.run_dir``, ``files.metrics_jsonl`` (per-epoch curves, JSON lines),
                                ``files.curves`` (a copy of them inside the results directory),
                                ``files.best_checkpoint``; failed cells: ``files.log`` (the traceback)
``config.<field>``              every field of the run config, nested ones dotted
                                (``config.downstream.lr``, ``config.backbone_options.width``)
``schema``                      record format version (currently 1)
``created``                     ISO time the record was written
``source``                      the record file the row was read from
==============================  =====================================================================

Records are written atomically (temporary file in the same directory, fsync, ``os.replace``),
so a process killed at any moment leaves either the old record or the new one, never a
truncated file. Records written by an older or newer sslbench load as far as they can be
read; missing columns are left empty and reported as warnings.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import filelock
import pandas as pd

from sslbench.atomic import write_bytes, write_text
from sslbench.config import LATER_FIELDS
from sslbench.errors import DataError
from sslbench.joints import JOINT_NAMES, PARTS

#: version of the record format written by this sslbench
SCHEMA = 1

#: top-level keys of a record of the current schema
RECORD_KEYS: tuple[str, ...] = (
    "schema", "cell_id", "status", "error", "strategy", "config", "seed", "train_size",
    "metrics", "pretext_metrics", "strategy_metrics", "timing", "env", "files", "created", "skeleton",
)  # fmt: skip

#: columns every done cell of the current schema has (missing ones are warned about)
EXPECTED_METRICS: tuple[str, ...] = (
    "pck@0.2", "pck@0.1", "auc@0.2", "test_loss", "report_loss", "val_pck@0.2",
    "best_epoch", "converge_epoch", "epochs_run",
)  # fmt: skip
EXPECTED_TIMING: tuple[str, ...] = (
    "timing.pretrain_s", "timing.pretrain_cached", "timing.downstream_s", "timing.eval_s",
    "timing.total_s", "timing.downstream_img_per_s", "timing.pretrain_img_per_s",
)  # fmt: skip

#: the identification columns, first in the table
ID_COLUMNS: tuple[str, ...] = (
    "cell_id", "status", "error", "strategy", "pretext", "policy", "freeze", "mode", "backbone",
    "profile", "data", "protocol", "pretext_data", "train_size", "seed",
)  # fmt: skip

Warn = Callable[[str], None]


class ResultsWarning(UserWarning):
    """A record could not be read completely (corrupt, interrupted write, other schema)."""


def _default_warn(message: str) -> None:
    warnings.warn(message, ResultsWarning, stacklevel=3)


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


def records_dataframe(records: list[dict[str, Any]], sources: list[str] | None = None, warn: Warn | None = None) -> pd.DataFrame:
    """The flat table (columns documented above) of already-loaded records."""
    warn = _default_warn if warn is None else warn
    if not records:
        return pd.DataFrame(columns=list(ID_COLUMNS))
    _check_schemas(records, sources, warn)
    records, joints, parts = _skeleton_orders(records)
    df = pd.json_normalize(records, sep=".")
    df = df.rename(columns=_column_name)
    if sources is not None:
        df["source"] = sources
    for name, default in LATER_FIELDS.items():  # records from before a field ran with its old behaviour
        column = f"config.{name}"
        df[column] = df[column].fillna(default) if column in df.columns else default
    _legacy_precision(df)
    # derived identification columns, from the config when the record lacks them
    for column in ("pretext", "policy", "freeze", "backbone", "profile", "data", "protocol", "pretext_data"):
        if f"config.{column}" in df.columns:
            df[column] = df[f"config.{column}"]
    if "strategy" not in df.columns and {"pretext", "policy", "freeze"} <= set(df.columns):
        df["strategy"] = [_strategy(p, q, f) for p, q, f in zip(df["pretext"], df["policy"], df["freeze"])]
    if {"pretext", "freeze"} <= set(df.columns):
        df["mode"] = [
            "scratch" if p == "none" else ("frozen" if bool(f) else "fine-tuned")
            for p, f in zip(df["pretext"], df["freeze"])
        ]
    _warn_missing(df, warn)
    for column in ID_COLUMNS:
        if column not in df.columns:
            df[column] = None
    for column in ("train_size", "seed"):
        df[column] = pd.to_numeric(df[column], errors="coerce").astype("Int64")
    return df[_column_order(df.columns, joints, parts)].sort_values(["strategy", "train_size", "seed", "cell_id"], na_position="last", kind="stable").reset_index(drop=True)


def _legacy_precision(df: pd.DataFrame) -> None:
    """Precision ``auto`` of records that do not say what ran (``env.precision``) means fp32.

    Before runs resolved ``auto`` (:meth:`sslbench.config.RunConfig.resolved`), every recorded
    cell ran on AVX2-only machines, where auto meant fp32. ``env.precision`` is filled in too.
    """
    recorded = df["env.precision"].notna() if "env.precision" in df.columns else pd.Series(False, index=df.index)
    for column in ("config.pretrain.precision", "config.downstream.precision"):
        if column in df.columns:
            df.loc[~recorded & (df[column] == "auto"), column] = "fp32"
    if "config.downstream.precision" in df.columns:
        ran = df["config.downstream.precision"]
        df["env.precision"] = df["env.precision"].where(recorded, ran) if "env.precision" in df.columns else ran


def _skeleton_orders(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """(records with ``skeleton`` as its name, the joint and part names in the skeletons' order): records of
    a skeleton other than LSP's name its joints and parts (their JSON sorts ``per_joint`` by name)."""
    joints: list[str] = []
    parts: list[str] = []
    flat = []
    for record in records:
        skeleton = record.get("skeleton")
        if isinstance(skeleton, dict):
            joints += [j for j in skeleton.get("joints", []) if j not in joints]
            parts += [p for p in skeleton.get("parts", []) if p not in parts]
            record = {**record, "skeleton": skeleton.get("name")}
        flat.append(record)
    joints += [j for j in JOINT_NAMES if j not in joints]  # then LSP's
    parts += [p for p in (*PARTS, "Mean") if p not in parts]
    return flat, joints, parts


def _column_order(columns: Iterable[str], joints: Sequence[str] = JOINT_NAMES, parts: Sequence[str] = (*PARTS, "Mean")) -> list[str]:
    """Identification, metrics (documented ones first), breakdowns (in skeleton order), timing, env, files,
    config, bookkeeping."""
    rest = [c for c in columns if c not in ID_COLUMNS]
    groups = ("joint.", "part.", "pretext.", "timing.", "env.", "files.", "config.")
    last = ("schema", "created", "source")
    metrics = [c for c in EXPECTED_METRICS if c in rest]
    metrics += sorted(c for c in rest if c not in metrics and c not in last and not c.startswith(groups))
    ordered = list(ID_COLUMNS) + metrics
    known = {"joint.": [f"joint.{j}" for j in joints], "part.": [f"part.{p}" for p in parts]}
    for prefix in groups:
        found = [c for c in rest if c.startswith(prefix)]
        order = known.get(prefix, [])
        ordered += sorted(found, key=lambda c: (order.index(c) if c in order else len(order), c))
    return ordered + [c for c in last if c in rest]


def _strategy(pretext: Any, policy: Any, freeze: Any) -> str:
    if pretext == "none":
        return "supervised"
    return f"{pretext}/{policy}{':frozen' if bool(freeze) else ''}"


def _column_name(name: str) -> str:
    for prefix, new in (
        ("metrics.per_joint.", "joint."),
        ("metrics.per_part.", "part."),
        ("metrics.", ""),
        ("pretext_metrics.", "pretext."),
    ):
        if name.startswith(prefix):
            return new + name[len(prefix):]
    return name


def _check_schemas(records: list[dict[str, Any]], sources: list[str] | None, warn: Warn) -> None:
    names = sources or [str(r.get("cell_id")) for r in records]
    other: dict[Any, list[str]] = {}
    unknown: dict[str, list[str]] = {}
    for name, record in zip(names, records):
        schema = record.get("schema")
        if schema != SCHEMA:
            other.setdefault(schema, []).append(Path(name).name)
        for key in set(record) - set(RECORD_KEYS):
            unknown.setdefault(key, []).append(Path(name).name)
    for schema, files in sorted(other.items(), key=lambda item: str(item[0])):
        warn(
            f"{len(files)} record(s) written by {_schema_origin(schema)} (schema {schema!r}, this version reads "
            f"{SCHEMA}), e.g. {files[0]}: reading the fields this version knows"
        )
    for key, files in sorted(unknown.items()):
        warn(f"{len(files)} record(s) have field {key!r} unknown to this sslbench (e.g. {files[0]}); kept as column(s)")


def _schema_origin(schema: Any) -> str:
    """Who wrote a record of *schema* (not :data:`SCHEMA`): a newer, an older or an unknown sslbench."""
    if schema is None:
        return "an sslbench that recorded no schema"
    if isinstance(schema, bool):
        return "an unknown program"
    try:
        number = float(schema)
    except (TypeError, ValueError):
        return "an unknown program"
    if number != number:  # NaN: a table cell of a record without the field
        return "an sslbench that recorded no schema"
    if number > SCHEMA:
        return "a newer sslbench"
    if number < SCHEMA:
        return "an older sslbench"
    return "an sslbench that wrote its schema as text"  # "1", 1.0: the same format, spelt otherwise


def _warn_missing(df: pd.DataFrame, warn: Warn) -> None:
    """Add expected columns that records lack (empty), with one warning for each kind of gap."""
    done = df["status"] == "done" if "status" in df.columns else pd.Series(True, index=df.index)
    if not done.any():
        return
    expected = list(EXPECTED_METRICS) + list(EXPECTED_TIMING)
    # LSP's parts, unless every record is of another skeleton (which names its own)
    lsp_parts = "skeleton" not in df.columns or df["skeleton"].isna().any()
    expected += [f"part.{p}" for p in ((*PARTS, "Mean") if lsp_parts else ("Mean",))]
    absent = [c for c in expected if c not in df.columns]
    for column in absent:
        df[column] = float("nan")
    schemas = df["schema"] if "schema" in df.columns else pd.Series(None, index=df.index, dtype=object)

    def why(rows: pd.Series) -> str:
        """Who wrote the lacking records, by their schema (a newer sslbench is not an older one)."""
        origins = sorted({_schema_origin(v) if v != SCHEMA else "this sslbench" for v in schemas[rows]})
        if origins == ["this sslbench"]:
            return "incomplete record(s)"
        return "written by " + " and ".join(o for o in origins if o != "this sslbench")

    if absent:
        warn(f"no record has column(s) {', '.join(absent)} ({why(done)}); left empty")
    gaps: dict[tuple[int, str], list[str]] = {}
    for column in expected:
        rows = done & df[column].isna()
        lacking = int(rows.sum())
        if column not in absent and lacking and column != "timing.pretrain_img_per_s":  # None when cached
            gaps.setdefault((lacking, why(rows)), []).append(column)
    for (lacking, reason), columns in sorted(gaps.items()):
        warn(f"{lacking} finished record(s) lack column(s) {', '.join(columns)} ({reason}); left empty")


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
