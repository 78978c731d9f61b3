"""`sslbench bench`: the figures it writes, FLOP counting against hand formulas, variants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from sslbench.cli.main import main
from sslbench.contract.config import TrainSettings
from sslbench.contract.errors import ConfigError
from sslbench.contract.interfaces import Geometry
from sslbench.contract.registry import default_registry
from sslbench.experiment.bench import (
    BASELINE,
    PROFILE,
    BenchPlan,
    Variant,
    busy_warning,
    count_flops,
    pose_batch,
    time_training,
    train_flops_per_image,
)
from sslbench.tasks.pose import PoseTask

TINY = [
    "--profile", "smoke", "--threads", "1", "--steps", "2", "--rss-epochs", "2",
    "--set", "backbone_options.input_size=32", "--set", "data_options.size=24", "--set", "pretext_data_options.size=24",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cpm(stages: int = 2):
    return default_registry().create("backbone", "cpm6", num_outputs=15, stages=stages, width=0.125, input_size=32)


def tiny_batch(model, size: int = 2):
    data = default_registry().create("dataset", "synthetic", size=8)
    return pose_batch(data, PoseTask(), Geometry(model.input_size, model.stride), size)


@pytest.mark.slow
def test_bench_command_writes_every_figure_as_json(tmp_path: Path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", *TINY, "--json", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "speed-up vs baseline" in result.output and "model FLOP utilisation" in result.output
    figures = json.loads(out.read_text())
    assert figures["machine"]["commit"] is not None and figures["machine"]["torch"] == torch.__version__
    assert "load_before" in figures["machine"]
    profile, baseline = figures["train"]["variants"]
    assert (profile["name"], baseline["name"]) == ("profile", "baseline")
    assert profile["channels_last"] and not baseline["channels_last"] and baseline["precision"] == "fp32"
    assert profile["steps"] == baseline["steps"] == 2 and profile["images_per_s"] > 0
    assert figures["train"]["speedup_vs_baseline"] == pytest.approx(profile["images_per_s"] / baseline["images_per_s"])
    assert figures["inference"]["latency_ms"] > 0 and figures["inference"]["eval_images_per_s"] > 0
    data = figures["data"]
    assert data["jigsaw_samples_per_s"] > 0 and data["pose_samples_per_s"] > 0
    for loader in (data["loader"]["pose"], data["loader"]["jigsaw"]):
        assert loader["samples_per_s"] > 0
        assert loader["ratio_to_training"] == pytest.approx(loader["samples_per_s"] / profile["images_per_s"])
    flops = figures["flops"]
    assert flops["train_per_image"] > 2 * flops["forward_per_image"] > 0
    assert flops["peak"] == max(flops["peak_matmul"], flops["peak_conv"])
    assert flops["mfu_percent"] == pytest.approx(
        100 * flops["train_per_image"] * profile["images_per_s"] / flops["peak"]
    )
    memory = figures["memory"]
    assert len(memory["fit"]["after_epoch_mb"]) == 2
    assert memory["peak_rss_mb"] >= memory["start_rss_mb"] > 0


def conv_flops(layer: nn.Conv2d, out_height: int, out_width: int) -> int:
    """Hand formula for one image: 2 x outputs x (input channels / groups) x kernel area (a multiply and an add each)."""
    kh, kw = layer.kernel_size
    return 2 * layer.out_channels * out_height * out_width * (layer.in_channels // layer.groups) * kh * kw


def test_flops_of_one_convolution_match_the_hand_formula():
    layer = nn.Conv2d(3, 8, kernel_size=5, padding=2)
    image = torch.randn(2, 3, 12, 12)
    expected = 2 * 2 * 8 * 12 * 12 * 3 * 5 * 5  # 2 x batch x out channels x out pixels x in channels x kernel area
    assert count_flops(lambda: layer(image)) == expected


def test_training_flops_of_a_tiny_cpm_are_its_convolutions_forward_and_backward():
    model = tiny_cpm()
    batch = tiny_batch(model)
    per_layer: dict[str, int] = {}
    hooks = [
        module.register_forward_hook(
            lambda mod, args, out, name=name: per_layer.__setitem__(name, conv_flops(mod, out.shape[-2], out.shape[-1]))
        )
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d)
    ]
    with torch.no_grad():
        model(batch["image"][:1], batch["centermap"][:1])
    for hook in hooks:
        hook.remove()
    forward = sum(per_layer.values())

    train, counted_forward = train_flops_per_image(
        model, PoseTask(), batch, TrainSettings(precision="fp32"), torch.device("cpu")
    )

    assert counted_forward == forward
    # backward: a weight gradient and an input gradient per convolution, except that the
    # two convolutions reading the image need no input gradient
    image_convs = per_layer["stage1.features.0"] + per_layer["middle.0"]
    assert train == 3 * forward - image_convs


def test_variants_are_timed_side_by_side_with_their_own_settings():
    model = tiny_cpm()
    batch = tiny_batch(model, size=4)
    half = Variant("half", "half batch, one thread", batch_factor=0.5, threads=1)
    settings = TrainSettings(batch_size=4, precision="fp32", channels_last=True)
    results = time_training(model, PoseTask(), batch, settings, [PROFILE, BASELINE, half], 2, torch.device("cpu"))
    by_name = {r["name"]: r for r in results}
    assert by_name["profile"]["channels_last"] and not by_name["baseline"]["channels_last"]
    assert by_name["half"]["batch_size"] == 2 and by_name["half"]["threads"] == 1
    assert all(r["steps"] == 2 and r["images_per_s"] > 0 and r["error"] is None for r in results)
    assert torch.get_num_threads() == 1  # the variant's thread count was restored


def test_emulated_bf16_is_skipped_not_timed(monkeypatch):
    from sslbench.experiment.bench import measures

    monkeypatch.setattr(measures, "cpu_has_native_bf16", lambda: False)
    model = tiny_cpm(stages=1)
    bf16 = Variant("bf16", "bf16", precision="bf16")
    settings = TrainSettings(batch_size=2)
    (result,) = time_training(model, PoseTask(), tiny_batch(model), settings, [bf16], 1, torch.device("cpu"))
    assert result["error"].startswith("skipped") and result["images_per_s"] is None


def test_plan_names_variants_and_rejects_unknown_ones():
    plan = BenchPlan.for_profile("cpu", steps=4, explore=["no-mkldnn", "batch-x2"])
    assert [v.name for v in plan.variants] == ["profile", "baseline", "no-mkldnn", "batch-x2"]
    assert plan.steps == 4
    assert len(BenchPlan.for_profile("smoke", explore=["all"]).variants) > 5
    assert [v.name for v in BenchPlan.for_profile("cpu", compare_baseline=False).variants] == ["profile"]
    with pytest.raises(ConfigError, match="unknown variant 'turbo'"):
        BenchPlan.for_profile("cpu", explore=["turbo"])


def test_unknown_variant_on_the_command_line_is_one_line_and_exit_code_2():
    result = CliRunner().invoke(main, ["bench", "--profile", "smoke", "--variant", "turbo"])
    assert result.exit_code == 2
    assert "unknown variant 'turbo'" in result.output


def test_busy_machine_is_flagged():
    result = {"machine": {"load_before": [3.5, 3.0, 2.0], "logical_cpus": 2}}
    assert "busy" in busy_warning(result)
    result["machine"]["load_before"] = [0.1, 0.1, 0.1]
    assert busy_warning(result) is None


def test_pretext_steps_are_timed_beside_the_pose_step_with_their_own_parts(tmp_path: Path):
    out = tmp_path / "bench.json"
    args = ["bench", *TINY, "--rss-epochs", "0", "--steps", "3", "--pretext", "simclr", "--pretext", "rotation",
            "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "train step: pretext simclr" in result.output
    rows = {row["pretext"]: row for row in json.loads(out.read_text())["train"]["pretexts"]}
    assert list(rows) == ["pose", "simclr", "rotation"]
    assert rows["simclr"]["parts"] and not rows["rotation"]["parts"]
    for row in rows.values():
        assert row["steps"] == 3 and row["images_per_s"] > 0
        assert row["cost_vs_pose"] == pytest.approx(rows["pose"]["images_per_s"] / row["images_per_s"])
        assert row["flops_vs_pose"] == pytest.approx(
            row["train_flops_per_image"] / rows["pose"]["train_flops_per_image"]
        )
    assert rows["pose"]["flops_vs_pose"] == 1.0 and rows["simclr"]["train_flops_per_image"] > 0


def test_an_unknown_pretext_to_time_is_one_line_and_exit_code_2():
    result = CliRunner().invoke(main, ["bench", *TINY, "--pretext", "simclrr"])
    assert result.exit_code == 2
    assert "unknown pretext 'simclrr'" in result.output
