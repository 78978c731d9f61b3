"""The ``sslbench`` command line.

Every command reports bad input as one line (``error: ...``) with exit code 2; the
traceback is shown only with ``sslbench --debug ...``.
"""

from __future__ import annotations

import os

#: OpenMP threads waiting for work sleep instead of spinning (set before torch is first imported;
#: the commands import it lazily). Measured on this 2-core machine (README, "OpenMP waiting"):
#: about as fast alone, and 2-3x faster than spinning while another process competes for the
#: cores. An OMP_WAIT_POLICY set by the user (ACTIVE to spin) is left as it is.
DEFAULT_OMP_WAIT_POLICY = "PASSIVE"
os.environ.setdefault("OMP_WAIT_POLICY", DEFAULT_OMP_WAIT_POLICY)

import contextlib  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from typing import Iterator  # noqa: E402

import click  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

from sslbench.contract.errors import SSLBenchError  # noqa: E402

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


def one_line(exc: BaseException) -> str:
    """The message of *exc* as one line.

    An error raised in a data-loader worker reaches the main process as ``Caught X in
    DataLoader worker process N`` plus the worker's traceback: its last line is the message.
    """
    text = str(exc).strip()
    if "Traceback" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        text = re.sub(r"^[A-Za-z_][\w.]*(Error|Exception|Warning): ", "", lines[-1].strip()) if lines else text
    return " ".join(text.split("\n")) if "\n" in text else text


_default_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """sslbench's own warnings (skipped images, results) as one ``warning:`` line, without a source line."""
    if category.__module__.split(".")[0] in ("sslbench", "sslbench_plugins"):
        err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


#: commands defined in their own modules, imported when used (their imports, torch, pandas and scipy
#: among them, take seconds): name -> (module, attribute, the short help ``sslbench --help`` shows)
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "bench": ("sslbench.cli.bench", "bench_command", "Measure the training step (against a plain fp32 NCHW step), "
              "inference, FLOP utilisation, data pipeline, memory."),
    "data": ("sslbench.cli.data", "data_group", "Check, preview and download datasets."),
    "evaluate": ("sslbench.cli.model", "evaluate_command",
                 "Score a pose checkpoint on a labelled split: PCK@0.2, PCK@0.1, AUC and per-part PCK."),
    "predict": ("sslbench.cli.model", "predict_command",
                "Predict the 14 joints of the person in each image (IMAGE_OR_DIR...)."),
    "probe": ("sslbench.cli.probe", "probe_command", "Linear probe of the network every row of a results store "
              "fine-tunes from, and its rank correlation with fine-tuned PCK."),
    "report": ("sslbench.cli.sweep", "report_command", "Tables (and plots) of sweep results: strategies x train "
               "sizes, CIs, paired tests against supervised."),
    "run": ("sslbench.cli.run", "run_command",
            "Pretrain (or not), transfer, train the pose estimator, evaluate on test once."),
    "sweep": ("sslbench.cli.sweep", "sweep_command", "Run every cell of a sweep (backbones x pretexts x policies x "
              "train sizes x seeds), resumably."),
}  # fmt: skip


class SSLBenchGroup(click.Group):
    """A click group that turns known errors into one line and an exit code, and loads commands when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            module, attribute, _ = LAZY_COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help`` without importing the commands not loaded yet."""
        rows = []
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        for name in names:
            if name in self.commands:
                command = self.commands[name]
                if command.hidden:
                    continue
                rows.append((name, command.get_short_help_str(limit)))
            else:
                text = LAZY_COMMANDS[name][2]
                rows.append((name, text if len(text) <= limit else text[: max(limit - 3, 1)].rstrip() + "..."))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            with sigterm_as_interrupt():
                return super().invoke(ctx)
        except SSLBenchError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            err_console.print(f"[bold red]error:[/] {escape(one_line(exc))}", highlight=False, soft_wrap=True)
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
                f"[bold red]internal error:[/] {type(exc).__name__}: {escape(one_line(exc))} (run with --debug for the traceback)",
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
    if not debug:
        warnings.showwarning = _show_warning


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_command(as_json: bool) -> None:
    """List every backbone, pretext, transfer policy and dataset, and which package provides it."""
    from sslbench.contract.registry import KINDS, default_registry

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
    wide = not console.is_terminal  # a pipe or a log has no width of its own: not rich's default 80
    for column in ("kind", "name", "description", "provider"):
        # never cut with an ellipsis: folded in a narrow terminal, else whole with the description wrapping
        longest = max([len(row[column]) for row in rows] + [len(column)])
        table.add_column(column, overflow="fold", min_width=longest if wide and column != "description" else None)
    for row in rows:
        table.add_row(row["kind"], row["name"], row["description"], row["provider"])
    if wide:
        from rich.measure import Measurement

        needed = Measurement.get(console, console.options.update_width(1000), table).minimum
        Console(width=max(console.width, needed + 40), highlight=False).print(table)
    else:
        console.print(table)
    for message in registry.load_errors:
        err_console.print(f"[yellow]warning:[/] {message}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
