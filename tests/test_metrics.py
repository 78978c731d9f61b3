"""PCK math against hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest

from sslbench.data.joints import NUM_JOINTS
from sslbench.tasks.metrics import auc, joint_distances, pck, pck_curve, pck_per_joint, per_part, torso_sizes


def test_pck_counts_joints_within_threshold_times_torso():
    # torso 100 px: the 0.2 threshold is 20 px, 0.1 is 10 px
    distances = np.array([[5.0, 10.0, 20.0, 20.1], [0.0, 30.0, 9.9, 50.0]])
    torso = np.array([100.0, 100.0])
    assert pck(distances, torso, 0.2) == pytest.approx(100 * 5 / 8)  # 5, 10, 20, 0, 9.9
    assert pck(distances, torso, 0.1) == pytest.approx(100 * 4 / 8)  # 5, 10, 0, 9.9


def test_pck_uses_each_images_own_torso():
    distances = np.array([[15.0], [15.0]])
    torso = np.array([100.0, 50.0])  # thresholds 20 px and 10 px
    assert pck(distances, torso, 0.2) == pytest.approx(50.0)


def test_pck_skips_nan_distances():
    distances = np.array([[1.0, np.nan], [100.0, 2.0]])
    assert pck(distances, np.array([10.0, 10.0]), 0.2) == pytest.approx(100 * 2 / 3)


def test_pck_per_joint_scores_each_column():
    distances = np.array([[1.0, 50.0], [1.5, 1.0]])
    assert pck_per_joint(distances, np.array([10.0, 10.0]), 0.2).tolist() == pytest.approx([100.0, 50.0])


def test_pck_curve_is_monotone_and_matches_pck():
    rng = np.random.default_rng(0)
    distances = rng.uniform(0, 30, size=(20, 14))
    torso = rng.uniform(50, 100, size=20)
    thresholds = np.linspace(0, 0.3, 7)
    curve = pck_curve(distances, torso, thresholds)
    assert np.all(np.diff(curve) >= 0)
    assert curve[3] == pytest.approx(pck(distances, torso, thresholds[3]))


def test_auc_is_100_for_perfect_and_0_for_hopeless_predictions():
    torso = np.array([100.0])
    assert auc(np.zeros((1, 14)), torso) == pytest.approx(100.0)
    assert auc(np.full((1, 14), 1000.0), torso) == pytest.approx(0.0)


def test_auc_of_uniform_errors_is_about_half():
    # normalised errors spread evenly over [0, 0.2]: PCK rises linearly, area = 50
    n = 4000
    distances = (np.arange(n) + 0.5)[:, None] / n * 20.0
    assert auc(distances, np.full(n, 100.0), 0.2, steps=41) == pytest.approx(50.0, abs=0.2)


def test_auc_of_a_step_curve_is_the_trapezoid_area():
    # every joint at 0.1 x torso: PCK is 0 below t=0.1 and 100 from it on
    distances = np.full((1, 14), 10.0)
    # grid step 0.005: 0 up to 0.095, one trapezoid from 0.095 to 0.1, then 100 to 0.2
    expected = (0.5 * 100 * 0.005 + 100 * 0.1) / 0.2
    assert auc(distances, np.array([100.0]), 0.2, steps=41) == pytest.approx(expected)


def test_per_part_averages_left_and_right_and_mean_over_joints():
    per_joint = np.arange(NUM_JOINTS, dtype=float) * 10  # joint i scores 10 i
    table = per_part(per_joint)
    assert table["Ankle"] == pytest.approx((0 + 50) / 2)  # r_ankle 0, l_ankle 5
    assert table["Head"] == pytest.approx((120 + 130) / 2)  # neck 12, head top 13
    assert table["Shoulder"] == pytest.approx((80 + 90) / 2)
    assert table["Mean"] == pytest.approx(np.mean(per_joint))
    assert list(table) == ["Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Mean"]


def test_per_part_rejects_wrong_length():
    with pytest.raises(ValueError):
        per_part([1.0, 2.0])


def test_torso_is_left_shoulder_to_right_hip():
    joints = np.zeros((1, 14, 3))
    joints[0, 9, :2] = (10, 10)  # left shoulder
    joints[0, 2, :2] = (13, 14)  # right hip
    assert torso_sizes(joints)[0] == pytest.approx(5.0)


def test_joint_distances_are_euclidean():
    predicted = np.array([[[3.0, 4.0], [0.0, 0.0]]])
    truth = np.array([[[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]]])
    assert joint_distances(predicted, truth).tolist() == [[5.0, 2.0]]
