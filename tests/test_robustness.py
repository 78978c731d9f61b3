"""Damaged files and odd records: what sslbench does with them instead of failing for ever or mislabelling them."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from test_checkpoint import TinyNet, TinyPlugin
from test_report import make_record
from torch import nn

from sslbench.cli.main import main
from sslbench.contract.errors import CheckpointError
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.registry import Entry, Registry
from sslbench.results.store import load_results, write_record
from sslbench.training.checkpoint import build_model, load_checkpoint, load_weights, save_checkpoint


class Warnings(list):
    def __call__(self, message: str) -> None:
        self.append(message)


# ------------------------------------------------------------------- 4: truncated result.json


@pytest.mark.slow
def test_truncated_result_json_of_a_run_is_recomputed_not_fatal(tmp_path):
    from test_runner import tiny_config

    from sslbench.experiment.runner import run_cell

    config = tiny_config()
    first = run_cell(config, tmp_path)
    result = tmp_path / "cells" / first["cell_id"] / "result.json"  # the id of the resolved config
    text = result.read_text()
    result.write_text(text[: len(text) // 2])  # a damaged disk, an editor, a copy cut short
    second = run_cell(config, tmp_path)
    assert second["metrics"]["pck@0.2"] == first["metrics"]["pck@0.2"]
    assert json.loads(result.read_text())["cell_id"] == first["cell_id"]  # repaired


# ------------------------------------------------------- 5: a record with a non-numeric metric


def test_record_with_a_non_numeric_metric_is_skipped_with_a_warning_naming_it(tmp_path):
    results = tmp_path / "results"
    for seed in range(3):
        write_record(results, make_record(tmp_path, "supervised", seed, 50.0 + seed))
    bad = make_record(tmp_path, "supervised", 7, 50.0)
    bad["metrics"]["pck@0.2"] = "high"
    path = write_record(results, bad)
    warnings = Warnings()
    df = load_results(results, warn=warnings)
    assert len(df) == 3 and bad["cell_id"] not in set(df["cell_id"])
    assert any(str(path) in w and "metrics.pck@0.2 is 'high', not a number" in w for w in warnings), warnings
    report = CliRunner().invoke(main, ["report", str(results)])
    assert report.exit_code == 0, report.output
    assert path.name in report.output and "no numeric column" not in report.output


# ------------------------------------------------------------- 6: stale temporary files


def test_stale_temporary_files_of_killed_writes_are_removed_once(tmp_path):
    from sslbench.results.store import STALE_TEMP_S

    results = tmp_path / "results"
    write_record(results, make_record(tmp_path, "supervised", 0, 50.0))
    stale = results / "cells" / ".abc.json.k1.tmp"
    fresh = results / "cells" / ".abd.json.k2.tmp"
    stale.write_text("{")
    fresh.write_text("{")
    old = time.time() - STALE_TEMP_S - 60
    os.utime(stale, (old, old))
    warnings = Warnings()
    load_results(results, warn=warnings)
    assert not stale.exists() and fresh.exists()  # a fresh one may be a write in progress
    assert any(".abc.json.k1.tmp" in w and "removed" in w for w in warnings)
    again = Warnings()
    load_results(results, warn=again)
    assert not any(".abc.json.k1.tmp" in w for w in again)


# ------------------------------------------------------------------- 12: schema labels


def test_schema_warnings_name_newer_older_and_unknown_writers_correctly(tmp_path):
    results = tmp_path / "results"
    cases = {0: 1, 1: 2, 2: "2.0", 3: "0.5", 4: "banana"}
    for seed, schema in cases.items():
        rec = make_record(tmp_path, "supervised", seed, 50.0)
        rec["schema"] = schema
        if schema == 2:
            del rec["metrics"]["converge_epoch"]  # a newer version renamed it: not an "older sslbench"
        write_record(results, rec)
    warnings = Warnings()
    load_results(results, warn=warnings)
    joined = "\n".join(warnings)
    assert "written by a newer sslbench (schema 2," in joined
    assert "written by a newer sslbench (schema '2.0'" in joined
    assert "written by an older sslbench (schema '0.5'" in joined
    assert "written by an unknown program (schema 'banana'" in joined
    lacking = [w for w in warnings if "converge_epoch" in w]
    assert lacking and all("newer" in w and "older" not in w for w in lacking), lacking


# ------------------------------------------------------------------- curves plot


def test_curves_leave_the_report_loss_and_its_stages_off_the_loss_axis():
    from sslbench.results.report.plots import curve_columns

    curves = pd.DataFrame([
        {"epoch": 1, "train_loss": 0.05, "val.loss": 0.06, "val.report_loss": 1700.0, "val.report_loss.stage1": 1300.0,
         "val.report_loss.stage6": 1750.0, "val.loss.stage2": 0.07, "val.pck@0.2": 10.0, "val.part.Head": 3.0, "lr": 1e-3}
    ])  # fmt: skip
    losses, others = curve_columns(curves)
    assert losses == ["train_loss", "val.loss"]
    assert others == ["val.pck@0.2"]


# --------------------------------------------------------- run writes results.csv


@pytest.mark.slow
def test_run_keeps_results_csv_for_pandas(tmp_path):
    from test_runner import TINY

    result = CliRunner().invoke(main, ["run", *TINY, "--workdir", str(tmp_path / "w"), "--results", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "r" / "results.csv")
    assert len(table) == 1 and table.loc[0, "status"] == "done"


# ------------------------------------------------------------ 9, 10: checkpoint sidecar


class Unsorted(TinyNet):
    """TinyNet whose config lists its options out of alphabetical order, with one layer more."""

    def __init__(self, num_outputs: int = 15, input_size: int = 32, width: int = 4, stages: int = 2) -> None:
        super().__init__(num_outputs, input_size, width, stages)
        self.extra = nn.Conv2d(num_outputs, num_outputs, 1)

    def config(self):
        return {"name": "tiny", "width": self.width, "stages": self.stages, "input_size": self.input_size}


def test_same_backbone_in_another_key_order_is_described_once(tmp_path):
    save_checkpoint(tmp_path / "m", TinyNet())
    with pytest.raises(CheckpointError) as caught:
        load_weights(Unsorted(), load_checkpoint(tmp_path / "m"))
    message = str(caught.value)
    assert "do not fit the backbone it records" in message
    assert message.count("tiny(") == 1, message


OPENED: list[str] = []


class InitNet(TinyNet):
    """A backbone with an ``init`` file option, like the timm backbones: it records what it opened."""

    def __init__(self, num_outputs: int = 15, input_size: int = 32, width: int = 4, stages: int = 2, init=None):
        super().__init__(num_outputs, input_size, width, stages)
        self.init = init
        if init is not None:
            OPENED.append(str(init))
            raise CheckpointError(f"backbone option init: checkpoint file {init} does not exist")

    def config(self):
        cfg = super().config() | {"name": "initnet"}
        return cfg if self.init is None else cfg | {"init": self.init}


class InitPlugin:
    @hookimpl
    def sslbench_backbones(self):
        return [Entry("initnet", "backbone with init", InitNet)]


def test_edited_checkpoint_sidecar_is_refused_and_init_never_followed(tmp_path):
    registry = Registry(plugins=[TinyPlugin(), InitPlugin()], load_entrypoints=False)
    OPENED.clear()
    model = InitNet()
    model.init = str(tmp_path / "trunk.safetensors")  # initialised from a file once, long ago
    save_checkpoint(tmp_path / "m", model)
    rebuilt = build_model(load_checkpoint(tmp_path / "m"), registry)  # the weights are the checkpoint's
    assert OPENED == [] and rebuilt.init is None
    torch.testing.assert_close(rebuilt.state_dict(), model.state_dict())

    sidecar = tmp_path / "m.json"
    meta = json.loads(sidecar.read_text())
    meta["backbone"]["init"] = "/etc/shadow"
    meta["backbone"]["width"] = 8
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"m\.json is corrupt: its model description .* was changed"):
        load_checkpoint(tmp_path / "m")
    assert OPENED == []


def test_checkpoints_from_before_the_model_hash_still_load(tmp_path):
    import safetensors.torch

    save_checkpoint(tmp_path / "m", TinyNet())
    weights, sidecar = tmp_path / "m.safetensors", tmp_path / "m.json"
    tensors = safetensors.torch.load(weights.read_bytes())
    data = safetensors.torch.save(tensors, metadata={"format": "sslbench-checkpoint"})  # no model hash
    weights.write_bytes(data)
    meta = json.loads(sidecar.read_text())
    import hashlib

    meta["weights"]["sha256"] = hashlib.sha256(data).hexdigest()
    sidecar.write_text(json.dumps(meta))
    assert load_checkpoint(tmp_path / "m").backbone["width"] == 4


# ------------------------------------------------------------------- 8: pickle in init=


def test_pickle_bearing_init_file_is_refused_in_one_line(tmp_path):
    from sslbench_plugins.timm_backbone import _read_state_dict

    path = tmp_path / "trunk.pth"
    torch.save({"weight": torch.zeros(2), "note": Path("x")}, path, pickle_protocol=2)  # a Path needs unpickling
    with pytest.raises(CheckpointError) as caught:
        _read_state_dict(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "pickled Python objects" in message
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x80\x02 not really a pickle")
    with pytest.raises(CheckpointError) as caught:
        _read_state_dict(garbage)
    assert "\n" not in str(caught.value) and str(garbage) in str(caught.value)
