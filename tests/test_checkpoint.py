"""Checkpoints: safetensors + JSON, atomic, verified, never unpickled."""

from __future__ import annotations

import json
import pickle

import pytest
import safetensors
import torch
from torch import nn

from sslbench.contract.errors import CheckpointError
from sslbench.contract.hookspecs import hookimpl
from sslbench.contract.networks import Backbone, LayerGroup
from sslbench.contract.registry import Entry, Registry
from sslbench.training import atomic
from sslbench.training.checkpoint import (
    build_model,
    checkpoint_paths,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)


class TinyNet(Backbone):
    """Two stages of heatmaps at stride 8 from a two-conv trunk."""

    def __init__(self, num_outputs: int = 15, input_size: int = 32, width: int = 4, stages: int = 2) -> None:
        super().__init__(num_outputs, input_size, stride=8)
        self.width, self.stages = width, stages
        self.trunk = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, stride=4, padding=1)
        )
        self.head = nn.Conv2d(width, num_outputs, 1)
        self.refine = nn.ModuleList(nn.Conv2d(width + num_outputs, num_outputs, 3, padding=1) for _ in range(stages - 1))

    def forward(self, image, centermap=None):
        features = self.trunk(image)
        outputs = [self.head(features)]
        for layer in self.refine:
            outputs.append(layer(torch.cat([features, outputs[-1]], dim=1)))
        return outputs

    def layer_groups(self):
        return [LayerGroup("trunk", "first", ("trunk",))]

    def adapters(self):
        return ["head", "refine"]

    def config(self):
        return {"name": "tiny", "input_size": self.input_size, "width": self.width, "stages": self.stages}


class TinyPlugin:
    @hookimpl
    def sslbench_backbones(self):
        return [Entry("tiny", "test backbone", TinyNet)]


@pytest.fixture
def registry() -> Registry:
    return Registry(plugins=[TinyPlugin()], load_entrypoints=False)


def test_round_trip_keeps_weights_and_records_metadata(tmp_path):
    model = TinyNet()
    path = save_checkpoint(tmp_path / "best", model, {"epoch": 3, "metrics": {"pck@0.2": 41.5}})
    assert path == tmp_path / "best.json"
    loaded = load_checkpoint(tmp_path / "best")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state[key], value)
    meta = loaded.meta
    assert meta["epoch"] == 3 and meta["metrics"] == {"pck@0.2": 41.5}
    assert meta["backbone"] == model.config() and meta["num_outputs"] == 15
    assert {"torch", "sslbench", "python"} <= set(meta["versions"])
    assert len(meta["weights"]["sha256"]) == 64


@pytest.mark.parametrize("suffix", ["", ".json", ".safetensors"])
def test_load_accepts_stem_json_or_weights_path(tmp_path, suffix):
    save_checkpoint(tmp_path / "model.v1", TinyNet())
    loaded = load_checkpoint(str(tmp_path / "model.v1") + suffix)
    assert loaded.meta["backbone"]["name"] == "tiny"


def test_weights_file_is_plain_safetensors_with_model_keys(tmp_path):
    model = TinyNet()
    save_checkpoint(tmp_path / "m", model)
    with safetensors.safe_open(str(tmp_path / "m.safetensors"), framework="pt") as handle:
        assert set(handle.keys()) == set(model.state_dict())


def test_loading_never_unpickles(tmp_path, monkeypatch):
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.rand(1, 3, 32, 32))[-1].sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "m", model, optimizer=optimizer.state_dict())

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling is not allowed")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    loaded = load_checkpoint(tmp_path / "m")
    assert loaded.optimizer is not None


def test_optimizer_state_round_trips_and_training_continues_identically(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = torch.rand(2, 3, 32, 32)

    def step(net, opt):
        opt.zero_grad()
        sum(o.square().mean() for o in net(data)).backward()
        opt.step()

    step(model, optimizer)
    save_checkpoint(tmp_path / "last", model, optimizer=optimizer.state_dict(), extra={"rng": torch.get_rng_state()})
    loaded = load_checkpoint(tmp_path / "last")
    assert torch.equal(loaded.extra["rng"], torch.get_rng_state())

    twin = TinyNet()
    load_weights(twin, loaded)
    twin_optimizer = torch.optim.Adam(twin.parameters(), lr=1e-2)
    twin_optimizer.load_state_dict(loaded.optimizer)
    step(model, optimizer)
    step(twin, twin_optimizer)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_corrupt_weights_are_reported_with_the_file_name(tmp_path):
    save_checkpoint(tmp_path / "m", TinyNet())
    weights = tmp_path / "m.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"m\.safetensors.*corrupt"):
        load_checkpoint(tmp_path / "m")


def test_missing_or_broken_files_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing")
    save_checkpoint(tmp_path / "m", TinyNet())
    (tmp_path / "m.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match=r"m\.json"):
        load_checkpoint(tmp_path / "m")
    (tmp_path / "m.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="not an sslbench checkpoint"):
        load_checkpoint(tmp_path / "m")
    save_checkpoint(tmp_path / "w", TinyNet())
    (tmp_path / "w.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"w\.safetensors not found"):
        load_checkpoint(tmp_path / "w")


def test_interrupted_save_never_yields_mismatched_weights(tmp_path, monkeypatch):
    """A crash between the weights rename and the JSON rename is detected, not loaded."""
    save_checkpoint(tmp_path / "last", TinyNet(width=4))

    def crash(path, text):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "write_text", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "last", TinyNet(width=4))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "last")


def test_unserialisable_metadata_writes_nothing(tmp_path):
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "m", TinyNet(), {"bad": object()})
    assert not any(p.exists() for p in checkpoint_paths(tmp_path / "m"))


def test_build_model_rebuilds_the_backbone_from_its_config(tmp_path, registry):
    model = TinyNet(width=6, stages=3).eval()
    save_checkpoint(tmp_path / "m", model)
    rebuilt = build_model(load_checkpoint(tmp_path / "m"), registry).eval()
    assert isinstance(rebuilt, TinyNet) and rebuilt.config() == model.config()
    image = torch.rand(1, 3, 32, 32)
    assert torch.equal(model(image)[-1], rebuilt(image)[-1])


def test_checkpoint_of_another_backbone_names_both(tmp_path):
    save_checkpoint(tmp_path / "m", TinyNet(width=4))
    with pytest.raises(CheckpointError, match=r"tiny\(.*width=4.*tiny\(.*width=8"):
        load_weights(TinyNet(width=8), load_checkpoint(tmp_path / "m"))
    save_checkpoint(tmp_path / "n", TinyNet(num_outputs=9))
    with pytest.raises(CheckpointError, match="num_outputs=9"):
        load_weights(TinyNet(num_outputs=15), load_checkpoint(tmp_path / "n"))


def test_build_model_with_unknown_backbone_is_a_checkpoint_error(tmp_path, registry):
    save_checkpoint(tmp_path / "m", TinyNet(), {"backbone": {"name": "vanished"}})
    with pytest.raises(CheckpointError, match="vanished"):
        build_model(load_checkpoint(tmp_path / "m"), registry)
    save_checkpoint(tmp_path / "s", TinyNet().state_dict())  # a bare state dict: no backbone recorded
    with pytest.raises(CheckpointError, match="does not record its backbone"):
        build_model(load_checkpoint(tmp_path / "s"), registry)
