"""Strategies: a third party's strategy plugs in with no core change; the semi-supervised
strategies train, store what they label, check their options and refuse a pool that overlaps."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sslbench.cli.main import main
from sslbench.contract.config import RunConfig
from sslbench.contract.errors import ConfigError
from sslbench.contract.registry import default_registry
from sslbench.experiment.phases import build_backbone
from sslbench.experiment.runner import run_cell
from sslbench.experiment.strategies import label, strategy_of
from sslbench.overrides import set_path
from sslbench.profiles import profile_config
from sslbench.tasks.semi import MaskedPoseTask
from sslbench.training.device import resolve_precision
from sslbench_plugins.consistency import map_affine

TINY = [
    "--profile", "smoke", "--train-size", "6", "--input-size", "32",
    "--set", "data_options.size=24", "--set", "downstream.epochs=1",
]  # fmt: skip

INIT_FILE_PLUGIN = '''
"""A third party's strategy: start the pose network from a safetensors file."""
from pathlib import Path

from safetensors.torch import load_file

from sslbench.contract.errors import ConfigError
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.interfaces import Strategy
from sslbench.contract.registry import Entry


class InitFile(Strategy):
    name = "init-file"
    uses_pretraining = False

    def options(self, config):
        path = config.strategy_options.get("path")
        if not isinstance(path, str) or not Path(path).is_file():
            raise ConfigError(f"strategy init-file: option path must name a safetensors file, got {path!r}")
        return {"path": path}

    def label(self, config):
        return f"init-file {Path(self.options(config)['path']).stem}"

    def initialise(self, cell):
        model = cell.new_network()
        model.load_state_dict(load_file(self.options(cell.config)["path"]))
        return model


@hookimpl
def sslbench_strategies():
    return [Entry("init-file", "initialise from a safetensors file", InitFile)]
