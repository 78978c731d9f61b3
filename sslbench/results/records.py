"""Result records and the flat table made of them: what a record holds, and every column of ``results.csv``.

A record is one JSON object per benchmark cell (:mod:`sslbench.results.store` stores them);
:func:`records_dataframe` flattens records into the table that ``results.csv`` and
:func:`sslbench.results.store.load_results` give, with these columns (one row per cell; PCK and AUC
in percent, 0-100):

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

Records written by an older or newer sslbench load as far as they can be read; missing
columns are left empty and reported as warnings.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import pandas as pd

from sslbench.contract.config import LATER_FIELDS
from sslbench.data.joints import JOINT_NAMES, PARTS

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


def records_dataframe(
    records: list[dict[str, Any]], sources: list[str] | None = None, warn: Warn | None = None
) -> pd.DataFrame:
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
    return (
        df[_column_order(df.columns, joints, parts)]
        .sort_values(["strategy", "train_size", "seed", "cell_id"], na_position="last", kind="stable")
        .reset_index(drop=True)
    )


def _legacy_precision(df: pd.DataFrame) -> None:
    """Precision ``auto`` of records that do not say what ran (``env.precision``) means fp32.

    Before runs resolved ``auto`` (:func:`sslbench.training.device.resolve_precision`), every recorded
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


def _column_order(
    columns: Iterable[str], joints: Sequence[str] = JOINT_NAMES, parts: Sequence[str] = (*PARTS, "Mean")
) -> list[str]:
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
            return new + name[len(prefix) :]
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
