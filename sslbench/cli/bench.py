"""``sslbench bench``: training-step speed, FLOP utilisation, data-pipeline speed and memory."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from sslbench.contract.config import RunConfig
from sslbench.overrides import parse_assignment, set_path
from sslbench.profiles import profile_config


def bench_config(profile: str, backbone: str | None, batch_size: int | None, device: str | None,
                 assignments: tuple[str, ...]) -> RunConfig:  # fmt: skip
    """The profile's run config with the command's overrides (``--set`` last)."""
    config = profile_config(profile, backbone)  # the profile's options for that backbone
    if backbone:
        config = set_path(config, ["backbone"], backbone)
    if batch_size is not None:
        config = set_path(config, ["downstream", "batch_size"], batch_size)
    if device:
        config = set_path(config, ["downstream", "device"], device)
    for text in assignments:
        path, value = parse_assignment(text)
        config = set_path(config, path, value)
    config.validate()
    return config


@click.command("bench")
@click.option("--profile", default="cpu", show_default=True, help="paper | cpu | smoke: the settings to measure.")
@click.option("--backbone", help="Backbone plugin name (default: the profile's, cpm6).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Training batch size (default: the profile's).")
@click.option("--steps", type=click.IntRange(min=1), help="Timed training steps per variant [default: 10; smoke 3].")
@click.option("--device", help="auto | cpu | cuda | cuda:N.")
@click.option("--threads", type=click.IntRange(min=1), help="torch threads (default: torch's choice, one per core).")
@click.option("--compare-baseline/--no-compare-baseline", default=True, show_default=True,
              help="Also time a plain fp32, NCHW step side by side and report the speed-up.")  # fmt: skip
@click.option("--variant", "variants", multiple=True, metavar="NAME",
              help="Also time a variant of the step (repeatable): threads-1, no-mkldnn, bf16, fp32, batch-x2, "
                   "batch-half, compile (minutes of compilation), or all.")  # fmt: skip
@click.option("--pretext", "pretexts", multiple=True, metavar="NAME",
              help="Also time the training step of a pretext next to the pose step (repeatable; all: every "
                   "pretext that trains), on the pretext data (--set pretext_data=...).")  # fmt: skip
@click.option(
    "--rss-epochs", type=click.IntRange(min=0), help="Short fit epochs for the memory check (0: skip) [default: 3]."
)
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Any run setting, e.g. backbone_options.width=0.25 or downstream.precision=bf16.")  # fmt: skip
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write the figures as JSON."
)
def bench_command(profile: str, backbone: str | None, batch_size: int | None, steps: int | None, device: str | None,
                  threads: int | None, compare_baseline: bool, variants: tuple[str, ...], pretexts: tuple[str, ...],
                  rss_epochs: int | None, assignments: tuple[str, ...], json_path: Path | None) -> None:  # fmt: skip
    """Measure the training step (against a plain fp32 NCHW step), inference, FLOP utilisation, data pipeline, memory.

    Everything is measured in this one run, so ratios compare like with like; the JSON
    holds the machine, the commit and the load average. Example:

        sslbench bench --profile cpu --compare-baseline --json bench.json
        sslbench bench --profile cpu --pretext all --rss-epochs 0    # every pretext's step beside pose
    """
    import torch

    from sslbench.experiment.bench import BenchPlan, busy_warning, result_table, run_bench
    from sslbench.training.atomic import write_json

    if threads is not None:
        torch.set_num_threads(threads)
    console = Console()
    config = bench_config(profile, backbone, batch_size, device, assignments)
    plan = BenchPlan.for_profile(profile, steps=steps, rss_epochs=rss_epochs, compare_baseline=compare_baseline,
                                 explore=variants, pretexts=pretexts)  # fmt: skip
    result = run_bench(config, plan, console=console)
    console.print(result_table(result))
    warning = busy_warning(result)
    if warning:
        Console(stderr=True).print(f"[yellow]warning:[/] {warning}", highlight=False)
    if json_path is not None:
        write_json(json_path, result)
        console.print(f"figures written to {json_path}", highlight=False)
