"""Image I/O and the lsp, lspet and folder dataset plugins, on tiny fixtures in the real layouts."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from conftest import make_folder, make_lsp, make_lspet, truncate
from PIL import Image, ImageFile

from sslbench.contract.errors import ConfigError, DataError
from sslbench.contract.registry import Registry
from sslbench.data.imageio import DataWarning, ImageCache, read_image, unlabelled_val_count
from sslbench_plugins import folder, lsp, lspet
from sslbench_plugins.folder import ImageFolder
from sslbench_plugins.lsp import LSP
from sslbench_plugins.lspet import LSPET


def write_joints(root: Path, array: np.ndarray) -> None:
    scipy.io.savemat(root / "joints.mat", {"joints": array})


def lsp_joints(root: Path) -> np.ndarray:
    return scipy.io.loadmat(root / "joints.mat")["joints"]


# ------------------------------------------------------------------------ read_image


def test_read_image_converts_grayscale_cmyk_palette_and_alpha_to_rgb(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    cases = {
        "gray.jpg": Image.fromarray(pixels).convert("L"),
        "cmyk.jpg": Image.fromarray(pixels).convert("CMYK"),
        "palette.png": Image.fromarray(pixels).convert("P"),
        "alpha.png": Image.fromarray(pixels).convert("RGBA"),
    }
    for name, image in cases.items():
        image.save(tmp_path / name)
        array = read_image(tmp_path / name)
        assert array.shape == (20, 30, 3) and array.dtype == np.uint8, name


def test_read_image_names_the_file_when_missing_or_not_an_image(tmp_path):
    with pytest.raises(DataError, match=r"missing\.jpg: cannot read image: file not found"):
        read_image(tmp_path / "missing.jpg")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(DataError, match=r"text\.jpg: cannot read image"):
        read_image(tmp_path / "text.jpg")


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_read_image_rejects_truncated_jpeg(lsp_root, keep):
    path = lsp_root / "images" / "im0001.jpg"
    truncate(path, keep)
    with pytest.raises(DataError, match=r"im0001\.jpg: cannot read image: .*truncated"):
        read_image(path)


def test_read_image_rejects_truncated_jpeg_even_when_pil_is_told_to_accept_them(lsp_root, monkeypatch):
    path = lsp_root / "images" / "im0001.jpg"
    truncate(path, 0.9)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DataError, match="truncated"):
        read_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the global is restored


# ------------------------------------------------------------------------------ cache


def test_image_cache_decodes_once_and_protects_cached_arrays():
    cache = ImageCache(max_bytes=10_000)
    calls = []

    def load():
        calls.append(1)
        return np.zeros((10, 10, 3), np.uint8)

    first = cache.get("a", load)
    second = cache.get("a", load)
    assert first is second and len(calls) == 1
    with pytest.raises(ValueError):
        first[0, 0, 0] = 1


def test_image_cache_stops_adding_at_its_byte_budget():
    cache = ImageCache(max_bytes=700)  # room for two 300-byte images
    for key in range(4):
        cache.get(key, lambda: np.zeros((10, 10, 3), np.uint8))
    assert len(cache) == 2 and cache.nbytes == 600


def test_image_cache_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("SSLBENCH_IMAGE_CACHE_MB", "3")
    assert ImageCache().max_bytes == 3 << 20
    monkeypatch.setenv("SSLBENCH_IMAGE_CACHE_MB", "lots")
    with pytest.raises(ConfigError, match="SSLBENCH_IMAGE_CACHE_MB"):
        ImageCache()


def test_dataset_survives_pickling_for_spawned_workers_with_an_empty_cache(lsp_root):
    data = LSP(lsp_root)
    data.preload()
    assert len(data.cache) == len(data)
    copy = pickle.loads(pickle.dumps(data))
    assert len(copy.cache) == 0
    np.testing.assert_array_equal(copy.image(3), data.image(3))


# -------------------------------------------------------------------------------- LSP


def test_lsp_reads_images_joints_and_turns_occluded_flags_into_visibility(lsp_root):
    data = LSP(lsp_root)
    raw = lsp_joints(lsp_root)
    assert len(data) == 40 and data.labelled
    assert data.image_id(0) == "im0001.jpg" and data.image_id(39) == "im0040.jpg"
    joints = data.joints(5)
    assert joints.shape == (14, 3) and joints.dtype == np.float32
    np.testing.assert_allclose(joints[:, :2], raw[:2, :, 5].T, rtol=1e-6)
    np.testing.assert_array_equal(joints[:, 2], 1.0 - raw[2, :, 5])
    with Image.open(lsp_root / "images" / "im0006.jpg") as image:
        assert data.image(5).shape == (image.height, image.width, 3)


@pytest.fixture(scope="module")
def lsp2000(tmp_path_factory) -> LSP:
    """Full-size LSP layout with empty image files: enough for splits, which never decode."""
    return LSP(make_lsp(tmp_path_factory.mktemp("full"), n=2000, placeholder_images=True))


def test_lsp_standard_split_is_1000_1000_with_100_validation_for_2000_images(lsp2000):
    data = lsp2000
    splits = data.splits("standard", None, 0)
    assert len(splits.test) == 1000 and splits.test == list(range(1000, 2000))
    assert len(splits.val) == 100 and len(splits.train) == 900 and splits.pool_size == 900
    assert set(splits.val).isdisjoint(splits.train) and max(splits.train + splits.val) < 1000
    assert splits.warning is None


def test_lsp_report_split_is_1600_200_200_and_warns_it_is_not_comparable(lsp2000):
    data = lsp2000
    splits = data.splits("report", None, 0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1600, 200, 200)
    assert len(set(splits.train) | set(splits.val) | set(splits.test)) == 2000
    assert splits.warning == (
        "the report split puts standard test images (im1001-2000) into training: "
        "not comparable with published LSP results"
    )


def test_lsp_split_of_small_copy_scales_and_budgets_nest(lsp_root):
    data = LSP(lsp_root)
    full = data.splits("standard", None, 0)
    assert full.test == list(range(20, 40)) and len(full.val) == 2 and full.pool_size == 18
    small, larger = data.splits("standard", 5, 3), data.splits("standard", 10, 3)
    assert set(small.train) <= set(larger.train) and small.val == full.val == data.splits("standard", 5, 9).val


def test_lsp_unknown_protocol_lists_the_known_ones(lsp_root):
    with pytest.raises(ConfigError, match="standard, report"):
        LSP(lsp_root).splits("mpii", None, 0)


def test_lsp_needs_a_root(tmp_path):
    with pytest.raises(DataError, match="--root is required for dataset lsp"):
        lsp.LSP.create()
    with pytest.raises(DataError, match="nowhere: dataset folder not found"):
        lsp.LSP.create(root=tmp_path / "nowhere")


def test_lsp_missing_image_folder_or_joints_mat_names_the_path(lsp_root):
    (lsp_root / "joints.mat").unlink()
    with pytest.raises(DataError, match=r"joints\.mat: annotation file not found"):
        LSP(lsp_root)
    (lsp_root / "images").rename(lsp_root / "pictures")
    with pytest.raises(DataError, match=r"images: image folder not found"):
        LSP(lsp_root)


def test_lsp_truncated_joints_mat_is_a_data_error(lsp_root):
    truncate(lsp_root / "joints.mat", 0.5)
    with pytest.raises(DataError, match=r"joints\.mat: cannot read annotations"):
        LSP(lsp_root)


@pytest.mark.parametrize(
    "reshape, message",
    [
        (lambda a: a.transpose(1, 0, 2), r"shape 14x3x40, expected 3x14xN: that is LSP-extended's layout"),
        (lambda a: a[:, :12], r"shape 3x12x40, expected 3x14xN: 12 joints per image"),
        (lambda a: a[:, :, 0], r"shape 3x14, expected 3x14xN"),
    ],
)
def test_lsp_wrong_array_shape_names_file_and_shapes(lsp_root, reshape, message):
    write_joints(lsp_root, reshape(lsp_joints(lsp_root)))
    with pytest.raises(DataError, match=message):
        LSP(lsp_root)


def test_lsp_image_count_not_matching_annotations_gives_both_counts(lsp_root):
    (lsp_root / "images" / "im0040.jpg").unlink()
    with pytest.raises(DataError, match=r"39 images .* has 40 annotations"):
        LSP(lsp_root)


def test_lsp_misnumbered_image_is_named(lsp_root):
    (lsp_root / "images" / "im0007.jpg").rename(lsp_root / "images" / "im0099.jpg")
    with pytest.raises(DataError, match=r"im0007\.jpg: image not found"):
        LSP(lsp_root)


def test_lsp_nan_coordinates_name_the_image(lsp_root):
    joints = lsp_joints(lsp_root)
    joints[1, 4, 12] = np.nan
    write_joints(lsp_root, joints)
    with pytest.raises(DataError, match=r"non-finite joint coordinates .* for im0013\.jpg"):
        LSP(lsp_root)


def test_lsp_corrupt_image_fails_on_read_naming_the_file(lsp_root):
    truncate(lsp_root / "images" / "im0004.jpg")
    data = LSP(lsp_root)  # construction does not decode
    with pytest.raises(DataError, match=r"im0004\.jpg: cannot read image"):
        data.image(3)


def test_lsp_skip_bad_drops_unreadable_images_keeping_joints_and_splits_aligned(lsp_root):
    truncate(lsp_root / "images" / "im0004.jpg")
    (lsp_root / "images" / "im0030.jpg").write_bytes(b"garbage")
    raw = lsp_joints(lsp_root)
    with pytest.warns(DataWarning, match=r"skipped 2 unreadable images"):
        data = LSP(lsp_root, skip_bad=True)
    assert len(data) == 38 and data.skipped == ["im0004.jpg", "im0030.jpg"]
    assert data.image_id(3) == "im0005.jpg"
    np.testing.assert_allclose(data.joints(3)[:, 0], raw[0, :, 4], rtol=1e-6)
    splits = data.splits("standard", None, 0)
    assert [data.image_id(i) for i in splits.test][0] == "im0021.jpg" and len(splits.test) == 19
    assert len(data.cache) == 38  # decoded once while checking


# ------------------------------------------------------------------------------ LSPET


def test_lspet_without_joints_is_an_unlabelled_pool(lspet_root):
    data = LSPET(lspet_root)
    assert len(data) == 30 and not data.labelled and data.image_id(0) == "im00001.jpg"
    with pytest.raises(DataError, match="no joint labels"):
        data.joints(0)
    splits = data.splits("standard", None, 0)
    assert len(splits.val) == 1 and len(splits.train) == 29 and splits.test == []


def test_unlabelled_validation_is_500_of_10000_and_at_least_one():
    assert unlabelled_val_count(10_000) == 500
    assert unlabelled_val_count(100_000) == 500
    assert unlabelled_val_count(40) == 2
    assert unlabelled_val_count(3) == 1


@pytest.mark.parametrize("transposed", [False, True])
def test_lspet_joints_keep_visible_flag_in_either_layout(tmp_path, transposed):
    root = make_lspet(tmp_path, n=10, labelled=True, transposed=transposed)
    raw = scipy.io.loadmat(root / "joints.mat")["joints"]
    expected = raw[:, :, 3] if not transposed else raw[:, :, 3].T
    data = LSPET(root)
    assert data.labelled
    np.testing.assert_allclose(data.joints(3), expected, rtol=1e-6)


def test_lspet_wrong_joint_count_names_file(tmp_path):
    root = make_lspet(tmp_path, n=10, labelled=True)
    write_joints(root, scipy.io.loadmat(root / "joints.mat")["joints"][:13])
    with pytest.raises(DataError, match=r"joints\.mat: 'joints' has shape 13x3x10"):
        LSPET(root)


def test_lspet_image_count_must_match_annotations(tmp_path):
    root = make_lspet(tmp_path, n=10, labelled=True)
    (root / "images" / "im00010.jpg").unlink()
    with pytest.raises(DataError, match="9 images .* has 10 annotations"):
        LSPET(root)


def test_lspet_empty_image_folder_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"images: no images named imNNNNN\.jpg"):
        LSPET(tmp_path)


# ----------------------------------------------------------------------------- folder


def test_folder_uses_image_files_of_every_supported_format_sorted(folder_root):
    (folder_root / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(folder_root / "sub" / "nested.jpg")
    data = ImageFolder(folder_root)
    assert len(data) == 12 and not data.labelled
    assert [data.image_id(i) for i in range(3)] == ["photo_000.jpg", "photo_001.png", "photo_002.bmp"]
    assert all(data.image(i).shape[2] == 3 for i in range(4))  # jpg, png, bmp, webp


def test_folder_without_images_names_the_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=f"{tmp_path}: no images"):
        ImageFolder(tmp_path)


def test_folder_with_only_unreadable_images_and_skip_bad_names_the_folder(tmp_path):
    for i in range(3):
        (tmp_path / f"broken{i}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=f"{tmp_path}: no readable images"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ImageFolder(tmp_path, skip_bad=True)


def test_folder_skip_bad_warns_with_the_count(tmp_path):
    root = make_folder(tmp_path, n=6)
    truncate(root / "photo_000.jpg")
    with pytest.warns(DataWarning, match="skipped 1 unreadable image "):
        data = ImageFolder(root, skip_bad=True)
    assert len(data) == 5


# --------------------------------------------------------------------------- registry


def test_plugins_register_their_entries_and_reject_unknown_options(lsp_root):
    registry = Registry(plugins=[lsp, lspet, folder], load_entrypoints=False)
    assert registry.names("dataset") == ["folder", "lsp", "lspet"]
    data = registry.create("dataset", "lsp", root=lsp_root, skip_bad=False)
    assert isinstance(data, LSP) and data.describe()["size"] == 40
    with pytest.raises(ConfigError, match="unknown option"):
        registry.create("dataset", "lsp", root=lsp_root, skip_bad=False, colour="red")
    with pytest.raises(DataError, match="--root is required for dataset folder"):
        registry.create("dataset", "folder", root=None, skip_bad=False)
