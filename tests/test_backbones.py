"""Backbone plugins: the CPM (shapes, groups, adapters, forward) and the timm pose network."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import sslbench_plugins.cpm as cpm_plugin
import sslbench_plugins.timm_backbone as timm_plugin
from sslbench.contract.errors import CheckpointError, ConfigError
from sslbench.contract.networks import Backbone
from sslbench.contract.registry import PluginLoadWarning, Registry
from sslbench_plugins.cpm import CPM
from sslbench_plugins.timm_backbone import TimmPose

TINY = {"input_size": 64, "width": 0.125}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(plugins=[cpm_plugin, timm_plugin], load_entrypoints=False)


@pytest.fixture(scope="module")
def paper_cpm() -> CPM:
    """The report's network: 6 stages, 368 px, full width, 14 joints + background (built, never run)."""
    return CPM(num_outputs=15, stages=6, width=1.0, input_size=368)


def conv_params(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out


def param_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def owners(model: Backbone) -> dict[str, list[str]]:
    """parameter name -> the group/adapter module paths that contain it."""
    paths = [m for g in model.layer_groups() for m in g.modules] + model.adapters()
    found: dict[str, list[str]] = {name: [] for name, _ in model.named_parameters()}
    for path in paths:
        for name, _ in model.get_submodule(path).named_parameters(prefix=path):
            found[name].append(path)
    return found


def assert_partition(model: Backbone) -> None:
    found = owners(model)
    unowned = [name for name, paths in found.items() if not paths]
    shared = {name: paths for name, paths in found.items() if len(paths) > 1}
    assert not unowned, f"parameters in no group or adapter: {unowned[:5]}"
    assert not shared, f"parameters in several groups/adapters: {list(shared.items())[:5]}"


# ---------------------------------------------------------------------------------- CPM


def test_paper_cpm_parameter_count_matches_the_architecture(paper_cpm: CPM) -> None:
    k = 15
    trunk = conv_params(3, 128, 9) + 2 * conv_params(128, 128, 9)
    stage1 = (
        trunk + conv_params(128, 32, 5) + conv_params(32, 512, 9) + conv_params(512, 512, 1) + conv_params(512, k, 1)
    )
    later = (
        conv_params(128, 32, 5)
        + conv_params(32 + k + 1, 128, 11)
        + 2 * conv_params(128, 128, 11)
        + conv_params(128, 128, 1)
        + conv_params(128, k, 1)
    )
    expected = stage1 + trunk + 5 * later
    total = sum(p.numel() for p in paper_cpm.parameters())
    assert total == expected == 31_219_866
    assert abs(total - 31.2e6) / 31.2e6 < 0.01


def test_paper_cpm_layer_shapes_match_the_caffe_reference(paper_cpm: CPM) -> None:
    shapes = param_shapes(paper_cpm)
    assert shapes["stage1.features.0.weight"] == (128, 3, 9, 9)
    assert shapes["stage1.features.3.weight"] == (128, 128, 9, 9)
    assert shapes["stage1.features.9.weight"] == (32, 128, 5, 5)
    assert shapes["stage1.features.11.weight"] == (512, 32, 9, 9)
    assert shapes["stage1.features.13.weight"] == (512, 512, 1, 1)
    assert shapes["stage1.out.weight"] == (15, 512, 1, 1)
    assert shapes["middle.0.weight"] == (128, 3, 9, 9)
    assert shapes["stage2.features.0.weight"] == (32, 128, 5, 5)
    assert shapes["stage2.fuse.weight"] == (128, 32 + 15 + 1, 11, 11)
    assert shapes["stage6.refine.1.weight"] == (128, 128, 11, 11)
    assert shapes["stage6.refine.5.weight"] == (128, 128, 1, 1)
    assert shapes["stage6.out.weight"] == (15, 128, 1, 1)
    assert "stage7.out.weight" not in shapes


def test_paper_cpm_has_eleven_adapters_and_groups_in_order(paper_cpm: CPM) -> None:
    adapters = paper_cpm.adapters()
    assert len(adapters) == 11
    assert adapters[0] == "stage1.out"
    assert {"stage2.fuse", "stage2.out", "stage6.fuse", "stage6.out"} <= set(adapters)
    groups = paper_cpm.layer_groups()
    assert [g.name for g in groups] == ["stage1", "middle", "stage2", "stage3", "stage4", "stage5", "stage6"]
    assert [g.role for g in groups] == ["first", "middle"] + ["later"] * 5


@pytest.mark.parametrize("stages", [1, 2, 6])
@pytest.mark.parametrize("norm", ["none", "batch"])
def test_cpm_groups_and_adapters_partition_the_parameters(stages: int, norm: str) -> None:
    model = CPM(15, stages=stages, norm=norm, **TINY)
    assert_partition(model)
    assert len(model.adapters()) == 1 + 2 * (stages - 1)


def test_cpm_batch_norm_follows_every_hidden_convolution_and_stays_out_of_the_adapters() -> None:
    model = CPM(15, stages=6, norm="batch", **TINY)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == len(convs) - 6  # all but the 6 stage outputs
    for path in model.adapters():
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.get_submodule(path).modules()), path
    # the parameters and statistics that differ from the published CPM are only the norms'
    plain = set(CPM(15, stages=6, **TINY).state_dict())
    extra = set(model.state_dict()) - plain
    assert extra and all(k.endswith(("weight", "bias", "running_mean", "running_var", "num_batches_tracked")) for k in extra)


