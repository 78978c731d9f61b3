"""`sslbench run` end to end at smoke size on the synthetic dataset: records, cache, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from sslbench.cli.main import main
from sslbench.contract.config import LATER_FIELDS, RunConfig, config_hash
from sslbench.contract.errors import ConfigError
from sslbench.experiment import runner, strategies
from sslbench.experiment.runner import run_cell
from sslbench.overrides import set_path
from sslbench.profiles import profile_config
from sslbench.training.checkpoint import load_checkpoint
from sslbench.training.device import resolve_precision
from sslbench_plugins.synthetic import RENDER_VERSION

pytestmark = pytest.mark.slow

TINY = [
    "--profile", "smoke", "--train-size", "6", "--input-size", "32",
    "--set", "data_options.size=24", "--set", "pretext_data_options.size=24",
    "--set", "downstream.epochs=1",
]  # fmt: skip


def tiny_config(**fields):
    config = profile_config("smoke")
    for path, value in {
        "train_size": 6,
        "backbone_options.input_size": 32,
        "data_options.size": 24,
        "pretext_data_options.size": 24,
        "downstream.epochs": 1,
        **fields,
    }.items():
        config = set_path(config, path.split("."), value)
    return config


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_supervised_run_writes_a_complete_record(tmp_path: Path):
    result = run_cli("run", *TINY, "--workdir", str(tmp_path / "runs"), "--results", str(tmp_path / "res"))
    assert result.exit_code == 0, result.output
    assert "PCK@0.2" in result.output
    (record_path,) = (tmp_path / "res" / "cells").glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "done" and record["strategy"] == "supervised"
    assert record["train_size"] == 6
    assert 0.0 <= record["metrics"]["pck@0.2"] <= 100.0
    assert set(record["metrics"]["per_part"]) >= {"Head", "Ankle", "Mean"}
    assert len(record["metrics"]["per_joint"]) == 14
    assert record["timing"]["pretrain_s"] == 0.0
    assert record["env"]["torch"] == torch.__version__
    # the stored config reproduces the cell id
    assert record["cell_id"] == type(profile_config("smoke")).from_dict(record["config"]).cell_id


def test_pretraining_is_cached_and_reused_across_policies(tmp_path: Path):
    first = run_cell(tiny_config(pretext="rotation", policy="first"), tmp_path)
    second = run_cell(tiny_config(pretext="rotation", policy="first+middle", freeze=True), tmp_path)
    assert not first["timing"]["pretrain_cached"]
    assert second["timing"]["pretrain_cached"]
    assert second["pretext_metrics"] == first["pretext_metrics"]
    assert "rot_acc" in first["pretext_metrics"]
    assert len(list((tmp_path / "pretext").iterdir())) == 1


def test_frozen_transfer_keeps_pretrained_weights(tmp_path: Path):
    config = tiny_config(pretext="rotation", policy="first+middle", freeze=True)
    record = run_cell(config, tmp_path)
    (cache,) = (tmp_path / "pretext").iterdir()
    pretrained = load_checkpoint(cache / "pretrained").state
    best = load_checkpoint(Path(record["files"]["run_dir"]) / "downstream" / "best").state
    moved = [k for k in best if k.startswith(("stage1.features", "middle")) and not torch.equal(best[k], pretrained[k])]
    assert moved == []
    assert not torch.equal(best["stage2.refine.1.weight"], pretrained["stage2.refine.1.weight"])


def test_corrupt_pretext_cache_is_detected_and_retrained(tmp_path: Path):
    run_cell(tiny_config(pretext="rotation", policy="all"), tmp_path)
    (cache,) = (tmp_path / "pretext").iterdir()
    weights = cache / "pretrained.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    record = run_cell(tiny_config(pretext="rotation", policy="first"), tmp_path)
    assert not record["timing"]["pretrain_cached"]
    load_checkpoint(cache / "pretrained")  # rewritten and valid again


def test_the_record_names_the_commit_the_run_started_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    checkout = {"commit": "aaaa"}
    monkeypatch.setattr(runner.environment, "commit", lambda: checkout["commit"])
    real_fit = strategies.fit

    def fit_while_the_checkout_moves_on(*args, **kwargs):
        checkout["commit"] = "bbbb"  # e.g. a commit made while a long cell trains
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(strategies, "fit", fit_while_the_checkout_moves_on)
    assert run_cell(tiny_config(), tmp_path)["env"]["commit"] == "aaaa"


def test_finished_cell_is_returned_without_touching_test_again(tmp_path: Path):
    config = tiny_config()
    first = run_cell(config, tmp_path)
    again = run_cell(config, tmp_path)
    assert again == first


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pretext", "none", "--policy", "first"], "needs pretrained weights"),
        (["--pretext", "jigsaw-heatmap", "--policy", "none"], "choose a policy"),
        (["--pretext", "jigsaw-heatmapp", "--policy", "all"], "Did you mean 'jigsaw-heatmap'"),
        (["--policy", "first+midle", "--pretext", "rotation"], "Did you mean 'first+middle'"),
        (["--backbone", "cmp6"], "Did you mean 'cpm6'"),
        (["--profile", "gpu"], "unknown profile"),
        (["--input-size", "30"], "input_size"),
        (["--width", "0"], "width"),
        (["--train-size", "500"], "larger than the training pool"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path: Path, args: list[str], message: str):
    result = CliRunner().invoke(main, ["run", *TINY, *args, "--workdir", str(tmp_path), "--results", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


#: The default config as recorded before transfer_lr existed, and its cell id then.
EARLIER_RECORD_CONFIG = json.loads(
    '{"profile": "cpu", "seed": 0, "backbone": "cpm6", "backbone_options": {}, "pretext": "none", '
    '"pretext_options": {}, "pretext_data": "synthetic-unlabelled", "pretext_root": null, "pretext_data_options": {}, '
    '"pretext_images": null, "pretrain": {"epochs": 30, "batch_size": 16, "optimizer": "adam", "lr": 0.001, '
    '"momentum": 0.9, "weight_decay": 0.0, "schedule": "cosine", "warmup_epochs": 0, "patience": 0, '
    '"samples_per_epoch": null, "val_samples": null, "num_workers": 1, "precision": "auto", "channels_last": true, '
    '"device": "auto"}, "pretrain_seed": null, "policy": "none", "freeze": false, "data": "synthetic", "root": null, '
    '"data_options": {}, "protocol": "standard", "train_size": null, "sigma": 1.0, "loss_scale": "mean", '
    '"downstream": {"epochs": 30, "batch_size": 16, "optimizer": "adam", "lr": 0.001, "momentum": 0.9, '
    '"weight_decay": 0.0, "schedule": "cosine", "warmup_epochs": 0, "patience": 0, "samples_per_epoch": null, '
    '"val_samples": null, "num_workers": 1, "precision": "auto", "channels_last": true, "device": "auto"}}'
)


def test_fields_added_later_keep_the_cell_ids_of_earlier_records() -> None:
    # A failure here means a RunConfig change renamed every recorded cell (a sweep would run them
    # all again): put the new field in LATER_FIELDS with the value that reproduces the old behaviour.
    config = RunConfig.from_dict(EARLIER_RECORD_CONFIG)
    identity = config.identity()
    assert identity.pop("data_version") == RENDER_VERSION  # synthetic cells are named by their renderer too
    assert config_hash(identity) == "45c265c16105"
    assert set(LATER_FIELDS) == set(config.to_dict()) - set(EARLIER_RECORD_CONFIG)
    finetuned = RunConfig.from_dict({**EARLIER_RECORD_CONFIG, "pretext": "rotation", "policy": "first"})
    slower = RunConfig.from_dict({**finetuned.to_dict(), "transfer_lr": 0.1})
    assert slower.cell_id != finetuned.cell_id and "transfer_lr" in slower.identity()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"pretext": "rotation", "policy": "first", "transfer_lr": 0.0}, "transfer_lr must be > 0"),
        ({"pretext": "rotation", "policy": "first", "freeze": True, "transfer_lr": 0.1}, "policy first:frozen fine-tunes none"),
        ({"transfer_lr": 0.1}, "policy none fine-tunes none"),
    ],
)
def test_transfer_lr_needs_fine_tuned_transferred_layers(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig(**fields).validate()


def test_transfer_lr_reaches_the_optimiser_of_the_downstream_run(tmp_path: Path):
    args = ["--pretext", "rotation", "--policy", "first", "--set", "transfer_lr=0.5"]
    result = run_cli("run", *TINY, *args, "--workdir", str(tmp_path / "runs"), "--results", str(tmp_path / "res"))
    assert result.exit_code == 0, result.output
    assert "(lr x0.5)" in result.output  # the transfer table, training column
    config = resolve_precision(tiny_config(pretext="rotation", policy="first", transfer_lr=0.5))  # the cell the run made
    last = load_checkpoint(tmp_path / "runs" / "cells" / config.cell_id / "downstream" / "last")
    base = config.downstream.lr
    assert [g["initial_lr"] for g in last.optimizer["param_groups"]] == pytest.approx([base, base * 0.5])
