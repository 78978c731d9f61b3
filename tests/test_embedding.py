"""Joint-embedding pretexts (simclr, moco, byol, vicreg, densecl): two views, training with their own
parts in the one loop, exact resume, nothing of theirs transferred, bad options."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import make_lspet

import sslbench.training.loop as train_module
import sslbench_plugins.byol as byol_plugin
import sslbench_plugins.cpm as cpm_plugin
import sslbench_plugins.densecl as densecl_plugin
import sslbench_plugins.lspet as lspet_plugin
import sslbench_plugins.moco as moco_plugin
import sslbench_plugins.simclr as simclr_plugin
import sslbench_plugins.vicreg as vicreg_plugin
from sslbench.contract.config import TrainSettings
from sslbench.contract.errors import ConfigError
from sslbench.contract.interfaces import Geometry, SampleKey
from sslbench.contract.registry import Registry
from sslbench.data.loaders import TaskDataset
from sslbench.data.pipeline import to_image, transform_points, warp
from sslbench.tasks.embedding import TwoViews, crop_affine, feature_grid
from sslbench.training import parts
from sslbench.training.checkpoint import load_checkpoint
from sslbench.training.loop import fit
from sslbench_plugins.densecl import matched_keys

METHODS = ("simclr", "moco", "byol", "vicreg", "densecl")
#: small enough for seconds: 2 stages, 4-channel trunk, 32 px (a 4x4 feature grid)
TINY = {"stages": 2, "width": 1 / 32, "input_size": 32}


@pytest.fixture(scope="module")
def registry() -> Registry:
    plugins = [cpm_plugin, lspet_plugin, simclr_plugin, moco_plugin, byol_plugin, vicreg_plugin, densecl_plugin]
    return Registry(plugins=plugins, load_entrypoints=False)


@pytest.fixture(scope="module")
def pool(registry, tmp_path_factory):
    root = make_lspet(tmp_path_factory.mktemp("pool"), n=20)
    return registry.create("dataset", "lspet", "--pretext-data", root=root)


def settings(**overrides) -> TrainSettings:
    base = {"epochs": 2, "batch_size": 4, "optimizer": "adam", "lr": 1e-3, "num_workers": 0, "precision": "fp32",
            "device": "cpu"}  # fmt: skip
    return TrainSettings(**{**base, **overrides})


def train(registry, pool, name, run_dir, epochs=2, **options):
    torch.manual_seed(0)
    task = registry.create("pretext", name, "--pretext", **options)
    model = registry.create("backbone", "cpm", "--backbone", num_outputs=task.num_outputs, **TINY)
    geometry = Geometry(model.input_size, model.stride)
    train_set = TaskDataset(pool, range(12), task, geometry, seed=0, train=True)
    val_set = TaskDataset(pool, range(12, 20), task, geometry, seed=0, train=False)
    result = fit(model, task, train_set, val_set, settings(epochs=epochs), run_dir, seed=0)
    return task, model, result


# ------------------------------------------------------------------------------- views


def coordinate_image(size: int = 200) -> np.ndarray:
    """Red is x, green is y: the colour of a pixel says where it came from."""
    ys, xs = np.mgrid[0:size, 0:size]
    return np.stack([xs, ys, np.full_like(xs, 128)], axis=-1).astype(np.uint8)


def test_view_affine_maps_each_view_0_pixel_to_the_view_1_pixel_showing_the_same_image_point():
    views = TwoViews(64, min_scale=0.3, cj_strength=0.5)
    views.photometric = lambda picture: picture  # colours must stay coordinates
    image = coordinate_image()
    checked = 0
    for index in range(6):
        sample = views(image, SampleKey(0, index, 1))
        view0, view1 = (to_image(sample[k]).astype(float) for k in ("image", "view1"))
        points = np.stack(np.meshgrid(np.arange(4, 60, 5), np.arange(4, 60, 5)), -1).reshape(-1, 2).astype(float)
        landed = transform_points(points, sample["view_affine"].double().numpy())
        for (x0, y0), (x1, y1) in zip(points, landed):
            if 1 <= x1 <= 62 and 1 <= y1 <= 62:
                source = view0[int(y0), int(x0), :2]
                target = view1[round(y1), round(x1), :2]
                assert np.abs(source - target).max() < 4.0, (index, x0, y0)
                checked += 1
    assert checked > 50


def test_crop_affine_puts_the_box_corners_on_the_view_corners_and_mirrors_on_flip():
    matrix = crop_affine(top=10, left=20, height=50, width=100, size=64, flip=False)
    corners = transform_points(np.array([[19.5, 9.5], [119.5, 59.5]]), matrix)
    np.testing.assert_allclose(corners, [[-0.5, -0.5], [63.5, 63.5]], atol=1e-9)
    mirrored = transform_points(np.array([[19.5, 9.5]]), crop_affine(10, 20, 50, 100, 64, flip=True))
    np.testing.assert_allclose(mirrored, [[63.5, -0.5]], atol=1e-9)
    assert warp(coordinate_image(), matrix, 64).shape == (64, 64, 3)


def test_views_are_deterministic_by_seed_index_and_epoch_and_leave_the_global_generators_alone():
    views = TwoViews(32, min_scale=0.08, cj_strength=1.0)
    image = coordinate_image(120)
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    first = views(image, SampleKey(3, 7, 2))
    again = views(image, SampleKey(3, 7, 2))
    assert all(torch.equal(first[k], again[k]) for k in first)
    for other in (SampleKey(3, 7, 3), SampleKey(4, 7, 2), SampleKey(3, 8, 2)):
        assert not torch.equal(views(image, other)["view_affine"], first["view_affine"])
    assert not torch.equal(first["image"], first["view1"])
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("name", METHODS)
def test_each_method_trains_with_finite_loss_and_reports_retrieval_against_chance(registry, pool, tmp_path, name):
    _, _, result = train(registry, pool, name, tmp_path)
    assert result.epochs_run == 2
    assert all(np.isfinite(h["train_loss"]) for h in result.history)
    metrics = result.best_metrics
    assert 0.0 <= metrics["retrieval"] <= 100.0 and 0.0 <= metrics["retrieval_head"] <= 100.0
    assert metrics["retrieval_chance"] == pytest.approx(25.0)  # batches of 4
    assert np.isfinite(metrics["loss"])


def test_simclr_loss_falls_on_a_fixed_batch(registry, pool):
    torch.manual_seed(0)
    task = registry.create("pretext", "simclr", "--pretext")
    model = registry.create("backbone", "cpm", "--backbone", num_outputs=task.num_outputs, **TINY)
    geometry = Geometry(model.input_size, model.stride)
    batch = torch.utils.data.default_collate(
        [task.make_sample(pool.image(i), None, SampleKey(0, i, 1), True, geometry) for i in range(8)]
    )
    head = task.build_parts(model)
    optimizer = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=3e-3)
    losses = []
    for step in range(15):
        loss = task.loss(task.forward(model, batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.3


def test_moco_run_killed_in_epoch_two_resumes_to_the_same_backbone_heads_and_queue(
    registry, pool, tmp_path, monkeypatch
):
    _, reference_model, reference = train(registry, pool, "moco", tmp_path / "straight", epochs=3, queue=16)
    reference_parts = load_checkpoint(tmp_path / "straight" / "last").extra

    real_evaluate = train_module.evaluate
    calls = {"n": 0}

    def dies_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(registry, pool, "moco", tmp_path / "killed", epochs=3, queue=16)
    monkeypatch.setattr(train_module, "evaluate", real_evaluate)
    _, model, resumed = train(registry, pool, "moco", tmp_path / "killed", epochs=3, queue=16)

    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in reference.history]
    for key, value in reference_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    resumed_parts = load_checkpoint(tmp_path / "killed" / "last").extra
    names = [k for k in reference_parts if k.startswith(parts.PREFIX)]
    assert "parts.criterion.memory_bank.bank" in names and "parts.target_backbone.middle.0.weight" in names
    for key in names:
        assert torch.equal(resumed_parts[key], reference_parts[key]), key


def test_heads_stay_out_of_the_weights_transfer_reads(registry, pool, tmp_path):
    _, model, _ = train(registry, pool, "byol", tmp_path, epochs=1)
    backbone_keys = set(model.state_dict())
    for stem in ("best", "last"):
        checkpoint = load_checkpoint(tmp_path / stem)
        assert set(checkpoint.state) == backbone_keys  # what transfer and the pretext cache use
        assert any(k.startswith("parts.prediction.") for k in checkpoint.extra)
    assert not any(k.startswith(("projection", "prediction", "target_")) for k in backbone_keys)


def test_a_task_with_parts_refuses_distributed_training(registry):
    task = registry.create("pretext", "simclr", "--pretext")
    model = registry.create("backbone", "cpm", "--backbone", num_outputs=task.num_outputs, **TINY)
    with pytest.raises(ConfigError, match="distributed training does not support"):
        parts.attach(task, model, torch.device("cpu"), distributed=True)


def test_restoring_parts_of_another_shape_is_a_checkpoint_error(registry):
    from sslbench.contract.errors import CheckpointError

    task = registry.create("pretext", "simclr", "--pretext")
    model = registry.create("backbone", "cpm", "--backbone", num_outputs=task.num_outputs, **TINY)
    stored = parts.snapshot(task.build_parts(model))
    wider = registry.create("pretext", "simclr", "--pretext", hidden_dim=16)
    with pytest.raises(CheckpointError, match="shape"):
        parts.restore(wider.build_parts(model), stored, "last")


# ------------------------------------------------------------------------------ dense


def test_dense_matching_samples_the_key_map_where_view_0_cells_land():
    keys = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    identity = torch.eye(3).expand(2, 3, 3)
    sampled, inside = matched_keys(keys, identity, input_size=32)
    assert inside.all() and torch.allclose(sampled, keys)
    shift = torch.tensor([[1.0, 0, 8], [0, 1, 0], [0, 0, 1]]).expand(2, 3, 3)  # one cell (8 px) to the right
    sampled, inside = matched_keys(keys, shift, input_size=32)
    assert inside[:, :, :3].all() and not inside[:, :, 3].any()
    assert torch.allclose(sampled[..., :3], keys[..., 1:])


def test_retrieval_counts_pairs_found_by_their_own_view_and_skips_single_images(registry):
    from sslbench.tasks.embedding import RetrievalMetric

    class Scored:  # the metric needs only the task's loss
        def loss(self, outputs, batch):
            return torch.tensor(1.0)

    metric = RetrievalMetric(Scored())
    eye = torch.eye(4)
    swapped = eye[[1, 0, 2, 3]]  # images 0 and 1 find each other's pair
    metric.update([eye, eye, eye, swapped], {"image": torch.zeros(4, 3, 8, 8)})
    metric.update([eye[:1]] * 4, {"image": torch.zeros(1, 3, 8, 8)})
    assert metric.compute() == {"loss": 1.0, "retrieval": 50.0, "retrieval_head": 100.0, "retrieval_chance": 25.0}


def test_feature_grid_pools_to_the_coarsest_map_and_concatenates():
    grid = feature_grid([torch.ones(2, 3, 8, 8), torch.zeros(2, 5, 4, 4)])
    assert grid.shape == (2, 8, 4, 4) and grid[:, :3].eq(1).all() and grid[:, 3:].eq(0).all()


def test_default_heads_read_the_groups_first_middle_transfers_from_one_pass(registry):
    task = registry.create("pretext", "simclr", "--pretext")
    model = registry.create("backbone", "cpm", "--backbone", num_outputs=task.num_outputs, **TINY)
    task.build_parts(model)
    assert task.groups == ["stage1", "middle"]
    image = torch.randn(2, 3, 32, 32)
    maps = model.feature_maps(image, ["stage1", "middle"])
    assert torch.equal(maps[0], model.features(image, "stage1"))
    assert torch.equal(maps[1], model.features(image, "middle"))
    batch = {"image": image, "view1": image.flip(-1)}
    model.train()
    task.loss(task.forward(model, batch), batch).backward()
    for path in ("stage1.features", "middle"):  # both branches the first+middle policy moves learn
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.get_submodule(path).parameters())
    assert all(p.grad is None for p in model.get_submodule("stage2").parameters())  # never reached


# -------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("simclr", {"temperature": "warm"}, "option temperature must be a number"),
        ("simclr", {"min_scale": 0}, "option min_scale must be a number in (0.0, 1.0]"),
        ("moco", {"queue": 0}, "option queue must be an integer"),
        ("byol", {"momentum": 1.5}, "option momentum must be a number in [0.0, 1.0]"),
        ("vicreg", {"layers": "middle"}, "option layers must be a non-empty list"),
        ("densecl", {"dense_weight": -1}, "option dense_weight"),
        ("densecl", {"bogus": 1}, "unknown option 'bogus'"),
    ],
)
def test_bad_options_are_one_line_config_errors_naming_the_option(registry, name, options, message):
    with pytest.raises(ConfigError) as raised:
        registry.create("pretext", name, "--pretext", **options)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_an_unknown_layer_group_and_a_batch_of_one_are_config_errors(registry, pool):
    task = registry.create("pretext", "simclr", "--pretext", layers=["trunk"])
    model = registry.create("backbone", "cpm", "--backbone", num_outputs=task.num_outputs, **TINY)
    with pytest.raises(ConfigError, match="option layers: backbone cpm has no layer group .trunk."):
        task.build_parts(model)
    task = registry.create("pretext", "simclr", "--pretext")
    task.build_parts(model)
    one = torch.utils.data.default_collate(
        [task.make_sample(pool.image(0), None, SampleKey(0, 0, 1), True, Geometry(32, 8))]
    )
    model.train()
    with pytest.raises(ConfigError, match="needs at least 2"):
        task.forward(model, one)


def test_heads_read_a_timm_backbone_too(pool):
    from sslbench_plugins.timm_backbone import TimmPose

    for name, cls in (("vicreg", vicreg_plugin.VICReg), ("densecl", densecl_plugin.DenseCL)):
        task = cls()
        torch.manual_seed(0)
        model = TimmPose(task.num_outputs, model="resnet18", input_size=64, width=0.125, entry_name="timm-resnet18")
        task.build_parts(model)
        assert task.groups == [g.name for g in model.layer_groups() if g.role in ("first", "middle")]
        geometry = Geometry(model.input_size, model.stride)
        batch = torch.utils.data.default_collate(
            [task.make_sample(pool.image(i), None, SampleKey(0, i, 1), True, geometry) for i in range(4)]
        )
        model.train()
        loss = task.loss(task.forward(model, batch), batch)
        loss.backward()
        assert torch.isfinite(loss)
        for group in task.groups:  # every group the policy would transfer gets a gradient
            for path in model.layer_group(group).modules:
                assert all(p.grad is not None for p in model.get_submodule(path).parameters()), (name, path)
