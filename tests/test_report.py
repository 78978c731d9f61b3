"""Report: CI and paired-test math, row labelling, formats, plots and the CLI."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy import stats

from sslbench.contract.config import RunConfig
from sslbench.contract.errors import ConfigError
from sslbench.data.joints import JOINT_NAMES, PARTS
from sslbench.experiment.strategies import transfer_label
from sslbench.profiles import profile_config
from sslbench.results.report import build_report, render, write_plots
from sslbench.results.report.formats import compute_hours
from sslbench.results.report.plots import resolve_cells
from sslbench.results.report.statistics import mean_ci, paired_difference
from sslbench.results.report.tables import views
from sslbench.results.store import load_results, write_record


def make_record(tmp_path: Path, strategy: str, seed: int, pck: float, train_size: int = 100, backbone: str = "cpm6",
                status: str = "done", curves: bool = True) -> dict[str, Any]:  # fmt: skip
    """A record for *strategy* (``supervised`` or ``pretext/policy[:frozen]``) with a curves file."""
    pretext, policy, freeze = "none", "none", False
    if strategy != "supervised":
        pretext, rest = strategy.split("/")
        policy, _, mode = rest.partition(":")
        freeze = mode == "frozen"
    config = RunConfig(seed=seed, pretext=pretext, policy=policy, freeze=freeze, train_size=train_size, backbone=backbone)
    cid = config.cell_id
    curves_path = tmp_path / "runs" / cid / "metrics.jsonl"
    if curves:
        curves_path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"epoch": e, "train": {"loss": 1 / e}, "val": {"loss": 1.2 / e, "pck@0.2": pck * e / 3}, "lr": 0.001})
                 for e in (1, 2, 3)]  # fmt: skip
        curves_path.write_text("\n".join(lines) + '\n{"epoch": 4, "train": {"lo')  # the last line cut by a kill
    return {
        "schema": 1, "cell_id": cid, "status": status, "error": None if status == "done" else "RuntimeError: nan",
        "strategy": "supervised" if config.pretext == "none" else transfer_label(config), "config": config.to_dict(), "seed": seed, "train_size": train_size,
        "metrics": {} if status != "done" else {
            "pck@0.2": pck, "pck@0.1": pck / 2, "auc@0.2": pck / 3,
            "per_joint": dict.fromkeys(JOINT_NAMES, pck),
            "per_part": {**{p: pck - i for i, p in enumerate(PARTS)}, "Mean": pck},
            "test_loss": 1.0, "report_loss": 400.0 - pck, "val_pck@0.2": pck, "best_epoch": 5,
            "converge_epoch": 10 + seed, "epochs_run": 20,
        },
        "pretext_metrics": {}, "timing": {"total_s": 1.0, "downstream_img_per_s": 30.0},
        "env": {}, "files": {"metrics_jsonl": str(curves_path), "run_dir": str(curves_path.parent)},
        "created": "2024-01-01T00:00:00+00:00",
    }  # fmt: skip


#: strategy -> train size -> seed -> PCK@0.2
VALUES = {
    "supervised": {100: {0: 50.0, 1: 54.0, 2: 49.0}, 200: {0: 60.0, 1: 61.0, 2: 63.0}},
    "jigsaw-heatmap/first+middle:frozen": {100: {0: 55.0, 1: 57.0, 2: 52.0, 3: 90.0}, 200: {0: 62.0}},
    "my-plugin/first": {100: {1: 40.0, 2: 45.0}, 200: {0: 58.0, 1: 60.0, 2: 61.0}},
}


@pytest.fixture
def results(tmp_path: Path) -> Path:
    out = tmp_path / "results" / "demo"
    for strategy, sizes in VALUES.items():
        for size, seeds in sizes.items():
            for seed, pck in seeds.items():
                write_record(out, make_record(tmp_path, strategy, seed, pck, size))
    write_record(out, make_record(tmp_path, "rotation/all", 0, 0.0, 100, status="failed"))
    return out


def quiet(message: str) -> None:
    pass


def summary_row(report: Any, row: str, size: int) -> pd.Series:
    s = report.summary
    return s[(s["row"] == row) & (s["train_size"] == size)].iloc[0]


# ----------------------------------------------------------------------------------- math


def test_mean_ci_is_the_t_interval() -> None:
    values = [50.0, 54.0, 49.0]
    mean, low, high = mean_ci(values)
    sd = math.sqrt(((50 - 51) ** 2 + (54 - 51) ** 2 + (49 - 51) ** 2) / 2)  # = sqrt(7)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, df=2)
    assert mean == pytest.approx(51.0)
    assert (low, high) == pytest.approx((51.0 - half, 51.0 + half))
    assert mean_ci([3.0])[0] == 3.0 and math.isnan(mean_ci([3.0])[1])


def test_paired_difference_matches_hand_computation_and_scipy() -> None:
    x, b = [55.0, 57.0, 52.0], [50.0, 54.0, 49.0]
    result = paired_difference(x, b)
    d = np.array([5.0, 3.0, 3.0])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    assert result.n == 3 and result.diff == pytest.approx(11 / 3)
    assert result.p == pytest.approx(2 * stats.t.sf(abs(t), df=2))
    assert result.p == pytest.approx(stats.ttest_rel(x, b).pvalue)
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert (result.low, result.high) == pytest.approx((11 / 3 - half, 11 / 3 + half))
    single = paired_difference([5.0], [3.0])
    assert single.n == 1 and single.diff == 2.0 and math.isnan(single.p) and math.isnan(single.low)


def test_summary_pairs_by_seed_and_ignores_unpaired_seeds(results: Path) -> None:
    report = build_report(load_results(results, warn=quiet))
    jig = summary_row(report, "jigsaw-heatmap/first+middle:frozen", 100)
    assert jig["n"] == 4 and jig["mean"] == pytest.approx(np.mean([55, 57, 52, 90]))
    assert jig["n_pairs"] == 3  # seed 3 has no supervised partner
    assert jig["diff"] == pytest.approx(11 / 3)
    assert jig["p"] == pytest.approx(stats.ttest_rel([55, 57, 52], [50, 54, 49]).pvalue)
    plugin = summary_row(report, "my-plugin/first", 100)
    assert plugin["n_pairs"] == 2 and plugin["diff"] == pytest.approx(((40 - 54) + (45 - 49)) / 2)
    lonely = summary_row(report, "jigsaw-heatmap/first+middle:frozen", 200)
    assert lonely["n_pairs"] == 1 and math.isnan(lonely["p"])
    base = summary_row(report, "supervised", 200)
    assert base["mean"] == pytest.approx(184 / 3) and base["part.Head"] == pytest.approx(184 / 3)
    assert base["converge_epoch"] == pytest.approx(11.0)
    assert report.rows[0] == "supervised" and len(report.failed) == 1


def test_baseline_is_matched_on_other_settings_that_vary(tmp_path: Path) -> None:
    out = tmp_path / "res"
    for backbone, offset in (("cpm6", 0.0), ("cpm3", 20.0)):
        for seed in (0, 1):
            write_record(out, make_record(tmp_path, "supervised", seed, 50.0 + offset + seed, backbone=backbone))
            write_record(out, make_record(tmp_path, "rotation/all", seed, 53.0 + offset + 2 * seed, backbone=backbone))
    report = build_report(load_results(out, warn=quiet))
    assert report.row_keys == ["config.backbone"]
    assert set(report.rows) == {
        "supervised [backbone=cpm3]", "supervised [backbone=cpm6]",
        "rotation/all [backbone=cpm3]", "rotation/all [backbone=cpm6]",
    }  # fmt: skip
    for backbone in ("cpm3", "cpm6"):
        row = summary_row(report, f"rotation/all [backbone={backbone}]", 100)
        assert row["diff"] == pytest.approx(3.5) and row["n_pairs"] == 2  # never compared across backbones


def test_transfer_lr_labels_rows_and_records_from_before_it_read_as_plain_fine_tuning(tmp_path: Path) -> None:
    out = tmp_path / "res"
    for seed in (0, 1):
        write_record(out, make_record(tmp_path, "supervised", seed, 50.0 + seed))
        old = make_record(tmp_path, "rotation/all", seed, 52.0 + seed)
        del old["config"]["transfer_lr"]  # written before the field existed
        write_record(out, old)
        slower = make_record(tmp_path, "rotation/all", seed, 55.0 + seed)
        slower["config"]["transfer_lr"] = 0.1
        slower["cell_id"] = RunConfig.from_dict(slower["config"]).cell_id
        write_record(out, slower)
    report = build_report(load_results(out, warn=quiet))
    assert set(report.rows) == {"supervised", "rotation/all", "rotation/all [transfer_lr=0.1]"}  # the default unlabelled
    assert summary_row(report, "rotation/all [transfer_lr=0.1]", 100)["diff"] == pytest.approx(5.0)
    assert summary_row(report, "rotation/all", 100)["n_pairs"] == 2  # paired with supervised


def test_settings_at_the_profile_default_are_not_named_in_row_labels(tmp_path: Path) -> None:
    out = tmp_path / "res"
    default_epochs = profile_config("cpu").pretrain.epochs
    for seed in (0, 1):
        write_record(out, make_record(tmp_path, "supervised", seed, 50.0 + seed))
        for epochs, pck in ((default_epochs, 51.0), (4 * default_epochs, 54.0)):
            record = make_record(tmp_path, "rotation/all", seed, pck + seed)
            record["config"]["pretrain"]["epochs"] = epochs
            record["cell_id"] = RunConfig.from_dict(record["config"]).cell_id
            write_record(out, record)
    report = build_report(load_results(out, warn=quiet))
    assert report.row_keys == ["config.pretrain.epochs"]
    longer = f"rotation/all [pretrain.epochs={4 * default_epochs}]"
    assert set(report.rows) == {"supervised", "rotation/all", longer}
    assert summary_row(report, longer, 100)["diff"] == pytest.approx(4.0)  # pretraining settings: same baseline
    assert summary_row(report, "rotation/all", 100)["diff"] == pytest.approx(1.0)


def test_unknown_metric_is_a_config_error_with_suggestion(results: Path) -> None:
    with pytest.raises(ConfigError, match=r"--metric: no numeric column 'pck@0.3'.*Did you mean 'pck@0.2'"):
        build_report(load_results(results, warn=quiet), "pck@0.3")
    report = build_report(load_results(results, warn=quiet), "report_loss")
    assert summary_row(report, "supervised", 100)["mean"] == pytest.approx(400 - 51.0)


# -------------------------------------------------------------------------------- formats


def test_views_show_ci_difference_parts_and_report_style(results: Path) -> None:
    report = build_report(load_results(results, warn=quiet))
    main, diff, *parts, report_view = views(report)
    assert main.table.loc["supervised", "100"] == "51.0 ± 6.6 (n=3)"
    assert main.table.loc["jigsaw-heatmap/first+middle:frozen", "200"] == "62.0 (n=1)"
    assert diff.table.loc["supervised", "100"] == "baseline"
    assert diff.table.loc["jigsaw-heatmap/first+middle:frozen", "200"] == "n/a (1 pair)"
    assert diff.table.loc["jigsaw-heatmap/first+middle:frozen", "100"].startswith("+3.7 ± 2.9, p=0.0")
    assert [v.title for v in parts] == [
        "PCK@0.2 per part, 100 training images (mean over seeds)", "PCK@0.2 per part, 200 training images (mean over seeds)",
    ]  # fmt: skip
    assert list(parts[0].table.columns) == [*PARTS, "Mean"]
    assert report_view.table.loc["supervised", "100"] == "349.0 (11)"


def test_every_format_renders(results: Path) -> None:
    report = build_report(load_results(results, warn=quiet))
    markdown = render(report, "markdown", [str(results)])
    assert "| strategy | 100 | 200 |" in markdown and "| my-plugin/first |" in markdown
    assert "## Failed cells" in markdown and "RuntimeError: nan" in markdown
    table = pd.read_csv(io.StringIO(render(report, "csv")))
    assert {"row", "train_size", "n", "mean", "ci_low", "ci_high", "diff", "p", "part.Head"} <= set(table.columns)
    assert len(table) == 6
    latex = render(report, "latex")
    assert latex.count(r"\begin{tabular}") >= 4 and r"$\pm$" in latex and r"pck@0.2" in latex
    assert "jigsaw-heatmap/first+middle:frozen" in latex
    page = render(report, "html")
    assert page.startswith("<!DOCTYPE html>") and page.count("<table") >= 5 and "my-plugin/first" in page
    text = render(report, "terminal")
    assert "supervised" in text and "failed cells" in text
    with pytest.raises(ConfigError, match="Did you mean 'html'"):
        render(report, "htm")


def test_compute_sums_phase_seconds_not_time_spent_waiting(tmp_path: Path) -> None:
    out = tmp_path / "results" / "t"
    timings = [  # (pretrain_s, downstream_s, eval_s, total_s): the second reused the pretraining after a wait
        (3600.0, 1800.0, 36.0, 5436.0), (0.0, 1800.0, 36.0, 5000.0), (None, 3600.0, 72.0, 3672.0),
    ]
    for seed, (pretrain, downstream, evaluation, total) in enumerate(timings):
        record = make_record(tmp_path, "rotation/first" if pretrain is not None else "supervised", seed, 50.0, 100)
        record["timing"] = {"pretrain_s": pretrain, "downstream_s": downstream, "eval_s": evaluation, "total_s": total}
        write_record(out, record)
    df = load_results(out, warn=quiet)
    assert compute_hours(df) == pytest.approx({"pretrain": 1.0, "downstream": 2.0, "strategy": 0.0, "eval": 0.04, "total": 3.04})
    assert "Compute: 3.0 h of run time (1.0 h pretext pretraining, 2.0 h downstream" in render(build_report(df), "markdown")
    assert compute_hours(df.drop(columns=["timing.eval_s"])) is None


def test_plots_are_valid_pngs_with_curves_of_the_best_cells(results: Path, tmp_path: Path) -> None:
    report = build_report(load_results(results, warn=quiet))
    messages: list[str] = []
    written = write_plots(report, tmp_path / "plots", warn=messages.append)
    names = sorted(p.name for p in written)
    assert "pck_at_0.2_vs_train_size.png" in names and "parts_100.png" in names and "parts_200.png" in names
    curves = [n for n in names if n.startswith("curves_")]
    assert len(curves) == 3  # best cell of each strategy, named after the strategy
    assert "curves_best_jigsaw-heatmap_first+middle_frozen.png" in curves
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            assert image.size[0] > 100 and image.size[1] > 100
    assert any("unreadable line (interrupted write?)" in m for m in messages)


def test_a_rerender_replaces_the_curves_of_a_row_whose_best_cell_changed(results: Path, tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    write_plots(build_report(load_results(results, warn=quiet)), plots, warn=quiet)
    before = {p.name: p.read_bytes() for p in plots.glob("curves_*.png")}
    write_record(results, make_record(tmp_path, "supervised", 5, 99.0, 200))  # a new best supervised cell
    write_plots(build_report(load_results(results, warn=quiet)), plots, warn=quiet)
    after = {p.name: p.read_bytes() for p in plots.glob("curves_*.png")}
    assert sorted(after) == sorted(before)  # no stale plot of the old best cell left beside the new one
    assert after["curves_best_supervised.png"] != before["curves_best_supervised.png"]  # its title names the new cell


def test_rows_whose_names_make_the_same_file_name_get_a_plot_each(tmp_path: Path) -> None:
    out = tmp_path / "res"
    for strategy, pck in (("a_b/c", 50.0), ("a/b_c", 60.0)):  # both "a_b_c" as file names
        write_record(out, make_record(tmp_path, strategy, 0, pck))
    report = build_report(load_results(out, warn=quiet))
    written = write_plots(report, tmp_path / "plots", warn=quiet)
    curves = sorted(p.name for p in written if p.name.startswith("curves_"))
    assert len(curves) == 2 and curves[0] == "curves_best_a_b_c.png"
    assert curves[1].startswith("curves_best_a_b_c_") and curves[1].removesuffix(".png")[-12:] in set(report.df["cell_id"])


def test_curves_are_chosen_by_cell_id_prefix(results: Path) -> None:
    report = build_report(load_results(results, warn=quiet))
    cell = report.df["cell_id"].iloc[0]
    assert resolve_cells(report, [cell[:6], cell]) == [cell, cell]
    with pytest.raises(ConfigError, match="--curves: 'zzzz' is not a finished cell"):
        resolve_cells(report, ["zzzz"])
    with pytest.raises(ConfigError, match="--curves: '' is ambiguous"):
        resolve_cells(report, [""])


def test_old_records_without_parts_or_curves_still_report(tmp_path: Path) -> None:
    out = tmp_path / "res"
    for seed in (0, 1):
        rec = make_record(tmp_path, "supervised", seed, 50.0 + seed, curves=False)
        rec["schema"] = 0
        del rec["metrics"]["per_part"], rec["metrics"]["report_loss"]
        write_record(out, rec)
    warnings: list[str] = []
    report = build_report(load_results(out, warn=warnings.append))
    missing = next(w for w in warnings if w.startswith("no record has column(s)"))
    assert "report_loss" in missing and "part.Head" in missing
    assert "| supervised | 50.5 ± 6.4 (n=2) |" in render(report, "markdown")
    written = write_plots(report, tmp_path / "plots", warn=warnings.append)
    assert [p.name for p in written] == ["pck_at_0.2_vs_train_size.png"]
    assert any("no per-epoch metrics file" in w for w in warnings)


# ------------------------------------------------------------------------------------ CLI


def cli_group() -> Any:
    from sslbench.cli.main import main

    return main


def test_cli_report_writes_file_and_plots(results: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "report.md"
    result = runner.invoke(cli_group(), ["report", str(results), "--format", "markdown", "--out", str(out),
                                         "--plots", str(tmp_path / "p"), "--metric", "pck@0.1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("# sslbench report: pck@0.1")
    assert (tmp_path / "p" / "pck_at_0.1_vs_train_size.png").exists()
    result = runner.invoke(cli_group(), ["report", str(results.parent)])  # a folder of sweeps
    assert result.exit_code == 0 and "my-plugin/first" in result.output


def test_cli_report_on_empty_directory_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "empty" / "cells").mkdir(parents=True)
    result = CliRunner().invoke(cli_group(), ["report", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 'empty'}: no readable result records in cells/; run `sslbench sweep` first"
    ]


def test_semi_supervised_rows_pair_with_supervised_and_their_own_phases_count_as_compute(tmp_path: Path):
    out = tmp_path / "semi"
    for seed, (baseline, semi) in enumerate([(50.0, 55.0), (52.0, 58.0), (49.0, 53.0)]):
        write_record(out, make_record(tmp_path, "supervised", seed, baseline))
        record = make_record(tmp_path, "supervised", seed, semi)
        config = RunConfig.from_dict({**record["config"], "strategy": "pseudo-label", "unlabelled_data": "lspet",
                                      "unlabelled_root": f"/data{seed}", "strategy_options": {"threshold": 0.3}})  # fmt: skip
        record.update(cell_id=config.cell_id, config=config.to_dict(), strategy="pseudo-label")
        record["timing"].update(pretrain_s=0.0, downstream_s=3600.0, eval_s=0.0, teacher_s=1800.0,
                                teacher_train_s=1800.0, pseudo_label_s=1800.0)  # fmt: skip
        write_record(out, record)
    report = build_report(load_results(out, warn=lambda message: None))
    row = report.summary.set_index("row").loc["pseudo-label"]
    assert row["n_pairs"] == 3 and row["diff"] == pytest.approx(5.0)  # paired by seed, pool paths ignored
    hours = compute_hours(report.df)
    assert hours["strategy"] == pytest.approx(3.0) and hours["downstream"] == pytest.approx(3.0)
    assert "1.5 h strategies' own phases" not in render(report, "markdown")
    assert "3.0 h strategies' own phases (teachers, pseudo-labelling)" in render(report, "markdown")


def test_a_strategy_option_only_other_cells_set_does_not_name_a_row(tmp_path: Path):
    out = tmp_path / "semi"
    for seed in (0, 1):
        write_record(out, make_record(tmp_path, "supervised", seed, 50.0))
        for strategy, options, pck in (("consistency", {}, 51.0), ("consistency", {"weight": 0.0}, 50.0),
                                       ("pseudo-label", {"threshold": 0.35}, 49.0)):  # fmt: skip
            record = make_record(tmp_path, "supervised", seed, pck)
            config = RunConfig.from_dict({**record["config"], "strategy": strategy, "unlabelled_data": "lspet",
                                          "strategy_options": options})  # fmt: skip
            record.update(cell_id=config.cell_id, config=config.to_dict(), strategy=strategy)
            write_record(out, record)
    rows = set(build_report(load_results(out, warn=lambda message: None)).summary["row"])
    assert rows == {"supervised", "consistency", "consistency [strategy_options.weight=0.0]",
                    "pseudo-label [strategy_options.threshold=0.35]"}


def test_a_pretext_option_only_other_cells_set_does_not_name_a_row(tmp_path: Path):
    out = tmp_path / "ssl"
    for seed in (0, 1):
        write_record(out, make_record(tmp_path, "supervised", seed, 50.0))
        for pretext, options, pck in (("equivariance", {}, 51.0), ("equivariance", {"temperature": 1.0}, 50.0),
                                      ("moco", {}, 49.0)):  # fmt: skip
            record = make_record(tmp_path, "rotation/all", seed, pck)
            config = RunConfig.from_dict({**record["config"], "pretext": pretext, "pretext_options": options})
            record.update(cell_id=config.cell_id, config=config.to_dict(), strategy=f"{pretext}/all")
            write_record(out, record)
    rows = set(build_report(load_results(out, warn=lambda message: None)).summary["row"])
    assert rows == {"supervised", "equivariance/all", "equivariance/all [pretext_options.temperature=1.0]", "moco/all"}
