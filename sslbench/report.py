"""Result tables and plots: strategies x training budgets, with confidence intervals and paired tests.

Every number is a mean over seeds. A cell's 95% confidence interval uses the
t-distribution with n-1 degrees of freedom; the difference to the supervised baseline
at the same budget pairs runs by seed (same training subset, same initialisation seed)
and is tested with a paired t-test (:func:`scipy.stats.ttest_rel`). Rows are strategies
(pretext x policy x mode) as plugins name them: only ``supervised`` is special, as the
baseline. When other settings vary between cells (another backbone, other options),
they are added to the row label, unless at their profile's default, and the baseline is
matched on them too (pretraining settings excepted: supervised cells have none).
"""

from __future__ import annotations

import functools
import html
import io
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from scipy import stats

from sslbench.config import at_later_default, canonical_options
from sslbench.errors import ConfigError
from sslbench.errors import did_you_mean as _hint
from sslbench.profiles import profile_config

BASELINE = "supervised"
FORMATS = ("terminal", "markdown", "csv", "latex", "html")

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


# ----------------------------------------------------------------------------------- math


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): a t-interval over *values*; low/high are NaN for fewer than 2 values."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class PairedDiff:
    """Mean of paired differences (strategy - baseline) with its t-interval and paired-test p."""

    n: int
    diff: float
    low: float
    high: float
    p: float


def paired_difference(values: Sequence[float], baseline: Sequence[float], confidence: float = 0.95) -> PairedDiff:
    """Paired comparison of equal-length sequences (same seeds in the same order)."""
    x = np.asarray(values, dtype=float)
    b = np.asarray(baseline, dtype=float)
    if x.shape != b.shape:
        raise ValueError("paired_difference needs sequences of equal length")
    n = int(x.size)
    if n < 2:
        return PairedDiff(n, float((x - b).mean()) if n else math.nan, math.nan, math.nan, math.nan)
    diff, low, high = mean_ci(x - b, confidence)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical differences: scipy warns, p is 0 or NaN
        p = float(stats.ttest_rel(x, b).pvalue)
    return PairedDiff(n, diff, low, high, p)


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


def _distinguishing(df: pd.DataFrame) -> list[str]:
    """Config columns (besides the strategy axes) whose values differ between cells."""
    supervised = df["strategy"] == BASELINE
    keys = []
    for column in sorted(c for c in df.columns if c.startswith("config.")):
        if column in _NOT_DISTINGUISHING or column.endswith((".num_workers", ".device", ".tensorboard")):
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
    if name.startswith("strategy_options.") and name not in defaults and _hashable(row[column]) is None:
        return True  # an option another strategy's cells set: this one runs at its own default
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
    """Summarise a results table (:func:`sslbench.results.load_results`) for one metric."""
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
        out.append(View(f"{metric}: difference to {BASELINE}", pd.DataFrame(), f"no {BASELINE} cells: nothing to compare with."))
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


# -------------------------------------------------------------------------------- formats


def _markdown_table(table: pd.DataFrame, align: str = "---:") -> str:
    """A GitHub-flavoured pipe table; the index is the first column, the others aligned by *align*."""

    def esc(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    header = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join(["---"] + [align] * len(table.columns)) + "|"]
    for index, row in table.iterrows():
        lines.append("| " + " | ".join([esc(index)] + [esc(v) for v in row]) + " |")
    return "\n".join(lines)


def _latex_table(table: pd.DataFrame, caption: str) -> str:
    styler = table.style.format(escape="latex").format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    text = styler.to_latex(
        caption=caption.replace("%", r"\%").replace("_", r"\_"), hrules=True, position="htbp",
        column_format="l" + "r" * len(table.columns),
    )  # fmt: skip
    return text.replace("±", r"$\pm$")


def compute_hours(df: pd.DataFrame) -> dict[str, float] | None:
    """Hours the finished cells ran, by phase (None when the records carry no timings).

    Sums the phases' own seconds, not ``timing.total_s``: a cell that reused a cached
    pretraining may have waited for it, and waiting is not compute.
    """
    phases = {"pretrain": "timing.pretrain_s", "downstream": "timing.downstream_s", "eval": "timing.eval_s"}
    if not all(column in df.columns for column in phases.values()):
        return None
    # a strategy's own phases (a teacher, pseudo-labelling, ...): the other seconds of its timing
    known = {*phases.values(), "timing.total_s", "timing.teacher_train_s"}
    own = [c for c in df.columns if c.startswith("timing.") and c.endswith("_s") and not c.endswith("_per_s") and c not in known]
    hours = {name: float(pd.to_numeric(df[column], errors="coerce").fillna(0).sum()) / 3600 for name, column in phases.items()}
    hours["strategy"] = sum(float(pd.to_numeric(df[c], errors="coerce").fillna(0).sum()) for c in own) / 3600
    return {**hours, "total": sum(hours.values())}