'''


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed package with one strategy module and its entry point (no core change)."""
    site = tmp_path / "site"
    (site / "sslbench_initfile-0.1.dist-info").mkdir(parents=True)
    (site / "sslbench_initfile.py").write_text(textwrap.dedent(INIT_FILE_PLUGIN))
    (site / "sslbench_initfile-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: sslbench-initfile\nVersion: 0.1\n")
    (site / "sslbench_initfile-0.1.dist-info" / "entry_points.txt").write_text("[sslbench]\ninit-file = sslbench_initfile\n")
    monkeypatch.syspath_prepend(str(site))
    default_registry.cache_clear()
    yield site
    default_registry.cache_clear()


def weights_file(tmp_path: Path) -> Path:
    from safetensors.torch import save_file

    config = set_path(profile_config("smoke"), ["backbone_options", "input_size"], 32)
    torch.manual_seed(123)
    model = build_backbone(default_registry(), config, 15)
    path = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.mark.slow
def test_a_third_party_strategy_lists_runs_sweeps_and_gets_its_own_row(tmp_path: Path, third_party: Path):
    cli = CliRunner()
    listing = cli.invoke(main, ["plugins", "--json"], catch_exceptions=False)
    assert any(p["name"] == "init-file" and p["kind"] == "strategy" for p in json.loads(listing.output)["plugins"])

    weights = weights_file(tmp_path)
    run = cli.invoke(main, ["run", *TINY, "--strategy", "init-file", "--strategy-opt", f"path={weights}",
                            "--workdir", str(tmp_path / "runs"), "--results", str(tmp_path / "single")])  # fmt: skip
    assert run.exit_code == 0, run.output
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "single" / "cells").glob("*.json")]
    assert record["strategy"] == "init-file start" and record["config"]["strategy"] == "init-file"

    spec = tmp_path / "third.toml"
    spec.write_text(textwrap.dedent(f"""
        name = "third"
        profile = "smoke"
        strategies = ["supervised", "init-file"]
        train_sizes = [6]
        seeds = [0, 1]
        [set]
        backbone_options.input_size = 32
        data_options.size = 24
        downstream.epochs = 1
        [strategy_options.init-file]
        path = "{weights}"
    """))
    sweep = cli.invoke(main, ["sweep", str(spec), "--results", str(tmp_path / "res"), "--workdir", str(tmp_path / "runs")])
    assert sweep.exit_code == 0, sweep.output
    report = cli.invoke(main, ["report", str(tmp_path / "res"), "--format", "markdown"], catch_exceptions=False)
    assert report.exit_code == 0, report.output
    rows = [line.split("|")[1].strip() for line in report.output.splitlines() if line.startswith("| ")]
    assert "init-file start" in rows and "supervised" in rows


def test_spelling_out_the_strategy_the_pretext_implies_keeps_the_cell_id():
    implied = profile_config("cpu")
    assert RunConfig.from_dict({**implied.to_dict(), "strategy": "supervised"}).cell_id == implied.cell_id
    transfer = RunConfig.from_dict({**implied.to_dict(), "pretext": "rotation", "policy": "first"})
    assert RunConfig.from_dict({**transfer.to_dict(), "strategy": "transfer"}).cell_id == transfer.cell_id
    semi = RunConfig.from_dict({**implied.to_dict(), "strategy": "consistency", "unlabelled_data": "lspet"})
    assert semi.cell_id != implied.cell_id
    spelled = RunConfig.from_dict({**semi.to_dict(), "strategy_options": {"weight": 1.0, "targets": "peaks"}})
    assert spelled.cell_id == semi.cell_id
    assert RunConfig.from_dict({**semi.to_dict(), "strategy_options": {"weight": 0.5}}).cell_id != semi.cell_id


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"strategy": "consistency"}, "trains on unlabelled images: give --unlabelled-data"),
        ({"strategy": "pseudo-label", "unlabelled_data": "lspet", "strategy_options": {"threshold": 1.5}},
         "option threshold must be a number in [0.0, 1.0], got 1.5"),
        ({"strategy": "pseudo-label", "unlabelled_data": "lspet", "strategy_options": {"rounds": "two"}},
         "option rounds must be an integer"),
        ({"strategy": "consistency", "unlabelled_data": "lspet", "strategy_options": {"wieght": 2}},
         "unknown option 'wieght'"),
        ({"strategy": "transfer"}, "transfers a pretext pretraining"),
        ({"strategy": "supervised", "pretext": "rotation", "policy": "first"}, "trains from scratch"),
        ({"strategy": "consistensy", "unlabelled_data": "lspet"}, "Did you mean 'consistency'"),
    ],
)
def test_a_strategy_that_does_not_fit_the_config_is_a_one_line_error(fields, message):
    config = RunConfig.from_dict({**profile_config("cpu").to_dict(), **fields})
    with pytest.raises(ConfigError, match=re.escape(message)):
        strategy_of(config, default_registry())


def test_semi_supervised_rows_say_both_parts():
    base = profile_config("cpu").to_dict()
    plain = RunConfig.from_dict({**base, "strategy": "consistency", "unlabelled_data": "lspet"})
    combined = RunConfig.from_dict({**plain.to_dict(), "pretext": "jigsaw-heatmap", "policy": "first+middle"})
    assert label(plain, default_registry()) == "consistency"
    assert label(combined, default_registry()) == "jigsaw-heatmap/first+middle + consistency"


def test_masked_pose_loss_leaves_out_unknown_joints_and_equals_the_pose_loss_when_all_are_known():
    task = MaskedPoseTask(sigma=1.0)
    outputs = [torch.rand(2, 15, 4, 4)]
    target = torch.rand(2, 15, 4, 4)
    full = {"target": target, "weight": torch.ones(2, 15)}
    assert torch.allclose(task.loss(outputs, full), torch.nn.functional.mse_loss(outputs[0], target))
    weight = torch.ones(2, 15)
    weight[0, 3] = 0
    moved = [outputs[0].clone()]
    moved[0][0, 3] += 10.0  # an unknown joint's map is not trained
    masked = {"target": target, "weight": weight}
    assert torch.allclose(task.loss(moved, masked), task.loss(outputs, masked))


def test_the_map_affine_moves_a_point_of_the_easy_view_onto_the_hard_view():
    from sslbench.data.pipeline import crop_matrix, input_to_map, transform_points

    easy = crop_matrix((50.0, 60.0), 100.0, 32)
    hard = crop_matrix((50.0, 60.0), 100.0, 32, rotation=30.0, scale=1.2, flip=True)
    point = np.array([[40.0, 70.0]])  # original pixels
    easy_map = input_to_map(transform_points(point, easy), 8)[0]
    hard_map = input_to_map(transform_points(point, hard), 8)[0]
    theta = map_affine(easy, hard, stride=8, map_size=4)
    normalised = hard_map * 2 / 3 - 1
    onto_easy = theta[:, :2] @ normalised + theta[:, 2]
    assert np.allclose((onto_easy + 1) * 3 / 2, easy_map, atol=1e-4)
    from sslbench_plugins.consistency import easy_to_hard

    back = easy_to_hard(torch.tensor(easy_map)[None, None], torch.from_numpy(theta)[None], map_size=4)
    assert np.allclose(back[0, 0].numpy(), hard_map, atol=1e-4)  # and the way back


@pytest.mark.slow
def test_consistency_trains_and_measures_collapse(tmp_path: Path):
    result = CliRunner().invoke(main, ["run", *TINY, "--strategy", "consistency", "--unlabelled-data", "synthetic-unlabelled",
                                       "--set", "unlabelled_data_options.seed=1", "--set", "pretext_data_options.size=24", "--workdir", str(tmp_path / "runs"),
                                       "--results", str(tmp_path / "res")], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "res" / "cells").glob("*.json")]
    assert record["strategy"] == "consistency"
    assert {"unlabelled_peak", "val_peak"} <= set(record["strategy_metrics"])


@pytest.mark.slow
def test_pseudo_labels_are_stored_with_the_cell_and_reused_when_it_resumes(tmp_path: Path, monkeypatch):
    config = RunConfig.from_dict({
        **profile_config("smoke").to_dict(), "train_size": 6, "strategy": "pseudo-label",
        "unlabelled_data": "synthetic-unlabelled", "unlabelled_data_options": {"seed": 1},
        "strategy_options": {"threshold": 0.0, "min_joints": 1, "images": 8},
    })  # fmt: skip
    config = set_path(set_path(config, ["backbone_options", "input_size"], 32), ["downstream", "epochs"], 1)
    config = resolve_precision(set_path(config, ["data_options", "size"], 24))
    record = run_cell(config, tmp_path)
    labels = tmp_path / "cells" / record["cell_id"] / "pseudo-labels-round1.json"  # precision resolved for the machine
    stored = json.loads(labels.read_text())
    assert len(stored["images"]) == 8 and len(stored["images"][0]["joints"]) == 14
    assert record["strategy_metrics"]["round1.images_kept"] == 8
    assert {"teacher_s", "pseudo_label_s", "student1_s"} <= set(record["timing"])
    assert "round1.val_pck@0.2_all" in record["strategy_metrics"]
    supervised = RunConfig.from_dict({**config.to_dict(), "strategy": None, "strategy_options": {}, "unlabelled_data": None,
                                      "unlabelled_data_options": {}})  # fmt: skip
    teacher_curves = tmp_path / "cells" / supervised.cell_id / "downstream" / "metrics.jsonl"
    assert teacher_curves.exists()  # the teacher is the supervised cell's run: trained once, for both
    assert run_cell(supervised, tmp_path)["metrics"]["val_pck@0.2"] == record["strategy_metrics"]["teacher_val_pck@0.2"]

    grid = tmp_path / "pseudo.png"
    preview = CliRunner().invoke(main, ["data", "preview", "--data", "synthetic-unlabelled", "--pseudo-labels", str(labels),
                                        "--count", "4", "--input-size", "64", "--out", str(grid)])  # fmt: skip
    assert preview.exit_code == 0, preview.output
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels.with_name("broken.json").write_text("{}")
    broken = CliRunner().invoke(main, ["data", "preview", "--data", "synthetic-unlabelled",
                                       "--pseudo-labels", str(labels.with_name("broken.json"))])  # fmt: skip
    assert broken.exit_code == 2 and "not a pseudo-label file" in broken.output and "Traceback" not in broken.output

    import sslbench_plugins.pseudo_label as plugin

    (tmp_path / "cells" / record["cell_id"] / "result.json").unlink()  # an unfinished cell: resume it
    monkeypatch.setattr(plugin, "predict_joints", lambda *a, **k: pytest.fail("pseudo-labels recomputed"))
    again = run_cell(config, tmp_path)
    assert again["metrics"]["pck@0.2"] == record["metrics"]["pck@0.2"]
    assert again["strategy_metrics"] == record["strategy_metrics"]  # the labeller's validation check is stored too


@pytest.mark.parametrize(
    "pool",
    [{"unlabelled_data": "synthetic"}, {"unlabelled_data": "synthetic-unlabelled"},  # the same render seed
     {"unlabelled_data": "synthetic", "unlabelled_data_options": {"size": 50}}],
)  # fmt: skip
def test_an_unlabelled_pool_that_is_the_labelled_dataset_is_refused(tmp_path: Path, pool: dict):
    config = RunConfig.from_dict({**profile_config("smoke").to_dict(), "strategy": "consistency", **pool})
    with pytest.raises(ConfigError, match="is the labelled dataset itself.*unlabelled_data_options.seed=1"):
        run_cell(config, tmp_path)


def test_an_unlabelled_folder_holding_the_test_images_is_refused(tmp_path: Path, lsp_root: Path):
    config = RunConfig.from_dict({**profile_config("smoke").to_dict(), "strategy": "consistency", "data": "lsp",
                                  "root": str(lsp_root), "train_size": 4, "unlabelled_data": "folder",
                                  "unlabelled_root": str(lsp_root / "images")})  # fmt: skip
    with pytest.raises(ConfigError, match="holds .* of the labelled test images"):
        run_cell(config, tmp_path)


@pytest.mark.parametrize("flip", [False, True])
def test_easy_view_maps_moved_by_the_affine_land_on_the_hard_view_maps(flip: bool):
    """The consistency target: an easy view's joint maps, warped (and left/right swapped when mirrored),
    peak where the hard view's own maps of the same joints peak."""
    import torch.nn.functional as F

    from sslbench.data.joints import FLIP_INDEX, NUM_JOINTS
    from sslbench.data.pipeline import (
        crop_matrix,
        gaussian_maps,
        input_to_map,
        person_box,
        transform_points,
        with_background,
    )

    rng = np.random.default_rng(1)
    joints = np.concatenate([rng.uniform(60, 140, size=(NUM_JOINTS, 2)), np.ones((NUM_JOINTS, 1))], axis=1)
    centre, side = person_box(joints)
    easy = crop_matrix(centre, side, 128)
    hard = crop_matrix(centre, side, 128, rotation=25.0, scale=1.2, flip=flip)

    def maps(matrix: np.ndarray, mirrored: bool) -> torch.Tensor:
        xy = transform_points(joints[:, :2], matrix)
        xy = xy[list(FLIP_INDEX)] if mirrored else xy
        return torch.from_numpy(with_background(gaussian_maps(input_to_map(xy, 8), 16, 1.0)))[None]

    theta = torch.from_numpy(map_affine(easy, hard, stride=8, map_size=16))[None]
    grid = F.affine_grid(theta, [1, NUM_JOINTS + 1, 16, 16], align_corners=True)
    moved = F.grid_sample(maps(easy, False), grid, align_corners=True)
    if flip:
        moved = moved[:, [*FLIP_INDEX, NUM_JOINTS]]
    own = maps(hard, flip)

    def peaks(x: torch.Tensor) -> torch.Tensor:
        flat = x[0, :NUM_JOINTS].reshape(NUM_JOINTS, -1).argmax(dim=1)
        return torch.stack([flat % 16, flat // 16], dim=1).float()

    inside = own[0, :NUM_JOINTS].amax(dim=(1, 2)) > 0.5
    assert inside.sum() >= 8
    assert (peaks(moved) - peaks(own))[inside].abs().max() <= 1.0  # within a map pixel of rounding


def test_peak_targets_put_a_labelled_style_gaussian_where_the_easy_view_sees_a_confident_joint():
    from sslbench.data.joints import FLIP_INDEX, NUM_JOINTS
    from sslbench.data.pipeline import crop_matrix, gaussian_maps, with_background
    from sslbench_plugins.consistency import ConsistencyTask

    task = ConsistencyTask({"threshold": 0.5, "targets": "peaks", "weight": 1.0, "rampup": 0}, sigma=1.0)
    easy_xy = np.array([[4.0 + k % 8, 3.0 + k // 8 * 5] for k in range(NUM_JOINTS)])
    easy = torch.from_numpy(with_background(gaussian_maps(easy_xy, 16, 1.0)))[None]
    easy[0, 5] *= 0.2  # an unconfident joint
    m = crop_matrix((64.0, 64.0), 128.0, 128)
    theta = torch.from_numpy(map_affine(m, m, stride=8, map_size=16))[None]  # the same view: identity
    order = torch.tensor([*FLIP_INDEX, NUM_JOINTS])
    confident = (easy[:, :NUM_JOINTS].amax(dim=(2, 3)) >= 0.5).float()
    target, weight = task._peak_targets(easy, theta, torch.tensor([False]), order, confident)
    assert torch.allclose(target[0, :5], easy[0, :5], atol=1e-4) and weight[0, 5].item() == 0 and weight[0, -1].item() == 0
    mirrored, _ = task._peak_targets(easy, theta, torch.tensor([True]), order, confident[:, order[:NUM_JOINTS]])
    assert torch.allclose(mirrored[0, FLIP_INDEX[0]], easy[0, 0], atol=1e-4)  # channels swapped


def test_pseudo_labelling_says_how_far_it_is():
    from types import SimpleNamespace

    from rich.console import Console

    from sslbench_plugins.pseudo_label import PseudoLabel

    console = Console(record=True, width=100)
    report = PseudoLabel._progress_lines(SimpleNamespace(console=console), "pseudo-labelling round 1", every_s=0.0)
    report(32, 96)
    report(96, 96)
    assert console.export_text().splitlines() == ["pseudo-labelling round 1: 32/96 images", "pseudo-labelling round 1: 96/96 images"]


def test_unlabelled_views_leave_the_batchnorm_running_statistics_alone():
    from sslbench_plugins.consistency import running_statistics_kept

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    net(torch.randn(8, 3, 8, 8))
    before = net[1].running_mean.clone(), net[1].running_var.clone()
    with running_statistics_kept(net):
        out = net(torch.randn(8, 3, 8, 8) * 5 + 3)
    assert torch.equal(net[1].running_mean, before[0]) and torch.equal(net[1].running_var, before[1])
    assert abs(float(out.detach().mean())) < 1e-4  # still normalised with the batch's own statistics
    assert net[1].momentum == 0.1
