"""The synthetic dataset: deterministic rendered people with sane LSP joints and LSP-like splits."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sslbench.contract.errors import ConfigError, DataError
from sslbench.contract.registry import Registry
from sslbench_plugins import synthetic
from sslbench_plugins.synthetic import RENDER_VERSION, SyntheticPeople, render_person
from sslbench_plugins.synthetic_people import render
from sslbench_plugins.synthetic_people.appearance import MAX_SIDE, MIN_SIDE
from sslbench_plugins.synthetic_people.body import sample_pose
from sslbench_plugins.synthetic_people.draws import Random
from sslbench_plugins.synthetic_people.figure import Figure, Part

#: (parent, child) joints joined by one rigid segment, and its longest length in standing heights
SEGMENTS = {
    (0, 1): 0.27, (1, 2): 0.28, (3, 4): 0.28, (4, 5): 0.27,  # shins, thighs
    (6, 7): 0.17, (7, 8): 0.21, (9, 10): 0.21, (10, 11): 0.17,  # forearms, upper arms
    (12, 13): 0.14,  # head
}  # fmt: skip


@pytest.fixture(scope="module")
def batch() -> list[tuple[np.ndarray, np.ndarray]]:
    """Forty labelled images: enough to see every pose family and both visibility flags."""
    dataset = SyntheticPeople(size=100, seed=11)
    return [(dataset.image(i), dataset.joints(i)) for i in range(40)]


def test_same_index_renders_identical_arrays_across_instances() -> None:
    first, second = SyntheticPeople(size=20, seed=3), SyntheticPeople(size=20, seed=3)
    for i in (0, 7):
        assert np.array_equal(first.image(i), second.image(i))
        assert np.array_equal(first.joints(i), second.joints(i))
    assert np.array_equal(first.image(7), first.image(7))


def test_different_seeds_and_indices_give_different_images() -> None:
    a, b = SyntheticPeople(size=20, seed=0), SyntheticPeople(size=20, seed=1)
    assert not np.array_equal(a.joints(0), b.joints(0))
    assert a.image(0).shape != a.image(1).shape or not np.array_equal(a.image(0), a.image(1))


def test_returned_arrays_are_copies_the_caller_may_modify() -> None:
    dataset = SyntheticPeople(size=10)
    image, joints = dataset.image(2), dataset.joints(2)
    image[:] = 0
    joints[:] = -1
    assert dataset.image(2).any() and (dataset.joints(2) >= 0).all()


def test_render_person_depends_only_on_the_generator_state() -> None:
    image_a, joints_a = render_person(np.random.default_rng(42))
    image_b, joints_b = render_person(np.random.default_rng(42))
    assert np.array_equal(image_a, image_b) and np.array_equal(joints_a, joints_b)


def digest(image: np.ndarray, joints: np.ndarray) -> str:
    """sha256 of an image and its joints, shapes and dtypes included."""
    content = hashlib.sha256(repr((image.shape, image.dtype.str, joints.shape, joints.dtype.str)).encode())
    content.update(image.tobytes())
    content.update(joints.tobytes())
    return content.hexdigest()


def test_rendered_images_and_joints_are_pinned_for_this_render_version() -> None:
    """Exact bytes of three renders. If this fails, every synthetic image changed: bump RENDER_VERSION
    (new cell ids and cache entries) and re-pin. It fails too when a new Pillow or numpy draws a pixel
    differently: then committed synthetic results no longer reproduce bit for bit under version 1."""
    assert RENDER_VERSION == 1
    labelled, unlabelled = SyntheticPeople(size=100, seed=0), SyntheticPeople(size=100, seed=7, labelled=False)
    assert [
        digest(*render_person(np.random.default_rng(1))),
        digest(labelled.image(1), labelled.joints(1)),
        digest(unlabelled.image(0), np.zeros(0, np.float32)),
    ] == [
        "2956695bba7837e0054a85ceab290e9d9cddfa092db5d6c11dba5e65f465a148",
        "861c48aa7961f0575749d253da8ff0e24cc8c6f433b4249c2fe3e01197986800",
        "3a6df0d93711e6e421f201d727aceba1da21bfed11358ce9dca2d7f6ee433e18",
    ]


def test_images_and_joints_have_the_documented_shapes_and_types(batch) -> None:
    for image, joints in batch:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert MIN_SIDE <= image.shape[0] <= MAX_SIDE and MIN_SIDE <= image.shape[1] <= MAX_SIDE
        assert joints.dtype == np.float32 and joints.shape == (14, 3)
        assert set(np.unique(joints[:, 2])) <= {0.0, 1.0}
    assert len({image.shape for image, _ in batch}) > 5  # sizes vary, often not square


def test_every_joint_lies_inside_its_image(batch) -> None:
    for image, joints in batch:
        h, w = image.shape[:2]
        assert (joints[:, 0] >= 0).all() and (joints[:, 0] <= w - 1).all()
        assert (joints[:, 1] >= 0).all() and (joints[:, 1] <= h - 1).all()


def test_connected_joints_are_no_farther_apart_than_the_bone_between_them(batch) -> None:
    tallest = render.HEIGHT_RANGE[1]
    for _, joints in batch:
        for (a, b), longest in SEGMENTS.items():
            assert np.hypot(*(joints[a, :2] - joints[b, :2])) <= longest * tallest
    # bones shrink only when they point at the camera: on average they are long
    mean_thigh = np.mean([np.hypot(*(j[1, :2] - j[2, :2])) for _, j in batch])
    assert mean_thigh > 15


def test_person_is_about_lsp_size_and_torso_never_collapses(batch) -> None:
    heights = [np.ptp(j[:, 1]) for _, j in batch]
    assert 80 < np.median(heights) < 200
    torsos = [np.hypot(*(j[9, :2] - j[2, :2])) for _, j in batch]  # PCK's normaliser
    assert min(torsos) > 10


def test_left_and_right_limbs_are_built_alike() -> None:
    """In 3-D each bone has its body's length whatever the pose, on both sides."""
    r = Random(np.random.default_rng(5))
    for _ in range(30):
        body, _, _, skeleton = render._posed_person(r)
        joints = skeleton.joints
        for right, left, length in (((0, 1), (5, 4), body.shin), ((1, 2), (4, 3), body.thigh),
                                    ((6, 7), (11, 10), body.forearm), ((7, 8), (10, 9), body.upper_arm)):  # fmt: skip
            assert np.linalg.norm(joints[right[0]] - joints[right[1]]) == pytest.approx(length)
            assert np.linalg.norm(joints[left[0]] - joints[left[1]]) == pytest.approx(length)
        # the body's x axis points to its left: left hip and shoulder at +x, right at -x
        assert joints[3, 0] > joints[2, 0]
        assert np.dot(joints[9] - joints[8], skeleton.torso[1, 1] - skeleton.torso[1, 0]) > 0


