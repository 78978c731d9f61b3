"""Sweeps: spec parsing and errors, pruning, cell ids and order, shards, resume, failures, workers, CLI."""

from __future__ import annotations

import collections
import functools
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

import sslbench.cli.sweep
from sslbench.contract.config import RunConfig, config_hash
from sslbench.contract.errors import ConfigError, DataError
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.registry import Entry, Registry
from sslbench.data.joints import JOINT_NAMES, PARTS
from sslbench.experiment.estimate import Estimator, cached_pretrainings, measure_sample_rate, with_loading
from sslbench.experiment.executor import execute_cell, next_cell, run_sweep, worker_threads
from sslbench.experiment.plan import Cell, Plan, expand, parse_shard, shard_cells, split_policy
from sslbench.experiment.spec import SPEC_KEYS, SweepSpec, find_line, load_spec
from sslbench.experiment.strategies import transfer_label
from sslbench.results.store import ResultsStore, load_results, write_record
from sslbench_plugins import supervised as supervised_plugin
from sslbench_plugins import transfer as transfer_plugin

# ------------------------------------------------------------------------------ fixtures
# This module imports no torch at the top: the parallel-workers test spawns processes that
# import it (for the fake runner), and they should start in a second, not in five.


@functools.cache
def _plugin_classes() -> tuple[type, type]:
    import numpy as np
    from torch import nn

    from sslbench.contract.interfaces import ImageDataset
    from sslbench.contract.networks import Backbone, LayerGroup
    from sslbench.data.splits import train_val_test

    class TinyNet(Backbone):
        """One strided conv: enough to time training steps in microseconds."""

        def __init__(self, num_outputs: int, input_size: int = 16, width: float = 1.0, stages: int = 1) -> None:
            super().__init__(num_outputs, input_size, stride=4)
            self.conv = nn.Conv2d(3, num_outputs, 4, stride=4)

        def forward(self, image, centermap=None):
            return [self.conv(image)]

        def layer_groups(self):
            return [LayerGroup("all", "first", ("conv",))]

        def adapters(self):
            return []

        def config(self):
            return {"name": "tinynet", "input_size": self.input_size}

    class TinyData(ImageDataset):
        """60 blank labelled images: 30 train pool, 10 validation, 20 test."""

        name = "synthetic"

        def __init__(self, root: Path | None = None, **options: Any) -> None:
            super().__init__(root)

        @property
        def labelled(self) -> bool:
            return True

        def __len__(self) -> int:
            return 60

        def image(self, index: int):
            return np.zeros((8, 8, 3), np.uint8)

        def image_id(self, index: int) -> str:
            return f"im{index:04d}"

        def joints(self, index: int):
            return np.array([[1 + i % 6, 1 + i // 3, 1] for i in range(14)], np.float32)

        def splits(self, protocol: str, train_size: int | None, seed: int):
            return train_val_test(range(40), range(40, 60), 10, train_size, seed)

    return TinyNet, TinyData


def tiny_net(**options: Any) -> Any:
    return _plugin_classes()[0](**options)


def tiny_data(**options: Any) -> Any:
    return _plugin_classes()[1](**options)


class FakePretext:
    """Takes the options of the real rotation pretext (and rejects others, like a real plugin)."""

    trains = True

    def __init__(self, augment: bool = True) -> None:
        if not isinstance(augment, bool):
            raise ConfigError(f"pretext rotation: option augment must be true or false, got {augment!r}")
        self.augment = augment


class FakePolicy:
    """What a plan asks of a transfer policy: it copies no task adapters."""

    includes_adapters = False


class Plugin:
    @hookimpl
    def sslbench_backbones(self):
        return [Entry("tinynet", "tiny test network", tiny_net), Entry("cpm6", "stand-in", tiny_net)]

    @hookimpl
    def sslbench_pretexts(self):
        return [Entry("jigsaw-heatmap", "test", FakePretext), Entry("rotation", "test", FakePretext)]

    @hookimpl
    def sslbench_policies(self):
        return [Entry(name, "test", FakePolicy) for name in ("none", "all", "first", "first+middle")]

    @hookimpl
    def sslbench_datasets(self):
        return [Entry("synthetic", "test", tiny_data), Entry("synthetic-unlabelled", "test", tiny_data)]


@pytest.fixture
def registry() -> Registry:
    return Registry(plugins=[Plugin(), supervised_plugin, transfer_plugin], load_entrypoints=False)


def fake_record(config: RunConfig, workdir: Path) -> dict[str, Any]:
    """What a runner returns, with metrics derived from the config (no training)."""
    cid = config.cell_id
    run_dir = Path(workdir) / "cells" / cid
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 1.0, "val_loss": 1.2}) + "\n")
    pck = 50.0 + config.seed + (5.0 if config.pretext != "none" else 0.0)
    return {
        "schema": 1, "cell_id": cid, "status": "done", "error": None, "strategy": "supervised" if config.pretext == "none" else transfer_label(config),
        "config": config.to_dict(), "seed": config.seed, "train_size": config.train_size or 30,
        "metrics": {"pck@0.2": pck, "pck@0.1": pck / 2, "auc@0.2": pck / 3, "per_joint": dict.fromkeys(JOINT_NAMES, pck),
                    "per_part": dict.fromkeys([*PARTS, "Mean"], pck),
                    "test_loss": 1.0, "report_loss": 300.0, "val_pck@0.2": pck, "best_epoch": 1, "converge_epoch": 1,
                    "epochs_run": 2},
        "pretext_metrics": {}, "timing": {"pretrain_s": 0.0, "pretrain_cached": False, "downstream_s": 1.0, "eval_s": 0.1,
                                          "total_s": 1.1, "downstream_img_per_s": 10.0, "pretrain_img_per_s": None},
        "env": {}, "files": {"run_dir": str(run_dir), "metrics_jsonl": str(run_dir / "metrics.jsonl")},
        "created": "2024-01-01T00:00:00+00:00",
    }  # fmt: skip