def _header(report: Report, sources: Sequence[str]) -> list[str]:
    done = len(report.df)
    where = f"; results from {', '.join(sources)}" if sources else ""
    lines = [f"{done} finished cell(s), {len(report.failed)} failed{where}."]
    compute = compute_hours(report.df)
    if compute:
        lines.append(
            f"Compute: {compute['total']:.1f} h of run time ({compute['pretrain']:.1f} h pretext pretraining, "
            f"{compute['downstream']:.1f} h downstream training, "
            + (f"{compute['strategy']:.1f} h strategies' own phases (teachers, pseudo-labelling), " if compute["strategy"] else "")
            + f"{compute['eval']:.1f} h evaluation); a cached pretraining"
            + (" or a shared teacher" if compute["strategy"] else "") + " counts once."
        )
    precision = _precision_line(report.df)
    if precision:
        lines.append(precision)
    if report.row_keys:
        lines.append("Settings that differ between cells (in row labels): " + ", ".join(k.removeprefix("config.") for k in report.row_keys) + ".")
    return lines


def _precision_line(df: pd.DataFrame) -> str | None:
    """Which precisions the cells trained at (records from before precision was recorded load as fp32).

    Cells at different precisions never share a row: the precision is a setting like any other,
    named in the labels of rows that ran off their profile's.
    """
    if "config.downstream.precision" not in df.columns or df.empty:
        return None
    pose = df["config.downstream.precision"].astype(str)
    pretext = df["config.pretrain.precision"].astype(str) if "config.pretrain.precision" in df.columns else pose
    trains = df["pretext"] != "none" if "pretext" in df.columns else pd.Series(False, index=df.index)
    ran = pd.Series([d if not t or p == d else f"{p} pretext + {d} pose" for d, p, t in zip(pose, pretext, trains)])
    counts = ran.value_counts()
    if len(counts) == 1:
        return f"Precision: {counts.index[0]} in every cell."
    listed = ", ".join(f"{name} in {n} cell(s)" for name, n in sorted(counts.items()))
    return f"Precision: {listed}; rows that ran at another precision than their profile's say so in their label."