@pytest.mark.parametrize(("stages", "size"), [(1, 64), (3, 64), (2, 72)])
def test_cpm_returns_one_stride_8_map_per_stage(stages: int, size: int) -> None:
    model = CPM(9, stages=stages, width=0.125, input_size=size)
    outputs = model(torch.randn(2, 3, size, size))
    assert len(outputs) == stages
    assert all(o.shape == (2, 9, size // 8, size // 8) for o in outputs)


def test_cpm_runs_with_channels_last_and_bf16_autocast() -> None:
    model = CPM(15, stages=3, **TINY).to(memory_format=torch.channels_last)
    image = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    centre = torch.rand(2, 1, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(image, centre)
    assert [o.shape for o in outputs] == [(2, 15, 8, 8)] * 3
    assert all(torch.isfinite(o.float()).all() for o in outputs)


@pytest.mark.parametrize("input_size", [64, 128, 368])
def test_cpm_default_centermap_is_the_one_samples_carry(input_size: int) -> None:
    from sslbench.data.pipeline import centre_map_tensor

    model = CPM(15, stages=2, input_size=input_size, width=0.125)
    default = model.default_centermap(input_size, input_size, torch.device("cpu"), torch.float32)[0]
    torch.testing.assert_close(default, centre_map_tensor(input_size), atol=1e-6, rtol=0)
    wide = model.default_centermap(input_size, 2 * input_size, torch.device("cpu"), torch.float32)[0, 0]
    assert wide.shape == (input_size, 2 * input_size) and torch.allclose(wide, wide.flip(1))
    assert model.config()["centermap_sigma"] is None


def test_cpm_default_centermap_is_a_gaussian_at_the_image_centre() -> None:
    model = CPM(15, stages=2, input_size=64, width=0.125, centermap_sigma=5.0)
    centre = model.default_centermap(64, 64, torch.device("cpu"), torch.float32)[0, 0]
    assert centre.shape == (64, 64)
    assert torch.allclose(centre, centre.flip(0)) and torch.allclose(centre, centre.T)
    assert centre.max().item() == pytest.approx(float(torch.exp(torch.tensor(-0.25 / 25))), rel=1e-5)
    assert centre[0, 0].item() < 1e-10
    torch.manual_seed(0)
    image = torch.randn(1, 3, 64, 64)
    default = model(image)[-1]
    explicit = model(image, centre[None, None].clone())[-1]
    shifted = model(image, centre.roll(20, dims=1)[None, None].clone())[-1]
    assert torch.allclose(default, explicit)
    assert not torch.allclose(default, shifted)


def test_cpm_shared_middle_trunk_runs_once_per_forward() -> None:
    model = CPM(15, stages=4, **TINY)
    calls = []
    model.middle.register_forward_hook(lambda *args: calls.append(1))
    outputs = model(torch.randn(1, 3, 64, 64))
    assert len(outputs) == 4
    assert len(calls) == 1


def test_cpm_gradient_reaches_every_parameter() -> None:
    model = CPM(15, stages=3, **TINY)
    outputs = model(torch.randn(2, 3, 64, 64), torch.rand(2, 1, 64, 64))
    sum(o.square().mean() for o in outputs).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_cpm_output_count_changes_only_the_adapters(norm: str) -> None:
    pose, jigsaw = CPM(15, stages=3, norm=norm, **TINY), CPM(10, stages=3, norm=norm, **TINY)
    a, b = param_shapes(pose), param_shapes(jigsaw)
    assert a.keys() == b.keys()
    adapters = tuple(f"{path}." for path in pose.adapters())
    differ = {name for name in a if a[name] != b[name]}
    assert differ and all(name.startswith(adapters) for name in differ)
    assert {name.rsplit(".", 1)[0] for name in differ} == set(pose.adapters())


def test_cpm_width_scales_hidden_channels_only() -> None:
    shapes = param_shapes(CPM(15, stages=2, input_size=64, width=0.25))
    assert shapes["stage1.features.0.weight"] == (32, 3, 9, 9)
    assert shapes["stage1.out.weight"] == (15, 128, 1, 1)
    assert shapes["stage2.fuse.weight"] == (32, 8 + 15 + 1, 11, 11)
    assert param_shapes(CPM(15, stages=2, input_size=64, width=0.001))["stage2.features.0.weight"] == (1, 1, 5, 5)


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"input_size": 60}, "input_size"),
        ({"input_size": 0}, "input_size"),
        ({"input_size": -8}, "input_size"),
        ({"width": 0.0}, "width"),
        ({"width": -1.0}, "width"),
        ({"stages": 0}, "stages"),
        ({"centermap_sigma": 0.0}, "centermap_sigma"),
        ({"norm": "layer"}, "norm"),
    ],
)
def test_cpm_rejects_impossible_options(options: dict, option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        CPM(15, **{**TINY, **options})


@pytest.mark.parametrize(
    ("name", "options"),
    [("cpm6", {}), ("cpm3", {}), ("cpm6", {"stages": 2}), ("cpm", {"stages": 4}), ("cpm6", {"norm": "batch"})],
)
def test_cpm_config_rebuilds_the_same_network_through_the_registry(
    registry: Registry, name: str, options: dict
) -> None:
    model = registry.create("backbone", name, num_outputs=15, **TINY, **options)
    expected_stages = options.get("stages", int(name[3:] or 6))
    assert model.stages == expected_stages
    cfg = model.config()
    assert cfg["name"] == name
    rebuilt = registry.create("backbone", cfg.pop("name"), num_outputs=15, **cfg)
    assert rebuilt.config() == model.config()
    assert param_shapes(rebuilt) == param_shapes(model)


# ---------------------------------------------------------------------------------- timm


@pytest.fixture(scope="module")
def resnet18() -> TimmPose:
    return TimmPose(15, model="resnet18", input_size=64, width=0.125, entry_name="timm-resnet18")


@pytest.mark.parametrize("size", [64, 72])
def test_timm_resnet18_returns_one_stride_8_map(resnet18: TimmPose, size: int) -> None:
    outputs = resnet18(torch.randn(2, 3, size, size))
    assert len(outputs) == 1
    assert outputs[0].shape == (2, 15, size // 8, size // 8)


def test_timm_groups_and_adapter_partition_the_parameters(resnet18: TimmPose) -> None:
    assert_partition(resnet18)
    groups = resnet18.layer_groups()
    assert [(g.name, g.role) for g in groups] == [("stem", "first"), ("blocks", "middle"), ("head", "later")]
    assert groups[0].modules == ("trunk.conv1", "trunk.bn1")
    assert resnet18.adapters() == ["head.out"]


def test_timm_output_count_changes_only_the_adapter() -> None:
    a = param_shapes(TimmPose(15, model="resnet18", input_size=64, width=0.125))
    b = param_shapes(TimmPose(10, model="resnet18", input_size=64, width=0.125))
    assert a.keys() == b.keys()
    assert {name for name in a if a[name] != b[name]} == {"head.out.weight", "head.out.bias"}


def test_timm_init_loads_a_local_safetensors_trunk(resnet18: TimmPose, tmp_path: Path) -> None:
    source = TimmPose(15, model="resnet18", input_size=64)
    path = tmp_path / "trunk.safetensors"
    save_file({k: v.contiguous() for k, v in source.trunk.state_dict().items()}, str(path))
    model = TimmPose(15, model="resnet18", input_size=64, init=path)
    fresh = TimmPose(15, model="resnet18", input_size=64)
    assert torch.equal(model.trunk.conv1.weight, source.trunk.conv1.weight)
    assert not torch.equal(fresh.trunk.conv1.weight, source.trunk.conv1.weight)
    assert model.init_report is not None and not model.init_report.missing
    assert model.config()["init"] == str(path)


def test_timm_init_accepts_a_full_model_torch_checkpoint(tmp_path: Path) -> None:
    import timm

    full = timm.create_model("resnet18", pretrained=False, num_classes=7)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": full.state_dict()}, path)
    model = TimmPose(15, model="resnet18", input_size=64, init=path)
    assert torch.equal(model.trunk.layer4[1].conv2.weight, full.layer4[1].conv2.weight)
    assert set(model.init_report.unexpected) == {"fc.weight", "fc.bias"}


def test_timm_init_missing_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        TimmPose(15, model="resnet18", input_size=64, init=tmp_path / "nope.safetensors")


def test_timm_init_corrupt_or_unrelated_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        TimmPose(15, model="resnet18", input_size=64, init=corrupt)
    unrelated = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(3, 3)}, str(unrelated))
    with pytest.raises(CheckpointError, match="no tensor"):
        TimmPose(15, model="resnet18", input_size=64, init=unrelated)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"model": "resnet18", "input_size": 60}, "input_size"),
        ({"model": "resnet18", "width": 0}, "width"),
        ({"model": "resnet_18"}, "unknown timm model"),
    ],
)
def test_timm_rejects_impossible_options(options: dict, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        TimmPose(15, **{"input_size": 64, **options})


def test_timm_named_entry_rejects_a_conflicting_model(registry: Registry) -> None:
    with pytest.raises(ConfigError, match="conflicts"):
        registry.create("backbone", "timm-resnet18", num_outputs=15, model="resnet50", input_size=64)


@pytest.mark.parametrize(("name", "options"), [("timm-resnet18", {}), ("timm", {"model": "resnet18"})])
def test_timm_config_rebuilds_the_same_network_through_the_registry(
    registry: Registry, name: str, options: dict
) -> None:
    model = registry.create("backbone", name, num_outputs=15, input_size=64, width=0.125, **options)
    cfg = model.config()
    assert cfg["name"] == name
    rebuilt = registry.create("backbone", cfg.pop("name"), num_outputs=15, **cfg)
    assert rebuilt.config() == model.config()
    assert param_shapes(rebuilt) == param_shapes(model)


def test_timm_hrnet_entry_builds_and_runs(registry: Registry) -> None:
    model = registry.create("backbone", "timm-hrnet_w18_small", num_outputs=15, input_size=64, width=0.125)
    assert model(torch.randn(1, 3, 64, 64))[0].shape == (1, 15, 8, 8)
    assert_partition(model)
    assert model.layer_groups()[0].modules == ("trunk.conv1", "trunk.bn1", "trunk.conv2", "trunk.bn2")


# ------------------------------------------------------------------------------ registration


@pytest.mark.parametrize("name", ["cpm6", "timm-resnet18"])
def test_unknown_backbone_options_are_config_errors(registry: Registry, name: str) -> None:
    with pytest.raises(ConfigError, match="unknown option.*depth"):
        registry.create("backbone", name, num_outputs=15, input_size=64, depth=3)


def test_backbones_are_registered_through_entry_points() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)  # other plugins may still be missing
        registry = Registry()
    entries = {e.name: e for e in registry.entries("backbone")}
    for name in ("cpm", "cpm3", "cpm4", "cpm5", "cpm6"):
        assert entries[name].provider == "sslbench (sslbench_plugins.cpm)"
    for name in ("timm", "timm-resnet18", "timm-resnet50", "timm-hrnet_w18_small"):
        assert entries[name].provider == "sslbench (sslbench_plugins.timm_backbone)"