def _log_call(workdir: Path, config: RunConfig) -> None:
    Path(workdir).mkdir(parents=True, exist_ok=True)
    with open(Path(workdir) / "calls.txt", "a") as handle:
        handle.write(config.cell_id + "\n")


def fake_runner(config: RunConfig, workdir: Path, *, resume: bool = True, console: Any = None) -> dict[str, Any]:
    """Module level, so worker processes can import it; seed 9 kills its own process, seed 8
    sends SIGTERM to the sweep and then works on (for a minute)."""
    _log_call(workdir, config)
    if config.seed == 9:
        os.kill(os.getpid(), signal.SIGKILL)
    if config.seed == 8:
        os.kill(os.getppid(), signal.SIGTERM)
        time.sleep(60)
    return fake_record(config, workdir)


def calls(workdir: Path) -> list[str]:
    path = Path(workdir) / "calls.txt"
    return path.read_text().split() if path.exists() else []


def write_spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bench.toml"
    path.write_text(text)
    return path


SPEC = """\
name = "t"
profile = "smoke"
backbones = ["tinynet"]
pretexts = ["none", "jigsaw-heatmap", "rotation"]
policies = ["none", "first", "first+middle:frozen"]
train_sizes = [8, 16]
seeds = [0, 1]

[set]
downstream.epochs = 3

[pretext_options.rotation]
augment = false
"""


def plan_of(tmp_path: Path, registry: Registry, text: str = SPEC):
    return expand(load_spec(write_spec(tmp_path, text)), registry)


# ----------------------------------------------------------------------------- spec errors


def test_unknown_spec_key_names_line_and_suggests(tmp_path: Path, registry: Registry) -> None:
    path = write_spec(tmp_path, 'name = "t"\n\n# comment\npretext = ["rotation"]\n')
    with pytest.raises(ConfigError, match=r"bench\.toml:4: pretext: unknown key 'pretext'\. Did you mean 'pretexts'\?"):
        load_spec(path)


def test_unknown_setting_in_set_table_names_line_and_suggests(tmp_path: Path, registry: Registry) -> None:
    spec = load_spec(write_spec(tmp_path, 'profile = "smoke"\n[set]\ndownstream.epochz = 3\n'))
    with pytest.raises(
        ConfigError, match=r"bench\.toml:3: set\.downstream\.epochz: .*Did you mean 'downstream\.epochs'"
    ):
        expand(spec, registry)


def test_setting_of_wrong_type_is_reported_with_line(tmp_path: Path, registry: Registry) -> None:
    spec = load_spec(write_spec(tmp_path, '[set.downstream]\nepochs = "many"\n'))
    with pytest.raises(ConfigError, match=r"bench\.toml:2: .*downstream\.epochs must be int"):
        expand(spec, registry)


def test_unknown_plugin_in_spec_list_names_its_line_and_suggests(tmp_path: Path, registry: Registry) -> None:
    text = 'pretexts = [\n  "none",\n  "jigsaw-heatmapp",\n]\npolicies = ["none", "first"]\n'
    spec = load_spec(write_spec(tmp_path, text))
    with pytest.raises(
        ConfigError, match=r"bench\.toml:3: pretexts: unknown pretext 'jigsaw-heatmapp'\. Did you mean 'jigsaw-heatmap'"
    ):
        expand(spec, registry)


def test_unknown_plugin_from_command_line_names_the_option(registry: Registry) -> None:
    spec = SweepSpec(policies=["none", "frist"], pretexts=["none", "rotation"], from_cli={"policies": "--policies"})
    with pytest.raises(ConfigError, match=r"--policies: unknown policy 'frist'\. Did you mean 'first'"):
        expand(spec, registry)


def test_bad_pretext_options_are_reported_before_any_training(tmp_path: Path, registry: Registry) -> None:
    spec = load_spec(write_spec(tmp_path, SPEC.replace("augment = false", "augmnt = false")))
    with pytest.raises(
        ConfigError, match=r"bench\.toml:12: pretext_options\.rotation: pretext 'rotation' does not accept"
    ):
        expand(spec, registry)
    spec = load_spec(write_spec(tmp_path, SPEC.replace("augment = false", "augment = 3")))
    with pytest.raises(
        ConfigError, match=r"bench\.toml:12: pretext_options\.rotation: pretext rotation: option augment"
    ):
        expand(spec, registry)


def test_invalid_toml_and_wrong_types_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML.*line 1"):
        load_spec(write_spec(tmp_path, "seeds = [0,\n"[:-1] + " oops"))
    with pytest.raises(ConfigError, match=r"bench\.toml:1: seeds: expected integers, got 'x'"):
        load_spec(write_spec(tmp_path, 'seeds = [0, "x"]\n'))
    with pytest.raises(ConfigError, match="unknown mode 'frozn'"):
        expand(
            SweepSpec(pretexts=["rotation"], policies=["first:frozn"]),
            Registry(plugins=[Plugin()], load_entrypoints=False),
        )


