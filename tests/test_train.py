"""The shared training loop: selection, early stopping, resume, freezing, schedules, data."""

from __future__ import annotations

import io
import json
import math
import os
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

import sslbench.training.loop as train_module
import sslbench.training.steps
from sslbench.contract.config import TrainSettings
from sslbench.contract.errors import CheckpointError, ConfigError
from sslbench.contract.interfaces import Geometry, ImageDataset, Metric, SampleKey, Splits, Task
from sslbench.contract.networks import Backbone, LayerGroup
from sslbench.data.joints import NUM_JOINTS
from sslbench.data.loaders import TaskDataset, make_loader
from sslbench.data.pipeline import to_tensor
from sslbench.tasks.pose import PoseTask
from sslbench.training.checkpoint import load_checkpoint, save_checkpoint
from sslbench.training.device import (
    cpu_has_native_bf16,
    resolve_device,
    use_bf16,
    use_channels_last,
)
from sslbench.training.epoch_log import read_jsonl
from sslbench.training.loop import FitResult, fit
from sslbench.training.optim import lr_factor
from sslbench.training.run_files import fit_key, kept_checkpoint, kept_epochs
from sslbench.training.steps import evaluate
from sslbench.training.stopping import converge_epoch

GEOMETRY = Geometry(input_size=32, stride=8)

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyNet(Backbone):
    """Two stages of heatmaps at stride 8; optionally a BatchNorm in the trunk."""

    def __init__(self, num_outputs: int = 15, input_size: int = 32, width: int = 4, batchnorm: bool = False) -> None:
        super().__init__(num_outputs, input_size, stride=8)
        self.width, self.batchnorm = width, batchnorm
        norm = [nn.BatchNorm2d(width)] if batchnorm else []
        self.trunk = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), *norm, nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, stride=4, padding=1), nn.ReLU())
        self.head = nn.Conv2d(width, num_outputs, 1)
        self.refine = nn.Conv2d(width + num_outputs, num_outputs, 3, padding=1)

    def forward(self, image, centermap=None):
        features = self.body(self.trunk(image))
        first = self.head(features)
        return [first, self.refine(torch.cat([features, first], dim=1))]

    def layer_groups(self):
        return [LayerGroup("trunk", "first", ("trunk",)), LayerGroup("body", "middle", ("body",))]

    def adapters(self):
        return ["head", "refine"]

    def config(self):
        return {"name": "tiny", "input_size": self.input_size, "width": self.width, "batchnorm": self.batchnorm}


class NoiseImages(ImageDataset):
    """Random images with random joints (a stand-in for LSP)."""

    name = "noise"

    def __init__(self, count: int = 12, size: tuple[int, int] = (40, 36)) -> None:
        super().__init__(None)
        self.count, self.size = count, size

    @property
    def labelled(self) -> bool:
        return True

    def __len__(self) -> int:
        return self.count

    def image(self, index: int) -> np.ndarray:
        rng = np.random.default_rng(index)
        return rng.integers(0, 256, size=(*self.size, 3), dtype=np.uint8)

    def image_id(self, index: int) -> str:
        return f"im{index:04d}.png"

    def joints(self, index: int) -> np.ndarray:
        rng = np.random.default_rng(1000 + index)
        height, width = self.size
        joints = np.ones((NUM_JOINTS, 3), np.float32)
        joints[:, 0] = rng.uniform(5, width - 5, NUM_JOINTS)
        joints[:, 1] = rng.uniform(5, height - 5, NUM_JOINTS)
        return joints

    def splits(self, protocol, train_size, seed):
        return Splits(train=list(range(8)), val=list(range(8, 12)))


