"""The linear probe (sslbench.experiment.probe, `sslbench probe`): known answers, test images never read, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_lsp
from PIL import Image, ImageDraw
from torch import nn

from sslbench.cli.main import main
from sslbench.contract.errors import ConfigError
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.interfaces import ImageDataset, Splits
from sslbench.contract.networks import Backbone, LayerGroup
from sslbench.contract.registry import Entry, Registry
from sslbench.data.joints import NUM_JOINTS
from sslbench.experiment.phases import pretext_cache_dir
from sslbench.experiment.probe import (
    BACKGROUND,
    ProbeSettings,
    fit_probe,
    point_features,
    probe,
    probed_groups,
    result_rows,
    sample_points,
    spearman,
)
from sslbench.overrides import set_path
from sslbench.profiles import profile_config
from sslbench.training.checkpoint import load_checkpoint
from sslbench_plugins import cpm, lsp, policies, rotation, supervised

REPO = Path(__file__).resolve().parents[1]
SIZE = 64


# ------------------------------------------------------------------------------ fixtures


class JointDiscs(ImageDataset):
    """Images with joint j drawn as a disc of grey level 16 (j + 1) on black; remembers every image read."""

    name = "joint-discs"

    def __init__(self, root: Path | None = None, n: int = 24) -> None:
        super().__init__(root)
        rng = np.random.default_rng(0)
        grid = np.array([(x, y) for y in range(4) for x in range(4)][:NUM_JOINTS], dtype=np.float64)
        self._joints = [
            grid[rng.permutation(NUM_JOINTS)] * 22 + 20 + rng.uniform(-3, 3, (NUM_JOINTS, 2)) for _ in range(n)
        ]
        self.read: list[int] = []

    @property
    def labelled(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self._joints)

    def image(self, index: int) -> np.ndarray:
        self.read.append(index)
        image = Image.new("RGB", (110, 110), (0, 0, 0))
        draw = ImageDraw.Draw(image)
        for j, (x, y) in enumerate(self._joints[index]):
            level = 16 * (j + 1)
            draw.ellipse([x - 6, y - 6, x + 6, y + 6], fill=(level, level, level))
        return np.asarray(image)

    def image_id(self, index: int) -> str:
        return f"disc{index}"

    def joints(self, index: int) -> np.ndarray:
        return np.concatenate([self._joints[index], np.ones((NUM_JOINTS, 1))], axis=1).astype(np.float32)

    def splits(self, protocol: str, train_size: int | None, seed: int) -> Splits:
        return Splits(train=list(range(12))[:train_size], val=list(range(12, 18)), test=list(range(18, len(self))))


class GreyLevels(nn.Module):
    """One-hot of the grey level (16 bins) of every pixel: features that name the joint drawn there."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        from sslbench.data.pipeline import MEAN, STD

        grey = image[:, :1] * float(STD[0]) + float(MEAN[0])
        level = torch.round(grey / 16).clamp(0, 15).long()[:, 0]
        return nn.functional.one_hot(level, 16).permute(0, 3, 1, 2).float()


class Noise(nn.Module):
    """Features that know nothing of the image."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(int(image.sum() * 1000) % 2**31)
        return torch.randn(image.shape[0], 16, *image.shape[-2:], generator=generator)


class FeatureNet(Backbone):
    """A stride-1 backbone whose only layer group is *layer*."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__(num_outputs=15, input_size=SIZE, stride=1)
        self.stem = layer

    def forward(self, image: torch.Tensor, centermap: torch.Tensor | None = None) -> list[torch.Tensor]:
        return [self.stem(image)]

    def layer_groups(self) -> list[LayerGroup]:
        return [LayerGroup("stem", "first", ("stem",))]

    def adapters(self) -> list[str]:
        return []

    def config(self) -> dict[str, Any]:
        return {"name": "feature-net"}


@pytest.fixture
def discs() -> JointDiscs:
    return JointDiscs()


def registry_with(dataset: ImageDataset) -> Registry:
    class Plugin:
        @hookimpl
        def sslbench_datasets(self) -> list[Entry]:
            return [Entry(dataset.name, "test images", lambda root=None, **options: dataset)]

    return Registry(plugins=[Plugin(), cpm, lsp, policies, rotation, supervised], load_entrypoints=False)