def test_find_line_understands_tables_and_dotted_keys() -> None:
    text = 'a = 1\n[set]\ndownstream.lr = 0.1\n[set.pretrain]\n"epochs" = 2\n[pretext_options.rotation]\nx = 1\n'
    assert find_line(text, ["a"]) == 1
    assert find_line(text, ["set", "downstream", "lr"]) == 3
    assert find_line(text, ["set", "pretrain", "epochs"]) == 5
    assert find_line(text, ["pretext_options", "rotation"]) == 6
    assert find_line(text, ["nope"]) is None


# ---------------------------------------------------------------------------------- cells


def test_nonsense_pairs_are_pruned_and_listed(tmp_path: Path, registry: Registry) -> None:
    plan = plan_of(tmp_path, registry)
    pruned = dict(plan.pruned)
    assert set(pruned) == {
        "pretext none x policy first", "pretext none x policy first+middle:frozen",
        "pretext jigsaw-heatmap x policy none", "pretext rotation x policy none",
    }  # fmt: skip
    strategies = {cell.row for cell in plan.cells}
    assert strategies == {
        "supervised", "jigsaw-heatmap/first", "jigsaw-heatmap/first+middle:frozen",
        "rotation/first", "rotation/first+middle:frozen",
    }  # fmt: skip
    assert len(plan.cells) == 5 * 2 * 2  # strategies x train sizes x seeds


def test_sweep_where_everything_is_pruned_is_an_error(registry: Registry) -> None:
    with pytest.raises(
        ConfigError, match="no cells, every pretext x policy pair was pruned .*pretext none x policy first"
    ):
        expand(SweepSpec(pretexts=["none"], policies=["first"]), registry)


def test_cells_carry_overrides_modes_and_per_pretext_options(tmp_path: Path, registry: Registry) -> None:
    plan = plan_of(tmp_path, registry)
    for cell in plan.cells:
        assert cell.config.downstream.epochs == 3
        assert cell.config.profile == "smoke"
        assert cell.config.freeze == cell.row.endswith(":frozen")
        assert cell.config.pretext_options == ({"augment": False} if cell.config.pretext == "rotation" else {})


def test_supervised_cells_do_not_depend_on_pretext_settings(tmp_path: Path, registry: Registry) -> None:
    plain = plan_of(tmp_path, registry)
    other = plan_of(tmp_path, registry, SPEC.replace("[set]", "[set]\npretext_images = 8\npretrain.epochs = 4"))
    supervised = {c.cell_id for c in plain.cells if c.config.pretext == "none"}
    assert supervised == {c.cell_id for c in other.cells if c.config.pretext == "none"}
    assert not ({c.cell_id for c in plain.cells} - supervised) & {c.cell_id for c in other.cells}
    assert all(c.config.pretrain.epochs == 4 for c in other.cells if c.config.pretext != "none")


def test_transfer_lr_applies_to_fine_tuned_cells_only(tmp_path: Path, registry: Registry) -> None:
    plain = plan_of(tmp_path, registry)
    slower = plan_of(tmp_path, registry, SPEC.replace("[set]", "[set]\ntransfer_lr = 0.5"))
    fine_tuned = {c.cell_id for c in slower.cells if c.config.pretext != "none" and not c.config.freeze}
    assert fine_tuned and all(c.config.transfer_lr == 0.5 for c in slower.cells if c.cell_id in fine_tuned)
    others = {c.cell_id for c in slower.cells} - fine_tuned  # supervised and frozen: the same cells as before
    assert others == {c.cell_id for c in plain.cells if c.config.pretext == "none" or c.config.freeze}


def test_sweep_name_must_be_a_plain_directory_name(registry: Registry) -> None:
    with pytest.raises(ConfigError, match="not a usable directory name"):
        expand(SweepSpec(name="../elsewhere"), registry)


def test_cell_ids_are_config_hashes_and_stable(tmp_path: Path, registry: Registry) -> None:
    first = plan_of(tmp_path, registry)
    reordered = SPEC.replace("seeds = [0, 1]", "seeds = [1, 0, 1]").replace(
        '"none", "jigsaw-heatmap"', '"jigsaw-heatmap", "none"'
    )
    second = plan_of(tmp_path, registry, reordered)
    assert sorted(c.cell_id for c in first.cells) == sorted(c.cell_id for c in second.cells)
    for cell in first.cells:
        assert cell.cell_id == config_hash(cell.config.identity())
        assert Cell.of(RunConfig.from_dict(cell.config.to_dict()), registry).cell_id == cell.cell_id


def test_cells_sharing_a_pretraining_are_adjacent(tmp_path: Path, registry: Registry) -> None:
    plan = plan_of(tmp_path, registry)
    keys = [cell.pretrain_key for cell in plan.cells if cell.pretrain_key]
    runs = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
    assert len(runs) == len(set(keys)) == 4  # 2 pretexts x 2 seeds, each one contiguous block
    assert {len(cells) for cells in plan.pretrainings().values()} == {4}  # 2 policies x 2 sizes


def test_parallel_workers_do_not_queue_behind_a_pretraining_in_progress(tmp_path: Path, registry: Registry) -> None:
    plan = plan_of(tmp_path, registry)
    queue = collections.deque(c for c in plan.cells if c.pretrain_key)  # pretext cells only, in plan order
    first = next_cell(queue, running=[])
    assert first is plan.cells[[c.pretrain_key is not None for c in plan.cells].index(True)]  # head first
    second = next_cell(queue, running=[first])
    assert second.pretrain_key != first.pretrain_key  # skips the cells waiting on first's pretraining
    third = next_cell(queue, running=[first, second])
    assert third.pretrain_key not in {first.pretrain_key, second.pretrain_key}
    # when every queued cell shares a running pretraining, the head of the queue starts anyway
    shared = collections.deque(c for c in plan.cells if c.pretrain_key == first.pretrain_key and c is not first)
    head = shared[0]
    assert next_cell(shared, running=[first]) is head and head not in shared
    supervised = collections.deque(c for c in plan.cells if c.pretrain_key is None)
    supervised_head = supervised[0]
    assert next_cell(supervised, running=[first]) is supervised_head and len(supervised) == 3


