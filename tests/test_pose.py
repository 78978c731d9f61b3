"""Pose samples, targets, the loss and the PCK metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from sslbench.contract.errors import ConfigError, DataError
from sslbench.contract.interfaces import Geometry, SampleKey
from sslbench.data.joints import FLIP_INDEX, JOINT_NAMES, NUM_JOINTS
from sslbench.data.pipeline import Augment, centre_map, gaussian_maps, input_to_map, transform_points, with_background
from sslbench.tasks.pose import REFERENCE_SCALE, PoseTask, decode_joints

GEOMETRY = Geometry(input_size=128, stride=8)


def random_person(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A noise image of random size and 14 joints spread over its middle."""
    height, width = int(rng.integers(90, 260)), int(rng.integers(90, 260))
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    joints = np.zeros((NUM_JOINTS, 3), np.float32)
    joints[:, 0] = rng.uniform(0.25 * width, 0.75 * width, NUM_JOINTS)
    joints[:, 1] = rng.uniform(0.2 * height, 0.8 * height, NUM_JOINTS)
    joints[:, 2] = rng.integers(0, 2, NUM_JOINTS)
    return image, joints


def frontal_person(height: int = 160, width: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """A person facing the camera: their right side is on the image's left."""
    image = np.full((height, width, 3), 90, np.uint8)
    xy = {
        "r_ankle": (45, 150), "r_knee": (47, 125), "r_hip": (50, 95), "l_hip": (70, 95),
        "l_knee": (73, 125), "l_ankle": (75, 150), "r_wrist": (25, 90), "r_elbow": (32, 70),
        "r_shoulder": (45, 45), "l_shoulder": (75, 45), "l_elbow": (88, 70), "l_wrist": (95, 90),
        "neck": (60, 40), "head_top": (60, 12),
    }  # fmt: skip
    joints = np.array([[*xy[name], 1.0] for name in JOINT_NAMES], np.float32)
    return image, joints


def inner(map_xy: np.ndarray, size: int) -> np.ndarray:
    """Joints whose peak pixel has a neighbour on every side (sub-pixel decoding works there)."""
    return ((map_xy >= 0.5) & (map_xy <= size - 1.5)).all(axis=-1)


# ------------------------------------------------------------------------------ samples


def test_sample_has_the_documented_keys_shapes_and_dtypes():
    image, joints = random_person(np.random.default_rng(0))
    sample = PoseTask().make_sample(image, joints, SampleKey(0, 3), True, Geometry(64, 8))
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.float32
    assert sample["centermap"].shape == (1, 64, 64) and sample["centermap"].dtype == torch.float32
    assert sample["target"].shape == (15, 8, 8) and sample["target"].dtype == torch.float32
    assert sample["matrix"].shape == (3, 3) and sample["matrix"].dtype == torch.float64
    assert sample["joints"].shape == (14, 3) and sample["joints"].dtype == torch.float32
    assert sample["input_joints"].shape == (14, 3) and sample["input_joints"].dtype == torch.float32
    assert torch.equal(sample["joints"], torch.from_numpy(joints))


@pytest.mark.parametrize("train", [False, True])
def test_targets_decode_back_to_ground_truth_within_one_pixel(train):
    """Render targets from the ground truth, decode them as predictions: < 1 px in the original image."""
    task = PoseTask(sigma=1.0, augment=Augment(rotation=40, scale=(0.8, 1.2), flip=True))
    rng = np.random.default_rng(1)
    samples, truths = [], []
    for i in range(8):
        image, joints = random_person(rng)
        samples.append(task.make_sample(image, joints, SampleKey(5, i, epoch=2), train, GEOMETRY))
        truths.append(joints)
    batch = default_collate(samples)
    flips = batch["flip"].numpy()
    if train:
        assert flips.any() and not flips.all(), "the augmented batch should mix flipped and plain samples"
    else:
        assert not flips.any()
    predicted, scores = decode_joints(batch["target"], batch["matrix"], GEOMETRY.stride, batch["flip"])
    truth = np.stack(truths)[:, :, :2]
    # which original joints were decodable: un-flip the per-channel mask like the predictions
    map_xy = input_to_map(batch["input_joints"][:, :, :2].numpy(), GEOMETRY.stride)
    ok = inner(map_xy, GEOMETRY.map_size)
    ok[flips] = ok[flips][:, list(FLIP_INDEX)]
    assert ok.sum() > 0.7 * ok.size
    errors = np.linalg.norm(predicted - truth, axis=-1)[ok]
    assert errors.max() < 1.0
    assert np.all(scores[ok] > 0.5)


def test_flip_swaps_left_and_right_labels():
    """Mirroring a frontal person keeps the labelled right side on the image's left."""
    image, joints = frontal_person()
    task = PoseTask(augment=Augment(rotation=0, scale=(1.0, 1.0), flip=True))
    right = [JOINT_NAMES.index(n) for n in JOINT_NAMES if n.startswith("r_")]
    left = [JOINT_NAMES.index(n) for n in JOINT_NAMES if n.startswith("l_")]
    seen = set()
    for i in range(20):
        sample = task.make_sample(image, joints, SampleKey(0, i), True, Geometry(64, 8))
        xy = sample["input_joints"][:, :2].numpy()
        flip = bool(sample["flip"])
        seen.add(flip)
        assert xy[right, 0].mean() < xy[left, 0].mean()
        # channel i holds original joint FLIP_INDEX[i] after a flip
        expected = transform_points(joints[:, :2], sample["matrix"].numpy())
        if flip:
            expected = expected[list(FLIP_INDEX)]
        np.testing.assert_allclose(xy, expected, atol=1e-4)
    assert seen == {True, False}


def test_joints_outside_the_input_get_empty_maps_and_background_is_one_minus_max():
    image, joints = random_person(np.random.default_rng(2))
    task = PoseTask(augment=Augment(rotation=0, scale=(3.0, 3.0), flip=False))  # zoom far in
    sample = task.make_sample(image, joints, SampleKey(0, 0), True, Geometry(64, 8))
    xy = sample["input_joints"][:, :2].numpy()
    outside = ((xy < 0) | (xy > 63)).any(axis=1)
    assert outside.any() and not outside.all()
    target = sample["target"].numpy()
    assert np.all(target[:NUM_JOINTS][outside] == 0)
    assert np.all(target[:NUM_JOINTS][~outside].max(axis=(1, 2)) > 0.3)
    np.testing.assert_allclose(target[NUM_JOINTS], 1 - target[:NUM_JOINTS].max(axis=0))


def test_occluded_joints_get_a_target_like_visible_ones():
    image, joints = frontal_person()
    joints[:, 2] = 0  # everything occluded
    sample = PoseTask().make_sample(image, joints, SampleKey(0, 0), False, Geometry(64, 8))
    assert np.all(sample["target"][:NUM_JOINTS].numpy().max(axis=(1, 2)) > 0.5)
    assert np.all(sample["input_joints"][:, 2].numpy() == 0)


def test_augmentation_is_reproducible_per_key_and_changes_with_epoch():
    image, joints = random_person(np.random.default_rng(3))
    task = PoseTask()
    a = task.make_sample(image, joints, SampleKey(1, 7, epoch=1), True, Geometry(64, 8))
    b = task.make_sample(image, joints, SampleKey(1, 7, epoch=1), True, Geometry(64, 8))
    c = task.make_sample(image, joints, SampleKey(1, 7, epoch=2), True, Geometry(64, 8))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["matrix"], b["matrix"])
    assert not torch.equal(a["matrix"], c["matrix"])


