"""The report's tables: rows are strategies, columns labelled-data budgets, cells means over seeds.

Rows are strategies (pretext x policy x mode) as plugins name them: only ``supervised`` is
special, as the baseline. When other settings vary between cells (another backbone, other
options), they are added to the row label, unless at their profile's default, and the baseline
is matched on them too (pretraining settings excepted: supervised cells have none).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sslbench.contract.config import OUTPUT_ONLY, at_later_default, canonical_options
from sslbench.contract.errors import ConfigError
from sslbench.contract.errors import did_you_mean as _hint
from sslbench.profiles import profile_config
from sslbench.results.report.statistics import PairedDiff, mean_ci, paired_difference

BASELINE = "supervised"


def part_names(columns: Iterable[str]) -> list[str]:
    """The parts of per-part tables among *columns* (``part.<Part>``), in their order, ``Mean`` last:
    the dataset skeleton's order, as the results table orders them (LSP's for LSP)."""
    parts = [str(c).split(".", 1)[1] for c in columns if str(c).startswith("part.")]
    return [p for p in parts if p != "Mean"] + (["Mean"] if "Mean" in parts else [])


#: config columns that never distinguish strategies (the axes, machine paths, parallelism)
_NOT_DISTINGUISHING = {
    "config.seed", "config.train_size", "config.pretext", "config.policy", "config.freeze",
    "config.root", "config.pretext_root", "config.strategy", "config.unlabelled_root",
}  # fmt: skip
#: what a row is run on: always named in a label when it varies, even at the profile's value
_ALWAYS_NAMED = {"config.profile", "config.backbone", "config.data", "config.protocol", "config.pretext_data"}
#: settings that supervised cells do not have (pretraining, transfer, a strategy's options and pool)
_NOT_SUPERVISED = (
    "config.pretext_options.", "config.pretrain.", "config.pretext_data", "config.pretext_images",
    "config.pretrain_seed", "config.transfer_lr", "config.strategy_options.", "config.unlabelled_data",
)  # fmt: skip


# ------------------------------------------------------------------------------ the report


@dataclass
class Report:
    """Finished cells, how rows are labelled, and the per (row, train size) summary."""

    df: pd.DataFrame
    metric: str
    summary: pd.DataFrame
    row_keys: list[str] = field(default_factory=list)
    failed: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def rows(self) -> list[str]:
        """Row labels, the baseline first, then by name."""
        strategy = dict(zip(self.summary["row"], self.summary["strategy"]))
        return sorted(strategy, key=lambda row: (strategy[row] != BASELINE, row))

    @property
    def train_sizes(self) -> list[int]:
        return sorted(int(s) for s in self.summary["train_size"].unique())

    @property
    def has_baseline(self) -> bool:
        return bool((self.summary["strategy"] == BASELINE).any())


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _not_supervised(column: str) -> bool:
    return column.startswith(_NOT_SUPERVISED)


#: phase settings that change no result: never a distinguishing column
_NOT_A_RESULT = (".num_workers", ".device", *(f".{name}" for name in OUTPUT_ONLY))


def _distinguishing(df: pd.DataFrame) -> list[str]:
    """Config columns (besides the strategy axes) whose values differ between cells."""
    supervised = df["strategy"] == BASELINE
    keys = []
    for column in sorted(c for c in df.columns if c.startswith("config.")):
        if column in _NOT_DISTINGUISHING or column.endswith(_NOT_A_RESULT):
            continue
        values = df.loc[~supervised, column] if _not_supervised(column) else df[column]
        if values.map(_hashable).nunique(dropna=False) > 1:
            keys.append(column)
    return keys


@functools.cache
def _profile_defaults(profile: str, backbone: str | None = None) -> dict[str, Any]:
    """The flattened settings of *profile* for *backbone* (``pretrain.epochs`` -> 5); empty for an unknown profile."""
    try:
        return pd.json_normalize(profile_config(profile, backbone).to_dict(), sep=".").iloc[0].to_dict()
    except ConfigError:  # a record from a profile this version no longer has
        return {}


def _at_default(row: pd.Series, column: str) -> bool:
    """Whether the row's setting is its profile's (or, for a later field, the old behaviour's);
    what it runs on (:data:`_ALWAYS_NAMED`) never is."""
    if column in _ALWAYS_NAMED:
        return False
    name = column.removeprefix("config.")
    backbone = row.get("config.backbone")
    defaults = _profile_defaults(str(row.get("config.profile")), backbone if isinstance(backbone, str) else None)
    if name.startswith("backbone_options.") and name not in defaults and _hashable(row[column]) is None:
        return True  # an option the profile gives other backbones only (a CPM's norm on a timm row)
    if name.startswith(("strategy_options.", "pretext_options.")) and _hashable(row[column]) is None:
        return True  # an option other strategies' or pretexts' cells set: this one runs at its own default
    if name.startswith("pretext_options.") and _hashable(row[column]) is not None:
        option, value = name.removeprefix("pretext_options."), row[column]  # spelled out at the pretext's default?
        value = value.item() if isinstance(value, np.generic) else value
        if not canonical_options("pretext", str(row.get("config.pretext")), {option: value}):
            return True
    return at_later_default(name, row[column]) or (
        name in defaults and _hashable(defaults[name]) == _hashable(row[column])
    )


def _row_label(row: pd.Series, keys: list[str]) -> str:
    """The strategy plus the settings that tell its cells apart. Settings at their default
    (:func:`_at_default`) are left out, so adding cells that vary one setting, or a later field,
    keeps the names of the rows that ran at the defaults."""
    extra = [
        f"{k.removeprefix('config.')}={_hashable(row[k])}"
        for k in keys
        if not (row["strategy"] == BASELINE and _not_supervised(k)) and not _at_default(row, k)
    ]
    return f"{row['strategy']} [{', '.join(extra)}]" if extra else str(row["strategy"])


def numeric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]


def build_report(df: pd.DataFrame, metric: str = "pck@0.2") -> Report:
    """Summarise a results table (:func:`sslbench.results.store.load_results`) for one metric."""
    if "status" not in df.columns:
        df = df.assign(status="done")
    failed = df[df["status"] == "failed"]
    done = df[(df["status"] == "done")].copy()
    if metric not in df.columns or metric not in numeric_columns(df):
        candidates = [c for c in numeric_columns(df) if not c.startswith(("config.", "env."))]
        raise ConfigError(
            f"--metric: no numeric column {metric!r} in the results.{_hint(metric, candidates)} "
            f"Available: {', '.join(candidates[:20])}{' ...' if len(candidates) > 20 else ''}"
        )
    done = done[done[metric].notna() & done["train_size"].notna()]
    if done.empty:
        raise ConfigError(f"no finished cell has a value for {metric!r} ({len(failed)} failed cell(s))")
    keys = _distinguishing(done)
    done["row"] = [_row_label(row, keys) for _, row in done.iterrows()]
    pair_keys = [k for k in keys if not _not_supervised(k)]
    for key in pair_keys:  # as text, so that missing values (None) match each other too
        done[f"_pair:{key}"] = done[key].map(lambda v: json.dumps(_hashable(v), sort_keys=True, default=str))
    pair_columns = [f"_pair:{k}" for k in pair_keys]
    baseline = done[done["strategy"] == BASELINE]
    present = [c for c in done.columns if done[c].notna().any()]
    extra = [c for c in ("test_loss", "report_loss", "converge_epoch", "best_epoch", "epochs_run") if c in present]
    parts = [f"part.{p}" for p in part_names(present)]

    rows = []
    for (label, size), group in done.groupby(["row", "train_size"], sort=True):
        values = group[metric].to_numpy(dtype=float)
        mean, low, high = mean_ci(values)
        entry: dict[str, Any] = {
            "row": label, "strategy": group["strategy"].iloc[0], "train_size": int(size),
            "metric": metric, "n": int(values.size), "mean": mean,
            "sd": float(np.std(values, ddof=1)) if values.size > 1 else math.nan,
            "ci_low": low, "ci_high": high, "seeds": " ".join(str(s) for s in sorted(group["seed"].dropna())),
        }  # fmt: skip
        entry.update({k.removeprefix("config."): _hashable(group[k].iloc[0]) for k in keys})
        match = baseline[baseline["train_size"] == size]
        for column in pair_columns:
            match = match[match[column] == group[column].iloc[0]]
        paired = group.merge(match[["seed", metric]], on="seed", suffixes=("", "_baseline")).dropna(
            subset=[metric, f"{metric}_baseline"]
        )
        if entry["strategy"] == BASELINE or match.empty:
            test = PairedDiff(0, math.nan, math.nan, math.nan, math.nan)
        else:
            test = paired_difference(paired[metric].to_numpy(float), paired[f"{metric}_baseline"].to_numpy(float))
        entry.update(n_pairs=test.n, diff=test.diff, diff_low=test.low, diff_high=test.high, p=test.p)
        entry.update({c: float(group[c].mean()) for c in extra + parts})
        rows.append(entry)
    summary = pd.DataFrame(rows)
    return Report(df=done, metric=metric, summary=summary, row_keys=keys, failed=failed)


# ---------------------------------------------------------------------------------- views


@dataclass
class View:
    """One table of the report: a title, cells as text, and a note under it."""

    title: str
    table: pd.DataFrame
    note: str = ""


def _num(value: float, digits: int = 1) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _p(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return "p<0.001" if value < 0.001 else f"p={value:.3f}"


def _pivot(report: Report, cell: Callable[[pd.Series], str]) -> pd.DataFrame:
    """Strategies x training-set sizes, each cell rendered by *cell* from its summary row."""
    table = pd.DataFrame("", index=report.rows, columns=[str(c) for c in report.train_sizes])
    for _, entry in report.summary.iterrows():
        if str(entry["train_size"]) in table.columns:
            table.loc[entry["row"], str(entry["train_size"])] = cell(entry)
    table.index.name = "strategy"
    table.columns.name = "train images"
    return table


def views(report: Report) -> list[View]:
    """The report's tables in order: metric, difference to baseline, per part, report-style view."""
    metric = report.metric

    def mean_cell(e: pd.Series) -> str:
        if e["n"] < 2:
            return f"{_num(e['mean'])} (n=1)"
        return f"{_num(e['mean'])} ± {_num(e['mean'] - e['ci_low'])} (n={e['n']})"

    def diff_cell(e: pd.Series) -> str:
        if e["strategy"] == BASELINE:
            return "baseline"
        if e["n_pairs"] < 2:
            return f"n/a ({e['n_pairs']} pair{'s' if e['n_pairs'] != 1 else ''})"
        return f"{e['diff']:+.1f} ± {_num(e['diff'] - e['diff_low'])}, {_p(e['p'])} (n={e['n_pairs']})"

    out = [
        View(
            f"{metric} by number of training images: mean ± 95% CI over seeds",
            _pivot(report, mean_cell),
            "CI: t-distribution, n-1 degrees of freedom; n = number of seeds.",
        )
    ]
    if report.has_baseline:
        out.append(
            View(
                f"{metric}: difference to {BASELINE} with the same training images, paired by seed",
                _pivot(report, diff_cell),
                "mean difference ± 95% CI of the paired differences; p from a paired t-test (scipy ttest_rel); "
                "n/a with fewer than 2 seed pairs.",
            )
        )
    else:
        out.append(
            View(
                f"{metric}: difference to {BASELINE}", pd.DataFrame(), f"no {BASELINE} cells: nothing to compare with."
            )
        )
    parts = part_names(report.summary.columns)
    if parts:
        for size in report.train_sizes:
            rows = report.summary[report.summary["train_size"] == size].set_index("row")
            table = pd.DataFrame(
                {p: [_num(rows.loc[r, f"part.{p}"]) if r in rows.index else "" for r in report.rows] for p in parts},
                index=report.rows,
            )
            table.index.name = "strategy"
            out.append(View(f"PCK@0.2 per part, {size} training images (mean over seeds)", table))
    if {"report_loss", "converge_epoch"} <= set(report.summary.columns):

        def report_cell(e: pd.Series) -> str:
            loss, epoch = e["report_loss"], e["converge_epoch"]
            if math.isnan(loss):
                return ""
            return f"{loss:.1f} ({'?' if math.isnan(epoch) else f'{epoch:.0f}'})"

        out.append(
            View(
                "Report-style view by number of training images: test loss of the selected checkpoint (converge epoch)",
                _pivot(report, report_cell),
                "The table of the report this project grew out of, in its terms: report loss = the final stage's "
                "test MSE x 46*46*15, the scale of that report's loss figures (lower is better); converge epoch = "
                "the first epoch whose validation PCK@0.2 came within 1% of the best. Means over seeds; "
                "selected on validation, not on test.",
            )
        )
    return out


def failed_table(report: Report) -> pd.DataFrame:
    columns = [c for c in ("cell_id", "strategy", "train_size", "seed", "error") if c in report.failed.columns]
    return report.failed[columns].reset_index(drop=True)