def render(report: Report, fmt: str, sources: Sequence[str] = ()) -> str:
    """The report as text in *fmt* (markdown, csv, latex or html; terminal: plain text of the rich tables)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: unknown format {fmt!r}.{_hint(fmt, FORMATS)} Use one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return report.summary.to_csv(index=False)
    if fmt == "terminal":
        console = Console(width=160, record=True, file=io.StringIO(), color_system=None)
        print_terminal(report, console, sources)
        return console.export_text()
    parts = views(report)
    failed = failed_table(report)
    title = f"sslbench report: {report.metric}"
    if fmt == "markdown":
        out = [f"# {title}", "", *_header(report, sources), ""]
        for view in parts:
            out += [f"## {view.title}", ""]
            if not view.table.empty:
                out += [_markdown_table(view.table), ""]
            if view.note:
                out += [f"_{view.note}_", ""]
        if not failed.empty:
            out += ["## Failed cells", "", _markdown_table(failed.set_index("cell_id"), align="---"), ""]
        return "\n".join(out)
    if fmt == "latex":
        out = [f"% {title}", *(f"% {line}" for line in _header(report, sources)), ""]
        for view in parts:
            if not view.table.empty:
                out += [_latex_table(view.table, view.title), ""]
            if view.note:
                out += [f"% {view.note}", ""]
        return "\n".join(out)
    # html
    body = [f"<h1>{html.escape(title)}</h1>", *(f"<p>{html.escape(line)}</p>" for line in _header(report, sources))]
    for view in parts:
        body.append(f"<h2>{html.escape(view.title)}</h2>")
        if not view.table.empty:
            body.append(view.table.to_html(escape=True, border=0, classes="sslbench"))
        if view.note:
            body.append(f"<p><em>{html.escape(view.note)}</em></p>")
    if not failed.empty:
        body += ["<h2>Failed cells</h2>", failed.to_html(index=False, escape=True, border=0, classes="sslbench")]
    style = (
        "body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;margin-bottom:1em} "
        "th,td{padding:.25em .75em;border-bottom:1px solid #ccc;text-align:right} th:first-child,td:first-child{text-align:left}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def print_terminal(report: Report, console: Console, sources: Sequence[str] = ()) -> None:
    """The report as rich tables on *console*."""
    for line in _header(report, sources):
        console.print(line, highlight=False)
    for view in views(report):
        if view.table.empty:
            console.print(f"[bold]{view.title}[/]: {view.note}", highlight=False)
            continue
        console.print(f"\n[bold]{view.title}[/]", highlight=False)
        table = Table()
        table.add_column(view.table.index.name or "", overflow="fold")
        for column in view.table.columns:
            table.add_column(str(column), justify="right")
        for index, row in view.table.iterrows():
            table.add_row(str(index), *[str(v) for v in row])
        console.print(table)
        if view.note:
            console.print(view.note, style="dim", highlight=False)
    failed = failed_table(report)
    if not failed.empty:
        console.print("\n[bold]failed cells[/]")
        table = Table()
        for column in failed.columns:
            table.add_column(column, overflow="fold")
        for _, row in failed.iterrows():
            table.add_row(*[str(v) for v in row])
        console.print(table)


# ---------------------------------------------------------------------------------- plots


def _figure(width: float = 7.0, height: float = 4.5) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global backend state, saves with Agg

    return Figure(figsize=(width, height), layout="constrained")


def _strategy_axes(figure: Any, rows: int) -> Any:
    """Axes whose colour cycle gives each of *rows* strategies its own colour (tab20 past 10)."""
    from matplotlib import colormaps

    axes = figure.add_subplot()
    if rows > 10:
        axes.set_prop_cycle(color=colormaps["tab20"].colors)
    return axes


def _strategy_legend(axes: Any) -> None:
    """The legend beside the plot, where it hides no line or bar."""
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))


def plot_metric_vs_size(report: Report, path: Path) -> Path:
    """Mean metric against training-set size, one line per strategy, 95% CI bands."""
    figure = _figure(10.0, 4.5)
    axes = _strategy_axes(figure, len(report.rows))
    sizes = report.train_sizes
    for row in report.rows:
        data = report.summary[report.summary["row"] == row].sort_values("train_size")
        line = axes.plot(data["train_size"], data["mean"], marker="o", label=row)[0]
        band = data.dropna(subset=["ci_low", "ci_high"])
        if not band.empty:
            axes.fill_between(band["train_size"], band["ci_low"], band["ci_high"], color=line.get_color(), alpha=0.15)
    if len(sizes) >= 3 and sizes[0] > 0 and sizes[-1] / sizes[0] >= 8:
        axes.set_xscale("log")
    axes.set_xticks(sizes, [str(s) for s in sizes])
    axes.set_xlabel("labelled training images")
    axes.set_ylabel(f"{report.metric} (mean over seeds, 95% CI)")
    axes.grid(alpha=0.3)
    _strategy_legend(axes)
    figure.savefig(path, dpi=120)
    return path


def plot_parts(report: Report, size: int, path: Path) -> Path:
    """Per-part PCK@0.2 bars, one bar per strategy, at one training-set size."""
    parts = part_names(report.summary.columns)
    data = report.summary[report.summary["train_size"] == size].set_index("row")
    rows = [r for r in report.rows if r in data.index]
    figure = _figure(max(7.0, len(parts) * 0.25 * max(1, len(rows))) + 3.0, 4.5)
    axes = _strategy_axes(figure, len(rows))
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(parts))
    for i, row in enumerate(rows):
        axes.bar(x + (i - (len(rows) - 1) / 2) * width, [data.loc[row, f"part.{p}"] for p in parts], width, label=row)
    axes.set_xticks(x, parts)
    axes.set_ylabel("PCK@0.2 (mean over seeds)")
    axes.set_title(f"{size} training images")
    axes.grid(axis="y", alpha=0.3)
    _strategy_legend(axes)
    figure.savefig(path, dpi=120)
    return path


def read_curves(path: Path, warn: Callable[[str], None]) -> pd.DataFrame:
    """Per-epoch metrics from a ``metrics.jsonl`` file, nested values flattened; bad lines skipped."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            warn(f"{path}:{number}: unreadable line (interrupted write?); skipped")
            continue
        if isinstance(row, dict):
            rows.append(row)
    return pd.json_normalize(rows, sep=".") if rows else pd.DataFrame()


#: per-epoch values that are not learning curves (bookkeeping, speed, schedule)
_NOT_CURVES = ("epoch", "step", "time", "seconds", "lr", "images_per_s", "img_per_s", "wall", "improved")