def test_evaluation_samples_are_not_augmented():
    image, joints = frontal_person()
    task = PoseTask(augment=Augment(rotation=40, scale=(0.5, 2.0), flip=True))
    a = task.make_sample(image, joints, SampleKey(0, 0, epoch=1), False, Geometry(64, 8))
    b = PoseTask(augment=None).make_sample(image, joints, SampleKey(0, 0, epoch=9), True, Geometry(64, 8))
    assert torch.equal(a["matrix"], b["matrix"]) and not bool(a["flip"])


def test_centre_map_sigma_scales_with_input_size():
    task = PoseTask()
    np.testing.assert_allclose(task.centermap(64).numpy(), centre_map(64, 21.0 * 64 / 368), rtol=1e-6)
    np.testing.assert_allclose(PoseTask(centermap_sigma=5.0).centermap(32).numpy(), centre_map(32, 5.0))


def test_make_sample_without_joints_is_a_data_error():
    with pytest.raises(DataError):
        PoseTask().make_sample(np.zeros((10, 10, 3), np.uint8), None, SampleKey(0, 0), False, Geometry(64, 8))


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError):
        PoseTask(sigma=0)
    with pytest.raises(ConfigError):
        PoseTask(loss_scale="median")


def test_config_round_trips():
    task = PoseTask(sigma=2.0, augment=Augment(rotation=10, scale=(0.9, 1.1), flip=False), margin=0.3, loss_scale="sum")
    again = PoseTask.from_config(task.config())
    assert again.config() == task.config()
    assert again.augment == task.augment
    assert PoseTask.from_config(PoseTask(augment=None).config()).augment is None