class RegressionTask(Task):
    """Predict all-zero maps from the image; validation scores come from a script when given."""

    name = "regression"
    monitor = "score"
    monitor_mode = "max"

    def __init__(self, scores: list[float] | None = None, loss_value: float | None = None) -> None:
        self.scores = list(scores or [])
        self.calls = 0
        self.loss_value = loss_value

    @property
    def num_outputs(self) -> int:
        return 2

    def make_sample(self, image, joints, key: SampleKey, train, geometry):
        noise = key.rng().normal(size=(3, geometry.input_size, geometry.input_size)).astype(np.float32)
        image = image[: geometry.input_size, : geometry.input_size]
        return {
            "image": to_tensor(np.ascontiguousarray(image)) + torch.from_numpy(noise) * 0.1,
            "centermap": torch.ones(1, geometry.input_size, geometry.input_size),
            "target": torch.zeros(2, geometry.map_size, geometry.map_size),
        }

    def loss(self, outputs, batch):
        loss = sum(F.mse_loss(o.float(), batch["target"]) for o in outputs)
        return loss * float("nan") if self.loss_value is not None and math.isnan(self.loss_value) else loss

    def new_metric(self) -> Metric:
        return ScriptedMetric(self)


class ScriptedMetric(Metric):
    def __init__(self, task: RegressionTask) -> None:
        self.task, self.total, self.count = task, 0.0, 0

    def update(self, outputs, batch):
        self.total += float(self.task.loss(outputs, batch)) * len(batch["image"])
        self.count += len(batch["image"])

    def compute(self):
        loss = self.total / self.count
        if self.task.scores:
            score = self.task.scores[min(self.task.calls, len(self.task.scores) - 1)]
        else:
            score = -loss
        self.task.calls += 1
        return {"score": score, "loss": loss}


def settings(**overrides) -> TrainSettings:
    base = dict(epochs=3, batch_size=4, optimizer="adam", lr=1e-2, num_workers=0, precision="fp32", device="cpu")
    return TrainSettings(**{**base, **overrides})


def datasets(task: Task, images: ImageDataset | None = None, seed: int = 0) -> tuple[TaskDataset, TaskDataset]:
    images = images or NoiseImages()
    return (
        TaskDataset(images, range(8), task, GEOMETRY, seed=seed, train=True),
        TaskDataset(images, range(8, 12), task, GEOMETRY, seed=seed, train=False),
    )


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------- selection


def test_fit_selects_the_best_validation_epoch_and_loads_its_weights(tmp_path):
    torch.manual_seed(0)
    task = RegressionTask(scores=[1.0, 5.0, 2.0, 3.0])
    model = TinyNet(num_outputs=2)
    train_set, val_set = datasets(task)
    result = fit(model, task, train_set, val_set, settings(epochs=4), tmp_path, seed=0)
    assert result.best_epoch == 2 and result.best_metrics["score"] == 5.0
    assert result.epochs_run == 4 and not result.stopped_early
    best = load_checkpoint(tmp_path / "best")
    assert best.meta["epoch"] == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value.cpu(), best.state[key])
    lines = read_jsonl(tmp_path / "metrics.jsonl")
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4]
    assert {"lr", "train_loss", "val.score", "val.loss", "seconds", "images_per_s"} <= set(lines[0])
    assert [line["improved"] for line in lines] == [True, True, False, False]
    assert result.images_per_s > 0 and result.train_seconds > 0


def test_keep_every_keeps_the_weights_after_every_nth_epoch_and_the_last(tmp_path):
    task = RegressionTask(scores=[1.0, 5.0, 2.0, 3.0, 4.0])
    train_set, val_set = datasets(task)
    model = TinyNet(num_outputs=2)
    fit(model, task, train_set, val_set, settings(epochs=5, keep_every=2), tmp_path, seed=0)
    assert kept_epochs(tmp_path) == [2, 4, 5]
    last, best = load_checkpoint(tmp_path / "last"), load_checkpoint(tmp_path / "best")
    final, second = load_checkpoint(kept_checkpoint(tmp_path, 5)), load_checkpoint(kept_checkpoint(tmp_path, 2))
    assert final.meta["epoch"] == 5 and final.meta["images"] == 5 * len(train_set)
    assert final.meta["metrics"]["score"] == 4.0 and second.meta["metrics"]["score"] == 5.0
    for key in last.state:  # the weights after the epoch, not the best ones the model ends with
        assert torch.equal(final.state[key], last.state[key]) and torch.equal(second.state[key], best.state[key])
    # it changes no weight: the run's key is the same, and a fresh start removes what was kept
    assert fit_key(model, task, train_set, val_set, settings(keep_every=2), 0) == fit_key(
        model, task, train_set, val_set, settings(), 0)  # fmt: skip
    fit(TinyNet(num_outputs=2), task, train_set, val_set, settings(epochs=1), tmp_path, seed=0, resume=False)
    assert kept_epochs(tmp_path) == []


