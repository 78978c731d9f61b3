"""The ``sslbench`` command line.

Every command reports bad input as one line (``error: ...``) with exit code 2; the
traceback is shown only with ``sslbench --debug ...``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import traceback
from typing import Iterator

import click
from rich.console import Console
from rich.table import Table

from sslbench.errors import SSLBenchError
from sslbench.registry import KINDS, default_registry

console = Console()
err_console = Console(stderr=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that cleanup runs (a sweep stops its worker processes)."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM unwinds it as :class:`Terminated` instead of killing it outright."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class SSLBenchGroup(click.Group):
    """A click group that turns known errors into one line and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            with sigterm_as_interrupt():
                return super().invoke(ctx)
        except SSLBenchError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Terminated:
            err_console.print("terminated")
            ctx.exit(128 + signal.SIGTERM)
        except KeyboardInterrupt:
            err_console.print("interrupted")
            ctx.exit(130)
        except Exception as exc:  # an internal error: still one line unless --debug
            if ctx.obj and ctx.obj.get("debug"):
                raise
            err_console.print(
                f"[bold red]internal error:[/] {type(exc).__name__}: {exc} (run with --debug for the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            ctx.exit(1)


@click.group(cls=SSLBenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="sslbench")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Which self-supervised pretraining, transferred how, gives the best pose model from few labels?"""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_command(as_json: bool) -> None:
    """List every backbone, pretext, transfer policy and dataset, and which package provides it."""
    registry = default_registry()
    rows = [
        {"kind": kind, "name": e.name, "description": e.description, "provider": e.provider}
        for kind in KINDS
        for e in registry.entries(kind)
    ]
    if as_json:
        click.echo(json.dumps({"plugins": rows, "load_errors": registry.load_errors}, indent=2))
        return
    table = Table(title="sslbench plugins")
    for column in ("kind", "name", "description", "provider"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["kind"], row["name"], row["description"], row["provider"])
    console.print(table)
    for message in registry.load_errors:
        err_console.print(f"[yellow]warning:[/] {message}")


# -- commands defined in their own modules ------------------------------------------------
from sslbench.cli_bench import bench_command  # noqa: E402
from sslbench.cli_data import data_group  # noqa: E402
from sslbench.cli_model import evaluate_command, predict_command  # noqa: E402
from sslbench.cli_run import run_command  # noqa: E402
from sslbench.cli_sweep import report_command, sweep_command  # noqa: E402

for _command in (
    data_group, run_command, evaluate_command, predict_command, sweep_command, report_command, bench_command
):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