def test_predict_sample_crops_the_centre_square_or_the_box():
    task = PoseTask(margin=0.0)
    image = np.zeros((100, 200, 3), np.uint8)
    sample = task.predict_sample(image, Geometry(64, 8))
    matrix = sample["matrix"].numpy()
    # the centre square is x in [50, 149]: its corners land on the input corners
    np.testing.assert_allclose(transform_points(np.array([[49.5, -0.5], [149.5, 99.5]]), matrix), [[-0.5, -0.5], [63.5, 63.5]])
    boxed = task.predict_sample(image, Geometry(64, 8), box=(10, 20, 40, 80))["matrix"].numpy()
    # a 40x80 box becomes an 80x80 square around its centre (29.5, 59.5)
    np.testing.assert_allclose(transform_points(np.array([[29.5, 59.5]]), boxed), [[31.5, 31.5]])
    np.testing.assert_allclose(boxed[0, 0], 64 / 80)
    assert sample["image"].shape == (3, 64, 64) and sample["centermap"].shape == (1, 64, 64)


# --------------------------------------------------------------------------------- loss


def test_loss_sums_stage_mses_and_sum_scale_multiplies_by_map_values():
    target = torch.rand(2, 15, 8, 8)
    out = target + 0.1
    batch = {"target": target}
    mean = PoseTask().loss([out, out], batch)
    assert mean.item() == pytest.approx(2 * 0.01, rel=1e-4)
    summed = PoseTask(loss_scale="sum").loss([out, out], batch)
    assert summed.item() == pytest.approx(2 * 0.01 * 15 * 8 * 8, rel=1e-4)


def test_loss_backpropagates_into_every_stage():
    target = torch.rand(2, 15, 8, 8)
    outs = [torch.zeros(2, 15, 8, 8, requires_grad=True) for _ in range(3)]
    PoseTask().loss(outs, {"target": target}).backward()
    assert all(o.grad is not None and o.grad.abs().sum() > 0 for o in outs)


def test_report_loss_is_final_stage_mse_times_reference_scale():
    target = torch.zeros(1, 15, 8, 8)
    stage1, stage2 = torch.full_like(target, 0.2), torch.full_like(target, 0.1)
    assert PoseTask.report_losses([stage1, stage2], {"target": target}) == pytest.approx(
        [0.04 * REFERENCE_SCALE, 0.01 * REFERENCE_SCALE]
    )


# ------------------------------------------------------------------------------- metric


def make_batch(task: PoseTask, n: int = 4) -> dict:
    rng = np.random.default_rng(11)
    samples = []
    for i in range(n):
        image, joints = random_person(rng)
        samples.append(task.make_sample(image, joints, SampleKey(0, i), False, GEOMETRY))
    return default_collate(samples)


def test_metric_on_perfect_predictions():
    task = PoseTask(margin=0.5)
    batch = make_batch(task)
    metric = task.new_metric()
    metric.update([batch["target"], batch["target"]], batch)
    result = metric.compute()
    assert result["pck@0.2"] == pytest.approx(100.0)
    assert result["pck@0.1"] == pytest.approx(100.0)
    assert result["auc@0.2"] > 98.0
    assert result["loss"] == pytest.approx(0.0)
    assert result["report_loss"] == pytest.approx(0.0)
    assert result["part.Mean"] == pytest.approx(100.0)
    assert {f"joint.{n}" for n in JOINT_NAMES} <= set(result)
    assert {"part.Head", "part.Ankle", "report_loss.stage1", "report_loss.stage2"} <= set(result)


def test_metric_scores_predictions_offset_by_known_distances():
    """Half the joints off by 0.15 torso, half by 0.25 torso: PCK@0.2 = 50, PCK@0.1 = 0."""
    task = PoseTask(margin=0.5)
    batch = make_batch(task, n=3)
    joints = batch["joints"].numpy().astype(np.float64)
    torso = np.linalg.norm(joints[:, 9, :2] - joints[:, 2, :2], axis=-1)
    offset = np.where(np.arange(NUM_JOINTS) < 7, 0.15, 0.25)[None, :] * torso[:, None]
    moved = joints[:, :, :2].copy()
    moved[:, :, 1] += offset  # straight down, in original pixels
    maps = []
    for b in range(len(moved)):
        xy = input_to_map(transform_points(moved[b], batch["matrix"][b].numpy()), GEOMETRY.stride)
        assert inner(xy, GEOMETRY.map_size).all()
        maps.append(with_background(gaussian_maps(xy, GEOMETRY.map_size, 1.0)))
    outputs = [torch.from_numpy(np.stack(maps))]
    metric = task.new_metric()
    metric.update(outputs, batch)
    result = metric.compute()
    assert result["pck@0.2"] == pytest.approx(50.0)
    assert result["pck@0.1"] == pytest.approx(0.0)
    assert result["part.Ankle"] == pytest.approx(100.0)  # joints 0 and 5 are both < 7
    assert result["joint.r_elbow"] == pytest.approx(0.0)  # joint 7
    # PCK(t) = 0 below 0.15, 50 from 0.15, 100 from 0.25 > 0.2: area = 50 * 0.05 / 0.2 (+ one trapezoid edge)
    assert result["auc@0.2"] == pytest.approx(12.5, abs=0.7)


def test_metric_without_samples_is_an_error():
    with pytest.raises(DataError):
        PoseTask().new_metric().compute()