def test_keep_every_is_not_part_of_cell_ids_or_pretext_keys():
    from sslbench.contract.config import RunConfig

    plain = RunConfig(pretext="rotation", policy="all")
    keeping = RunConfig(pretext="rotation", policy="all", pretrain=TrainSettings(keep_every=1))
    assert plain.cell_id == keeping.cell_id and plain.pretext_key() == keeping.pretext_key()
    with pytest.raises(ConfigError, match="keep_every must be >= 0"):
        TrainSettings(keep_every=-1).validate("pretrain")


def test_early_stopping_after_patience_epochs_without_improvement(tmp_path):
    task = RegressionTask(scores=[1.0, 2.0, 2.0, 1.5, 1.9, 9.0])
    train_set, val_set = datasets(task)
    result = fit(TinyNet(num_outputs=2), task, train_set, val_set, settings(epochs=6, patience=3), tmp_path, seed=0)
    assert result.stopped_early and result.epochs_run == 5 and result.best_epoch == 2
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 5


def test_patience_zero_never_stops_early(tmp_path):
    task = RegressionTask(scores=[3.0, 1.0, 1.0, 1.0])
    train_set, val_set = datasets(task)
    result = fit(TinyNet(num_outputs=2), task, train_set, val_set, settings(epochs=4, patience=0), tmp_path, seed=0)
    assert result.epochs_run == 4 and not result.stopped_early and result.best_epoch == 1


def test_converge_epoch_is_first_within_one_percent_of_best():
    history = [{"epoch": e, "val.pck": v} for e, v in enumerate([10.0, 49.6, 49.4, 50.0, 45.0], start=1)]
    assert converge_epoch(history, "val.pck", 50.0, "max") == 2  # 49.6 >= 49.5
    losses = [{"epoch": e, "val.loss": v} for e, v in enumerate([5.0, 1.02, 1.005, 1.0], start=1)]
    assert converge_epoch(losses, "val.loss", 1.0, "min") == 3  # 1.005 <= 1.01


# ------------------------------------------------------------------------------- resume


def test_interrupted_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path, monkeypatch):
    run = settings(epochs=3, channels_last=True, schedule="cosine", warmup_epochs=1)

    def train(run_dir):
        torch.manual_seed(0)
        task = RegressionTask()
        model = TinyNet(num_outputs=2)
        train_set, val_set = datasets(task)
        return model, fit(model, task, train_set, val_set, run, run_dir, seed=3)

    reference_model, reference = train(tmp_path / "straight")

    real_evaluate = train_module.evaluate
    calls = {"n": 0}

    def dies_in_epoch_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", dies_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "interrupted")
    assert load_checkpoint(tmp_path / "interrupted" / "last").meta["epoch"] == 2
    monkeypatch.setattr(train_module, "evaluate", real_evaluate)
    # a cut-off line (kill mid-write) must not survive the resume
    with open(tmp_path / "interrupted" / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 3, "lr"')
    model, resumed = train(tmp_path / "interrupted")

    assert resumed.epochs_run == 3 and resumed.best_epoch == reference.best_epoch
    for key, value in reference_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    lines = read_jsonl(tmp_path / "interrupted" / "metrics.jsonl")
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert (tmp_path / "interrupted" / "metrics.jsonl").read_text().endswith("}\n")
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in reference.history]


def test_finished_run_resumes_as_done_without_training(tmp_path, monkeypatch):
    task = RegressionTask(scores=[1.0, 3.0, 2.0])
    train_set, val_set = datasets(task)
    model = TinyNet(num_outputs=2)
    first = fit(model, task, train_set, val_set, settings(), tmp_path, seed=0)
    best = state_of(model)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(train_module, "train_epoch", no_training)
    again_model = TinyNet(num_outputs=2)
    again = fit(again_model, task, train_set, val_set, settings(), tmp_path, seed=0)
    assert again == first
    for key, value in best.items():
        assert torch.equal(again_model.state_dict()[key].cpu(), value.cpu())


