"""``sslbench data verify|preview|download`` through the real command line (click's CliRunner)."""

from __future__ import annotations

import functools
import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
import torch
from click.testing import CliRunner
from conftest import make_folder, make_lsp, make_lspet, truncate
from PIL import Image

from sslbench.cli import data as cli_data
from sslbench.cli.main import main
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.interfaces import Geometry, Metric, Pretext, SampleKey
from sslbench.contract.registry import Entry, Registry
from sslbench.data import download, verify
from sslbench.data.pipeline import to_tensor
from sslbench.results import drawing
from sslbench_plugins import folder, lsp, lspet


def run(*args: Any):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "error:" in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


# ------------------------------------------------------------------------------ verify


def test_verify_clean_lsp_prints_a_summary_and_exits_0(lsp_root):
    result = run("data", "verify", "--data", "lsp", "--root", lsp_root)
    assert result.exit_code == 0, result.output
    for fragment in ("images", "40", "3x14x40", "unreadable images", "split standard", "split report", "no problems"):
        assert fragment in result.output
    assert "not comparable with published LSP results" in result.output


def test_verify_reports_unreadable_images_and_exits_1(lsp_root):
    truncate(lsp_root / "images" / "im0007.jpg")
    result = run("data", "verify", "--data", "lsp", "--root", lsp_root)
    assert result.exit_code == 1, result.output
    assert "im0007.jpg: cannot read image" in result.output and "1 problem found" in result.output


