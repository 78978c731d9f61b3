"""``sslbench sweep`` (many cells, resumable) and ``sslbench report`` (tables and plots of the results).

The heavy modules (pandas, scipy, torch) are imported inside the commands, so that
``sslbench --help`` and the other commands start fast.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click
from rich.console import Console
from rich.table import Table

from sslbench.contract.errors import ConfigError
from sslbench.contract.registry import default_registry
from sslbench.overrides import parse_assignment

if TYPE_CHECKING:
    from sslbench.experiment.plan import Plan
    from sslbench.experiment.spec import SweepSpec

#: the choices of ``report --format`` (the same as :data:`sslbench.results.report.formats.FORMATS`)
REPORT_FORMATS = ("terminal", "markdown", "csv", "latex", "html")


def _warner(console: Console) -> Callable[[str], None]:
    """Print warnings as one yellow line each on *console*."""
    return lambda message: console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def _list(text: str | None, option: str) -> list[str] | None:
    if text is None:
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ConfigError(f"{option}: empty list")
    return items


def _int_list(text: str | None, option: str, allow_all: bool = False) -> list[Any] | None:
    items = _list(text, option)
    if items is None:
        return None
    out: list[Any] = []
    for item in items:
        if allow_all and item == "all":
            out.append(None)
            continue
        try:
            out.append(int(item))
        except ValueError:
            also = " or 'all'" if allow_all else ""
            raise ConfigError(f"{option}: {item!r} is not an integer{also}") from None
    return out


def build_spec(spec_path: Path | None, **cli: Any) -> SweepSpec:
    """The spec file (if any) with the command-line options on top (the command line wins)."""
    from sslbench.experiment.spec import Override, SweepSpec, load_spec

    spec = load_spec(spec_path) if spec_path else SweepSpec()
    lists = {
        "backbones": _list(cli.get("backbones"), "--backbones"),
        "pretexts": _list(cli.get("pretexts"), "--pretexts"),
        "policies": _list(cli.get("policies"), "--policies"),
        "strategies": _list(cli.get("strategies"), "--strategies"),
        "train_sizes": _int_list(cli.get("train_sizes"), "--train-sizes", allow_all=True),
        "seeds": _int_list(cli.get("seeds"), "--seeds"),
    }
    for key, value in lists.items():
        if value is not None:
            setattr(spec, key, value)
            spec.from_cli[key] = f"--{key.replace('_', '-')}"
    for key in ("name", "profile", "data", "root", "protocol", "pretext_data", "pretext_root", "unlabelled_data",
                "unlabelled_root"):  # fmt: skip
        if cli.get(key) is not None:
            setattr(spec, key, cli[key])
            spec.from_cli[key] = f"--{key.replace('_', '-')}"
    for text in cli.get("assignments") or ():
        path, value = parse_assignment(text)
        spec.overrides.append(Override(tuple(path), value, f"--set {text}", command_line=True))
    return spec


def _status_of(results: Path, workdir: Path, cell_id: str) -> str:
    from sslbench.results.store import ResultsStore

    status = ResultsStore(results).status(cell_id, warn=lambda m: None)
    if status:
        return status
    return "started" if (workdir / "cells" / cell_id).exists() else "new"


def print_plan(plan: Plan, results: Path, workdir: Path, console: Console, estimates: dict[str, float | None] | None,
               sources: dict[str, str], shard: str | None, cached: set[str]) -> None:  # fmt: skip
    """The dry-run view: cells, the pretrainings they share (*cached*: keys already trained), pruned
    combinations, time estimate."""
    from sslbench.experiment.estimate import format_seconds

    groups = plan.pretrainings()
    short = {key: f"P{i + 1}" for i, key in enumerate(groups)}
    statuses = {cell.cell_id: _status_of(results, workdir, cell.cell_id) for cell in plan.cells}
    table = Table(title=f"sweep {plan.name}: {len(plan.cells)} cells" + (f" (shard {shard})" if shard else ""),
                  title_justify="left")  # fmt: skip
    several_backbones = len({cell.config.backbone for cell in plan.cells}) > 1
    columns = ["#", "cell", "strategy", "backbone", "images", "seed", "pretrain", "estimate", "status"]
    if not several_backbones:
        columns.remove("backbone")
    for column in columns:
        right = column in ("#", "images", "seed", "estimate")
        table.add_column(column, justify="right" if right else "left", no_wrap=column != "strategy", overflow="fold")
    for number, cell in enumerate(plan.cells, start=1):
        c = cell.config
        row = [
            str(number), cell.cell_id, cell.row, c.backbone, "all" if c.train_size is None else str(c.train_size),
            str(c.seed), short.get(cell.pretrain_key or "", "-"),
            format_seconds(estimates.get(cell.cell_id)) if estimates is not None else "", statuses[cell.cell_id],
        ]  # fmt: skip
        if not several_backbones:
            del row[3]
        table.add_row(*row)
    console.print(table)
    if plan.description:
        console.print(plan.description, highlight=False)
    to_train = {key for key, cells in groups.items()
                if key not in cached and any(statuses[cell.cell_id] != "done" for cell in cells)}  # fmt: skip
    if groups:
        shared = Table(title="pretext pretrainings (each trained once, reused by its cells)", title_justify="left")
        for column in ("", "key", "pretext", "backbone", "pretext data", "seed", "cells", "status"):
            shared.add_column(column, no_wrap=column in ("key", "pretext", "status"))
        for key, cells in groups.items():
            c = cells[0].config
            status = "cached" if key in cached else "to train" if key in to_train else "not needed"
            shared.add_row(short[key], key, c.pretext, c.backbone, c.pretext_data, str(c.pretraining_seed),
                           str(len(cells)), status)  # fmt: skip
        console.print(shared)
    if plan.pruned:
        console.print("[bold]pruned combinations[/]:")
        for combination, reason in plan.pruned:
            console.print(f"  {combination}: {reason}", highlight=False)
    counts = {s: sum(1 for v in statuses.values() if v == s) for s in ("done", "failed", "started", "new")}
    console.print(
        f"{len(plan.cells)} cells: {counts['done']} done, {counts['failed']} failed, {counts['started']} started, "
        f"{counts['new']} new; {len(groups)} pretext pretraining(s), {len(cached)} cached in {workdir}, "
        f"{len(to_train)} to train",
        highlight=False,
    )
    if estimates is not None:
        left = [estimates.get(c.cell_id) for c in plan.cells if statuses[c.cell_id] != "done"]
        known = [e for e in left if e is not None]
        total = format_seconds(sum(known)) if known else "?"
        partial = f" ({len(left) - len(known)} cell(s) could not be estimated)" if len(known) < len(left) else ""
        console.print(
            f"estimated time left: {total}{partial}, sequential at the throughput below; an upper bound "
            "(all epochs; early stopping ends sooner)",
            highlight=False,
        )
        for what, source in sources.items():
            console.print(f"  throughput of {what}: {source}", highlight=False)
    console.print(f"results: {results}   work directory: {workdir}", highlight=False)


@click.command("sweep")
@click.argument("spec_path", metavar="[SPEC.toml]", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", help="Sweep name (default: the spec's name or file name); results go to ./results/NAME/.")
@click.option("--profile", help="paper | cpu | demo | smoke (default: the spec's, else cpu).")
@click.option("--backbones", metavar="A,B", help="Backbone names, comma-separated.")
@click.option("--pretexts", metavar="A,B", help="Pretext names; none = supervised baseline.")
@click.option("--policies", metavar="A,B", help="Transfer policies; e.g. none,first,first+middle:frozen.")
@click.option(
    "--strategies",
    metavar="A,B",
    help="Strategy plugins, e.g. supervised,transfer,consistency (default: the pretext decides).",
)
@click.option("--train-sizes", metavar="N,M", help="Labelled training images per cell; 'all' for the whole pool.")
@click.option("--seeds", metavar="0,1,2", help="Run seeds.")
@click.option("--data", help="Labelled dataset plugin.")
@click.option("--root", help="Folder of the labelled dataset.")
@click.option("--protocol", help="Split protocol of the labelled dataset.")
@click.option("--pretext-data", help="Unlabelled dataset plugin for pretraining.")
@click.option("--pretext-root", help="Folder of the unlabelled images.")
@click.option("--unlabelled-data", help="Unlabelled dataset of the pose phase (semi-supervised strategies).")
@click.option("--unlabelled-root", help="Folder of those unlabelled images.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE", help="Setting for every cell (repeatable).")
@click.option("--results", "results_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Results directory [default: ./results/NAME].")  # fmt: skip
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"), show_default=True,
              help="Checkpoints, pretext cache and per-epoch logs.")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Print the plan and a time estimate; train nothing.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Cells run in parallel processes, sharing the CPU cores.")  # fmt: skip
@click.option("--shard", metavar="I/N", help="Run only shard I of N (from 1), e.g. one per machine on shared storage.")
@click.option("--retry-failed", is_flag=True, help="Run cells recorded as failed again.")
def sweep_command(spec_path: Path | None, results_dir: Path | None, workdir: Path, dry_run: bool, workers: int,
                  shard: str | None, retry_failed: bool, **axes: Any) -> None:  # fmt: skip
    """Run every cell of a sweep (backbones x pretexts x policies x train sizes x seeds), resumably.

    Finished cells are skipped, unfinished ones resume from their last epoch, failed ones
    are recorded with their error and the sweep goes on. Example:

        sslbench sweep benchmarks/example-synthetic.toml --dry-run
    """
    from sslbench.experiment.estimate import Estimator, cached_pretrainings
    from sslbench.experiment.executor import run_sweep, worker_threads
    from sslbench.experiment.plan import expand, parse_shard, shard_cells

    console, err = Console(), Console(stderr=True)
    shard_of = parse_shard(shard) if shard else None
    spec = build_spec(spec_path, **axes)
    registry = default_registry()
    plan = expand(spec, registry)
    if shard_of:
        plan = dataclasses.replace(plan, cells=shard_cells(plan.cells, *shard_of))
    results = results_dir or Path("results") / plan.name
    cached = cached_pretrainings(plan.cells, workdir)
    if dry_run:
        estimator = Estimator(registry, results, measure=True)
        with console.status("estimating throughput..."):
            estimates = estimator.estimates(plan.cells, cached)
        print_plan(plan, results, workdir, console, estimates, estimator.sources, shard, cached)
        return
    from sslbench.training.atomic import check_writable

    check_writable(workdir, "--workdir")  # before any cell: a read-only location fails now, not after training
    check_writable(results, "--results" if results_dir else "results folder")
    if plan.pruned:
        err.print("pruned: " + "; ".join(f"{c} ({r})" for c, r in plan.pruned), highlight=False, soft_wrap=True)
    where = f" (shard {shard})" if shard else ""
    parallel = ""
    if workers > 1:
        threads, loaders = worker_threads(workers)
        parallel = f", {workers} worker processes x {threads} thread(s), at most {loaders} loader process(es) each"
    console.print(f"sweep {plan.name}: {len(plan.cells)} cells{where}{parallel}; results in {results}", highlight=False)
    estimates = Estimator(registry, results, measure=False).estimates(plan.cells, cached)
    outcome = run_sweep(
        plan.cells, results, workdir, workers=workers, retry_failed=retry_failed, name=plan.name,
        console=console, estimates=estimates, warn=_warner(err),
    )  # fmt: skip
    console.print(
        f"sweep {plan.name}: {len(outcome.done)} done, {len(outcome.failed)} failed, "
        f"{len(outcome.skipped)} finished earlier, {len(outcome.busy)} running elsewhere; results in {results}",
        highlight=False,
    )
    if outcome.failed:
        err.print(
            f"failed cells: {', '.join(outcome.failed)} (errors in {results / 'cells'}; rerun with --retry-failed)"
        )
    console.print(f"tables: sslbench report {results}", highlight=False)
    if outcome.failed:
        click.get_current_context().exit(1)


@click.command("report")
@click.argument("results_dirs", metavar="[RESULTS_DIR]...", nargs=-1, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(REPORT_FORMATS), default="terminal", show_default=True)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the report to FILE instead of stdout."
)
@click.option(
    "--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path), help="Write PNG plots into DIR."
)
@click.option(
    "--metric", default="pck@0.2", show_default=True, help="Column to tabulate (e.g. pck@0.1, auc@0.2, test_loss)."
)
@click.option(
    "--curves",
    metavar="CELL_ID,...",
    help="Cells whose training curves to plot (default: the best cell of each strategy row).",
)
def report_command(results_dirs: tuple[Path, ...], fmt: str, out: Path | None, plots_dir: Path | None, metric: str,
                   curves: str | None) -> None:  # fmt: skip
    """Tables (and plots) of sweep results: strategies x train sizes, CIs, paired tests against supervised.

    RESULTS_DIR is a sweep's results directory, or a folder of them (default ./results).
    """
    from sslbench.results.report import build_report, print_terminal, render, write_plots
    from sslbench.results.store import load_results
    from sslbench.training.atomic import check_writable, write_text

    console, err = Console(), Console(stderr=True)
    warn = _warner(err)
    if out is not None:
        check_writable(out, "--out", is_file=True)
    if plots_dir is not None:
        check_writable(plots_dir, "--plots")
    dirs = results_dirs or (Path("results"),)
    df = load_results(*dirs, warn=warn)
    report = build_report(df, metric)
    sources = [str(d) for d in dirs]
    if fmt == "terminal" and out is None:
        print_terminal(report, console, sources)
    else:
        text = render(report, fmt, sources)
        if out is None:
            click.echo(text, nl=False)
        else:
            write_text(out, text)
            err.print(f"wrote {out}", highlight=False)
    if plots_dir is not None:
        written = write_plots(report, plots_dir, _list(curves, "--curves"), warn)
        err.print(f"wrote {len(written)} plot(s) to {plots_dir}", highlight=False)