def test_kill_between_last_and_best_writes_is_repaired_on_resume(tmp_path):
    """``last`` is written before ``best``: a best epoch only ``last`` knows is restored from it."""
    task = RegressionTask(scores=[1.0, 2.0])
    train_set, val_set = datasets(task)
    fit(TinyNet(num_outputs=2), task, train_set, val_set, settings(epochs=2), tmp_path, seed=0)
    last = load_checkpoint(tmp_path / "last")
    stale = load_checkpoint(tmp_path / "best")
    save_checkpoint(tmp_path / "best", TinyNet(num_outputs=2), {**stale.meta, "epoch": 1})  # as if epoch 2's write died
    model = TinyNet(num_outputs=2)
    result = fit(model, task, train_set, val_set, settings(epochs=2), tmp_path, seed=0)
    assert result.best_epoch == 2
    repaired = load_checkpoint(tmp_path / "best")
    assert repaired.meta["epoch"] == 2
    for key, value in last.state.items():
        assert torch.equal(repaired.state[key], value) and torch.equal(model.state_dict()[key], value)


def test_resuming_a_run_with_other_settings_is_refused(tmp_path):
    task = RegressionTask()
    train_set, val_set = datasets(task)
    fit(TinyNet(num_outputs=2), task, train_set, val_set, settings(epochs=1), tmp_path, seed=0)
    with pytest.raises(CheckpointError, match="other settings"):
        fit(TinyNet(num_outputs=2), task, train_set, val_set, settings(epochs=1, lr=0.5), tmp_path, seed=0)
    # without resume it starts over
    result = fit(TinyNet(num_outputs=2), task, train_set, val_set, settings(epochs=1, lr=0.5), tmp_path, seed=0, resume=False)
    assert result.epochs_run == 1 and len(read_jsonl(tmp_path / "metrics.jsonl")) == 1


def test_corrupt_last_checkpoint_starts_over(tmp_path):
    task = RegressionTask()
    train_set, val_set = datasets(task)
    fit(TinyNet(num_outputs=2), task, train_set, val_set, settings(epochs=1), tmp_path, seed=0)
    (tmp_path / "last.safetensors").write_bytes(b"garbage")
    result = fit(TinyNet(num_outputs=2), task, train_set, val_set, settings(epochs=1), tmp_path, seed=0)
    assert result.epochs_run == 1 and load_checkpoint(tmp_path / "last").meta["epoch"] == 1


# ------------------------------------------------------------------------------ freezing


def test_frozen_modules_stay_bit_identical_and_in_eval_mode(tmp_path):
    torch.manual_seed(0)
    task = RegressionTask()
    model = TinyNet(num_outputs=2, batchnorm=True)
    with torch.no_grad():  # non-trivial running statistics, so drift would show
        model.trunk[1].running_mean.uniform_(-1, 1)
        model.trunk[1].running_var.uniform_(0.5, 2)
    model.freeze(["trunk"])
    frozen_before = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    body_before = {k: v.clone() for k, v in model.body.state_dict().items()}
    modes = []
    model.trunk.register_forward_hook(lambda module, inputs, output: modes.append(module.training))
    train_set, val_set = datasets(task)
    fit(model, task, train_set, val_set, settings(epochs=2, weight_decay=0.1, precision="bf16"), tmp_path, seed=0)
    assert modes and not any(modes)
    for key, value in model.trunk.state_dict().items():
        assert torch.equal(value, frozen_before[key]), key
    assert any(not torch.equal(model.body.state_dict()[k], v) for k, v in body_before.items())


def test_everything_frozen_is_a_config_error(tmp_path):
    task = RegressionTask()
    model = TinyNet(num_outputs=2)
    model.freeze(["trunk", "body", "head", "refine"])
    train_set, val_set = datasets(task)
    with pytest.raises(ConfigError, match="frozen"):
        fit(model, task, train_set, val_set, settings(epochs=1), tmp_path, seed=0)


