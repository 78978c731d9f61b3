"""What a cell is: the profile's options per backbone, canonical cell ids and cache keys, and what records say."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sslbench.cli.run import build_config
from sslbench.contract.config import RunConfig
from sslbench.contract.registry import default_registry
from sslbench.experiment import runner
from sslbench.experiment.phases import pretext_cache_dir
from sslbench.experiment.plan import expand
from sslbench.experiment.spec import SweepSpec
from sslbench.experiment.strategies import label
from sslbench.profiles import profile_config
from sslbench.training.device import resolve_precision

RESULTS = Path(__file__).resolve().parent.parent / "results"


# ------------------------------------------------------------------ profile options per backbone


def test_the_cpu_profile_gives_cpm_options_to_cpm_backbones_only() -> None:
    assert profile_config("cpu").backbone_options == {"input_size": 128, "width": 0.125, "norm": "batch"}
    assert profile_config("cpu", "cpm3").backbone_options == {"input_size": 128, "width": 0.125, "norm": "batch"}
    timm = profile_config("cpu", "timm-resnet18")
    assert timm.backbone == "timm-resnet18" and timm.backbone_options == {"input_size": 128}


@pytest.mark.parametrize("profile", ["cpu", "smoke", "paper"])
def test_run_with_a_timm_backbone_builds_under_every_profile(profile: str) -> None:
    config = build_config(profile, {"backbone": "timm-resnet18"}, {}, {}, {}, ("backbone_options.input_size=64",))
    assert "norm" not in config.backbone_options
    default_registry().create("backbone", config.backbone, "--backbone", num_outputs=15, **config.backbone_options)


def test_a_sweep_gives_each_backbone_its_own_profile_options() -> None:
    spec = SweepSpec(name="t", profile="cpu", backbones=["cpm6", "timm-resnet18"], train_sizes=[8], seeds=[0])
    cells = {cell.config.backbone: cell.config for cell in expand(spec, default_registry()).cells}
    assert cells["cpm6"].backbone_options == {"input_size": 128, "width": 0.125, "norm": "batch"}
    assert cells["timm-resnet18"].backbone_options == {"input_size": 128}
    assert cells["cpm6"].cell_id == RunConfig.from_dict({**profile_config("cpu").to_dict(), "train_size": 8}).cell_id


# ------------------------------------------------------------------ canonical ids and cache keys


def rotation(**fields) -> RunConfig:
    return RunConfig.from_dict(
        {**profile_config("smoke").to_dict(), "pretext": "rotation", "policy": "first", **fields}
    )


@pytest.mark.parametrize(
    "pretext, options",
    [("rotation", {"augment": True}), ("jigsaw-heatmap", {"permutations": "fixed:10", "gap": 5, "sigma": None})],
)
def test_spelling_out_a_pretext_default_is_the_same_cell_and_cache_entry(
    tmp_path: Path, pretext: str, options: dict
) -> None:
    plain, spelled = rotation(pretext=pretext), rotation(pretext=pretext, pretext_options=options)
    assert spelled.cell_id == plain.cell_id
    assert pretext_cache_dir(tmp_path, spelled) == pretext_cache_dir(tmp_path, plain)
    assert spelled.to_dict()["pretext_options"] == options  # the record keeps what was asked for


def test_pretext_options_off_their_default_name_another_cell_and_cache_entry(tmp_path: Path) -> None:
    plain, other = rotation(), rotation(pretext_options={"augment": False})
    assert other.cell_id != plain.cell_id
    assert pretext_cache_dir(tmp_path, other) != pretext_cache_dir(tmp_path, plain)


def test_the_report_labels_a_spelled_out_pretext_default_like_the_default() -> None:
    from sslbench.results.report.tables import _at_default

    row = pd.Series({"config.profile": "smoke", "config.backbone": "cpm6", "config.pretext": "rotation",
                     "config.pretext_options.augment": True})  # fmt: skip
    assert _at_default(row, "config.pretext_options.augment")
    assert not _at_default(row.replace({True: False}), "config.pretext_options.augment")


def test_a_new_renderer_version_renames_synthetic_cells_and_cache_entries(tmp_path: Path, monkeypatch) -> None:
    from sslbench_plugins.synthetic import SyntheticPeople

    config = rotation()
    before, cache = config.cell_id, pretext_cache_dir(tmp_path, config)
    monkeypatch.setattr(SyntheticPeople, "version", SyntheticPeople.version + 1)
    assert config.cell_id != before
    assert pretext_cache_dir(tmp_path, config) != cache


def test_datasets_without_a_version_keep_their_ids(monkeypatch) -> None:
    from sslbench_plugins.synthetic import SyntheticPeople

    lsp = RunConfig.from_dict({**profile_config("cpu").to_dict(), "data": "lsp", "pretext_data": "lspet"})
    assert not {"data_version", "pretext_data_version"} & set(lsp.identity())
    assert "pretext_data_version" not in lsp.pretext_key()
    # a supervised cell on LSP keeps its id whatever the (unused) unlabelled synthetic data's version
    supervised = RunConfig.from_dict({**lsp.to_dict(), "pretext_data": "synthetic-unlabelled"})
    before = supervised.cell_id
    monkeypatch.setattr(SyntheticPeople, "version", SyntheticPeople.version + 1)
    assert supervised.cell_id == before


# ------------------------------------------------------------------------------ what records say


def tiny(**fields) -> RunConfig:
    """A cell of seconds on 24 synthetic images (11 of them the training pool)."""
    data = profile_config("smoke").to_dict()
    data.update(train_size=6, backbone_options={"input_size": 32, "width": 0.125}, data_options={"size": 24},
                pretext_data_options={"size": 24})  # fmt: skip
    data["downstream"].update(epochs=1)
    data.update(fields)
    return RunConfig.from_dict(data)


@pytest.mark.slow
def test_done_and_failed_records_state_the_same_budget(tmp_path: Path) -> None:
    from sslbench.experiment.executor import failed_record
    from sslbench.experiment.plan import Cell

    capped = tiny()
    capped.downstream.samples_per_epoch = 4
    assert runner.run_cell(capped, tmp_path)["train_size"] == 6  # the budget, not the 4 images drawn per epoch
    assert failed_record(Cell.of(capped, default_registry()), "boom", 0.0)["train_size"] == 6
    whole = tiny(train_size=None)  # the whole pool
    assert (
        runner.run_cell(whole, tmp_path)["train_size"]
        == failed_record(Cell.of(whole, default_registry()), "boom", 0.0)["train_size"]
        == 11
    )


# ------------------------------------------------------------------------------------ precision


def with_precision(config: RunConfig, precision: str) -> RunConfig:
    data = config.to_dict()
    data["pretrain"]["precision"] = data["downstream"]["precision"] = precision
    return RunConfig.from_dict(data)


def test_the_cpu_profile_trains_fp32_and_fp32_cells_keep_the_ids_of_auto_ones(tmp_path: Path) -> None:
    config = rotation(profile="cpu")
    assert profile_config("cpu").pretrain.precision == profile_config("cpu").downstream.precision == "fp32"
    fp32, auto, bf16 = (with_precision(config, p) for p in ("fp32", "auto", "bf16"))
    assert fp32.cell_id == auto.cell_id != bf16.cell_id
    assert pretext_cache_dir(tmp_path, fp32) == pretext_cache_dir(tmp_path, auto)
    assert pretext_cache_dir(tmp_path, bf16) != pretext_cache_dir(tmp_path, fp32)


@pytest.mark.parametrize("native, precision", [(True, "bf16"), (False, "fp32")])
def test_auto_is_resolved_for_the_machine_before_the_cell_id(monkeypatch, native: bool, precision: str) -> None:
    import sslbench.training.device

    monkeypatch.setattr(sslbench.training.device, "cpu_has_native_bf16", lambda: native)
    auto = with_precision(rotation(), "auto")
    auto.pretrain.device = auto.downstream.device = "cpu"
    resolved = resolve_precision(auto)
    assert (resolved.pretrain.precision, resolved.downstream.precision) == (precision, precision)
    assert (resolved.cell_id == auto.cell_id) == (precision == "fp32")
    spec = SweepSpec(name="t", profile="smoke", pretexts=["rotation"], policies=["first"], train_sizes=[8], seeds=[0])
    (cell,) = expand(spec, default_registry()).cells
    assert cell.config.downstream.precision == precision and cell.cell_id == cell.config.cell_id


@pytest.mark.slow
def test_records_say_which_precision_ran_on_which_cpu(tmp_path: Path) -> None:
    import sslbench.training.device

    record = runner.run_cell(tiny(), tmp_path)
    ran = "bf16" if sslbench.training.device.cpu_has_native_bf16() else "fp32"
    assert record["env"]["precision"] == record["config"]["downstream"]["precision"] == ran
    assert record["env"]["cpu_bf16"] == sslbench.training.device.cpu_has_native_bf16()
    assert record["cell_id"] == RunConfig.from_dict(record["config"]).cell_id


def cpu_record(seed: int, precision: str, pck: float, pretext: str = "none", policy: str = "none") -> dict:
    """A done cpu-profile record; precision ``auto`` writes it as records were written before precision was recorded."""
    config = RunConfig.from_dict({**profile_config("cpu").to_dict(), "seed": seed, "train_size": 100,
                                  "pretext": pretext, "policy": policy})  # fmt: skip
    config = with_precision(config, precision)
    metrics = {"pck@0.2": pck, "pck@0.1": pck / 2, "auc@0.2": pck / 3, "test_loss": 1.0, "report_loss": 300.0,
               "val_pck@0.2": pck, "best_epoch": 3, "converge_epoch": 3, "epochs_run": 5}  # fmt: skip
    return {"schema": 1, "cell_id": config.cell_id, "status": "done", "error": None, "strategy": label(config, default_registry()),
            "config": config.to_dict(), "seed": seed, "train_size": 100, "metrics": metrics, "pretext_metrics": {},
            "timing": {"total_s": 1.0}, "env": {} if precision == "auto" else {"precision": precision},
            "files": {}, "created": f"2026-01-0{seed + 1}T00:00:00+00:00"}  # fmt: skip


def test_legacy_auto_loads_as_fp32_and_the_report_keeps_bf16_cells_apart(tmp_path: Path) -> None:
    from sslbench.results.report import build_report, render
    from sslbench.results.store import load_results, write_record

    records = [cpu_record(0, "auto", 50.0), cpu_record(1, "auto", 52.0), cpu_record(2, "fp32", 54.0),
               cpu_record(0, "bf16", 40.0), cpu_record(1, "bf16", 42.0),
               cpu_record(0, "auto", 51.0, "rotation", "first"), cpu_record(1, "fp32", 53.0, "rotation", "first")]  # fmt: skip
    for record in records:
        write_record(tmp_path, record)
    df = load_results(tmp_path, warn=lambda message: None)
    assert set(df["config.downstream.precision"]) == set(df["env.precision"]) == {"fp32", "bf16"}
    assert (df["config.pretrain.precision"] != "auto").all()
    report = build_report(df)
    rows = report.summary.set_index("row")
    assert rows.loc["supervised", "n"] == 3  # legacy auto and new fp32 cells: one row
    assert rows.loc["supervised [downstream.precision=bf16]", "n"] == 2  # bf16 apart, and saying so
    assert rows.loc["rotation/first", "n_pairs"] == 2  # paired with the fp32 baseline
    assert "Precision: bf16 in 2 cell(s), fp32 in 5 cell(s)" in render(report, "markdown")


def test_one_did_you_mean_helper_names_the_closest_names() -> None:
    from sslbench.contract.errors import did_you_mean

    assert did_you_mean("cmp6", ["cpm6", "timm"]) == " Did you mean 'cpm6'?"
    several = did_you_mean("resnet", ["resnet18", "resnet50", "vit"], n=3)
    assert "'resnet18'" in several and "'resnet50'" in several and "vit" not in several
    assert did_you_mean("zzz", ["cpm6"]) == ""


# ------------------------------------------------------------------------ committed results


def test_every_committed_record_keeps_its_cell_id() -> None:
    # A failure means a change renamed committed cells (a sweep would run them again and the
    # report would pair nothing): hash the new thing only when it is off the old behaviour.
    paths = sorted(RESULTS.glob("*/cells/*.json"))
    if not paths:
        pytest.skip("no committed results in this checkout")
    renamed = [p.name for p in paths if RunConfig.from_dict(json.loads(p.read_text())["config"]).cell_id != p.stem]
    assert renamed == [], f"{len(renamed)} of {len(paths)} committed records would get new cell ids"


def test_the_unlabelled_pool_of_semi_supervised_cells_counts_with_its_version(monkeypatch) -> None:
    from sslbench_plugins.synthetic import SyntheticPeople

    semi = RunConfig.from_dict({**profile_config("smoke").to_dict(), "strategy": "consistency",
                                "unlabelled_data": "synthetic-unlabelled"})  # fmt: skip
    assert semi.identity()["unlabelled_data_version"] == SyntheticPeople.version
    before = semi.cell_id
    monkeypatch.setattr(SyntheticPeople, "version", SyntheticPeople.version + 1)
    assert semi.cell_id != before
