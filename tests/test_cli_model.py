"""``sslbench evaluate`` and ``sslbench predict`` through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from rich.console import Console
from torch import nn

import sslbench.cli.model as cli_model
import sslbench_plugins.lsp as lsp_plugin
from sslbench.cli.main import main
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.networks import Backbone, LayerGroup
from sslbench.contract.registry import Entry, Registry
from sslbench.data.joints import JOINT_NAMES, NUM_JOINTS
from sslbench.data.pipeline import box_square, centre_square, crop_matrix, gaussian_maps, map_to_input, with_background
from sslbench.tasks.pose import PoseTask
from sslbench.training.checkpoint import save_checkpoint


class TinyNet(Backbone):
    """Two stages of 15 maps at stride 8."""

    def __init__(self, num_outputs: int = 15, input_size: int = 32, width: int = 4) -> None:
        super().__init__(num_outputs, input_size, stride=8)
        self.width = width
        self.trunk = nn.Sequential(nn.Conv2d(3, width, 3, stride=8, padding=1), nn.ReLU())
        self.head = nn.Conv2d(width, num_outputs, 1)
        self.refine = nn.Conv2d(num_outputs, num_outputs, 3, padding=1)

    def forward(self, image, centermap=None):
        first = self.head(self.trunk(image))
        return [first, self.refine(first)]

    def layer_groups(self):
        return [LayerGroup("trunk", "first", ("trunk",))]

    def adapters(self):
        return ["head", "refine"]

    def config(self):
        return {"name": "tiny", "input_size": self.input_size, "width": self.width}


#: joint j of PeakNet peaks at this (u, v) on its 8x8 map (sub-pixel, away from the border)
PEAKS = np.array([[1.3 + (j % 5), 1.6 + (j // 5) * 2] for j in range(NUM_JOINTS)])


class PeakNet(Backbone):
    """Ignores the image: joint j's map is a Gaussian at PEAKS[j], so predictions are known."""

    def __init__(self, num_outputs: int = 15, input_size: int = 64) -> None:
        super().__init__(num_outputs, input_size, stride=8)
        maps = with_background(gaussian_maps(PEAKS, input_size // 8, 1.0))
        self.gain = nn.Parameter(torch.ones(()))
        self.register_buffer("maps", torch.from_numpy(maps[:num_outputs]))

    def forward(self, image, centermap=None):
        return [self.maps.expand(image.shape[0], -1, -1, -1) * self.gain]

    def layer_groups(self):
        return []

    def adapters(self):
        return []

    def config(self):
        return {"name": "peak", "input_size": self.input_size}


class TestPlugin:
    @hookimpl
    def sslbench_backbones(self):
        return [Entry("tiny", "test backbone", TinyNet), Entry("peak", "fixed peaks", PeakNet)]


@pytest.fixture(autouse=True)
def plugins(monkeypatch):
    registry = Registry(plugins=[TestPlugin(), lsp_plugin], load_entrypoints=False)
    monkeypatch.setattr(cli_model, "registry", lambda: registry)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield registry
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "run" / "best", TinyNet(), {"task": PoseTask().config(), "epoch": 1})
    return tmp_path / "run" / "best"


@pytest.fixture
def peak_checkpoint(tmp_path) -> Path:
    save_checkpoint(tmp_path / "peak" / "best", PeakNet(), {"task": PoseTask(margin=0.25).config()})
    return tmp_path / "peak" / "best"


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:"), result.output
    return lines[0]


def write_images(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = folder / f"photo{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def expected_positions(width: int, height: int, box=None, margin: float = 0.25) -> np.ndarray:
    """Where PeakNet's peaks land in an image of this size (the inverse crop, computed directly)."""
    centre, side = centre_square(height, width) if box is None else box_square(*box, margin=margin)
    inverse = np.linalg.inv(crop_matrix(centre, side, 64))
    xy = map_to_input(PEAKS, 8)
    return xy @ inverse[:2, :2].T + inverse[:2, 2]


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_prints_pck_tables_and_writes_json(tiny_checkpoint, lsp_root, tmp_path):
    out = tmp_path / "metrics.json"
    result = invoke("evaluate", "--checkpoint", tiny_checkpoint, "--data", "lsp", "--root", lsp_root, "--json", out)
    assert result.exit_code == 0, result.output
    for text in ("PCK@0.2", "PCK@0.1", "AUC@0.2", "Head", "Shoulder", "Ankle", "Mean", "20 images"):
        assert text in result.output
    document = json.loads(out.read_text())
    assert document["split"] == "test" and document["protocol"] == "standard" and document["images"] == 20
    assert 0.0 <= document["metrics"]["pck@0.2"] <= 100.0
    assert {"auc@0.2", "part.Mean", "joint.head_top", "report_loss"} <= set(document["metrics"])


def test_evaluate_other_split_and_checkpoint_given_as_json_path(tiny_checkpoint, lsp_root):
    result = invoke("evaluate", "--checkpoint", f"{tiny_checkpoint}.json", "--root", lsp_root, "--split", "val")
    assert result.exit_code == 0, result.output
    assert "val (standard, 2 images)" in result.output


def test_evaluate_missing_checkpoint_is_one_line_error(tmp_path, lsp_root):
    result = invoke("evaluate", "--checkpoint", tmp_path / "nope", "--root", lsp_root)
    assert result.exit_code == 2
    assert "nope.json not found" in error_line(result)


def test_evaluate_corrupt_checkpoint_is_one_line_error(tiny_checkpoint, lsp_root):
    weights = Path(f"{tiny_checkpoint}.safetensors")
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    result = invoke("evaluate", "--checkpoint", tiny_checkpoint, "--root", lsp_root)
    assert result.exit_code == 2
    assert "corrupt" in error_line(result)


def test_evaluate_rejects_a_pretext_checkpoint(tmp_path, lsp_root):
    save_checkpoint(tmp_path / "pretext", TinyNet(num_outputs=9), {"task": {"name": "jigsaw-heatmap"}})
    result = invoke("evaluate", "--checkpoint", tmp_path / "pretext", "--root", lsp_root)
    assert result.exit_code == 2
    assert "not pose" in error_line(result)


def test_evaluate_unknown_protocol_is_one_line_error(tiny_checkpoint, lsp_root):
    result = invoke("evaluate", "--checkpoint", tiny_checkpoint, "--root", lsp_root, "--protocol", "mystery")
    assert result.exit_code == 2
    assert "mystery" in error_line(result)


# ------------------------------------------------------------------------------ predict


def test_predict_writes_joints_in_original_coordinates_for_any_image_size(peak_checkpoint, tmp_path):
    sizes = [(120, 80), (64, 200), (333, 333)]
    paths = write_images(tmp_path / "images", sizes)
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    out = tmp_path / "preds.csv"
    result = invoke("predict", "--checkpoint", peak_checkpoint, tmp_path / "images", "--out", out)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert list(table.columns) == ["image", "joint", "x", "y", "score"]
    assert len(table) == len(sizes) * NUM_JOINTS
    for path, (w, h) in zip(paths, sizes):
        rows = table[table["image"] == str(path)]
        assert list(rows["joint"]) == list(JOINT_NAMES)
        np.testing.assert_allclose(rows[["x", "y"]].to_numpy(), expected_positions(w, h), atol=0.02)
        assert (rows["score"] > 0.5).all()


def test_predict_uses_boxes_matched_by_file_name(peak_checkpoint, tmp_path):
    paths = write_images(tmp_path / "images", [(200, 150), (90, 90)])
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,x,y,w,h\nphoto0.jpg,20,10,60,100\n")
    out = tmp_path / "preds.csv"
    result = invoke("predict", "--checkpoint", peak_checkpoint, *paths, "--out", out, "--boxes", boxes)
    assert result.exit_code == 0, result.output
    assert "1 image(s) have no box" in result.output
    table = pd.read_csv(out)
    boxed = table[table["image"] == str(paths[0])][["x", "y"]].to_numpy()
    np.testing.assert_allclose(boxed, expected_positions(200, 150, box=(20, 10, 60, 100)), atol=0.02)
    centred = table[table["image"] == str(paths[1])][["x", "y"]].to_numpy()
    np.testing.assert_allclose(centred, expected_positions(90, 90), atol=0.02)


def test_predict_boxes_missing_columns_is_one_line_error_and_writes_nothing(peak_checkpoint, tmp_path):
    paths = write_images(tmp_path / "images", [(50, 50)])
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,x,y\nphoto0.jpg,1,2\n")
    out = tmp_path / "preds.csv"
    result = invoke("predict", "--checkpoint", peak_checkpoint, *paths, "--out", out, "--boxes", boxes)
    assert result.exit_code == 2
    assert "missing column(s) w, h" in error_line(result)
    assert not out.exists()


def test_predict_unreadable_image_leaves_existing_csv_untouched(peak_checkpoint, tmp_path):
    paths = write_images(tmp_path / "images", [(50, 60)])
    broken = tmp_path / "images" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    out = tmp_path / "preds.csv"
    out.write_text("previous results\n")
    result = invoke("predict", "--checkpoint", peak_checkpoint, paths[0], broken, "--out", out)
    assert result.exit_code == 2
    assert "broken.jpg" in error_line(result)
    assert out.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "peak", "preds.csv"]


def test_predict_missing_input_is_one_line_error(peak_checkpoint, tmp_path):
    result = invoke("predict", "--checkpoint", peak_checkpoint, tmp_path / "ghost.jpg", "--out", tmp_path / "p.csv")
    assert result.exit_code == 2
    assert "ghost.jpg" in error_line(result)


def test_predict_overlay_draws_the_skeleton_on_each_image(peak_checkpoint, tmp_path):
    paths = write_images(tmp_path / "images", [(140, 100), (100, 160)])
    for path in paths:  # plain grey backgrounds, so drawn colours are easy to find
        Image.new("RGB", Image.open(path).size, (128, 128, 128)).save(path)
    overlay = tmp_path / "overlay"
    result = invoke("predict", "--checkpoint", peak_checkpoint, *paths, "--out", tmp_path / "p.csv", "--overlay", overlay)
    assert result.exit_code == 0, result.output
    for path in paths:
        drawn = np.asarray(Image.open(overlay / path.name).convert("RGB")).astype(int)
        assert drawn.shape[:2] == np.asarray(Image.open(path)).shape[:2]
        red = (drawn[..., 0] > 180) & (drawn[..., 2] < 110)
        blue = (drawn[..., 2] > 180) & (drawn[..., 0] < 110)
        assert red.sum() > 20 and blue.sum() > 20  # right and left limbs both drawn


def test_predict_with_a_checkpoint_whose_weights_do_not_fit_its_backbone(tmp_path):
    # a checkpoint that claims width 8 but holds width-4 weights (e.g. files mixed up)
    save_checkpoint(tmp_path / "mixed", TinyNet(width=4).state_dict(),
                    {"backbone": {"name": "tiny", "input_size": 32, "width": 8}, "num_outputs": 15})  # fmt: skip
    paths = write_images(tmp_path / "images", [(40, 40)])
    result = invoke("predict", "--checkpoint", tmp_path / "mixed", *paths, "--out", tmp_path / "p.csv")
    assert result.exit_code == 2
    line = error_line(result)
    assert "weights do not fit the backbone it records" in line and "width=8" in line and "shape differs" in line
    assert not (tmp_path / "p.csv").exists()


# ------------------------------------------------------------------------ print_metrics


def test_print_metrics_accepts_a_run_record(tmp_path):
    record = {
        "metrics": {
            "pck@0.2": 61.25, "pck@0.1": 30.0, "auc@0.2": 33.3, "test_loss": 0.01, "report_loss": 317.0,
            "per_part": {"Head": 80.0, "Shoulder": 70.0, "Elbow": 60.0, "Wrist": 50.0, "Hip": 65.0,
                         "Knee": 55.0, "Ankle": 45.0, "Mean": 60.7},
        }
    }  # fmt: skip
    console = Console(record=True, width=150)
    cli_model.print_metrics(console, record, title="supervised")
    text = console.export_text()
    assert "61.2" in text and "317.0" in text and "Ankle" in text and "60.7" in text


def test_evaluate_caps_loader_workers_at_the_cores_with_a_warning(tiny_checkpoint, lsp_root, monkeypatch):
    import sslbench.data.loaders

    monkeypatch.setattr(sslbench.data.loaders, "available_cores", lambda: 2)
    started = []
    real = sslbench.data.loaders.DataLoader

    def loader(*args, **kwargs):
        started.append(kwargs.get("num_workers"))
        return real(*args, **{**kwargs, "num_workers": 0})  # run in-process: the count is what is checked

    monkeypatch.setattr(sslbench.data.loaders, "DataLoader", loader)
    result = invoke("evaluate", "--checkpoint", tiny_checkpoint, "--data", "lsp", "--root", lsp_root, "--workers", "100")
    assert result.exit_code == 0, result.output
    assert "warning: --workers 100: this machine has 2 core(s)" in result.output
    assert started and max(started) <= 2