def test_diverging_training_is_reported(tmp_path):
    task = RegressionTask(loss_value=float("nan"))
    train_set, val_set = datasets(task)
    with pytest.raises(ConfigError, match="diverged"):
        fit(TinyNet(num_outputs=2), task, train_set, val_set, settings(epochs=1), tmp_path, seed=0)


# --------------------------------------------------------------------------------- pose


def test_pose_training_end_to_end_writes_pck_curves(tmp_path):
    torch.manual_seed(0)
    task = PoseTask()
    model = TinyNet()
    train_set, val_set = datasets(task)
    run = settings(epochs=2, precision="bf16", channels_last=True)
    result = fit(model, task, train_set, val_set, run, tmp_path, seed=0, meta={"run": {"hello": 1}})
    assert 0.0 <= result.best_metrics["pck@0.2"] <= 100.0
    line = read_jsonl(tmp_path / "metrics.jsonl")[0]
    assert {"val.pck@0.2", "val.auc@0.2", "val.part.Mean", "val.report_loss"} <= set(line)
    best = load_checkpoint(tmp_path / "best")
    assert best.meta["task"]["name"] == "pose" and best.meta["run"] == {"hello": 1}
    metrics = evaluate(model, task, val_set, run)
    assert metrics["pck@0.2"] == pytest.approx(result.best_metrics["pck@0.2"])
    assert model.training  # evaluate restores the mode it found


# ------------------------------------------------------------------------------ schedule


def test_cosine_schedule_warms_up_then_decays_to_zero():
    run = settings(epochs=10, schedule="cosine", warmup_epochs=2)
    factors = [lr_factor(step, run, steps_per_epoch=5) for step in range(50)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[-1] < 0.01


def test_step_schedule_divides_by_ten_for_the_last_third():
    run = settings(epochs=9, schedule="step")
    assert lr_factor(5 * 3 + 2, run, 3) == 1.0  # epoch 6
    assert lr_factor(6 * 3, run, 3) == pytest.approx(0.1)  # epoch 7


def test_constant_schedule_stays_at_one():
    run = settings(epochs=4, schedule="constant")
    assert {lr_factor(step, run, 7) for step in range(28)} == {1.0}


def test_learning_rate_in_metrics_follows_the_schedule(tmp_path):
    task = RegressionTask()
    train_set, val_set = datasets(task)
    fit(TinyNet(num_outputs=2), task, train_set, val_set, settings(epochs=3, schedule="step", lr=0.1), tmp_path, seed=0)
    lrs = [line["lr"] for line in read_jsonl(tmp_path / "metrics.jsonl")]
    assert lrs == pytest.approx([0.1, 0.1, 0.01])


def test_auto_precision_follows_the_hardware_and_memory_format_the_setting():
    cpu = torch.device("cpu")
    assert use_bf16(settings(precision="auto"), cpu) == cpu_has_native_bf16()
    assert use_bf16(settings(precision="bf16"), cpu) and not use_bf16(settings(precision="fp32"), cpu)
    assert use_channels_last(settings(channels_last=True), cpu)
    assert not use_channels_last(settings(channels_last=False), torch.device("cuda"))


def test_progress_and_epoch_lines_go_to_the_console(tmp_path):
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    task = RegressionTask()
    train_set, val_set = datasets(task)
    fit(TinyNet(num_outputs=2), task, train_set, val_set, settings(epochs=1), tmp_path, seed=0, label="demo", console=console)
    text = buffer.getvalue()
    assert "demo epoch 1/1" in text and "val score" in text and "img/s" in text
    quiet = io.StringIO()
    fit(TinyNet(num_outputs=2), task, train_set, val_set, settings(epochs=1), tmp_path / "q", seed=0,
        console=Console(file=quiet, force_terminal=False))  # fmt: skip
    assert "epoch 1/1" in quiet.getvalue() and "\x1b[?25l" not in quiet.getvalue()  # no live bar


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError):
        resolve_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")


# ---------------------------------------------------------------------------------- data


