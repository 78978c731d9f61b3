"""A report's plots: the metric against the budget, per-part bars, and training curves of chosen cells."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sslbench.contract.errors import ConfigError
from sslbench.contract.errors import did_you_mean as _hint
from sslbench.results.report.tables import Report, numeric_columns, part_names

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
        breakdown = any(p.startswith(("stage", "joint", "part")) for p in parts) or parts[-2:-1] in (
            ["joint"],
            ["part"],
        )
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
    report: Report,
    directory: Path | str,
    curves: Sequence[str] | None = None,
    warn: Callable[[str], None] | None = None,
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
