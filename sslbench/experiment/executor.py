"""Running a sweep: cells claimed, run, recorded and shown, in one process or a pool.

Running a sweep again skips finished cells and resumes unfinished ones from their last
epoch. Each cell is claimed with an OS file lock while it runs, so several sweeps (or
``--shard`` machines on shared storage) can write into one results directory.
"""

from __future__ import annotations

import collections
import multiprocessing
import multiprocessing.connection
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
)

from sslbench.contract.config import RunConfig
from sslbench.contract.errors import ConfigError
from sslbench.experiment.estimate import format_seconds
from sslbench.experiment.plan import Cell
from sslbench.results.records import SCHEMA, Warn
from sslbench.results.store import ResultsStore

#: a runner trains one cell and returns its result record (see :func:`sslbench.experiment.runner.run_cell`)
Runner = Callable[..., dict]

#: environment variable read by the training code: cap on data-loader worker processes
LOADER_WORKERS_ENV = "SSLBENCH_MAX_LOADER_WORKERS"

# -------------------------------------------------------------------------------- running


@dataclass
class SweepOutcome:
    """What a sweep run did, by cell id."""

    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    #: finished earlier (done, or failed without --retry-failed)
    skipped: list[str] = field(default_factory=list)
    #: claimed by another process while this one wanted to run it
    busy: list[str] = field(default_factory=list)


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def failed_record(cell: Cell, error: str, seconds: float, log: Path | None = None) -> dict[str, Any]:
    """The record of a cell that raised: what is known about it, the error, no metrics."""
    config = cell.config
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "precision": config.downstream.precision}  # fmt: skip
    if "torch" in sys.modules:  # the full description needs torch: only when it is loaded anyway
        try:
            from sslbench.experiment import environment
            from sslbench.training.device import resolve_device

            env = environment.describe(resolve_device(config.downstream.device), config.downstream.precision)
        except Exception:  # describing the machine must not hide the real error
            pass
    return {
        "schema": SCHEMA,
        "cell_id": cell.cell_id,
        "status": "failed",
        "error": error,
        "strategy": cell.row,
        "config": config.to_dict(),
        "seed": config.seed,
        "train_size": train_budget(config),
        "metrics": {},
        "pretext_metrics": {},
        "timing": {"total_s": seconds},
        "env": env,
        "files": {"log": str(log)} if log else {},
        "created": _now(),
    }


def train_budget(config: RunConfig) -> int | None:
    """Labelled training images of *config*'s cell, as its record states them: ``train_size``, or the
    whole pool when that is None (None when the dataset cannot be opened, e.g. what made it fail)."""
    if config.train_size is not None:
        return config.train_size
    try:
        from sslbench.contract.registry import default_registry

        root = Path(config.root) if config.root else None
        data = default_registry().create("dataset", config.data, "--data", root=root, **config.data_options)
        return len(data.splits(config.protocol, None, config.seed).train)
    except Exception:  # the record of a failure must not fail
        return None


def _default_runner() -> Runner:
    from sslbench.experiment.runner import run_cell

    return run_cell


def execute_cell(
    cell: Cell,
    store: ResultsStore,
    workdir: Path,
    runner: Runner,
    *,
    retry_failed: bool = False,
    console: Console | None = None,
) -> str:
    """Claim, run and record one cell; returns ``done``, ``failed``, ``skipped`` or ``busy``.

    An exception in the runner becomes a failed record (traceback in the cell's log);
    KeyboardInterrupt is not a failure: the cell stays unfinished and resumes next time.
    """
    with store.claim(cell.cell_id) as mine:
        if not mine:
            return "busy"
        status = store.status(cell.cell_id)
        if status == "done" or (status == "failed" and not retry_failed):
            return "skipped"
        start = time.perf_counter()
        try:
            record = runner(cell.config, Path(workdir), resume=True, console=console)
        except Exception as exc:
            if (interrupt := _interruption_behind(exc)) is not None:
                raise interrupt from None
            log = store.log_path(cell.cell_id)
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a", encoding="utf-8") as handle:
                handle.write(f"--- {_now()} cell {cell.cell_id} failed\n{traceback.format_exc()}\n")
            message = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
            store.write(failed_record(cell, message, time.perf_counter() - start, log))
            store.write_csv()
            return "failed"
        record = dict(record)
        record.setdefault("schema", SCHEMA)
        record.setdefault("status", "done")
        record.setdefault("created", _now())
        record["cell_id"] = cell.cell_id
        store.write(record)
        store.write_csv()
        return str(record["status"]) if record["status"] in ("done", "failed") else "done"