def test_knees_bend_backwards_and_elbows_forwards_only() -> None:
    r = Random(np.random.default_rng(8))
    for _ in range(50):
        pose = sample_pose(r)
        for limb in (*pose.legs, *pose.arms):
            assert 0 <= limb.bend <= 150


def test_visibility_flags_mark_both_visible_and_occluded_joints(batch) -> None:
    flags = np.stack([joints[:, 2] for _, joints in batch])
    assert 0.05 < 1 - flags.mean() < 0.4  # some occlusion, most joints visible
    assert (flags == 0).any(axis=1).sum() >= 5  # spread over many images


def test_a_nearer_part_drawn_over_a_joint_hides_it_but_its_own_part_does_not() -> None:
    # joint 1 belongs to part 1; part 2 (nearer, drawn later) covers joint 1 only
    label = Image.new("L", (40, 40), 0)
    draw = ImageDraw.Draw(label)
    draw.rectangle((0, 0, 39, 39), fill=2 * 1 + 1)
    draw.rectangle((20, 0, 39, 39), fill=2 * 2 + 1)
    joints = np.full((14, 2), 10.0)
    joints[1] = (30.0, 10.0)
    part = Part([], [], depth=0.0, group="skin", owners=tuple(range(14)))
    nearer = Part([], [], depth=0.5, group="skin", owners=())
    figure = Figure(
        origin=(0, 0), size=(40, 40), joints=joints, depths=np.zeros(14),
        mid_depths=np.full(14, np.nan), parts=[part, nearer], reach=3.0,
    )  # fmt: skip
    visible = render._visibility(label, figure)
    assert visible[1] == 0 and visible[0] == 1 and visible.sum() == 13
    ImageDraw.Draw(label).rectangle((0, 0, 5, 5), fill=render.OCCLUDER_LABEL)
    joints[2] = (2.0, 2.0)
    assert render._visibility(label, figure)[2] == 0  # foreground objects hide joints too