def tiny_config(**fields: Any):
    config = profile_config("smoke")
    for path, value in {"backbone_options.input_size": 32, "data": "joint-discs", **fields}.items():
        config = set_path(config, path.split("."), value)
    return config


# --------------------------------------------------------------------------------- tests


def test_sampling_reads_each_map_where_the_pipeline_puts_its_pixels():
    """Map pixel u at stride s sits at input pixel s*u + (s-1)/2: sampling a ramp there returns u."""
    for stride in (1, 4, 8):
        m = SIZE // stride
        ramp = torch.arange(m, dtype=torch.float32).expand(m, m)[None, None]  # value = column
        u = torch.tensor([0.0, 1.0, 2.5, m - 1.0])
        points = torch.stack([stride * u + (stride - 1) / 2, torch.full_like(u, 10.0)], dim=1)[None]
        sampled = sample_points([ramp], points, SIZE)
        assert torch.allclose(sampled[0, :, 0], u, atol=1e-5)


def test_features_that_name_the_joint_score_near_100_and_random_ones_near_chance(discs):
    settings = ProbeSettings(background=8)
    known, random = FeatureNet(GreyLevels()), FeatureNet(Noise())
    scores = {}
    for name, model in (("known", known), ("random", random)):
        train = point_features(model, ["stem"], discs, list(range(12)), 0, settings)
        val = point_features(model, ["stem"], discs, list(range(12, 18)), 0, settings)
        assert set(np.unique(train[1])) == set(range(NUM_JOINTS + 1))
        assert train[0].shape == (12 * (NUM_JOINTS + 8), 16)
        scores[name] = fit_probe(train, val)
    assert scores["known"]["probe_acc"] > 95 and scores["known"]["joint_acc"] > 95
    assert scores["random"]["probe_acc"] < 25  # chance: 100/15


def test_background_points_keep_their_distance_and_are_reproducible(discs):
    from sslbench.experiment.probe import background_points

    joints = np.array([[10.0, 10.0], [50.0, 50.0]])
    a = background_points(joints, SIZE, 50, 0.2, np.random.default_rng(3))
    b = background_points(joints, SIZE, 50, 0.2, np.random.default_rng(3))
    assert np.array_equal(a, b) and a.shape == (50, 2)
    assert np.linalg.norm(a[:, None] - joints[None], axis=2).min() >= 0.2 * SIZE
    assert BACKGROUND == NUM_JOINTS


def test_probe_reads_the_budget_and_validation_images_never_the_test_images(discs, tmp_path):
    config = tiny_config(train_size=8)
    result = probe(config, tmp_path, registry_with(discs))
    splits = discs.splits("standard", 8, 0)
    assert set(discs.read) == set(splits.train) | set(splits.val)
    assert not set(discs.read) & set(splits.test)
    assert result["train_images"] == 8 and result["val_images"] == 6
    assert result["groups"] == ["stage1", "middle"]  # a random start: the floor, on both image groups
    assert 0 <= result["probe_acc"] <= 100


def test_a_pretraining_must_be_cached_unless_asked_to_train_it(discs, tmp_path):
    fields = {"pretext": "rotation", "policy": "first", "pretext_data": "joint-discs", "train_size": 8,
              "pretrain.precision": "fp32", "downstream.precision": "fp32"}  # fmt: skip
    config = tiny_config(**fields)
    registry = registry_with(discs)
    with pytest.raises(ConfigError, match="no cached pretraining of rotation.*--pretrain"):
        probe(config, tmp_path, registry)
    first = probe(config, tmp_path, registry, allow_pretrain=True)
    again = probe(config, tmp_path, registry)  # from the cache now, the same network
    assert first["groups"] == ["stage1"]  # policy first: the transferred image group only
    assert again["probe_acc"] == first["probe_acc"]


