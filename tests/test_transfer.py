"""Transfer policies and the transfer mechanism: what is copied, what is frozen, what stays frozen."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from rich.console import Console
from torch import nn

import sslbench_plugins.policies as policies_plugin
from sslbench.contract.errors import CheckpointError, ConfigError
from sslbench.contract.networks import Backbone, LayerGroup
from sslbench.contract.registry import Registry
from sslbench.experiment.transfer import TransferReport, parse_policy, transfer

POLICY_ROLES = {
    "all": {"first", "middle", "later"},
    "first": {"first"},
    "first+middle": {"first", "middle"},
    "none": set(),
}


class TinyNet(Backbone):
    """Groups with non-CPM names: ``stem`` (first, with BatchNorm), ``body`` (middle), ``top`` (later, with BatchNorm).

    Adapters: ``top_out`` (output channels) and ``mixer`` (input depends on num_outputs).
    """

    def __init__(self, num_outputs: int, input_size: int = 16) -> None:
        super().__init__(num_outputs=num_outputs, input_size=input_size, stride=2)
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.first_out = nn.Conv2d(4, num_outputs, 1)
        self.mixer = nn.Conv2d(4 + num_outputs, 4, 3, padding=1)
        self.top = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU())
        self.top_out = nn.Conv2d(4, num_outputs, 1)

    def forward(self, image: torch.Tensor, centermap: torch.Tensor | None = None) -> list[torch.Tensor]:
        features = self.body(self.stem(image))
        first = self.first_out(features)
        second = self.top_out(self.top(self.mixer(torch.cat([features, first], dim=1))))
        return [first, second]

    def layer_groups(self) -> list[LayerGroup]:
        return [
            LayerGroup("stem", "first", ("stem",)),
            LayerGroup("body", "middle", ("body",)),
            LayerGroup("top", "later", ("top",)),
        ]

    def adapters(self) -> list[str]:
        return ["first_out", "mixer", "top_out"]

    def config(self) -> dict[str, Any]:
        return {"name": "tiny", "num_outputs": self.num_outputs}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(plugins=[policies_plugin], load_entrypoints=False)


def randomised(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter and BatchNorm statistic set to seeded random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.dtype.is_floating_point:
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                tensor.fill_(seed + 3)
    return model


def module_of(key: str, paths: list[str]) -> str | None:
    return next((p for p in paths if key == p or key.startswith(p + ".")), None)


def selected_paths(model: Backbone, policy_name: str) -> list[str]:
    roles = POLICY_ROLES[policy_name]
    return [path for group in model.layer_groups() if group.role in roles for path in group.modules]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: tensor.clone() for key, tensor in model.state_dict().items()}


def train_steps(model: Backbone, steps: int = 3) -> None:
    """Plain downstream training: SGD with momentum and weight decay over trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-2)
    model.train()
    generator = torch.Generator().manual_seed(0)
    size = model.input_size
    for _ in range(steps):
        image = torch.randn(4, 3, size, size, generator=generator)
        outputs = model(image)
        loss = sum(((out - 0.3) ** 2).mean() for out in outputs)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


# ----------------------------------------------------------------------------- policies


def test_policies_are_registered_and_select_groups_by_role(registry):
    assert registry.names("policy") == ["all", "all+adapters", "first", "first+middle", "none"]
    groups = TinyNet(3).layer_groups()
    for name, roles in POLICY_ROLES.items():
        chosen = registry.create("policy", name).select(groups)
        assert [g.name for g in chosen] == [g.name for g in groups if g.role in roles]


def test_policies_take_no_options(registry):
    with pytest.raises(ConfigError, match="no options"):
        registry.create("policy", "first", depth=2)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("first+middle", ("first+middle", False)),
        ("first+middle:frozen", ("first+middle", True)),
        ("all:finetune", ("all", False)),
        (" first : Frozen ", ("first", True)),
        ("none", ("none", False)),
    ],
)
def test_parse_policy(text, expected):
    assert parse_policy(text) == expected