def test_standard_split_mirrors_lsp_halves_with_a_tenth_for_validation() -> None:
    dataset = SyntheticPeople(size=200)
    splits = dataset.splits("standard", None, seed=0)
    assert splits.test == list(range(100, 200))
    assert len(splits.val) == 10 and len(splits.train) == 90 == splits.pool_size
    assert set(splits.train).isdisjoint(splits.val)
    assert set(splits.train) | set(splits.val) == set(range(100))


def test_train_budgets_are_nested_and_seed_dependent_while_val_and_test_are_fixed() -> None:
    dataset = SyntheticPeople(size=200)
    small, large = dataset.splits("standard", 20, seed=1), dataset.splits("standard", 60, seed=1)
    assert len(small.train) == 20 and set(small.train) <= set(large.train)
    other_seed = dataset.splits("standard", 20, seed=2)
    assert other_seed.train != small.train
    assert other_seed.val == small.val == large.val and other_seed.test == small.test


def test_impossible_requests_raise_config_errors() -> None:
    dataset = SyntheticPeople(size=20)
    with pytest.raises(ConfigError, match="protocol"):
        dataset.splits("report", None, 0)
    with pytest.raises(ConfigError, match="train"):
        dataset.splits("standard", 1000, 0)
    with pytest.raises(ConfigError, match="size"):
        SyntheticPeople(size=2)
    with pytest.raises(ConfigError, match="seed"):
        SyntheticPeople(seed=-1)
    with pytest.raises(IndexError):
        dataset.image(20)


def test_unlabelled_variant_has_images_but_no_joints() -> None:
    unlabelled = SyntheticPeople(size=10, labelled=False)
    assert not unlabelled.labelled and unlabelled.image(0).dtype == np.uint8
    with pytest.raises(DataError, match="no joint labels"):
        unlabelled.joints(0)
    # a separate image stream: pretext training never sees the labelled test images
    assert not np.array_equal(unlabelled.image(5), SyntheticPeople(size=10).image(5))
    assert len(unlabelled.splits("standard", None, 0).val) == 1


def test_image_ids_and_description_identify_the_data() -> None:
    dataset = SyntheticPeople(size=30, seed=4)
    assert dataset.image_id(0) == "synth00001.png" and len(dataset) == 30
    described = dataset.describe()
    assert described["size"] == 30 and described["seed"] == 4 and described["root"] is None
    assert SyntheticPeople(size=30, seed=4, labelled=False).describe() != described


def test_both_entries_are_registered_and_accept_the_dataset_factory_arguments() -> None:
    registry = Registry(plugins=[synthetic], load_entrypoints=False)
    assert {"synthetic", "synthetic-unlabelled"} <= set(registry.names("dataset"))
    labelled = registry.create("dataset", "synthetic", root=None, skip_bad=True, size=8)
    unlabelled = registry.create("dataset", "synthetic-unlabelled", root="/nowhere", skip_bad=False, size=8)
    assert labelled.labelled and not unlabelled.labelled and len(unlabelled) == 8