def test_kept_epochs_of_a_pretraining_are_probed_with_their_held_out_metrics(discs, tmp_path):
    fields = {"pretext": "rotation", "policy": "first", "pretext_data": "joint-discs", "train_size": 8,
              "pretrain.precision": "fp32", "downstream.precision": "fp32", "pretrain.epochs": 2}  # fmt: skip
    registry = registry_with(discs)
    plain = probe(tiny_config(**fields), tmp_path, registry, allow_pretrain=True)
    with pytest.raises(ConfigError, match=r"kept no weights after epoch 1 \(kept: none; pretrain.keep_every"):
        probe(tiny_config(**fields), tmp_path, registry, kept_epoch=1)
    config = tiny_config(**fields, **{"pretrain.keep_every": 1})  # the same pretraining, trained again keeping
    shutil.rmtree(pretext_cache_dir(tmp_path, config))
    assert probe(config, tmp_path, registry, allow_pretrain=True)["probe_acc"] == plain["probe_acc"]
    cached = load_checkpoint(pretext_cache_dir(tmp_path, config) / "pretrained")
    kept = {e: probe(config, tmp_path, registry, kept_epoch=e) for e in (1, 2)}
    assert kept[2]["pretrain_samples"] == 2 * kept[1]["pretrain_samples"] > 0
    assert set(kept[1]["pretext_metrics"]) >= {"loss", "rot_acc"}
    best = cached.meta["best_epoch"]
    assert kept[best]["probe_acc"] == plain["probe_acc"]  # the best epoch's weights are what the cache holds
    with pytest.raises(ConfigError, match=r"kept no weights after epoch 3 \(kept: 1, 2\)"):
        probe(config, tmp_path, registry, kept_epoch=3)


def test_policies_choose_the_probed_groups():
    registry = Registry(plugins=[cpm, policies], load_entrypoints=False)
    model = registry.create("backbone", "cpm3", num_outputs=15, input_size=32, width=0.125)
    assert probed_groups(model, "all", registry) == ["stage1", "middle"]  # later groups sit behind adapters
    assert probed_groups(model, "first", registry) == ["stage1"]
    assert probed_groups(model, "first+middle", registry) == ["stage1", "middle"]
    assert probed_groups(model, "none", registry) == ["stage1", "middle"]


@pytest.mark.parametrize(
    "settings, message",
    [
        (ProbeSettings(background=-1), "--background"),
        (ProbeSettings(min_distance=0.7), "--min-distance"),
        (ProbeSettings(C=0.0), "--C"),
    ],
)
def test_bad_settings_are_config_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        settings.validate()


def test_rows_of_the_committed_results_at_200_images():
    rows = result_rows(REPO / "results" / "lsp-cpu", 200)
    labels = [row.label for row in rows]
    assert labels == sorted(labels) and "supervised" in labels
    assert not any(":frozen" in label or "[" in label for label in labels)
    assert {"jigsaw-heatmap/all", "jigsaw-heatmap/first", "jigsaw-heatmap/first+middle", "jigsaw-ce/first+middle",
            "rotation/first+middle", "inpaint/first+middle"} <= set(labels)  # fmt: skip
    by_label = {row.label: row for row in rows}
    assert by_label["supervised"].pck == pytest.approx(31.1, abs=0.05) and by_label["supervised"].seeds == 3
    assert by_label["rotation/first+middle"].config.pretrain.precision == "fp32"  # 'auto' in old records ran fp32
    assert by_label["rotation/first+middle"].config.seed == 0


def test_spearman_of_a_perfect_ranking_and_too_few_rows():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45])[0] == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1])[0] == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 2], [1, 2])[0])
    assert np.isnan(spearman([5, 5, 5], [1, 2, 3])[0])  # a constant probe ranks nothing