def test_shards_are_disjoint_cover_all_cells_and_keep_pretrainings_together(tmp_path: Path, registry: Registry) -> None:
    cells = plan_of(tmp_path, registry).cells
    for count in (1, 2, 3, 5, 40):
        shards = [shard_cells(cells, i, count) for i in range(1, count + 1)]
        ids = [c.cell_id for shard in shards for c in shard]
        assert sorted(ids) == sorted(c.cell_id for c in cells)  # cover, no duplicates
        for shard in shards:
            others = {c.cell_id for s in shards if s is not shard for c in s}
            keys = {c.pretrain_key for c in shard if c.pretrain_key}
            assert not any(c.pretrain_key in keys for c in cells if c.cell_id in others)
        # deterministic and independent of the cells' order
        assert [c.cell_id for c in shard_cells(list(reversed(cells)), 1, count)] == [
            c.cell_id for c in reversed(shards[0])
        ]
    sizes = [len(shard_cells(cells, i, 3)) for i in (1, 2, 3)]
    assert max(sizes) - min(sizes) <= 4  # balanced up to one pretraining group


def test_shard_option_is_parsed_and_checked() -> None:
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "a/b", "3"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)


# -------------------------------------------------------------------------------- running


class CountingRunner:
    def __init__(self, fail_seeds: set[int] = frozenset()) -> None:
        self.fail_seeds = set(fail_seeds)
        self.calls: list[str] = []

    def __call__(self, config: RunConfig, workdir: Path, *, resume: bool = True, console: Any = None) -> dict[str, Any]:
        assert resume is True
        self.calls.append(config.cell_id)
        if config.seed in self.fail_seeds:
            raise ValueError("--train-size 16 is larger than the training pool (12 images)")
        return fake_record(config, workdir)


def test_failed_cell_is_recorded_and_the_sweep_goes_on(tmp_path: Path, registry: Registry) -> None:
    cells = plan_of(tmp_path, registry).cells
    runner = CountingRunner(fail_seeds={1})
    outcome = run_sweep(cells, tmp_path / "res", tmp_path / "runs", runner)
    assert len(runner.calls) == len(cells)
    assert len(outcome.failed) == len(cells) // 2 and len(outcome.done) == len(cells) // 2
    df = load_results(tmp_path / "res")
    failed = df[df["status"] == "failed"]
    assert set(failed["seed"]) == {1}
    assert failed["error"].str.startswith("ValueError: --train-size 16 is larger").all()
    assert (tmp_path / "res" / "logs" / f"{failed['cell_id'].iloc[0]}.log").read_text().count("Traceback") == 1
    assert len(df) == len(cells)
    assert len(pd.read_csv(tmp_path / "res" / "results.csv")) == len(cells)


def test_rerun_skips_finished_cells_and_retries_failed_only_when_asked(tmp_path: Path, registry: Registry) -> None:
    cells = plan_of(tmp_path, registry).cells
    run_sweep(cells, tmp_path / "res", tmp_path / "runs", CountingRunner(fail_seeds={1}))
    again = CountingRunner()
    outcome = run_sweep(cells, tmp_path / "res", tmp_path / "runs", again)
    assert again.calls == [] and len(outcome.skipped) == len(cells)
    retry = CountingRunner()
    outcome = run_sweep(cells, tmp_path / "res", tmp_path / "runs", retry, retry_failed=True)
    failed_before = {c.cell_id for c in cells if c.config.seed == 1}
    assert set(retry.calls) == failed_before and len(retry.calls) == len(failed_before)
    assert set(load_results(tmp_path / "res")["status"]) == {"done"}


def test_interrupt_is_not_recorded_as_a_failure(tmp_path: Path, registry: Registry) -> None:
    cells = plan_of(tmp_path, registry).cells

    def interrupted(config: RunConfig, workdir: Path, **kwargs: Any) -> dict[str, Any]:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(cells, tmp_path / "res", tmp_path / "runs", interrupted)
    assert not list((tmp_path / "res" / "cells").glob("*.json"))


def test_error_raised_while_an_interrupt_unwinds_is_an_interrupt_not_a_failure(
    tmp_path: Path, registry: Registry
) -> None:
    # SIGTERM to the process group also kills the data-loader workers; torch then raises
    # "DataLoader worker ... is killed by signal" while the interrupt unwinds.
    cells = plan_of(tmp_path, registry).cells

    def interrupted(config: RunConfig, workdir: Path, **kwargs: Any) -> dict[str, Any]:
        try:
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.")

    with pytest.raises(KeyboardInterrupt):
        run_sweep(cells, tmp_path / "res", tmp_path / "runs", interrupted)
    assert not list((tmp_path / "res" / "cells").glob("*.json"))


def test_cell_claimed_by_another_process_is_left_alone(tmp_path: Path, registry: Registry) -> None:
    cell = plan_of(tmp_path, registry).cells[0]
    store = ResultsStore(tmp_path / "res")
    runner = CountingRunner()
    with store.claim(cell.cell_id) as mine:
        assert mine
        assert execute_cell(cell, ResultsStore(tmp_path / "res"), tmp_path / "runs", runner) == "busy"
    assert runner.calls == []
    assert execute_cell(cell, store, tmp_path / "runs", runner) == "done"