@pytest.mark.parametrize(
    "text,message",
    [("first:thawed", "unknown mode"), (":frozen", "name"), ("", "policy"), ("none:frozen", "nothing")],
)
def test_parse_policy_rejects_nonsense(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_policy(text)


# ----------------------------------------------------------------------------- copying


@pytest.mark.parametrize("policy_name", list(POLICY_ROLES))
def test_each_policy_copies_exactly_its_groups_parameters_and_buffers(registry, policy_name):
    source = randomised(TinyNet(3), seed=1)
    target = randomised(TinyNet(3), seed=2)  # same num_outputs: adapters could be copied, must not be
    before = snapshot(target)
    report = transfer(source.state_dict(), target, registry.create("policy", policy_name), freeze=False)
    paths = selected_paths(target, policy_name)
    after = target.state_dict()
    for key, tensor in after.items():
        if module_of(key, paths):
            assert torch.equal(tensor, source.state_dict()[key]), key
        else:
            assert torch.equal(tensor, before[key]), key
    expected = sorted(k for k in after if module_of(k, paths))
    assert sorted(report.copied) == expected
    if "stem" in paths:  # BatchNorm statistics travel with the weights
        assert {"stem.1.running_mean", "stem.1.running_var", "stem.1.num_batches_tracked"} <= set(report.copied)
    assert not any(module_of(k, target.adapters()) for k in report.copied)


def test_adapters_of_another_task_are_never_needed(registry):
    pretext = randomised(TinyNet(9), seed=1)  # e.g. a 9-map jigsaw network
    pose = TinyNet(15)
    report = transfer(pretext.state_dict(), pose, registry.create("policy", "all"), freeze=False)
    assert [g.transferred for g in report.groups] == [True, True, True]
    assert torch.equal(pose.stem[0].weight, pretext.stem[0].weight)
    assert [a.path for a in report.adapters] == ["first_out", "mixer", "top_out"]


def test_shape_mismatch_names_the_key_and_both_shapes_and_changes_nothing(registry):
    source = TinyNet(3).state_dict()
    source["body.0.weight"] = torch.zeros(8, 4, 3, 3)
    target = TinyNet(3)
    before = snapshot(target)
    with pytest.raises(CheckpointError, match=r"body\.0\.weight.*\(8, 4, 3, 3\).*\(4, 4, 3, 3\)"):
        transfer(source, target, registry.create("policy", "all"), freeze=False)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_missing_key_is_a_checkpoint_error(registry):
    source = TinyNet(3).state_dict()
    del source["stem.1.running_var"]
    with pytest.raises(CheckpointError, match="stem.1.running_var"):
        transfer(source, TinyNet(3), registry.create("policy", "first"), freeze=False)


# ----------------------------------------------------------------------------- freezing


@pytest.mark.parametrize("policy_name", ["all", "first", "first+middle"])
def test_frozen_layers_and_their_norm_statistics_are_bit_identical_after_training(registry, policy_name):
    source = randomised(TinyNet(3), seed=1)
    source.stem[1].running_var.fill_(2.0)
    target = TinyNet(3)
    report = transfer(source.state_dict(), target, registry.create("policy", policy_name), freeze=True)
    paths = selected_paths(target, policy_name)
    before = snapshot(target)
    train_steps(target)
    after = target.state_dict()
    for key in after:
        if key.endswith("num_batches_tracked") and not module_of(key, paths):
            continue
        if module_of(key, paths):
            assert torch.equal(after[key], before[key]), f"frozen {key} changed"
        elif key.endswith(("weight", "running_mean", "running_var")):
            assert not torch.equal(after[key], before[key]), f"trained {key} did not change"
    assert all(not p.requires_grad for path in paths for p in target.get_submodule(path).parameters())
    assert report.frozen_parameters == report.transferred_parameters > 0


@pytest.mark.parametrize("policy_name", ["all", "first", "first+middle"])
def test_fine_tuned_layers_change_with_training(registry, policy_name):
    source = randomised(TinyNet(3), seed=1)
    target = TinyNet(3)
    report = transfer(source.state_dict(), target, registry.create("policy", policy_name), freeze=False)
    before = snapshot(target)
    train_steps(target)
    after = target.state_dict()
    for key in report.copied:
        if key.endswith(("weight", "running_mean")):
            assert not torch.equal(after[key], before[key]), key
    assert report.frozen_parameters == 0 and target.frozen == frozenset()


@pytest.mark.parametrize("policy_name", ["first", "first+middle"])
def test_transfer_lr_trains_the_fine_tuned_copies_at_that_multiple_of_the_rate(registry, policy_name):
    from sslbench.contract.config import TrainSettings
    from sslbench.training.optim import make_optimizer, parameter_groups

    target = TinyNet(3)
    report = transfer(randomised(TinyNet(3), 1).state_dict(), target, registry.create("policy", policy_name), False, 0.1)
    paths = selected_paths(target, policy_name)
    assert target.lr_scales == dict.fromkeys(paths, 0.1) and report.lr_scale == 0.1
    console = Console(record=True, width=160)
    console.print(report.table())
    assert "fine-tuned (lr x0.1)" in console.export_text()
    groups = parameter_groups(target, lr=0.01)
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.001])
    scaled = {id(p) for path in paths for p in target.get_submodule(path).parameters()}
    assert {id(p) for p in groups[1]["params"]} == scaled
    assert sum(len(g["params"]) for g in groups) == len(list(target.parameters()))
    # Adam's first step moves every parameter by about its rate: the copies 10x less
    optimizer = make_optimizer(groups, TrainSettings(optimizer="adam", lr=0.01))
    before = {name: p.detach().clone() for name, p in target.named_parameters()}
    target(torch.randn(2, 3, 16, 16))[-1].square().mean().backward()
    optimizer.step()
    steps = {True: 0.0, False: 0.0}  # largest step of a copied / another parameter
    for name, parameter in target.named_parameters():
        step = (parameter.detach() - before[name]).abs().max().item()
        steps[id(parameter) in scaled] = max(steps[id(parameter) in scaled], step)
    assert steps == pytest.approx({True: 0.001, False: 0.01}, rel=0.01)