# ----------------------------------------------------------------------------- feature maps


@pytest.mark.parametrize(
    ("group", "channels", "module"),
    [("stage1", 64, "stage1.features"), ("middle", 16, "middle"), ("stage3", 16, "stage3.refine")],
)
def test_cpm_features_are_the_output_of_the_groups_last_module(group: str, channels: int, module: str) -> None:
    torch.manual_seed(0)
    model = CPM(num_outputs=5, stages=3, **TINY).eval()
    image = torch.randn(2, 3, 64, 64)
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(module).register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        model(image)
        features = model.features(image, group)
    handle.remove()
    assert features.shape == (2, channels, 8, 8)
    assert torch.equal(features, seen[0])
    assert model.feature_shape(group) == (channels, 8)


def test_features_stop_the_forward_pass_so_later_layers_get_no_gradient() -> None:
    model = CPM(num_outputs=5, stages=3, **TINY)
    model.features(torch.randn(1, 3, 64, 64), "middle").sum().backward()
    assert model.middle[0].weight.grad is not None
    assert all(p.grad is None for p in model.stage2.parameters())
    assert all(p.grad is None for p in model.stage1.parameters())  # stage1 ran, but middle does not read it


def test_timm_blocks_features_are_the_deepest_trunk_map() -> None:
    model = TimmPose(15, model="resnet18", input_size=64, width=0.125).eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.features(image, "blocks"), model.trunk(image)[-1])
    assert model.feature_shape("blocks") == (512, 32)
    assert model.train().feature_shape("stem") == (64, 2) and model.training


def test_an_unknown_layer_group_names_the_groups_there_are() -> None:
    with pytest.raises(ConfigError, match="no layer group 'trunk'; its groups are stage1, middle, stage2"):
        CPM(num_outputs=5, stages=2, **TINY).features(torch.randn(1, 3, 64, 64), "trunk")