def test_parallel_workers_run_each_cell_once_and_record_crashes(tmp_path: Path, registry: Registry) -> None:
    ok = plan_of(tmp_path, registry).cells[0]
    crash = Cell.of(RunConfig.from_dict({**ok.config.to_dict(), "seed": 9}), registry)  # its process dies by SIGKILL
    outcome = run_sweep([ok, crash], tmp_path / "res", tmp_path / "runs", fake_runner, workers=2)
    assert sorted(calls(tmp_path / "runs")) == sorted([ok.cell_id, crash.cell_id])
    assert outcome.done == [ok.cell_id] and outcome.failed == [crash.cell_id]
    records = {r["cell_id"]: r for r in ResultsStore(tmp_path / "res").records()}
    assert records[ok.cell_id]["status"] == "done"
    assert "worker process died (killed by signal 9)" in records[crash.cell_id]["error"]


def test_sigterm_stops_a_parallel_sweep_and_its_workers_without_recording_a_failure(
    tmp_path: Path, registry: Registry
) -> None:
    from sslbench.cli.main import Terminated, sigterm_as_interrupt

    cell = plan_of(tmp_path, registry).cells[0]
    doomed = Cell.of(
        RunConfig.from_dict({**cell.config.to_dict(), "seed": 8}), registry
    )  # its worker SIGTERMs the sweep
    before = signal.getsignal(signal.SIGTERM)
    start = time.monotonic()
    with pytest.raises(Terminated), sigterm_as_interrupt():
        run_sweep([doomed], tmp_path / "res", tmp_path / "runs", fake_runner, workers=2)
    assert time.monotonic() - start < 50  # the worker, sleeping for 60 s, was stopped, not waited for
    assert calls(tmp_path / "runs") == [doomed.cell_id]
    assert ResultsStore(tmp_path / "res").status(doomed.cell_id) != "failed"  # resumes next time
    assert signal.getsignal(signal.SIGTERM) is before


def test_workers_split_cores_without_oversubscribing() -> None:
    assert worker_threads(4, cores=16) == (4, 2)
    assert worker_threads(3, cores=2) == (1, 0)


# ------------------------------------------------------------------------------ estimates


def test_estimate_uses_throughput_of_earlier_records(tmp_path: Path, registry: Registry) -> None:
    cells = plan_of(tmp_path, registry).cells
    supervised = next(c for c in cells if c.row == "supervised" and c.config.train_size == 16)
    record = fake_record(supervised.config, tmp_path / "runs")
    record["timing"]["downstream_img_per_s"] = 20.0
    write_record(tmp_path / "res", record)
    estimator = Estimator(registry, tmp_path / "res", measure=False)
    estimate = estimator.estimate(supervised)
    # 3 epochs x (16 train + 10 val / 2) images at 20 img/s, plus the 20 test images at 40 img/s
    assert estimate.downstream_s == pytest.approx(3 * (16 + 10 / 2) / 20 + 20 / 40)
    assert "median of 1 earlier record" in next(iter(estimator.sources.values()))


def pretraining_records(results: Path, cells: list[Cell], img_per_s: float = 30.0) -> None:
    """Records of earlier cells that pretrained each pretext of *cells* at *img_per_s*, without a downstream
    speed (this module's stand-in pretexts cannot train, so their steps cannot be timed)."""
    for cell in {c.config.pretext: c for c in cells if c.pretrains}.values():
        record = fake_record(cell.config, results.parent / "runs")
        record["timing"].update(pretrain_img_per_s=img_per_s, downstream_img_per_s=None)
        write_record(results, record)


def test_estimate_times_real_steps_without_records(tmp_path: Path, registry: Registry) -> None:
    cells = plan_of(tmp_path, registry).cells
    pretraining_records(tmp_path / "res", cells)
    estimator = Estimator(registry, tmp_path / "res", measure=True)
    estimates = estimator.estimates(cells)
    assert all(seconds is not None and seconds > 0 for seconds in estimates.values())
    sources = estimator.sources.values()
    assert any("the step on random tensors" in source and "samples made at" in source for source in sources)
    for group in Plan("t", cells).pretrainings().values():
        first = group[0]
        twin = next(c for c in group[1:] if c.config.train_size == first.config.train_size)
        assert estimates[first.cell_id] > estimates[twin.cell_id]  # the shared pretraining is charged once


def test_estimate_charges_nothing_for_a_cached_pretraining(tmp_path: Path, registry: Registry) -> None:
    from sslbench.experiment.phases import pretext_cache_dir

    cells = plan_of(tmp_path, registry).cells
    group = next(iter(Plan("t", cells).pretrainings().values()))
    first = group[0]
    twin = next(c for c in group[1:] if c.config.train_size == first.config.train_size)
    assert cached_pretrainings(cells, tmp_path / "runs") == set()
    cache = pretext_cache_dir(tmp_path / "runs", first.config)
    cache.mkdir(parents=True)
    (cache / "key.json").write_text("{}")  # a pretraining that was started, not finished
    assert cached_pretrainings(cells, tmp_path / "runs") == set()
    (cache / "pretrained.json").write_text("{}")
    cached = cached_pretrainings(cells, tmp_path / "runs")
    assert cached == {first.pretrain_key}
    pretraining_records(tmp_path / "res", cells)
    estimates = Estimator(registry, tmp_path / "res", measure=True).estimates(cells, cached)
    assert estimates[first.cell_id] == pytest.approx(estimates[twin.cell_id])