def curve_columns(curves: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(loss columns, other metric columns) of per-epoch *curves* worth plotting.

    Per-stage, per-joint and per-part breakdowns, bookkeeping (lr, timing) and the report's
    scaled loss (``report_loss``, hundreds to thousands, a different scale from the training
    loss, about 0.05) are left out.
    """

    def wanted(column: str) -> bool:
        parts = column.split(".")
        breakdown = any(p.startswith(("stage", "joint", "part")) for p in parts) or parts[-2:-1] in (["joint"], ["part"])
        return not breakdown and not parts[-1].endswith(_NOT_CURVES) and "report_loss" not in parts

    numeric = [c for c in numeric_columns(curves) if wanted(c)]
    losses = [c for c in numeric if "loss" in c]
    return losses, [c for c in numeric if c not in losses]


def plot_curves(record: pd.Series, path: Path, warn: Callable[[str], None]) -> Path | None:
    """Training and validation curves of one cell: losses left, other metrics right.

    Per-stage, per-joint and per-part breakdowns and bookkeeping (lr, timing) are left out.
    """
    source = record.get("files.metrics_jsonl")
    copy, origin = record.get("files.curves"), record.get("source")
    if isinstance(copy, str) and isinstance(origin, str) and (Path(origin).parent.parent / copy).is_file():
        source = str(Path(origin).parent.parent / copy)  # the copy kept in the results directory
    if not isinstance(source, str) or not Path(source).is_file():
        warn(f"cell {record['cell_id']}: no per-epoch metrics file ({source}); no curves")
        return None
    curves = read_curves(Path(source), warn)
    losses, others = curve_columns(curves)
    numeric = losses + others
    if curves.empty or not numeric:
        warn(f"cell {record['cell_id']}: {source} holds no numeric per-epoch values; no curves")
        return None
    from matplotlib.ticker import MaxNLocator

    x = curves["epoch"] if "epoch" in curves.columns else pd.Series(range(1, len(curves) + 1))
    figure = _figure(11 if losses and others else 7, 4)
    panels = [(losses, "loss"), (others, "metric")]
    panels = [(cols, label) for cols, label in panels if cols]
    for i, (columns, label) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), i)
        for column in columns:
            values = curves[column]
            axes.plot(x[values.notna()], values.dropna(), marker=".", label=column)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("epoch")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.suptitle(f"{record['strategy']}, {record['train_size']} images, seed {record['seed']} ({record['cell_id']})")
    figure.savefig(path, dpi=120)
    return path


def best_cells(report: Report) -> list[str]:
    """The best cell of each strategy row by the report metric (lower is better for losses)."""
    lower = "loss" in report.metric
    chosen = []
    for row in report.rows:
        group = report.df[report.df["row"] == row]
        index = group[report.metric].idxmin() if lower else group[report.metric].idxmax()
        chosen.append(str(report.df.loc[index, "cell_id"]))
    return chosen


def resolve_cells(report: Report, wanted: Sequence[str]) -> list[str]:
    """Full cell ids for ids or unique id prefixes; :class:`ConfigError` for unknown ones."""
    known = list(report.df["cell_id"].astype(str))
    out = []
    for text in wanted:
        matches = [c for c in known if c.startswith(text)]
        if len(matches) != 1:
            what = "is ambiguous" if matches else "is not a finished cell"
            raise ConfigError(f"--curves: {text!r} {what}.{_hint(text, known)}")
        out.append(matches[0])
    return out


def write_plots(
    report: Report, directory: Path | str, curves: Sequence[str] | None = None, warn: Callable[[str], None] | None = None
) -> list[Path]:
    """PNG plots into *directory*: metric vs train size, per-part bars per size, curves of chosen cells."""
    if warn is None:
        warn = lambda message: warnings.warn(message, stacklevel=2)  # noqa: E731
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    safe = report.metric.replace("@", "_at_").replace("/", "_")
    written = [plot_metric_vs_size(report, directory / f"{safe}_vs_train_size.png")]
    if part_names(report.summary.columns):
        written += [plot_parts(report, size, directory / f"parts_{size}.png") for size in report.train_sizes]
    if curves:  # chosen cells, each under its own id
        named = {f"curves_{cell_id}.png": cell_id for cell_id in resolve_cells(report, curves)}
    else:  # the best cell of each row, under the row's name, so a re-render replaces it when the best cell changes
        named = {}
        for row, cell_id in zip(report.rows, best_cells(report)):
            name = f"curves_best_{_file_slug(row)}"
            named[f"{name}_{cell_id}.png" if f"{name}.png" in named else f"{name}.png"] = cell_id
    for name, cell_id in named.items():
        record = report.df[report.df["cell_id"] == cell_id].iloc[0]
        path = plot_curves(record, directory / name, warn)
        if path is not None:
            written.append(path)
    return written


def _file_slug(text: str) -> str:
    """*text* as a portable file-name part: runs of characters other than letters, digits, '.', '+', '-' become '_'."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")
