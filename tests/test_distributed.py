"""Data-parallel runs: `torchrun --nproc-per-node 2 -m sslbench run` on CPU (gloo), and the helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sslbench.contract.errors import ConfigError
from sslbench.experiment.runner import run_cell
from sslbench.overrides import set_path
from sslbench.profiles import profile_config
from sslbench.results.store import write_record
from sslbench.training import distributed
from sslbench.training.epoch_log import read_jsonl

TINY = [
    "--profile", "smoke", "--train-size", "6", "--input-size", "32",
    "--set", "data_options.size=24", "--set", "pretext_data_options.size=24",
    "--set", "downstream.epochs=2",
]  # fmt: skip


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for name in distributed.TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.slow
def test_torchrun_with_two_processes_trains_one_cell_and_writes_one_record(tmp_path: Path):
    workdir, results = tmp_path / "runs", tmp_path / "results"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "sslbench", "run", *TINY, "--pretext", "rotation", "--policy", "first",
        "--workdir", str(workdir), "--results", str(results),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # rank 0 alone prints and writes: one record, one line per epoch
    assert done.stdout.count("result stored in") == 1
    (record_path,) = (results / "cells").glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "done" and record["strategy"] == "rotation/first"
    downstream = read_jsonl(Path(record["files"]["metrics_jsonl"]))
    assert [line["epoch"] for line in downstream] == [1, 2]
    assert downstream[1]["train_loss"] < downstream[0]["train_loss"]
    (pretext_run,) = (workdir / "pretext").glob("rotation-*")
    assert [line["epoch"] for line in read_jsonl(pretext_run / "run" / "metrics.jsonl")] == [1]
    assert (pretext_run / "pretrained.json").is_file()

    # the same record format as a run in one process
    config = set_path(profile_config("smoke"), ["train_size"], 6)
    for path, value in {"backbone_options.input_size": 32, "data_options.size": 24, "downstream.epochs": 1}.items():
        config = set_path(config, path.split("."), value)
    single = json.loads(write_record(tmp_path / "single-results", run_cell(config, tmp_path / "single")).read_text())
    assert set(record) == set(single)
    for section in ("metrics", "timing", "env", "files"):
        assert set(record[section]) == set(single[section]), section


def test_without_torchrun_every_helper_is_a_no_op(no_torchrun_env):
    assert distributed.init_from_env(["cpu"]) is False
    assert not distributed.is_initialized()
    assert distributed.rank() == 0 and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.broadcast({"a": 1}) == {"a": 1}
    assert distributed.on_main(lambda: 42) == 42
    distributed.barrier()
    distributed.teardown()
    with distributed.session(["cpu"]) as started:
        assert started is False


def test_world_size_one_does_not_start_a_process_group(no_torchrun_env, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_env(["cpu"]) is False


def test_world_size_without_the_rest_of_torchrun_env_is_a_config_error(no_torchrun_env, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="launch with torchrun"):
        distributed.init_from_env(["cpu"])


def test_non_integer_world_size_is_a_config_error(no_torchrun_env, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE='two'"):
        distributed.init_from_env(["cpu"])


def test_cpu_training_uses_gloo():
    assert distributed.choose_backend(["cpu", "cpu"]) == "gloo"
    assert distributed.choose_backend(["cpu", "auto"]) == "gloo"