@pytest.mark.parametrize(
    "args, message",
    [
        (["--train-size", "0"], "--train-size must be >= 1"),
        (["--train-size", "7"], "--train-size 7: no finished cell"),
        (["--rows", "nosuch/row"], "--rows: no row 'nosuch/row'"),
        (["--background", "-2"], "--background must be"),
        (["--pretext", "rotation"], "--pretext: with RESULTS_DIR every row brings its own config"),
    ],
)
def test_bad_options_are_one_line_errors(args, message):
    result = CliRunner().invoke(main, ["probe", str(REPO / "results" / "lsp-cpu"), *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output


def test_cli_probes_rows_prints_the_correlation_and_writes_json(tmp_path):
    """Three supervised-like rows of a fixture store, probed on a tiny LSP fixture (random starts)."""
    root = make_lsp(tmp_path, n=60)
    results = tmp_path / "results"
    (results / "cells").mkdir(parents=True)
    for i, (seed, pck) in enumerate([(0, 20.0), (0, 25.0), (0, 30.0)]):
        config = tiny_config(data="lsp", root=str(root), train_size=10, **{"backbone_options.width": 0.125 * (i + 1)})
        record = {"cell_id": f"c{i}", "status": "done", "strategy": "supervised", "seed": seed, "train_size": 10,
                  "config": config.to_dict(), "metrics": {"pck@0.2": pck}, "schema": 1}  # fmt: skip
        (results / "cells" / f"c{i}.json").write_text(json.dumps(record))
    out = tmp_path / "probe.json"
    rows = "supervised,supervised [backbone_options.width=0.25],supervised [backbone_options.width=0.375]"
    result = CliRunner().invoke(main, ["probe", str(results), "--train-size", "10", "--rows", rows,
                                       "--workdir", str(tmp_path / "runs"), "--json", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Spearman rank correlation of probe_acc with fine-tuned test pck@0.2" in result.output
    written = json.loads(out.read_text())
    assert len(written["rows"]) == 3 and all(0 <= r["probe_acc"] <= 100 for r in written["rows"])
    assert -1.0 <= written["spearman"] <= 1.0


def test_without_results_the_run_options_name_the_one_cell_probed(tmp_path):
    root = make_lsp(tmp_path, n=60)
    args = ["probe", "--profile", "smoke", "--data", "lsp", "--root", str(root), "--train-size", "10",
            "--input-size", "32", "--workdir", str(tmp_path / "runs")]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "supervised" in result.output and "stage1+middle" in result.output
    assert "n/a (fewer than 3 rows with a fine-tuned figure, or nothing to rank)" in result.output


def test_rows_whose_pretraining_is_not_cached_are_listed_not_probed(tmp_path):
    """A committed row whose pretraining is not in the (empty) pretext cache is named at the end, not probed."""
    result = CliRunner().invoke(main, ["probe", str(REPO / "results" / "lsp-cpu"), "--rows", "rotation/first+middle",
                                       "--workdir", str(tmp_path), "--json", str(tmp_path / "p.json")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "not probed" in result.output and "rotation/first+middle" in result.output
    assert json.loads((tmp_path / "p.json").read_text())["not_probed"] == ["rotation/first+middle"]


def test_cli_probes_every_kept_epoch_and_writes_json(tmp_path):
    root = make_lsp(tmp_path, n=60)
    args = ["probe", "--profile", "smoke", "--data", "lsp", "--root", str(root), "--train-size", "10",
            "--input-size", "32", "--pretext", "rotation", "--policy", "first", "--pretext-data", "lsp",
            "--pretext-root", str(root), "--set", "pretrain.epochs=2", "--set", "pretrain.keep_every=1",
            "--workdir", str(tmp_path / "runs")]  # fmt: skip
    trained = CliRunner().invoke(main, [*args, "--pretrain"])
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "kept.json"
    result = CliRunner().invoke(main, [*args, "--kept-epochs", "all", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "after pretraining epoch 2" in result.output and "held-out rot_acc" in result.output
    rows = json.loads(out.read_text())["rows"]
    assert [r["pretrain_epoch"] for r in rows] == [1, 2] and all(0 <= r["probe_acc"] <= 100 for r in rows)
    for bad, message in [("x", "--kept-epochs must be 'all' or comma-separated epochs, got 'x'"),
                         ("7", "kept no weights after epoch 7 (kept: 1, 2)")]:  # fmt: skip
        failed = CliRunner().invoke(main, [*args, "--kept-epochs", bad])
        assert failed.exit_code == 2 and message in failed.output, failed.output
        assert len(failed.output.strip().splitlines()) == 1
