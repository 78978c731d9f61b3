"""Pretext plugins: jigsaw puzzles (heatmap and cross-entropy), rotation, inpainting, none."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import default_collate

import sslbench_plugins.equivariance as equivariance_plugin
import sslbench_plugins.inpaint as inpaint_plugin
import sslbench_plugins.jigsaw_ce as jigsaw_ce_plugin
import sslbench_plugins.jigsaw_heatmap as jigsaw_heatmap_plugin
import sslbench_plugins.rotation as rotation_plugin
import sslbench_plugins.spark as spark_plugin
import sslbench_plugins.supervised as supervised_plugin
from sslbench.cli.main import main
from sslbench.contract.errors import ConfigError, DataError
from sslbench.contract.interfaces import Geometry, SampleKey
from sslbench.contract.registry import Registry
from sslbench.data.pipeline import to_tensor
from sslbench.tasks import jigsaw
from sslbench.tasks.pretexts import KitPretext, option_names, square_view
from sslbench_plugins.inpaint import Inpaint
from sslbench_plugins.jigsaw_ce import JigsawCE
from sslbench_plugins.jigsaw_heatmap import JigsawHeatmap
from sslbench_plugins.rotation import Rotation

PLUGINS = [jigsaw_heatmap_plugin, jigsaw_ce_plugin, rotation_plugin, inpaint_plugin, spark_plugin, equivariance_plugin,
           supervised_plugin]  # fmt: skip
SMALL = Geometry(input_size=72, stride=8)  # 9 x 9 maps


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(plugins=PLUGINS, load_entrypoints=False)


def photo(seed: int = 0, height: int = 50, width: int = 70) -> np.ndarray:
    """A small non-square RGB image with structure everywhere (smooth noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (height // 5 + 2, width // 5 + 2, 3))
    image = np.kron(coarse, np.ones((5, 5, 1)))[:height, :width]
    return np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)


def cell_coded_view(size: int) -> torch.Tensor:
    """(1, size, size) view whose every pixel holds the index of its third-by-third cell."""
    third = np.minimum(np.arange(size) * 3 // size, 2)
    return torch.from_numpy((third[:, None] * 3 + third[None, :]).astype(np.float32))[None]


def batch_of(task, geometry: Geometry, count: int = 6, train: bool = False, epoch: int = 0) -> dict:
    samples = [task.make_sample(photo(i), None, SampleKey(3, i, epoch), train, geometry) for i in range(count)]
    return default_collate(samples)


# ------------------------------------------------------------------- jigsaw geometry


def test_report_cell_centres_are_8_24_39_on_46_maps():
    assert jigsaw.cell_centres(46).tolist() == [8.0, 24.0, 39.0]


def test_exact_cell_centres_are_the_tile_centres_mapped_to_the_map():
    layout = jigsaw.TileLayout(368, jigsaw.scaled_gap(368))
    assert (layout.gap, layout.tile) == (5, 119)
    centres = jigsaw.cell_centres(46, "exact", layout, stride=8)
    tile_centres_in_pixels = np.array([59.0, 183.0, 307.0])
    np.testing.assert_allclose(centres * 8 + 3.5, tile_centres_in_pixels)


def test_report_cell_centres_lie_inside_their_thirds_of_the_map_at_every_size():
    for m in range(3, 60):
        centres = jigsaw.cell_centres(m)
        assert [int((c + 0.5) * 3 // m) for c in centres] == [0, 1, 2], m


def test_gap_scales_with_input_size_and_keeps_one_pixel():
    assert [jigsaw.scaled_gap(s) for s in (32, 64, 128, 256, 368, 736)] == [1, 1, 2, 3, 5, 10]
    assert jigsaw.scaled_gap(128, 0) == 0


def test_targets_peak_at_the_origin_cell_of_each_tile_on_46_maps():
    task = JigsawHeatmap(augment=False)
    sample = task.make_sample(photo(), None, SampleKey(0, 0), False, Geometry(368, 8))
    target, perm = sample["target"], sample["perm"]
    assert target.shape == (9, 46, 46)
    for i in range(9):
        row, col = divmod(int(perm[i]), 3)
        peak = divmod(int(target[i].argmax()), 46)
        assert peak == ((8, 24, 39)[row], (8, 24, 39)[col])
        assert target[i].max() == pytest.approx(1.0)
    # sigma 5 at 46: one sigma from the peak the map is exp(-1/2)
    row, col = divmod(int(perm[0]), 3)
    y, x = (8, 24, 39)[row], (8, 24, 39)[col]
    assert float(target[0, y, x + 5 if x < 40 else x - 5]) == pytest.approx(np.exp(-0.5), rel=1e-5)


def test_puzzle_tiles_come_from_the_cells_the_permutation_names_and_gaps_are_zero():
    layout = jigsaw.TileLayout(72, 2)
    perm = np.array([8, 5, 0, 1, 3, 7, 2, 4, 6])
    view = cell_coded_view(72) + 1.0  # +1 so no tile is 0 like the gaps
    puzzle = jigsaw.make_puzzle(view, perm, layout)
    covered = torch.zeros(72, 72, dtype=torch.bool)
    for i in range(9):
        rows, cols = layout.box(i)
        tile = puzzle[0, rows, cols]
        assert torch.all(tile == perm[i] + 1), i
        covered[rows, cols] = True
    assert torch.all(puzzle[0][~covered] == 0)
    assert int((~covered).sum()) > 0


def test_cropped_tiles_are_random_windows_inside_their_own_cells():
    layout = jigsaw.TileLayout(72, 2)
    side = layout.source_size(tile_crop=True)
    assert side > 72
    view = cell_coded_view(side)
    perm = jigsaw.random_derangement(np.random.default_rng(0))
    for seed in range(6):
        puzzle = jigsaw.make_puzzle(view, perm, layout, np.random.default_rng(seed))
        for i in range(9):
            rows, cols = layout.box(i)
            assert torch.all(puzzle[0, rows, cols] == perm[i])
    # the windows move: the same tile slot shows different pixels for different draws
    real_view = torch.from_numpy(np.random.default_rng(1).normal(size=(1, side, side)).astype(np.float32))
    windows = {
        jigsaw.make_puzzle(real_view, perm, layout, np.random.default_rng(s))[0, :5, :5].sum().item()
        for s in range(6)
    }
    assert len(windows) > 1


def test_jigsaw_sample_shows_the_centre_square_shuffled():
    task = JigsawHeatmap(augment=False)
    image = photo(2, 60, 90)
    sample = task.make_sample(image, None, SampleKey(0, 5), False, SMALL)
    view = to_tensor(square_view(image, 72))
    expected = jigsaw.make_puzzle(view, sample["perm"].numpy(), task.layout(SMALL))
    assert torch.equal(sample["image"], expected)
    assert sample["image"].dtype == torch.float32 and sample["centermap"].shape == (1, 72, 72)


# ---------------------------------------------------------------------- permutations


def test_every_mode_gives_derangements_only():
    assert len(jigsaw.all_derangements()) == 133496
    for mode in ("fixed:10", "fresh", "set:30"):
        spec = jigsaw.PermutationMode.parse(mode)
        for index in range(40):
            key = SampleKey(1, index, epoch=index % 7)
            perm, _ = spec.draw(key, key.rng())
            assert jigsaw.is_derangement(perm), (mode, perm)


def test_fixed_mode_cycles_the_same_ten_permutations_of_an_image():
    spec = jigsaw.PermutationMode.parse("fixed:10")

    def perm(seed: int, index: int, epoch: int) -> tuple[int, ...]:
        key = SampleKey(seed, index, epoch)
        return tuple(spec.draw(key, key.rng())[0])

    first_ten = [perm(0, 4, e) for e in range(10)]
    assert len(set(first_ten)) == 10
    assert [perm(0, 4, e) for e in range(10, 20)] == first_ten  # cycles
    assert [perm(0, 4, e) for e in range(10)] == first_ten  # deterministic
    assert [perm(0, 5, e) for e in range(10)] != first_ten  # per image
    assert [perm(1, 4, e) for e in range(10)] != first_ten  # per seed


def test_fresh_mode_changes_every_epoch_and_is_deterministic_by_seed():
    spec = jigsaw.PermutationMode.parse("fresh")

    def perm(seed: int, epoch: int) -> tuple[int, ...]:
        key = SampleKey(seed, 0, epoch)
        return tuple(spec.draw(key, key.rng())[0])

    epochs = [perm(0, e) for e in range(12)]
    assert len(set(epochs)) >= 11
    assert epochs == [perm(0, e) for e in range(12)]
    assert epochs != [perm(1, e) for e in range(12)]


def test_set_mode_draws_members_of_the_global_set_with_their_index():
    spec = jigsaw.PermutationMode.parse("set:20")
    table = spec.permutation_set()
    seen = set()
    for index in range(60):
        key = SampleKey(0, index, 1)
        perm, position = spec.draw(key, key.rng())
        assert np.array_equal(table[position], perm)
        seen.add(position)
    assert len(seen) > 10


def test_hamming_set_is_distinct_deterministic_and_greedy_by_average_distance():
    perms = jigsaw.hamming_set(12)
    assert all(jigsaw.is_derangement(p) for p in perms)
    distances = jigsaw.hamming_distances(perms)
    assert distances[np.triu_indices(12, 1)].min() > 0
    assert np.array_equal(jigsaw.hamming_set(12), perms)
    assert not np.array_equal(jigsaw.hamming_set(12, seed=7), perms)
    pool = jigsaw.all_derangements().astype(np.int64)
    codes = pool @ 9 ** np.arange(9)
    for k in range(1, 12):  # each pick has the largest total distance to the earlier picks
        totals = (pool[:, None, :] != perms[None, :k, :]).sum(axis=(1, 2))
        totals[np.isin(codes, perms[:k] @ 9 ** np.arange(9))] = -1
        assert (perms[k][None, :] != perms[:k]).sum() == totals.max()


def test_hamming_set_average_distance_is_well_above_a_random_sets():
    for count, margin in ((10, 0.5), (100, 0.03)):
        greedy = jigsaw.hamming_distances(jigsaw.hamming_set(count))[np.triu_indices(count, 1)].mean()
        randoms = [
            jigsaw.hamming_distances(jigsaw.distinct_derangements(np.random.default_rng(s), count))[
                np.triu_indices(count, 1)
            ].mean()
            for s in range(5)
        ]
        assert greedy > max(randoms) + margin, (count, greedy, randoms)
    # 10 derangements: 8 values per position, so at best two pairs agree per position
    assert jigsaw.hamming_distances(jigsaw.hamming_set(10))[np.triu_indices(10, 1)].mean() == pytest.approx(8.6)


@pytest.mark.parametrize("text", ["fixed:0", "fixed:1001", "set:0", "random", "fixed", 10, None])
def test_bad_permutation_modes_are_config_errors_naming_the_option(text):
    with pytest.raises(ConfigError, match="permutations"):
        JigsawHeatmap(permutations=text)


# ----------------------------------------------------------------------- jigsaw metrics


def test_heatmap_metric_is_perfect_on_targets_and_chance_on_a_constant():
    task = JigsawHeatmap(permutations="fresh")
    batch = batch_of(task, SMALL, count=9)
    metric = task.new_metric()
    metric.update([batch["target"]], batch)
    assert metric.compute()["tile_acc"] == 100.0 and metric.compute()["puzzle_acc"] == 100.0
    assert task.loss([batch["target"], batch["target"]], batch).item() == 0.0
    metric = task.new_metric()
    metric.update([torch.zeros_like(batch["target"])], batch)
    result = metric.compute()
    assert result["tile_acc"] == pytest.approx(100 / 9) and result["puzzle_acc"] == 0.0
    assert result["loss"] > 0


def test_heatmap_loss_sums_over_stages_and_sum_scale_is_the_per_image_sum():
    task = JigsawHeatmap()
    batch = batch_of(task, SMALL, count=2)
    zeros = torch.zeros_like(batch["target"])
    one = task.loss([zeros], batch)
    two = task.loss([zeros] * 2, batch)
    assert two.item() == pytest.approx(2 * one.item())
    assert one.item() == pytest.approx((batch["target"] ** 2).mean().item())
    summed = JigsawHeatmap(loss_scale="sum").loss([zeros], batch)
    assert summed.item() == pytest.approx((batch["target"] ** 2).sum().item() / 2)


def ce_outputs(task: JigsawCE, batch: dict, strength: float, map_size: int) -> torch.Tensor:
    """Maps whose pooled scores put *strength* on the true answer (0 everywhere else)."""
    perm = batch["perm"]
    b = perm.shape[0]
    if task.head == "permutation":
        logits = torch.zeros(b, task.num_outputs)
        logits[torch.arange(b), batch["label"]] = strength
        return logits[:, :, None, None].expand(-1, -1, map_size, map_size).contiguous()
    matrix = torch.zeros(b, 9, 9)  # [shuffled r, origin c]
    matrix.scatter_(2, perm[:, :, None], strength)
    if task.head == "cells":
        cells = matrix.transpose(1, 2).reshape(b, 9, 3, 3)  # map c over cell r
        return cells.repeat_interleave(map_size // 3, 2).repeat_interleave(map_size // 3, 3)
    return matrix[:, None].repeat_interleave(map_size // 9, 2).repeat_interleave(map_size // 9, 3)


@pytest.mark.parametrize("head", ["cells", "report", "permutation"])
def test_ce_heads_loss_falls_and_accuracy_is_perfect_on_the_right_logits(head):
    task = JigsawCE(head=head, permutations="set:12" if head == "permutation" else "fixed:10")
    geometry = Geometry(144, 8)  # 18 x 18 maps: pools to 3x3 and 9x9 exactly
    batch = batch_of(task, geometry, count=4)
    losses = [task.loss([ce_outputs(task, batch, s, 18)], batch).item() for s in (0.0, 1.0, 4.0, 16.0)]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 1e-3
    metric = task.new_metric()
    metric.update([ce_outputs(task, batch, 4.0, 18)] * 2, batch)
    assert metric.compute()["tile_acc"] == 100.0 and metric.compute()["puzzle_acc"] == 100.0


def test_ce_heads_output_counts_and_defaults():
    assert JigsawCE().num_outputs == 9 and JigsawCE(head="report").num_outputs == 1
    noroozi = JigsawCE(head="permutation")
    assert noroozi.num_outputs == 100 and noroozi.tile_crop is True
    assert noroozi.config()["permutations"] == "set:100"
    assert JigsawCE().config()["permutations"] == "fixed:10" and JigsawCE().tile_crop is False
    with pytest.raises(ConfigError, match="permutations"):
        JigsawCE(head="permutation", permutations="fixed:10")
    with pytest.raises(ConfigError, match="head"):
        JigsawCE(head="rows")


def test_ce_permutation_head_scores_tiles_of_the_predicted_permutation():
    task = JigsawCE(head="permutation", permutations="set:12")
    batch = batch_of(task, SMALL, count=3)
    table = task.table
    wrong = (batch["label"] + 1) % 12
    logits = torch.zeros(3, 12)
    logits[torch.arange(3), wrong] = 5.0
    metric = task.new_metric()
    metric.update([logits[:, :, None, None].expand(-1, -1, 9, 9)], batch)
    expected = (table[wrong] == batch["perm"]).float().mean().item() * 100
    assert metric.compute()["tile_acc"] == pytest.approx(expected)
    assert metric.compute()["puzzle_acc"] == 0.0


# ---------------------------------------------------------------------------- rotation


def test_rotation_label_is_the_rotation_actually_applied():
    task = Rotation()
    image = photo(4, 64, 80)
    upright = to_tensor(square_view(image, 72))
    labels = set()
    for index in range(16):
        sample = task.make_sample(image, None, SampleKey(0, index), False, SMALL)
        k = int(sample["label"])
        labels.add(k)
        assert torch.equal(torch.rot90(sample["image"], -k, dims=(1, 2)), upright)
        if k:
            assert not torch.equal(sample["image"], upright)
    assert labels == {0, 1, 2, 3}


def test_rotation_metric_and_loss():
    task = Rotation()
    batch = batch_of(task, SMALL, count=8)
    right = torch.nn.functional.one_hot(batch["label"], 4).float()[:, :, None, None].expand(-1, -1, 9, 9) * 20
    metric = task.new_metric()
    metric.update([right], batch)
    assert metric.compute()["rot_acc"] == 100.0 and metric.compute()["loss"] < 1e-6
    constant = torch.zeros(8, 4, 9, 9)
    assert task.loss([constant, constant], batch).item() == pytest.approx(2 * np.log(4), rel=1e-5)


# ---------------------------------------------------------------------------- inpaint


def test_inpaint_hides_blocks_and_targets_the_original_image():
    task = Inpaint(mask_ratio=0.3, grid=3)
    image = photo(5, 72, 72)
    sample = task.make_sample(image, None, SampleKey(0, 0), False, SMALL)
    original = to_tensor(square_view(image, 72))
    mask = sample["mask"][0].bool()
    assert mask.shape == (9, 9) and int(mask.sum()) == 3 * 9  # round(0.3 * 9) = 3 blocks of 3x3 cells
    hidden = mask.repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert torch.all(sample["image"][:, hidden] == 0)
    assert torch.equal(sample["image"][:, ~hidden], original[:, ~hidden])
    assert torch.allclose(sample["target"], torch.nn.functional.avg_pool2d(original[None], 8)[0])


def test_inpaint_loss_ignores_visible_cells_unless_weighted():
    task = Inpaint()
    batch = batch_of(task, SMALL, count=3)
    prediction = torch.zeros(3, 3, 9, 9)
    visible = (batch["mask"] == 0).expand_as(prediction)
    changed = prediction.clone()
    changed[visible] = 5.0
    assert task.loss([changed], batch).item() == task.loss([prediction], batch).item()
    moved_hidden = prediction.clone()
    moved_hidden[~visible] = 5.0
    assert task.loss([moved_hidden], batch).item() != task.loss([prediction], batch).item()
    weighted = Inpaint(unmasked_weight=0.1)
    assert weighted.loss([changed], batch).item() != weighted.loss([prediction], batch).item()
    metric = task.new_metric()
    metric.update([batch["target"]], batch)
    assert metric.compute()["masked_mse"] == 0.0 and metric.compute()["masked_psnr"] == float("inf")


def test_inpaint_grid_larger_than_the_map_is_a_config_error():
    with pytest.raises(ConfigError, match="grid"):
        Inpaint(grid=12).make_sample(photo(), None, SampleKey(0, 0), True, SMALL)


# ---------------------------------------------------------------- contract, all pretexts

TASKS = [
    ("jigsaw-heatmap", {}),
    ("jigsaw-heatmap", {"permutations": "set:10", "tile_crop": True, "centres": "exact"}),
    ("jigsaw-ce", {}),
    ("jigsaw-ce", {"head": "report"}),
    ("jigsaw-ce", {"head": "permutation", "permutations": "set:10"}),
    ("rotation", {}),
    ("inpaint", {}),
    ("spark", {}),
    ("spark", {"target_size": 8, "norm_target": False, "patch": 1}),
    ("equivariance", {}),
    ("equivariance", {"landmarks": 4, "rotation": 0.0}),
]


@pytest.mark.parametrize("name,options", TASKS)
def test_samples_follow_the_contract_and_are_deterministic_by_key(registry, name, options):
    task = registry.create("pretext", name, **options)
    image = photo(6, 40, 100)
    first = task.make_sample(image, None, SampleKey(0, 2, 1), True, SMALL)
    again = task.make_sample(image, None, SampleKey(0, 2, 1), True, SMALL)
    other_epoch = task.make_sample(image, None, SampleKey(0, 2, 2), True, SMALL)
    assert first["image"].shape == (3, 72, 72) and first["image"].dtype == torch.float32
    assert first["centermap"].shape == (1, 72, 72)
    assert first["centermap"][0, 35:37, 35:37].min() > 0.9
    for key in first:
        assert torch.equal(first[key], again[key]), key
    assert not torch.equal(first["image"], other_epoch["image"])
    json.dumps(task.config())
    assert task.config()["name"] == name and set(options) <= set(task.config())


@pytest.mark.parametrize("name,options", TASKS)
def test_a_tiny_cpm_trains_on_every_pretext(name, options, registry):
    cpm = pytest.importorskip("sslbench_plugins.cpm")
    task = registry.create("pretext", name, **options)
    geometry = Geometry(48, 8)
    torch.manual_seed(0)
    model = cpm.CPM(num_outputs=task.num_outputs, stages=2, width=0.0625, input_size=48)
    batch = batch_of(task, geometry, count=4, train=True)
    loss = task.loss(task.forward(model, batch), batch)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    metric = task.new_metric()
    with torch.no_grad():
        metric.update(task.predict(model, batch), batch)
    result = metric.compute()
    assert task.monitor in result and "loss" in result and all(np.isfinite(v) for v in result.values() if v != np.inf)


def test_unknown_and_bad_options_are_config_errors_naming_them(registry):
    with pytest.raises(ConfigError, match="sigmaa"):
        registry.create("pretext", "jigsaw-heatmap", sigmaa=3)
    with pytest.raises(ConfigError, match="tile_crop"):
        registry.create("pretext", "jigsaw-heatmap", tile_crop="yes")
    with pytest.raises(ConfigError, match="sigma"):
        registry.create("pretext", "jigsaw-heatmap", sigma=0)
    with pytest.raises(ConfigError, match="mask_ratio"):
        registry.create("pretext", "inpaint", mask_ratio=1.5)
    with pytest.raises(ConfigError, match="centres"):
        registry.create("pretext", "jigsaw-heatmap", centres="middle")
    with pytest.raises(ConfigError, match="option"):
        registry.create("pretext", "rotation", degrees=90)
    with pytest.raises(ConfigError, match="loss_scale"):
        registry.create("pretext", "inpaint", loss_scale="total")


def test_bad_images_are_data_errors():
    with pytest.raises(DataError, match="RGB uint8"):
        Rotation().make_sample(np.zeros((10, 10), np.uint8), None, SampleKey(0, 0), True, SMALL)


def test_jigsaw_on_maps_too_small_for_three_cells_is_a_config_error():
    with pytest.raises(ConfigError):
        JigsawHeatmap().make_sample(photo(), None, SampleKey(0, 0), True, Geometry(16, 8))


def test_none_pretext_does_not_train(registry):
    none = registry.create("pretext", "none")
    assert none.trains is False and none.config() == {"name": "none"}
    with pytest.raises(ConfigError, match="does not train"):
        none.make_sample(photo(), None, SampleKey(0, 0), True, SMALL)
    with pytest.raises(ConfigError, match="does not train"):
        _ = none.num_outputs


def test_registered_pretexts_and_policies_appear_in_sslbench_plugins():
    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listed = {(row["kind"], row["name"]) for row in json.loads(result.output)["plugins"]}
    for name in ("none", "jigsaw-heatmap", "jigsaw-ce", "rotation", "inpaint", "spark", "equivariance"):
        assert ("pretext", name) in listed
    for name in ("all", "all+adapters", "first", "first+middle", "none"):
        assert ("policy", name) in listed


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("rotation", {"augment": False}),
        ("equivariance", {"landmarks": 9, "separation_sigma": 2.0}),
        ("spark", {"mask_ratio": 0.5, "norm_target": False}),
        ("inpaint", {"grid": 2, "loss_scale": "sum"}),
        ("jigsaw-ce", {"head": "permutation"}),
        ("jigsaw-heatmap", {"sigma": 2.0, "permutations": "set:30"}),
    ],
)
def test_a_kit_pretexts_config_lists_every_option_in_order_and_rebuilds_it(
    registry: Registry, name: str, options: dict
) -> None:
    task = registry.create("pretext", name, **options)
    config = task.config()
    assert isinstance(task, KitPretext)
    assert list(config) == ["name", *option_names(type(task))]
    assert config["name"] == name and all(config[key] == value for key, value in options.items())
    rebuilt = registry.create("pretext", name, **{key: value for key, value in config.items() if key != "name"})
    assert rebuilt.config() == config