def test_a_pretraining_is_estimated_at_its_own_pretexts_speed_not_the_pose_steps(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    timed: list[tuple[str, str]] = []

    def measured(config: RunConfig, registry: Registry, phase: str = "downstream", **kwargs: Any) -> float:
        timed.append((phase, config.pretext))
        return 5.0 if (phase, config.pretext) == ("pretrain", "jigsaw-heatmap") else 20.0  # a 4x dearer pretext

    monkeypatch.setattr("sslbench.experiment.estimate.measure_throughput", measured)
    cells = plan_of(tmp_path, registry).cells
    dear = next(c for c in cells if c.config.pretext == "jigsaw-heatmap")
    cheap = next(c for c in cells if c.config.pretext == "rotation" and c.config.train_size == dear.config.train_size)
    estimator = Estimator(registry, None, measure=True)
    dear_s, cheap_s = estimator.estimate(dear), estimator.estimate(cheap)
    assert dear_s.downstream_s == pytest.approx(cheap_s.downstream_s)
    assert dear_s.pretrain_s == pytest.approx(4 * cheap_s.pretrain_s)
    assert ("pretrain", "jigsaw-heatmap") in timed and ("pretrain", "rotation") in timed
    assert any("pretext jigsaw-heatmap" in what and "5.0 img/s" in source for what, source in estimator.sources.items())


def test_loading_slows_an_estimate_only_where_the_loaders_cannot_keep_up() -> None:
    assert with_loading(10.0, 10.0, workers=0) == pytest.approx(5.0)  # made between steps: the times add up
    assert with_loading(10.0, 100.0, workers=1) == pytest.approx(10.0)  # made while the step runs
    assert with_loading(10.0, 4.0, workers=2) == pytest.approx(8.0)  # two workers at 4 samples/s each


def test_a_measured_speed_counts_the_time_to_make_its_samples(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []

    def sample_rate(config: RunConfig, registry: Registry, phase: str = "downstream", **kwargs: Any) -> float:
        made.append(phase)
        return 5.0  # samples per second, a quarter of the step's 20 img/s

    monkeypatch.setattr("sslbench.experiment.estimate.measure_throughput", lambda *args, **kwargs: 20.0)
    monkeypatch.setattr("sslbench.experiment.estimate.measure_sample_rate", sample_rate)
    cells = plan_of(tmp_path, registry).cells
    supervised = next(c for c in cells if c.row == "supervised")
    workers = supervised.config.downstream.num_workers
    estimator = Estimator(registry, None, measure=True)
    assert estimator.speed(supervised.config) == pytest.approx(with_loading(20.0, 5.0, workers))
    assert made == ["downstream"]
    assert "samples made at 5.0/s" in next(iter(estimator.sources.values()))


def test_a_sample_rate_is_timed_on_the_phases_own_data(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_class = _plugin_classes()[1]
    read: list[int] = []
    real_image = data_class.image

    def image(self: Any, index: int) -> Any:
        read.append(index)
        return real_image(self, index)

    monkeypatch.setattr(data_class, "image", image)
    supervised = next(c for c in plan_of(tmp_path, registry).cells if c.row == "supervised")
    c = supervised.config
    assert measure_sample_rate(c, registry, "downstream", budget_s=0.05) > 0
    budget = set(data_class().splits(c.protocol, c.train_size, c.seed).train)
    assert len(read) >= 4 and set(read) <= budget  # untimed and timed samples: the labelled budget's images only


def test_data_that_cannot_be_read_leaves_the_steps_speed_and_says_so(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreadable(*args: Any, **kwargs: Any) -> float:
        raise DataError("dataset 'synthetic' at /nowhere has no joint labels")

    monkeypatch.setattr("sslbench.experiment.estimate.measure_throughput", lambda *args, **kwargs: 20.0)
    monkeypatch.setattr("sslbench.experiment.estimate.measure_sample_rate", unreadable)
    supervised = next(c for c in plan_of(tmp_path, registry).cells if c.row == "supervised")
    estimator = Estimator(registry, None, measure=True)
    assert estimator.speed(supervised.config) == pytest.approx(20.0)
    assert "loading not timed (DataError: dataset 'synthetic' at /nowhere" in next(iter(estimator.sources.values()))


def test_a_pretraining_without_its_pretexts_speed_is_unknown_not_the_pose_steps(
    tmp_path: Path, registry: Registry
) -> None:
    cells = plan_of(tmp_path, registry).cells
    transferred = next(c for c in cells if c.pretrains)
    record = fake_record(transferred.config, tmp_path / "runs")  # a pose speed, no pretraining speed
    record["timing"]["downstream_img_per_s"] = 20.0
    write_record(tmp_path / "res", record)
    estimate = Estimator(registry, tmp_path / "res", measure=False).estimate(transferred)
    assert estimate.downstream_s is not None and estimate.pretrain_s is None
    pretrain_s = {}
    for speed in (10.0, 20.0):  # earlier pretrainings of the pretext: their speed, whatever the pose step's
        results = tmp_path / f"res-{speed}"
        pretraining_records(results, cells, img_per_s=speed)
        write_record(results, record)
        pretrain_s[speed] = Estimator(registry, results, measure=False).estimate(transferred).pretrain_s
    assert pretrain_s[10.0] == pytest.approx(2 * pretrain_s[20.0])


def test_a_pretrainings_speed_is_timed_on_the_pretexts_own_step_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import sslbench.experiment.bench.measures as measures
    from sslbench.contract.registry import default_registry
    from sslbench.experiment.estimate import measure_throughput
    from sslbench.profiles import profile_config

    config = RunConfig.from_dict({**profile_config("smoke").to_dict(), "pretext": "byol", "policy": "all"})
    config = RunConfig.from_dict({**config.to_dict(), "pretrain": {**config.to_dict()["pretrain"], "batch_size": 4}})
    steps: list[tuple[str, int]] = []
    real_step = measures.train_step

    def recorded(model: Any, task: Any, batch: dict[str, Any], *args: Any) -> Any:
        steps.append((task.name, int(batch["image"].shape[0])))
        return real_step(model, task, batch, *args)

    def round_robin(steps_of: list[Any], count: int, device: Any) -> list[list[float]]:
        for step in steps_of:  # each step runs once; its injected time is 0.01 s whatever the machine
            step()
        return [[0.01] * count for _ in steps_of]

    monkeypatch.setattr(measures, "train_step", recorded)
    monkeypatch.setattr(measures, "_round_robin", round_robin)
    speed = measure_throughput(config, default_registry(), "pretrain")
    # the smallest batch a pair-comparing loss takes (warm-up, timed), then the pretraining's batch (not the
    # pose phase's 8): warm-up and the timed steps
    assert steps == [("byol", 2), ("byol", 2), ("byol", 4), ("byol", 4)]
    assert speed == pytest.approx(4 / 0.01)


# ------------------------------------------------------------------------------------ CLI


def cli_group() -> Any:
    """The CLI group, imported late (other commands pull in torch)."""
    from sslbench.cli.main import main

    return main


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, registry: Registry, tmp_path: Path) -> CliRunner:
    monkeypatch.setattr(sslbench.cli.sweep, "default_registry", lambda: registry)
    monkeypatch.setattr("sslbench.experiment.executor._default_runner", lambda: CountingRunner(fail_seeds={5}))
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_cli_dry_run_prints_plan_pretrainings_pruned_and_estimate(cli: CliRunner, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, SPEC)
    result = cli.invoke(cli_group(), ["sweep", str(spec), "--dry-run", "--seeds", "0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "10 cells" in result.output
    assert "pretext pretrainings" in result.output and "P2" in result.output
    assert "pretext none x policy first:" in result.output
    assert "estimated time left" in result.output and "the step on random tensors" in " ".join(result.output.split())
    assert "2 pretext pretraining(s), 0 cached in runs, 2 to train" in " ".join(result.output.split())
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()


def test_cli_sweep_then_report(cli: CliRunner, tmp_path: Path) -> None:
    args = ["sweep", "--profile", "smoke", "--backbones", "tinynet", "--pretexts", "none,rotation",
            "--policies", "none,first", "--train-sizes", "8,16", "--seeds", "0,1,5", "--name", "demo"]  # fmt: skip
    result = cli.invoke(cli_group(), args)
    assert result.exit_code == 1  # seed 5 fails in the fake runner
    assert "sweep demo: 8 done, 4 failed" in result.output
    records = list((tmp_path / "results" / "demo" / "cells").glob("*.json"))
    assert len(records) == 12
    result = cli.invoke(cli_group(), args)
    assert "0 done, 0 failed, 12 finished earlier" in result.output
    plan = " ".join(cli.invoke(cli_group(), [*args[:-4], "--seeds", "0,1", *args[-2:], "--dry-run"]).output.split())
    assert "pretraining(s), 0 cached in runs, 0 to train" in plan and "not needed" in plan
    report = cli.invoke(cli_group(), ["report", "results/demo", "--format", "markdown"])
    assert report.exit_code == 0, report.output
    assert "| rotation/first |" in report.output and "## Failed cells" in report.output


def test_cli_sigterm_ends_the_command_with_exit_143_and_keeps_finished_cells(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished: list[int] = []

    def runner(config: RunConfig, workdir: Path, **kwargs: Any) -> dict[str, Any]:
        if finished:
            os.kill(os.getpid(), signal.SIGTERM)
        finished.append(config.seed)
        return fake_record(config, workdir)

    monkeypatch.setattr("sslbench.experiment.executor._default_runner", lambda: runner)
    args = [
        "sweep",
        "--profile",
        "smoke",
        "--backbones",
        "tinynet",
        "--train-sizes",
        "8",
        "--seeds",
        "0,1",
        "--name",
        "t",
    ]
    result = cli.invoke(cli_group(), args)
    assert result.exit_code == 143 and result.output.strip().endswith("terminated"), result.output
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "t" / "cells").glob("*.json")]
    assert [(r["seed"], r["status"]) for r in records] == [(0, "done")]


def test_cli_bad_input_is_one_line_exit_2(cli: CliRunner, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, 'name = "x"\nseed = [0]\n')
    result = cli.invoke(cli_group(), ["sweep", str(spec)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {spec}:2: seed: unknown key 'seed'. Did you mean 'seeds'? Known keys: " + ", ".join(SPEC_KEYS)
    ]
    for args, message in (
        (["sweep", "--pretexts", "rotaton"], "--pretexts: unknown pretext 'rotaton'. Did you mean 'rotation'?"),
        (["sweep", "--seeds", "0,x"], "--seeds: 'x' is not an integer"),
        (["sweep", "--shard", "3/2"], "--shard '3/2': need 1 <= I <= N"),
        (["sweep", "--set", "downstream.lrr=1"], "--set downstream.lrr=1: no such setting 'downstream.lrr'"),
    ):
        result = cli.invoke(cli_group(), args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_report_formats_match_the_cli_choices() -> None:
    from sslbench.results.report import FORMATS

    assert sslbench.cli.sweep.REPORT_FORMATS == FORMATS


def test_rows_key_keeps_only_the_listed_cells(tmp_path: Path, registry: Registry) -> None:
    text = SPEC.replace("seeds = [0, 1]", 'seeds = [0, 1]\nrows = ["supervised", "rotation/first+middle:frozen"]')
    plan = plan_of(tmp_path, registry, text)
    assert {cell.row for cell in plan.cells} == {"supervised", "rotation/first+middle:frozen"}
    assert len(plan.cells) == 2 * 2 * 2


def test_a_row_that_matches_nothing_is_an_error_with_its_line(tmp_path: Path, registry: Registry) -> None:
    text = SPEC.replace("seeds = [0, 1]", 'seeds = [0, 1]\nrows = ["rotation/all"]')
    with pytest.raises(ConfigError, match=r"bench\.toml:8: rows: row 'rotation/all' matches no cell"):
        plan_of(tmp_path, registry, text)


def test_an_old_spec_listing_row_labels_as_strategies_is_told_to_write_rows(tmp_path: Path, registry: Registry) -> None:
    text = SPEC.replace("seeds = [0, 1]", 'seeds = [0, 1]\nstrategies = ["supervised", "rotation/all"]')
    with pytest.raises(
        ConfigError, match=r"bench\.toml:8: strategies: 'rotation/all' is a row label.*write `rows = \[\.\.\.\]`"
    ):
        plan_of(tmp_path, registry, text)


def test_strategies_axis_multiplies_the_product_and_prunes_what_a_strategy_refuses(
    tmp_path: Path, registry: Registry
) -> None:
    text = SPEC.replace("seeds = [0, 1]", 'seeds = [0, 1]\nstrategies = ["supervised", "transfer"]')
    plan = plan_of(tmp_path, registry, text)
    default = plan_of(tmp_path, registry)
    assert {c.cell_id for c in plan.cells} == {c.cell_id for c in default.cells}  # spelled out = implied
    assert "pretext rotation x policy first x strategy supervised" in dict(plan.pruned)


def test_a_fixed_pretrain_seed_shares_one_pretraining_across_seeds(tmp_path: Path, registry: Registry) -> None:
    plan = plan_of(tmp_path, registry, SPEC + "\n")
    per_seed = {cell.pretrain_key for cell in plan.cells if cell.pretrain_key}
    shared = plan_of(tmp_path, registry, SPEC.replace("[set]\n", "[set]\npretrain_seed = 0\n"))
    assert len({cell.pretrain_key for cell in shared.cells if cell.pretrain_key}) == len(per_seed) // 2


def test_sweep_prints_plain_progress_lines_with_cells_left_and_an_eta_without_a_terminal(tmp_path, registry):
    import io

    from rich.console import Console

    cells = plan_of(tmp_path, registry).cells
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    run_sweep(cells, tmp_path / "res", tmp_path / "runs", CountingRunner(), console=console, name="t")
    lines = [line for line in out.getvalue().splitlines() if line.startswith("sweep t: ")]
    total = len(cells)
    assert lines[0].startswith(f"sweep t: 0/{total} cells finished") and "time left unknown" in lines[0]
    assert any(f"1/{total} cells finished" in line and "left" in line and "~" in line for line in lines)
    assert lines[-1].startswith(
        f"sweep t: {total}/{total} cells finished (done {total}, failed 0), 0 running, 0 waiting"
    )
    assert lines[-1].endswith("elapsed, nothing left")


def test_demo_spec_compares_three_seeds_of_two_strategies_at_the_demo_profile():
    from sslbench.experiment.strategies import label
    from sslbench.profiles import PROFILES

    registry = default_registry_for_demo()
    plan = expand(load_spec(Path(__file__).parent.parent / "benchmarks" / "demo.toml"), registry)
    rows = {cell.cell_id: label(cell.config, registry) for cell in plan.cells}
    assert sorted(set(rows.values())) == ["jigsaw-heatmap/first+middle", "supervised"]
    for row in set(rows.values()):
        assert sorted(c.config.seed for c in plan.cells if rows[c.cell_id] == row) == [0, 1, 2]
    assert {cell.config.profile for cell in plan.cells} == {"demo"} and "demo" in PROFILES
    assert {cell.config.data for cell in plan.cells} == {"synthetic"}  # no downloads


def default_registry_for_demo():
    from sslbench.contract.registry import default_registry

    return default_registry()


@pytest.mark.parametrize(
    "spelling, frozen", [("first:freeze", True), ("first:frozen", True), ("first:fine-tune", False), ("first", False)]
)
def test_sweep_policies_accept_every_spelling_run_accepts(spelling: str, frozen: bool, registry: Registry) -> None:
    from sslbench.experiment.transfer import parse_policy

    assert split_policy(spelling) == parse_policy(spelling) == ("first", frozen)
    plan = expand(SweepSpec(pretexts=["rotation"], policies=[spelling]), registry)
    assert {cell.config.freeze for cell in plan.cells} == {frozen}


def test_a_sweep_policy_of_an_unknown_mode_names_the_option(registry: Registry) -> None:
    with pytest.raises(ConfigError, match=r"--policies: 'first:melted': unknown mode 'melted'"):
        split_policy("first:melted")


def test_a_command_line_set_wins_over_the_specs_option_tables(tmp_path: Path, registry: Registry) -> None:
    from sslbench.cli.sweep import build_spec

    path = tmp_path / "spec.toml"
    path.write_text(SPEC)  # [pretext_options.rotation] augment = false
    spec = build_spec(path, assignments=["pretext_options.augment=true"])
    rotation = [c for c in expand(spec, registry).cells if c.config.pretext == "rotation"]
    assert rotation and all(c.config.pretext_options == {"augment": True} for c in rotation)
