"""The SparK-style masked-modelling pretext: nothing of a hidden patch leaks, targets, loss, options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import smoke_pretraining
from torch.utils.data import default_collate

from sslbench.contract.errors import ConfigError
from sslbench.contract.interfaces import Geometry, SampleKey
from sslbench_plugins import cpm, spark
from sslbench_plugins.spark import SparK, masked_forward, visible_at

GEOMETRY = Geometry(64, 8)


def tiny_cpm(num_outputs: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return cpm.CPM(num_outputs, stages=3, width=0.125, input_size=64, norm="batch")


def batch_of(task: SparK, n: int = 3) -> dict:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(90, 80, 3), dtype=np.uint8) for _ in range(n)]
    return default_collate([task.make_sample(im, None, SampleKey(0, i), True, GEOMETRY) for i, im in enumerate(images)])


@pytest.mark.parametrize("train_mode", [True, False])
def test_changing_hidden_pixels_changes_no_output_anywhere(train_mode):
    """Every stage's output, at every position, is the same whatever the hidden pixels hold; without the
    re-masking (a plain forward of the masked image) it is not."""
    task = SparK()
    net = tiny_cpm(task.num_outputs).train(train_mode)
    batch = batch_of(task)
    hidden = visible_at(batch["mask"], 64, 64).bool().expand_as(batch["image"])
    changed = batch["image"].clone()
    changed[hidden] = torch.randn(int(hidden.sum())) * 3.0
    with torch.no_grad():
        before = masked_forward(net, batch["image"], 1 - batch["mask"], batch["centermap"])
        after = masked_forward(net, changed, 1 - batch["mask"], batch["centermap"])
        for a, b in zip(before, after):
            assert torch.allclose(a, b, rtol=0, atol=1e-5)
        # the property is not vacuous: a dense network leaks the same change into visible positions
        dense_before = net(batch["image"], batch["centermap"])[0]
        dense_after = net(changed, batch["centermap"])[0]
        visible = (1 - batch["mask"]).bool().expand_as(dense_before)
        assert not torch.allclose(dense_before[visible], dense_after[visible], atol=1e-3)


def test_encoder_activations_are_zero_on_hidden_patches_at_every_scale():
    task = SparK()
    net = tiny_cpm(task.num_outputs).eval()
    batch = batch_of(task, 2)
    seen = []

    def record(module, inputs, output):
        seen.append(output.detach())

    handle = net.middle.register_forward_hook(record)  # hooks run in order: after the re-masking one
    try:
        with torch.no_grad():
            masked_forward(net, batch["image"], 1 - batch["mask"], batch["centermap"])
    finally:
        handle.remove()
    trunk = seen[-1]
    assert trunk.shape[-1] == 8
    assert float(trunk.abs().mul(batch["mask"]).sum()) == 0.0
    assert float(trunk.abs().mul(1 - batch["mask"]).sum()) > 0.0


def test_coarser_maps_keep_only_positions_whose_cells_are_all_visible():
    keep = torch.ones(1, 1, 4, 4)
    keep[0, 0, 0, 1] = 0
    coarse = visible_at(keep, 2, 2)
    assert coarse[0, 0].tolist() == [[0.0, 1.0], [1.0, 1.0]]
    assert visible_at(keep, 8, 8)[0, 0, :2, 2:4].eq(0).all()


def test_target_is_per_patch_normalised_pixels():
    task = SparK(target_size=8)
    image = torch.randn(3, 64, 64)
    target = task.target(image, GEOMETRY)
    assert target.shape == (192, 8, 8)
    assert torch.allclose(target.mean(dim=0), torch.zeros(8, 8), atol=1e-5)
    assert torch.allclose(target.var(dim=0, unbiased=False), torch.ones(8, 8), atol=1e-3)
    cell = image[:, 8:16, 16:24]  # output cell (1, 2): its 192 pixels, normalised
    expected = (cell - cell.mean()) / cell.std(unbiased=False)
    assert torch.allclose(target[:, 1, 2], expected.reshape(-1), atol=1e-4)
    assert SparK(target_size=4).target(image, GEOMETRY).shape == (48, 8, 8)


def test_loss_counts_hidden_cells_only_and_is_zero_for_a_perfect_reconstruction():
    task = SparK()
    batch = batch_of(task)
    perfect = batch["target"].clone()
    assert float(task.loss([perfect, perfect], batch)) == 0.0
    wrong_where_visible = perfect + 5.0 * (1 - batch["mask"])
    assert float(task.loss([perfect, wrong_where_visible], batch)) == 0.0
    assert float(task.loss([perfect, perfect + batch["mask"]], batch)) == pytest.approx(1.0)
    # stage 1 reads the masked encoder only: it is not in the loss
    assert float(task.loss([perfect + 9.0, perfect], batch)) == 0.0
    hidden = batch["mask"][:, 0].flatten(1).mean(1)
    assert torch.equal(hidden, torch.full_like(hidden, 10 / 16))  # 60 % of the 4 x 4 patches (16 px) at 64 px


@pytest.mark.parametrize(
    "options, message",
    [
        ({"mask_ratio": 1.0}, "mask_ratio must be below 1"),
        ({"mask_ratio": "half"}, "mask_ratio must be a number"),
        ({"patch": 0}, "patch must be an integer"),
        ({"target_size": 3}, "target_size 3 must divide the network's stride 8"),
        ({"patch": 8}, "nothing to hide"),
    ],
)
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(ConfigError, match=message) as raised:
        batch_of(SparK(**options), 1)
    assert "\n" not in str(raised.value)


def test_a_short_pretraining_runs_and_reports_the_masked_error(tmp_path: Path):
    metrics = smoke_pretraining(tmp_path, spark, SparK())
    assert set(metrics) >= {"masked_mse", "loss"}
    assert np.isfinite(metrics["masked_mse"])
