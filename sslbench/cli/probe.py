"""``sslbench probe``: a linear probe of every pretraining in a results store, against its fine-tuned PCK.

See :mod:`sslbench.experiment.probe` for what is probed and how.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from sslbench.cli.run import config_from_options, config_options
from sslbench.contract.config import RunConfig
from sslbench.contract.errors import ConfigError
from sslbench.contract.registry import default_registry
from sslbench.experiment.phases import is_pretrained
from sslbench.experiment.probe import ProbeRow, ProbeSettings, kept_run_dir, probe, result_rows, spearman
from sslbench.experiment.strategies import pretrains, transfer_label
from sslbench.training.atomic import write_json
from sslbench.training.run_files import kept_epochs


@click.command("probe")
@click.argument("results_dir", required=False, type=click.Path(path_type=Path, exists=True, file_okay=False))
@config_options
@click.option("--rows", help="Comma-separated row labels to probe (default: every row not frozen and without "
              "extra settings in its label).")  # fmt: skip
@click.option("--include-frozen", is_flag=True, help="Probe frozen rows too (the same network as fine-tuned).")
@click.option("--workdir", default="runs", show_default=True, type=click.Path(path_type=Path),
              help="Where the pretext cache (WORKDIR/pretext/) lives.")  # fmt: skip
@click.option("--pretrain", is_flag=True, help="Train a pretraining that is not cached (with the row's settings).")
@click.option("--background", type=int, default=ProbeSettings.background, show_default=True,
              help="Background points per image.")  # fmt: skip
@click.option("--min-distance", type=float, default=ProbeSettings.min_distance, show_default=True,
              help="Least distance of a background point from every joint, share of the input size.")  # fmt: skip
@click.option("--C", "c", type=float, default=ProbeSettings.C, show_default=True,
              help="Inverse L2 strength of the logistic regression.")  # fmt: skip
@click.option("--kept-epochs", "epochs_option", metavar="E,E|all",
              help="Probe the weights the cell's pretraining kept after these epochs (pretrain.keep_every), "
              "one row each, instead of its final weights; it may still be training.")  # fmt: skip
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the table as JSON here.")
def probe_command(
    results_dir: Path | None,
    rows: str | None,
    include_frozen: bool,
    workdir: Path,
    pretrain: bool,
    background: int,
    min_distance: float,
    c: float,
    epochs_option: str | None,
    json_path: Path | None,
    **options: Any,
) -> None:
    """Linear probe of the network every row of a results store fine-tunes from, and its rank correlation with fine-tuned PCK.

    The probe (joint identity, 14 joints + background, from frozen features) runs on the network each row of
    RESULTS_DIR fine-tunes from, and Spearman's correlation of the probe with the rows' fine-tuned test
    PCK@0.2 is printed; without RESULTS_DIR it probes the one cell the `sslbench run` options describe
    (--pretrain trains its pretraining when it is not cached). The probe fits on the budget's training images
    and scores on the validation images; it never reads the test images. With --kept-epochs it probes that cell's
    pretraining along the way: does longer pretraining help?"""
    train_size = 200 if options["train_size"] is None else options["train_size"]
    if train_size < 1:
        raise ConfigError(f"--train-size must be >= 1, got {train_size}")
    settings = ProbeSettings(background=background, min_distance=min_distance, C=c)
    settings.validate()
    console = Console()
    if not console.is_terminal:  # a log or a pipe: the whole table, not rich's default 80 columns
        console = Console(width=160)
    if epochs_option is not None:
        if results_dir is not None:
            raise ConfigError("--kept-epochs probes the one pretraining the `sslbench run` options describe, "
                              "not RESULTS_DIR's rows")  # fmt: skip
        config = config_from_options({**options, "train_size": train_size})
        probe_kept_epochs(config, epochs_option, workdir, settings, console, json_path)
        return
    if results_dir is not None:
        given = sorted(k for k, v in options.items() if k not in ("train_size", "profile") and v not in (None, ()))
        if given:
            raise ConfigError(f"--{given[0].replace('_', '-')}: with RESULTS_DIR every row brings its own config "
                              "(only --train-size chooses the rows)")  # fmt: skip
        wanted = [row.strip() for row in rows.split(",") if row.strip()] if rows else None
        cells = result_rows(results_dir, train_size, rows=wanted, include_frozen=include_frozen)
    else:
        config = config_from_options({**options, "train_size": train_size})
        label = "supervised" if config.pretext == "none" else transfer_label(config)
        cells = [ProbeRow(label, float("nan"), 0, config)]
    registry = default_registry()
    entries, missing, probed = [], [], {}
    for row in cells:
        cached = not pretrains(row.config, registry) or is_pretrained(workdir, row.config)
        if results_dir is not None and not pretrain and not cached:  # the others are probed; the end says which
            missing.append(row.label)
            continue
        network = replace(row.config, freeze=False).cell_id  # a frozen row starts from the fine-tuned one's network
        if network not in probed:
            console.print(f"probing [bold]{row.label}[/] ({row.config.pretext}, policy {row.config.policy})")
            probed[network] = probe(row.config, workdir, registry, settings, console, allow_pretrain=pretrain)
            console.print(f"  probe_acc {probed[network]['probe_acc']:.1f} %  ({probed[network]['seconds']:.0f} s)")
        entries.append({"row": row.label, "pck@0.2": row.pck, "seeds": row.seeds, "frozen": row.config.freeze,
                        **probed[network]})  # fmt: skip
    groups = {"rows": entries}
    if any(e["frozen"] for e in entries):  # fine-tuned (with supervised) and frozen transfer apart
        groups["rows fine-tuned or supervised"] = [e for e in entries if not e["frozen"]]
        groups["frozen rows"] = [e for e in entries if e["frozen"]]
    correlations = {}
    for name, members in groups.items():
        rho, p = spearman([e["probe_acc"] for e in members], [e["pck@0.2"] for e in members])
        correlations[name] = {"spearman": rho, "p": p, "rows": len(members)}

    table = Table(
        title=f"linear probe at {train_size} labelled images ({results_dir or cells[0].config.data})",
        title_justify="left",
    )
    for column in ("row", "groups", "probe_acc %", "joint_acc %", "background_acc %", "test pck@0.2 (seeds)", "s"):
        table.add_column(column, justify="left" if column in ("row", "groups") else "right")
    for e in sorted(entries, key=lambda e: -e["probe_acc"]):
        table.add_row(
            e["row"],
            "+".join(e["groups"]),
            f"{e['probe_acc']:.1f}",
            f"{e['joint_acc']:.1f}",
            f"{e['background_acc']:.1f}",
            f"{e['pck@0.2']:.1f} ({e['seeds']})" if e["seeds"] else "-",
            f"{e['seconds']:.0f}",
        )
    chance = 100.0 / 15
    table.caption = (f"probe_acc: balanced accuracy over 14 joints + background on the {entries[0]['val_images']} "
                     f"validation images (chance {chance:.1f} %)") if entries else None  # fmt: skip
    console.print(table)
    for name, found in correlations.items():
        line = (
            f"{found['spearman']:+.3f} (p = {found['p']:.3f}, {found['rows']} {name})"
            if not math.isnan(found["spearman"])
            else "n/a (fewer than 3 rows with a fine-tuned figure, or nothing to rank)"
        )
        console.print(f"Spearman rank correlation of probe_acc with fine-tuned test pck@0.2: {line}")
    if missing:
        console.print(f"[yellow]not probed[/] (no cached pretraining under {workdir}/pretext; --pretrain trains "
                      f"them): {', '.join(missing)}", highlight=False)  # fmt: skip
    if json_path is not None:
        write_json(
            json_path,
            {
                "results_dir": str(results_dir) if results_dir else None,
                "train_size": train_size,
                "settings": asdict(settings),
                "rows": entries,
                "spearman": correlations["rows"]["spearman"],
                "spearman_p": correlations["rows"]["p"],
                "correlations": correlations,
                "not_probed": missing,
            },
        )


def probe_kept_epochs(
    config: RunConfig, epochs_option: str, workdir: Path, settings: ProbeSettings, console: Console,
    json_path: Path | None,
) -> None:  # fmt: skip
    """``--kept-epochs``: the probe, and the held-out pretext metrics, of the pretraining's kept weights by epoch."""
    registry = default_registry()
    run_dir = kept_run_dir(config, workdir, registry)
    if epochs_option.strip() == "all":
        epochs = kept_epochs(run_dir)
        if not epochs:
            raise ConfigError(f"--kept-epochs all: {run_dir} kept no weights (pretrain.keep_every keeps them)")
    else:
        try:
            epochs = sorted({int(e) for e in epochs_option.split(",") if e.strip()})
        except ValueError:
            raise ConfigError(f"--kept-epochs must be 'all' or comma-separated epochs, got {epochs_option!r}") from None
    label = transfer_label(config)
    entries = []
    for epoch in epochs:
        found = probe(config, workdir, registry, settings, console, kept_epoch=epoch)
        console.print(f"{label} after pretraining epoch {epoch} ({found['pretrain_samples']} samples): "
                      f"probe_acc {found['probe_acc']:.1f} %  ({found['seconds']:.0f} s)", highlight=False)  # fmt: skip
        entries.append({"row": label, **found})
    held_out = sorted({name for e in entries for name in e["pretext_metrics"]})
    table = Table(title=f"linear probe at {config.train_size} labelled images of {label}'s pretraining "
                  f"by epoch ({run_dir})", title_justify="left")  # fmt: skip
    for column in ("epoch", "samples", "probe_acc %", "joint_acc %", *(f"held-out {m}" for m in held_out), "s"):
        table.add_column(column, justify="right")
    for e in entries:
        metrics = [f"{e['pretext_metrics'][m]:.4g}" if m in e["pretext_metrics"] else "-" for m in held_out]
        table.add_row(str(e["pretrain_epoch"]), str(e["pretrain_samples"]), f"{e['probe_acc']:.1f}",
                      f"{e['joint_acc']:.1f}", *metrics, f"{e['seconds']:.0f}")  # fmt: skip
    console.print(table)
    if json_path is not None:
        write_json(json_path, {"pretraining": str(run_dir), "pretext": config.pretext, "policy": config.policy,
                               "train_size": config.train_size, "settings": asdict(settings),
                               "pretrain": asdict(config.pretrain), "rows": entries})  # fmt: skip