def test_task_dataset_keys_samples_by_seed_index_and_epoch():
    task = RegressionTask()
    train_set = TaskDataset(NoiseImages(), [3, 5], task, GEOMETRY, seed=1, train=True)
    first = train_set[1]
    assert first["index"] == 5
    train_set.set_epoch(2)
    assert not torch.equal(train_set[1]["image"], first["image"])
    val_set = TaskDataset(NoiseImages(), [3, 5], task, GEOMETRY, seed=1, train=False)
    a = val_set[0]["image"]
    val_set.set_epoch(4)
    assert torch.equal(val_set[0]["image"], a)


def test_samples_per_epoch_draws_a_new_subset_each_epoch():
    task = RegressionTask()
    pool = list(range(100, 140))
    data = TaskDataset(NoiseImages(200), pool, task, GEOMETRY, seed=0, train=True, limit=10)
    data.set_epoch(1)
    epoch1 = data.active_indices
    data.set_epoch(2)
    assert len(data) == 10 and set(epoch1) <= set(pool) and data.active_indices != epoch1
    data.set_epoch(1)
    assert data.active_indices == epoch1
    other_seed = TaskDataset(NoiseImages(200), pool, task, GEOMETRY, seed=1, train=True, limit=10)
    other_seed.set_epoch(1)
    assert other_seed.active_indices != epoch1


def test_validation_cap_is_a_fixed_subset_for_every_seed():
    task = RegressionTask()
    pool = list(range(30))
    a = TaskDataset(NoiseImages(30), pool, task, GEOMETRY, seed=0, train=False, limit=5)
    b = TaskDataset(NoiseImages(30), pool, task, GEOMETRY, seed=9, train=False, limit=5)
    a.set_epoch(3)
    assert len(a) == 5 and a.active_indices == b.active_indices


def test_loader_shuffle_depends_on_seed_and_epoch_and_workers_see_the_epoch():
    task = RegressionTask()
    data = TaskDataset(NoiseImages(12), range(12), task, GEOMETRY, seed=0, train=True)
    run = settings(batch_size=12)

    def order(seed, epoch):
        return next(iter(make_loader(data, run, shuffle=True, seed=seed, epoch=epoch)))["index"].tolist()

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2)
    with_worker = next(iter(make_loader(data, settings(batch_size=12, num_workers=1), shuffle=True, seed=0, epoch=2)))
    plain = next(iter(make_loader(data, run, shuffle=True, seed=0, epoch=2)))
    assert with_worker["index"].tolist() == plain["index"].tolist()
    assert torch.equal(with_worker["image"], plain["image"])


def test_loader_worker_outlives_a_sigterm_to_the_process_group():
    # kill -- -PGID signals the workers too; the main process must be the one to stop them,
    # or torch raises "DataLoader worker ... killed by signal" over the interrupt
    task = RegressionTask()
    data = TaskDataset(NoiseImages(8), range(8), task, GEOMETRY, seed=0, train=True)
    batches = iter(make_loader(data, settings(batch_size=2, num_workers=1), shuffle=False, seed=0))
    first = next(batches)
    os.kill(batches._workers[0].pid, signal.SIGTERM)
    rest = list(batches)
    assert torch.cat([first["index"], *(b["index"] for b in rest)]).tolist() == list(range(8))


def test_fit_result_round_trips_through_dict():
    result = FitResult(best_epoch=2, best_metrics={"a": 1.0}, epochs_run=3, converge_epoch=2, history=[{"epoch": 1}])
    assert FitResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_a_long_epoch_prints_progress_lines_when_there_is_no_terminal(tmp_path, monkeypatch):
    monkeypatch.setattr(sslbench.training.steps, "PLAIN_PROGRESS_S", 0.0)  # every step counts as "a while"
    task = RegressionTask(scores=[1.0, 2.0])
    train_set, val_set = datasets(task)
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    fit(TinyNet(num_outputs=2), task, train_set, val_set, settings(epochs=1, batch_size=2), tmp_path, seed=0,
        label="pretext x", console=console)  # fmt: skip
    lines = [line for line in out.getvalue().splitlines() if ": step " in line]
    assert lines and lines[0].startswith("pretext x epoch 1/1: step 1/4, train loss")
    assert "img/s" in lines[0] and "left in this epoch" in lines[0]
