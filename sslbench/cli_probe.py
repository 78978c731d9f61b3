"""``sslbench probe``: a linear probe of every pretraining in a results store, against its fine-tuned PCK.

See :mod:`sslbench.probe` for what is probed and how.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from sslbench.atomic import write_json
from sslbench.errors import ConfigError
from sslbench.probe import ProbeSettings, probe, result_rows, spearman
from sslbench.registry import default_registry


@click.command("probe")
@click.argument("results_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--train-size",
    type=int,
    default=200,
    show_default=True,
    help="Labelled budget: the probe fits on its training images, rows are compared at it.",
)
@click.option(
    "--rows",
    help="Comma-separated row labels to probe (default: every row not frozen and without extra settings in its label).",
)
@click.option("--include-frozen", is_flag=True, help="Probe frozen rows too (the same network as fine-tuned).")
@click.option(
    "--workdir",
    default="runs",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Where the pretext cache (WORKDIR/pretext/) lives.",
)
@click.option("--pretrain", is_flag=True, help="Train a pretraining that is not cached (with the row's settings).")
@click.option(
    "--background", type=int, default=ProbeSettings.background, show_default=True, help="Background points per image."
)
@click.option(
    "--min-distance",
    type=float,
    default=ProbeSettings.min_distance,
    show_default=True,
    help="Least distance of a background point from every joint, share of the input size.",
)
@click.option(
    "--C",
    "c",
    type=float,
    default=ProbeSettings.C,
    show_default=True,
    help="Inverse L2 strength of the logistic regression.",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the table as JSON here.")
def probe_command(
    results_dir: Path,
    train_size: int,
    rows: str | None,
    include_frozen: bool,
    workdir: Path,
    pretrain: bool,
    background: int,
    min_distance: float,
    c: float,
    json_path: Path | None,
) -> None:
    """Linear probe (joint identity, 14 joints + background, from frozen features) of the network every row of
    RESULTS_DIR fine-tunes from; Spearman correlation of the probe with the rows' fine-tuned test PCK@0.2.

    The probe fits on the budget's training images and scores on the validation images; it never reads the
    test images."""
    if train_size < 1:
        raise ConfigError(f"--train-size must be >= 1, got {train_size}")
    settings = ProbeSettings(background=background, min_distance=min_distance, C=c)
    settings.validate()
    console = Console()
    if not console.is_terminal:  # a log or a pipe: the whole table, not rich's default 80 columns
        console = Console(width=160)
    wanted = [row.strip() for row in rows.split(",") if row.strip()] if rows else None
    registry = default_registry()
    entries = []
    for row in result_rows(results_dir, train_size, rows=wanted, include_frozen=include_frozen):
        console.print(f"probing [bold]{row.label}[/] ({row.config.pretext}, policy {row.config.policy})")
        scores = probe(row.config, workdir, registry, settings, console, allow_pretrain=pretrain)
        entries.append({"row": row.label, "pck@0.2": row.pck, "seeds": row.seeds, **scores})
        console.print(f"  probe_acc {scores['probe_acc']:.1f} %  ({scores['seconds']:.0f} s)")
    rho, p = spearman([e["probe_acc"] for e in entries], [e["pck@0.2"] for e in entries])

    table = Table(title=f"linear probe at {train_size} labelled images ({results_dir})", title_justify="left")
    for column in ("row", "groups", "probe_acc %", "joint_acc %", "background_acc %", "test pck@0.2 (seeds)", "s"):
        table.add_column(column, justify="left" if column in ("row", "groups") else "right")
    for e in sorted(entries, key=lambda e: -e["probe_acc"]):
        table.add_row(
            e["row"],
            "+".join(e["groups"]),
            f"{e['probe_acc']:.1f}",
            f"{e['joint_acc']:.1f}",
            f"{e['background_acc']:.1f}",
            f"{e['pck@0.2']:.1f} ({e['seeds']})",
            f"{e['seconds']:.0f}",
        )
    chance = 100.0 / 15
    table.caption = (f"probe_acc: balanced accuracy over 14 joints + background on the {entries[0]['val_images']} "
                     f"validation images (chance {chance:.1f} %)") if entries else None  # fmt: skip
    console.print(table)
    line = "n/a (fewer than 3 rows)" if math.isnan(rho) else f"{rho:+.3f} (p = {p:.3f}, {len(entries)} rows)"
    console.print(f"Spearman rank correlation of probe_acc with fine-tuned test pck@0.2: {line}")
    if json_path is not None:
        write_json(
            json_path,
            {
                "results_dir": str(results_dir),
                "train_size": train_size,
                "settings": asdict(settings),
                "rows": entries,
                "spearman": rho,
                "spearman_p": p,
            },
        )