def _interruption_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that *exc* was raised while unwinding, if any.

    A SIGTERM to the whole process group (``kill -- -PGID``, ``pkill -f``, a batch scheduler)
    also reaches the data-loader workers; should one die before the main process has stopped
    it, torch reports its death as a RuntimeError raised while the interrupt unwinds, which
    must not make the interrupted cell a failed one.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def cpu_count() -> int:
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def worker_threads(workers: int, cores: int | None = None) -> tuple[int, int]:
    """(torch threads, data-loader workers) per worker so *workers* cells share the cores."""
    cores = cores or cpu_count()
    threads = max(1, cores // max(1, workers))
    return threads, threads // 2


_EXIT = {"done": 0, "failed": 10, "skipped": 11, "busy": 12}


def _cell_process(cell: Cell, root: str, workdir: str, runner: Runner | None,
                  retry_failed: bool, threads: int, loaders: int) -> None:  # fmt: skip
    """Entry point of a worker process: limit threads before torch starts, then run one cell."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)  # read by torch when it is imported
    os.environ[LOADER_WORKERS_ENV] = str(loaders)
    runner = runner or _default_runner()
    if "torch" in sys.modules:  # imported with the runner: set the limit explicitly too
        sys.modules["torch"].set_num_threads(threads)
    store = ResultsStore(root)
    log = store.log_path(cell.cell_id)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as handle:
        console = Console(file=handle, width=120, force_terminal=False, color_system=None)
        status = execute_cell(cell, store, Path(workdir), runner, retry_failed=retry_failed, console=console)
    sys.exit(_EXIT[status])


class _Display:
    """The overall sweep progress line: done / running / failed / left and a time estimate."""

    #: without a terminal (a log, a pipe, CI) a plain progress line is printed at least this often
    LINE_EVERY_S = 60.0

    def __init__(
        self, progress: Progress, name: str, total: int, estimates: dict[str, float | None], workers: int
    ) -> None:
        self.progress = progress
        self.estimates = estimates
        self.workers = workers
        self.counts = collections.Counter()
        self.actual: dict[str, float] = {}
        self.task = progress.add_task(f"sweep {name}", total=total, status="")
        self.name, self.total = name, total
        self.started = time.perf_counter()
        self._last_line: tuple[str, float] | None = None
        self._estimated: tuple[int, float | None, float] | None = None

    def update(self, unfinished: Sequence[str], running: int) -> None:
        """*unfinished*: ids of the cells running or waiting; *running*: how many of them run."""
        c = self.counts
        eta = self._countdown(self.eta(unfinished), len(unfinished))
        status = (
            f"done {c['done'] + c['skipped']} · running {running} · failed {c['failed']} · left {len(unfinished) - running}"
            + (f" · ~{format_seconds(eta)} left" if eta is not None else "")
        )
        completed = c["done"] + c["failed"] + c["skipped"] + c["busy"]
        self.progress.update(self.task, completed=completed, status=status)
        if not self.progress.console.is_terminal:
            self._plain_line(completed, running, len(unfinished) - running, eta)

    def _countdown(self, eta: float | None, unfinished: int) -> float | None:
        """*eta* as estimated when the last cell finished, less the time since (estimates change per cell)."""
        now = time.perf_counter()
        if self._estimated is None or self._estimated[0] != unfinished:
            self._estimated = (unfinished, eta, now)
        _, then, since = self._estimated
        return None if then is None else max(0.0, then - (now - since))

    def _plain_line(self, completed: int, running: int, waiting: int, eta: float | None) -> None:
        """The progress as one plain line when it changed, else once a minute (rich draws no bar here)."""
        c = self.counts
        elapsed = time.perf_counter() - self.started
        if not running + waiting:
            guess = "nothing left"
        elif eta is None:
            guess = "time left unknown until a cell has finished"
        else:
            guess = f"~{format_seconds(eta)} left"
        key = f"{completed}/{running}/{waiting}/{c['failed']}"
        now = time.perf_counter()
        if self._last_line is not None and self._last_line[0] == key and now - self._last_line[1] < self.LINE_EVERY_S:
            return
        self._last_line = (key, now)
        self.progress.console.print(
            f"sweep {self.name}: {completed}/{self.total} cells finished (done {c['done'] + c['skipped']}, failed "
            f"{c['failed']}), {running} running, {waiting} waiting; {format_seconds(elapsed)} elapsed, {guess}",
            highlight=False,
            soft_wrap=True,
        )

    def finish(self, cell_id: str, status: str, seconds: float) -> None:
        self.counts[status] += 1
        if status in ("done", "failed"):
            self.actual[cell_id] = seconds

    def eta(self, left: Sequence[str]) -> float | None:
        """Remaining estimates scaled by how the finished cells compared with theirs, else the mean cell."""
        if not left:
            return None
        known = [self.estimates.get(i) for i in left]
        if all(e is not None for e in known):
            pairs = [(self.actual[i], self.estimates[i]) for i in self.actual if self.estimates.get(i)]
            ratio = sum(a for a, _ in pairs) / sum(e for _, e in pairs) if pairs else 1.0  # type: ignore[misc]
            return ratio * sum(known) / self.workers  # type: ignore[arg-type]
        if self.actual:
            return statistics.mean(self.actual.values()) * len(left) / self.workers
        return None


def run_sweep(
    cells: Sequence[Cell],
    results_dir: Path | str,
    workdir: Path | str,
    runner: Runner | None = None,
    *,
    workers: int = 1,
    retry_failed: bool = False,
    name: str = "sweep",
    console: Console | None = None,
    estimates: dict[str, float | None] | None = None,
    warn: Warn | None = None,
) -> SweepOutcome:
    """Run every unfinished cell of *cells*, recording each in *results_dir*; returns what happened.

    *runner* is called as ``runner(config, workdir, resume=True, console=console)`` and
    returns the cell's record (default :func:`sslbench.experiment.runner.run_cell`). With
    ``workers > 1`` each cell runs in its own spawned process with ``cores // workers``
    torch threads (a crashed process is recorded as a failed cell); the runner must
    then be a module-level function.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    store = ResultsStore(results_dir)
    store.root.mkdir(parents=True, exist_ok=True)
    console = console or Console(quiet=True)
    outcome = SweepOutcome()
    pending: list[Cell] = []
    for cell in cells:
        status = store.status(cell.cell_id, warn)
        if status == "done" or (status == "failed" and not retry_failed):
            outcome.skipped.append(cell.cell_id)
        else:
            pending.append(cell)
    columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"))  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        display = _Display(progress, name, len(cells), estimates or {}, workers)
        display.counts["skipped"] = len(outcome.skipped)
        if workers == 1:
            resolved = runner or _default_runner()
            for position, cell in enumerate(pending):
                display.update([c.cell_id for c in pending[position:]], running=1)
                console.print(f"[bold]cell {cell.cell_id}[/] {cell.label}")
                start = time.perf_counter()
                status = execute_cell(cell, store, Path(workdir), resolved, retry_failed=retry_failed, console=console)
                _note(outcome, cell.cell_id, status)
                display.finish(cell.cell_id, status, time.perf_counter() - start)
                if status == "failed":
                    record = store.read(cell.cell_id) or {}
                    console.print(f"[red]cell {cell.cell_id} failed:[/] {record.get('error')}", highlight=False)
            display.update([], running=0)
        else:
            _run_parallel(pending, store, Path(workdir), runner, workers, retry_failed, outcome, display, console)
    return outcome


def _note(outcome: SweepOutcome, cell_id: str, status: str) -> None:
    {"done": outcome.done, "failed": outcome.failed, "skipped": outcome.skipped, "busy": outcome.busy}[status].append(
        cell_id
    )


def next_cell(queue: collections.deque[Cell], running: Sequence[Cell]) -> Cell:
    """Take the next cell to start from *queue*, preferring one that will not wait on a running cell.

    Cells sharing a pretext pretraining serialise on its cache lock: a second such cell
    would sit idle until the first has pretrained. So the first queued cell whose
    pretraining no running cell holds goes first (supervised cells hold none); only
    when every queued cell shares one does the head of the queue start (it then waits,
    and reuses the pretraining the moment it is cached).
    """
    busy = {c.pretrain_key for c in running if c.pretrain_key is not None}
    for index, cell in enumerate(queue):
        if cell.pretrain_key is None or cell.pretrain_key not in busy:
            del queue[index]
            return cell
    return queue.popleft()


def _run_parallel(
    pending: list[Cell], store: ResultsStore, workdir: Path, runner: Runner | None, workers: int,
    retry_failed: bool, outcome: SweepOutcome, display: _Display, console: Console,
) -> None:  # fmt: skip
    threads, loaders = worker_threads(workers)
    context = multiprocessing.get_context("spawn")
    queue = collections.deque(pending)
    running: dict[str, tuple[Any, Cell, float]] = {}
    try:
        while queue or running:
            while queue and len(running) < workers:
                cell = next_cell(queue, [c for _, c, _ in running.values()])
                args = (cell, str(store.root), str(workdir), runner, retry_failed, threads, loaders)
                process = context.Process(target=_cell_process, args=args, name=f"sslbench-cell-{cell.cell_id}")
                process.start()
                running[cell.cell_id] = (process, cell, time.perf_counter())
                console.print(f"[bold]cell {cell.cell_id}[/] {cell.label} (log: {store.log_path(cell.cell_id)})")
            display.update([c.cell_id for c in queue] + list(running), running=len(running))
            multiprocessing.connection.wait([p.sentinel for p, _, _ in running.values()], timeout=1.0)
            for cell_id, (process, cell, start) in list(running.items()):
                if process.is_alive():
                    continue
                process.join()
                del running[cell_id]
                status = next((s for s, code in _EXIT.items() if code == process.exitcode), None)
                if status is None:
                    status = _record_crash(store, cell, process.exitcode, time.perf_counter() - start)
                _note(outcome, cell_id, status)
                display.finish(cell_id, status, time.perf_counter() - start)
                if status == "failed":
                    record = store.read(cell_id) or {}
                    console.print(f"[red]cell {cell_id} failed:[/] {record.get('error')}", highlight=False)
        display.update([], running=0)
    finally:
        for process, _, _ in running.values():
            process.terminate()
        for process, _, _ in running.values():
            process.join()


def _record_crash(store: ResultsStore, cell: Cell, exitcode: int | None, seconds: float) -> str:
    """A worker process died without recording its cell (killed, out of memory, segfault)."""
    with store.claim(cell.cell_id) as mine:
        if not mine:
            return "busy"
        if store.status(cell.cell_id) == "done":
            return "done"
        log = store.log_path(cell.cell_id)
        how = f"killed by signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
        error = f"worker process died ({how}); output in {log}"
        store.write(failed_record(cell, error, seconds, log))
        store.write_csv()
    return "failed"