def test_verify_skip_bad_leaves_unreadable_images_out_and_reports_how_many(lsp_root):
    truncate(lsp_root / "images" / "im0007.jpg")
    truncate(lsp_root / "images" / "im0008.jpg")
    result = run("data", "verify", "--data", "lsp", "--root", lsp_root, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "skipped 2 unreadable images" in result.output and "38" in result.output


def test_verify_counts_joints_outside_the_image_as_a_warning(lsp_root):
    joints = scipy.io.loadmat(lsp_root / "joints.mat")["joints"]
    joints[0, 3, 9] = 500.0
    scipy.io.savemat(lsp_root / "joints.mat", {"joints": joints})
    result = run("data", "verify", "--data", "lsp", "--root", lsp_root)
    assert result.exit_code == 0, result.output
    assert "1 joint outside the picture (im0010.jpg)" in result.output


def test_verify_unlabelled_lspet_and_folder(lspet_root, folder_root):
    result = run("data", "verify", "--data", "lspet", "--root", lspet_root)
    assert result.exit_code == 0 and "none (unlabelled)" in result.output, result.output
    result = run("data", "verify", "--data", "folder", "--root", folder_root)
    assert result.exit_code == 0 and "12" in result.output, result.output


# ------------------------------------------------------------------ bad input: exit 2


def _mutate_shape(root: Path) -> None:
    joints = scipy.io.loadmat(root / "joints.mat")["joints"]
    scipy.io.savemat(root / "joints.mat", {"joints": joints.transpose(1, 0, 2)})


def _mutate_joint_count(root: Path) -> None:
    joints = scipy.io.loadmat(root / "joints.mat")["joints"]
    scipy.io.savemat(root / "joints.mat", {"joints": joints[:, :13]})


def _mutate_nan(root: Path) -> None:
    joints = scipy.io.loadmat(root / "joints.mat")["joints"]
    joints[0, 0, 2] = np.nan
    scipy.io.savemat(root / "joints.mat", {"joints": joints})


@pytest.mark.parametrize(
    "mutate, fragments",
    [
        (lambda r: (r / "joints.mat").unlink(), ["joints.mat", "not found"]),
        (lambda r: truncate(r / "joints.mat", 0.4), ["joints.mat", "cannot read annotations"]),
        (_mutate_shape, ["joints.mat", "14x3x40", "expected 3x14xN"]),
        (_mutate_joint_count, ["joints.mat", "3x13x40", "13 joints per image"]),
        (lambda r: (r / "images" / "im0040.jpg").unlink(), ["39 images", "40 annotations", "joints.mat"]),
        (_mutate_nan, ["joints.mat", "im0003.jpg", "non-finite"]),
    ],
    ids=["missing-mat", "truncated-mat", "wrong-shape", "wrong-joint-count", "count-mismatch", "nan"],
)
def test_verify_bad_layout_is_a_one_line_error_naming_the_file(lsp_root, mutate, fragments):
    mutate(lsp_root)
    result = run("data", "verify", "--data", "lsp", "--root", lsp_root)
    assert_one_line_error(result, *fragments)


def test_missing_folder_and_missing_root_are_one_line_errors(tmp_path):
    assert_one_line_error(run("data", "verify", "--data", "lsp", "--root", tmp_path / "absent"), "absent")
    assert_one_line_error(run("data", "verify", "--data", "lsp"), "--root is required for dataset lsp")
    assert_one_line_error(run("data", "verify", "--data", "lps", "--root", tmp_path), "Did you mean 'lsp'?")


def test_preview_of_a_corrupt_image_is_a_one_line_error_naming_it(tmp_path):
    root = make_lsp(tmp_path, n=4)
    truncate(root / "images" / "im0002.jpg")
    result = run("data", "preview", "--data", "lsp", "--root", root, "--count", 4, "--out", tmp_path / "p.png")
    assert_one_line_error(result, "im0002.jpg", "cannot read image")
    assert not (tmp_path / "p.png").exists()


# ----------------------------------------------------------------------------- preview


def test_preview_lsp_writes_a_grid_of_pose_samples(lsp_root, tmp_path):
    out = tmp_path / "grid.png"
    result = run("data", "preview", "--data", "lsp", "--root", lsp_root, "--out", out, "--count", 4, "--input-size", 64)
    assert result.exit_code == 0, result.output
    assert "target peaks decode to within" in result.output
    with Image.open(out) as grid:
        assert grid.width >= 2 * 64 and grid.height >= 2 * 64


def test_pose_tile_draws_left_limbs_blue_and_right_limbs_red_after_a_flip(lsp_root):
    """A frontal person has its right side on the image left; a mirrored sample keeps that."""
    from sslbench.data.pipeline import Augment
    from sslbench.tasks.pose import PoseTask

    data = lsp.LSP.create(root=lsp_root)
    task = PoseTask(augment=Augment(rotation=0.0, scale=(1.0, 1.0), flip=True))
    geometry = Geometry(input_size=64, stride=8)
    seen = set()
    for seed in range(12):
        tile, error = drawing.pose_tile(task, data, 0, SampleKey(seed, 0), geometry, train=True)
        assert error < 0.5
        pixels = np.asarray(tile.image).reshape(-1, 3)
        xs = np.tile(np.arange(64), 64)
        red = np.all(pixels == drawing.RIGHT_COLOUR, axis=1)
        blue = np.all(pixels == drawing.LEFT_COLOUR, axis=1)
        assert xs[red].mean() < xs[blue].mean(), tile.caption
        seen.add("(flip)" in tile.caption)
    assert seen == {True, False}


def test_preview_unlabelled_data_shows_centre_crops_and_pose_is_refused(lspet_root, tmp_path):
    out = tmp_path / "crops.png"
    args = ["data", "preview", "--data", "lspet", "--root", lspet_root, "--out", out]
    result = run(*args, "--count", 3, "--input-size", 24)
    assert result.exit_code == 0 and out.exists(), result.output
    result = run(*args, "--task", "pose")
    assert_one_line_error(result, "--task pose needs joint labels")


class _Negative(Pretext):
    """A stand-in pretext: the centre crop's colours inverted."""

    name = "negative"

    @property
    def num_outputs(self) -> int:
        return 1

    def make_sample(self, image, joints, key: SampleKey, train: bool, geometry: Geometry) -> dict[str, Any]:
        crop = np.asarray(Image.fromarray(image).resize((geometry.input_size, geometry.input_size)))
        return {"image": to_tensor(255 - crop), "centermap": torch.zeros(1, geometry.input_size, geometry.input_size)}

    def loss(self, outputs, batch):
        return outputs[-1].mean()

    def new_metric(self) -> Metric:
        raise NotImplementedError


class _NegativePlugin:
    @hookimpl
    def sslbench_pretexts(self):
        return [Entry("negative", "inverted colours (test)", _Negative)]


def test_preview_with_a_pretext_shows_what_the_pretext_feeds_the_network(tmp_path, monkeypatch):
    folder_root = make_folder(tmp_path, n=1)
    registry = Registry(plugins=[lsp, lspet, folder, _NegativePlugin()], load_entrypoints=False)
    monkeypatch.setattr(cli_data, "registry", lambda: registry)
    out = tmp_path / "negative.png"
    args = ["data", "preview", "--data", "folder", "--root", folder_root, "--task", "negative", "--out", out]
    result = run(*args, "--count", 1, "--input-size", 32)
    assert result.exit_code == 0, result.output
    source = np.asarray(Image.open(folder_root / "photo_000.jpg").convert("RGB")).reshape(-1, 3).mean(axis=0)
    with Image.open(out) as grid:
        tile = np.asarray(grid.convert("RGB"))[40:60, 10:30].reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(tile, 255 - source, atol=25)
    assert_one_line_error(run(*args[:-1], tmp_path / "x.png", "--task", "negatve"), "unknown pretext 'negatve'")


# ---------------------------------------------------------------------------- download


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def http_server(tmp_path, monkeypatch):
    """A local HTTP server on a free port serving ``tmp_path/served``: (folder, base URL)."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    served = tmp_path / "served"
    served.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def zip_dataset(source: Path, archive: Path, prefix: str = "") -> str:
    """Zip every file under *source* (paths relative to it, under *prefix*); returns the SHA-256."""
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(source).as_posix())
    return hashlib.sha256(archive.read_bytes()).hexdigest()


def test_download_fetches_checks_extracts_and_verifies(tmp_path, http_server):
    served, base = http_server
    digest = zip_dataset(make_lsp(tmp_path / "src", n=6), served / "lsp.zip")
    root = tmp_path / "data" / "lsp"
    result = run("data", "download", "lsp", "--root", root, "--url", f"{base}/lsp.zip", "--sha256", digest)
    assert result.exit_code == 0, result.output
    assert f"SHA-256 {digest} checked" in result.output and "no problems found" in result.output
    assert len(list((root / "images").glob("*.jpg"))) == 6 and (root / "joints.mat").is_file()
    assert not list(root.glob(".download-*"))


def test_download_without_a_known_hash_prints_it_and_unwraps_a_top_folder(tmp_path, http_server):
    served, base = http_server
    source = make_lspet(tmp_path / "src", n=4)
    with tarfile.open(served / "lspet.tar.gz", "w:gz") as tar:
        tar.add(source, arcname="lspet_dataset")
    digest = hashlib.sha256((served / "lspet.tar.gz").read_bytes()).hexdigest()
    root = tmp_path / "lspet"
    result = run("data", "download", "lspet", "--root", root, "--url", f"{base}/lspet.tar.gz")
    assert result.exit_code == 0, result.output
    assert f"SHA-256 {digest} (not checked" in result.output
    assert (root / "images" / "im00004.jpg").is_file()


def test_download_with_wrong_sha256_fails_cleanly_and_leaves_no_files(tmp_path, http_server):
    served, base = http_server
    zip_dataset(make_lsp(tmp_path / "src", n=3), served / "lsp.zip")
    root = tmp_path / "fresh"
    result = run("data", "download", "lsp", "--root", root, "--url", f"{base}/lsp.zip", "--sha256", "0" * 64)
    assert_one_line_error(result, "SHA-256 mismatch", "lsp.zip")
    assert not root.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    result = run("data", "download", "lsp", "--root", existing, "--url", f"{base}/lsp.zip", "--sha256", "0" * 64)
    assert_one_line_error(result, "SHA-256 mismatch")
    assert list(existing.iterdir()) == []


def test_download_refuses_archive_members_that_escape_the_root(tmp_path, http_server):
    served, base = http_server
    with zipfile.ZipFile(served / "evil.zip", "w") as zf:
        zf.writestr("images/im0001.jpg", b"x")
        zf.writestr("../escaped.txt", b"gotcha")
    root = tmp_path / "inside" / "lsp"
    result = run("data", "download", "lsp", "--root", root, "--url", f"{base}/evil.zip")
    assert_one_line_error(result, "unsafe member '../escaped.txt'")
    assert not (tmp_path / "inside" / "escaped.txt").exists()
    assert not (root / "images").exists()  # checked before anything is written


def test_download_http_error_and_non_archive_are_one_line_errors(tmp_path, http_server):
    served, base = http_server
    result = run("data", "download", "lsp", "--root", tmp_path / "a", "--url", f"{base}/missing.zip")
    assert_one_line_error(result, "download failed: HTTP 404")
    (served / "page.zip").write_bytes(b"<html>moved</html>")
    result = run("data", "download", "lsp", "--root", tmp_path / "b", "--url", f"{base}/page.zip")
    assert_one_line_error(result, "not a zip or tar archive")
    assert not (tmp_path / "b").exists()


def test_download_refuses_to_overwrite_existing_images(lsp_root, http_server):
    _, base = http_server
    result = run("data", "download", "lsp", "--root", lsp_root, "--url", f"{base}/x.zip")
    assert_one_line_error(result, "images: already exists")


def test_known_lsp_hash_applies_only_to_the_official_url():
    assert download.DOWNLOADS["lsp"].sha256 == "07cba8044f153e48aec3d02cf2ab4c2c86dbf15edae5699e77b684562851676e"
    assert download.DOWNLOADS["lspet"].sha256 is None
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("lsp_dataset/images/im0001.jpg", b"x")
        zf.writestr("lsp_dataset/joints.mat", b"x")
    assert download._strip_prefix(zipfile.ZipFile(archive).namelist()) == "lsp_dataset/"
    assert download._strip_prefix(["images/im0001.jpg", "images/im0002.jpg"]) == ""


def test_truncated_or_non_archive_download_names_the_url_not_the_temporary_file(tmp_path, http_server):
    served, base = http_server
    zip_dataset(make_lsp(tmp_path / "src", n=3), served / "lsp.zip")
    truncate(served / "lsp.zip", 0.6)
    source = tmp_path / "src2"
    with tarfile.open(served / "lspet.tar.gz", "w:gz") as tar:
        tar.add(make_lspet(source, n=3), arcname="lspet")
    truncate(served / "lspet.tar.gz", 0.5)
    (served / "page.zip").write_bytes(b"<html>moved</html>")
    for name, dataset in (("lsp.zip", "lsp"), ("lspet.tar.gz", "lspet"), ("page.zip", "lsp")):
        root = tmp_path / f"out-{name}"
        result = run("data", "download", dataset, "--root", root, "--url", f"{base}/{name}")
        assert_one_line_error(result, f"{base}/{name}")
        assert ".download-" not in result.output and ".part" not in result.output, result.output
        assert not root.exists()


def test_verify_flags_an_image_whose_scan_data_was_zeroed(tmp_path):
    root = make_lsp(tmp_path, n=6)
    path = root / "images" / "im0002.jpg"
    data = bytearray(path.read_bytes())
    start = data.index(b"\xff\xda")  # start of scan: the header before it stays intact
    start += 2 + int.from_bytes(data[start + 2 : start + 4], "big")
    data[start:-2] = bytes(len(data) - 2 - start)
    path.write_bytes(bytes(data))
    result = run("data", "verify", "--data", "lsp", "--root", root)
    lines = [line for line in result.output.splitlines() if "blank picture" in line]
    assert len(lines) == 1 and "im0002" in lines[0] and "im0001" not in lines[0], result.output
    assert verify.looks_blank(np.full((40, 40, 3), 128, dtype=np.uint8))
    assert not verify.looks_blank(np.asarray(Image.open(root / "images" / "im0001.jpg").convert("RGB")))