# ------------------------------------------------------------------------------ report


def test_report_counts_every_parameter_once_and_renders_a_table(registry):
    source, target = TinyNet(3), TinyNet(3)
    report = transfer(source.state_dict(), target, registry.create("policy", "first+middle"), freeze=True)
    assert isinstance(report, TransferReport)
    assert report.total_parameters == sum(p.numel() for p in target.parameters())
    counts = {g.name: g.parameters for g in report.groups}
    assert counts == {
        name: sum(p.numel() for p in getattr(target, name).parameters()) for name in ("stem", "body", "top")
    }
    assert report.transferred_parameters == counts["stem"] + counts["body"]
    assert report.trained_parameters == report.total_parameters - report.frozen_parameters
    console = Console(record=True, width=140)
    console.print(report.table())
    text = console.export_text()
    for word in ("first+middle:frozen", "stem", "body", "top", "frozen", "random", "adapters", f"{counts['stem']:,}"):
        assert word in text, word
    summary = report.to_dict()
    assert summary["groups"][0]["transferred"] is True and summary["groups"][2]["transferred"] is False


def test_policy_none_copies_nothing_and_reports_everything_trained(registry):
    target = TinyNet(3)
    before = snapshot(target)
    report = transfer(randomised(TinyNet(3), 1).state_dict(), target, registry.create("policy", "none"), freeze=False)
    assert report.copied == () and report.transferred_parameters == 0
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


# --------------------------------------------------------------------------- real backbones


@pytest.mark.slow
def test_cpm_policies_transfer_the_reports_layers_and_freeze_them():
    cpm = pytest.importorskip("sslbench_plugins.cpm")
    registry = Registry(plugins=[cpm, policies_plugin], load_entrypoints=False)
    pretext = registry.create("backbone", "cpm6", num_outputs=9, input_size=32, width=0.0625)
    expected = {
        "all": ("stage1.features", "middle", "stage2.features", "stage6.refine"),
        "first": ("stage1.features",),
        "first+middle": ("stage1.features", "middle"),
    }
    for name, prefixes in expected.items():
        pose = registry.create("backbone", "cpm6", num_outputs=15, input_size=32, width=0.0625)
        report = transfer(pretext.state_dict(), pose, registry.create("policy", name), freeze=True)
        assert all(any(k.startswith(p + ".") for k in report.copied) for p in prefixes)
        assert not any(k.startswith(("stage1.out", "stage2.fuse", "stage6.out")) for k in report.copied)
        if name == "first+middle":
            assert not any(k.startswith("stage2") for k in report.copied)
            before = snapshot(pose)
            train_steps(pose, steps=2)
            after = pose.state_dict()
            for key in after:
                if key.startswith(("stage1.features", "middle")):
                    assert torch.equal(after[key], before[key]), key
            assert not torch.equal(after["stage2.refine.1.weight"], before["stage2.refine.1.weight"])
    assert len(pose.adapters()) == 11  # the report's 11 layers that cannot transfer


@pytest.mark.slow
@pytest.mark.parametrize(
    ("plugin", "name", "options", "trained_stats"),
    [
        ("timm_backbone", "timm-resnet18", {"width": 0.25}, "head.deconvs"),
        ("cpm", "cpm6", {"width": 0.0625, "norm": "batch"}, "stage2.refine"),
    ],
)
def test_frozen_batchnorm_statistics_of_real_backbones_do_not_drift(plugin, name, options, trained_stats):
    module = pytest.importorskip(f"sslbench_plugins.{plugin}")
    registry = Registry(plugins=[module, policies_plugin], load_entrypoints=False)
    try:
        pretext = registry.create("backbone", name, num_outputs=4, input_size=64, **options)
        pose = registry.create("backbone", name, num_outputs=15, input_size=64, **options)
    except ConfigError as exc:  # pragma: no cover - depends on the installed timm
        pytest.skip(f"backbone unavailable: {exc}")
    with torch.no_grad():
        for key, tensor in pretext.state_dict().items():
            if "running_var" in key:
                tensor.fill_(3.0)
    report = transfer(pretext.state_dict(), pose, registry.create("policy", "first+middle"), freeze=True)
    assert any("running_var" in k for k in report.copied)
    before = snapshot(pose)
    train_steps(pose, steps=2)
    after = pose.state_dict()
    for key in report.copied:
        assert torch.equal(after[key], before[key]), key
    trained = [k for k in after if k.startswith(trained_stats) and k.endswith("running_mean")]
    assert trained and not torch.equal(after[trained[0]], before[trained[0]])
