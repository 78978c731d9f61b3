"""A report rendered: terminal (rich), markdown, csv, latex and html."""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from sslbench.contract.errors import ConfigError
from sslbench.contract.errors import did_you_mean as _hint
from sslbench.results.report.tables import Report, failed_table, views

FORMATS = ("terminal", "markdown", "csv", "latex", "html")

# -------------------------------------------------------------------------------- formats


def _markdown_table(table: pd.DataFrame, align: str = "---:") -> str:
    """A GitHub-flavoured pipe table; the index is the first column, the others aligned by *align*."""

    def esc(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    header = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = [
        "| " + " | ".join(esc(h) for h in header) + " |",
        "|" + "|".join(["---"] + [align] * len(table.columns)) + "|",
    ]
    for index, row in table.iterrows():
        lines.append("| " + " | ".join([esc(index)] + [esc(v) for v in row]) + " |")
    return "\n".join(lines)


def _latex_table(table: pd.DataFrame, caption: str) -> str:
    styler = (
        table.style.format(escape="latex").format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    )
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
    own = [
        c
        for c in df.columns
        if c.startswith("timing.") and c.endswith("_s") and not c.endswith("_per_s") and c not in known
    ]
    hours = {
        name: float(pd.to_numeric(df[column], errors="coerce").fillna(0).sum()) / 3600
        for name, column in phases.items()
    }
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
            + (
                f"{compute['strategy']:.1f} h strategies' own phases (teachers, pseudo-labelling), "
                if compute["strategy"]
                else ""
            )
            + f"{compute['eval']:.1f} h evaluation); a cached pretraining"
            + (" or a shared teacher" if compute["strategy"] else "")
            + " counts once."
        )
    precision = _precision_line(report.df)
    if precision:
        lines.append(precision)
    if report.row_keys:
        lines.append(
            "Settings that differ between cells (in row labels): "
            + ", ".join(k.removeprefix("config.") for k in report.row_keys)
            + "."
        )
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
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
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
