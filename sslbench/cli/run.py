"""``sslbench run``: one cell, from pretext pretraining to the test-set metric table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console

from sslbench.contract.config import RunConfig
from sslbench.experiment.transfer import parse_policy
from sslbench.overrides import apply_overrides, parse_assignment, set_path
from sslbench.profiles import profile_config


def option_pairs(values: tuple[str, ...], option: str) -> dict[str, Any]:
    """``("width=0.5", "stages=3")`` -> ``{"width": 0.5, "stages": 3}``."""
    pairs = {}
    for text in values:
        path, value = parse_assignment(text)
        if len(path) != 1:
            raise click.BadParameter(f"{text!r}: expected KEY=VALUE", param_hint=option)
        pairs[path[0]] = value
    return pairs


def build_config(
    profile: str,
    fields: dict[str, Any],
    backbone_options: dict[str, Any],
    pretext_options: dict[str, Any],
    settings: dict[str, Any],
    assignments: tuple[str, ...],
    strategy_options: dict[str, Any] | None = None,
) -> RunConfig:
    """Profile defaults, then named options, then ``--set`` assignments (last wins)."""
    config = profile_config(profile, fields.get("backbone"))  # the profile's options for that backbone
    overrides: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    if "policy" in overrides:
        overrides["policy"], frozen = parse_policy(overrides["policy"])
        overrides["freeze"] = overrides.get("freeze") or frozen
    overrides["backbone_options"] = backbone_options
    overrides["pretext_options"] = pretext_options
    overrides["strategy_options"] = strategy_options or {}
    overrides["downstream"] = {k: v for k, v in settings.items() if v is not None}
    config = apply_overrides(config, overrides)
    for text in assignments:
        path, value = parse_assignment(text)
        config = set_path(config, path, value, f"--set {text}")
    return config


def config_options(function):
    """The options of ``run``: everything that builds one RunConfig."""
    options = [
        click.option("--profile", default="cpu", show_default=True, help="paper | cpu | demo | smoke: starting settings."),
        click.option("--backbone", help="Backbone plugin name (default cpm6)."),
        click.option("--strategy", help="Strategy plugin (supervised, transfer, pseudo-label, consistency, ...); "
                     "default: supervised for --pretext none, else transfer."),
        click.option("--strategy-opt", multiple=True, metavar="KEY=VALUE", help="Strategy option (repeatable)."),
        click.option("--unlabelled-data", help="Unlabelled dataset of the pose phase (semi-supervised strategies)."),
        click.option("--unlabelled-root", help="Folder of those unlabelled images."),
        click.option("--pretext", help="Pretext plugin name, or none for supervised training."),
        click.option("--policy", help="Transfer policy: all, first, first+middle or none; ':frozen' suffix freezes."),
        click.option("--freeze/--finetune", default=None, help="Freeze transferred layers (default fine-tune)."),
        click.option("--data", help="Labelled dataset plugin (default synthetic)."),
        click.option("--root", help="Folder of the labelled dataset."),
        click.option("--protocol", help="Split protocol of the labelled dataset (default standard)."),
        click.option("--train-size", type=int, help="Number of labelled training images (seeded subset)."),
        click.option("--seed", type=int, help="Seed of subsets, initialisation and augmentation."),
        click.option("--pretext-data", help="Unlabelled dataset plugin for pretraining (default synthetic-unlabelled)."),
        click.option("--pretext-root", help="Folder of the unlabelled images."),
        click.option("--pretext-images", type=int, help="Use at most this many unlabelled images."),
        click.option("--pretext-opt", multiple=True, metavar="KEY=VALUE", help="Pretext option (repeatable)."),
        click.option("--backbone-opt", multiple=True, metavar="KEY=VALUE", help="Backbone option (repeatable)."),
        click.option("--input-size", type=int, help="Network input size in pixels (multiple of 8)."),
        click.option("--width", type=float, help="Channel width multiplier of the backbone."),
        click.option("--epochs", type=int, help="Downstream epochs."),
        click.option("--batch-size", type=int, help="Downstream batch size."),
        click.option("--lr", type=float, help="Downstream learning rate."),
        click.option("--device", help="auto | cpu | cuda | cuda:N (both phases)."),
        click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
                     help="Any setting, e.g. pretrain.epochs=3 or downstream.precision=fp32."),  # fmt: skip
    ]
    for option in reversed(options):
        function = option(function)
    return function


def config_from_options(options: dict[str, Any]) -> RunConfig:
    backbone_options = option_pairs(options.pop("backbone_opt"), "--backbone-opt")
    for key in ("input_size", "width"):
        if options.get(key) is not None:
            backbone_options[key] = options[key]
        options.pop(key, None)
    pretext_options = option_pairs(options.pop("pretext_opt"), "--pretext-opt")
    strategy_options = option_pairs(options.pop("strategy_opt"), "--strategy-opt")
    settings = {"epochs": options.pop("epochs"), "batch_size": options.pop("batch_size"), "lr": options.pop("lr")}
    device = options.pop("device")
    assignments = options.pop("assignments")
    if device:
        assignments = (f"pretrain.device={device}", f"downstream.device={device}", *assignments)
    profile = options.pop("profile")
    config = build_config(profile, options, backbone_options, pretext_options, settings, assignments, strategy_options)
    config.validate()
    from sslbench.contract.registry import default_registry
    from sslbench.experiment.strategies import strategy_of

    strategy_of(config, default_registry())  # a strategy that does not fit the config fails before any work
    return config


@click.command("run")
@config_options
@click.option("--workdir", default="runs", show_default=True, type=click.Path(path_type=Path),
              help="Checkpoints, logs and the pretext cache.")  # fmt: skip
@click.option("--results", "results_dir", default="results/default", show_default=True, type=click.Path(path_type=Path),
              help="Results store that `sslbench report` reads.")  # fmt: skip
@click.option("--fresh", is_flag=True, help="Discard an unfinished run of this cell instead of resuming it.")
@click.option("--skip-bad", is_flag=True,
              help="Leave unreadable images of both datasets out, with a warning (data_options.skip_bad=true).")  # fmt: skip
def run_command(workdir: Path, results_dir: Path, fresh: bool, skip_bad: bool, **options: Any) -> None:
    """Pretrain (or not), transfer, train the pose estimator, evaluate on test once.

    Under ``torchrun --nproc-per-node N -m sslbench run ...`` the N processes train the
    cell together (DistributedDataParallel); rank 0 prints and writes the result.
    """
    from sslbench.cli.main import one_line
    from sslbench.cli.model import print_metrics
    from sslbench.contract.errors import DataError
    from sslbench.experiment.runner import run_cell
    from sslbench.results.store import ResultsStore, write_record
    from sslbench.training import distributed
    from sslbench.training.atomic import check_writable

    console = Console()
    if skip_bad:
        options["assignments"] = ("data_options.skip_bad=true", "pretext_data_options.skip_bad=true",
                                  *options["assignments"])  # fmt: skip
    config = config_from_options(options)
    check_writable(workdir, "--workdir")  # before any training: a read-only location fails now, not after it
    check_writable(results_dir, "--results")
    with distributed.session((config.pretrain.device, config.downstream.device)):
        console.quiet = not distributed.is_main()
        try:
            record = run_cell(config, workdir, resume=not fresh, console=console)
        except DataError as exc:
            message = one_line(exc)  # also when raised in a data-loader worker
            if "cannot read image" in message and not skip_bad:
                message += " (--skip-bad leaves unreadable images out; sslbench data verify lists them all)"
            raise DataError(message) from exc
        if not distributed.is_main():
            return
    write_record(results_dir, record)
    ResultsStore(results_dir).write_csv()  # the flat table for pandas, as a sweep keeps it
    print_metrics(console, record, title=f"{record['strategy']} - test set ({record['train_size']} train images)")
    console.print(f"result stored in {results_dir} (cell {record['cell_id']})")
