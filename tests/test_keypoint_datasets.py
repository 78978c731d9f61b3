"""Skeletons as data, the coco and mpii dataset plugins (tiny fixtures the tests write), their metrics
(PCK by box and head size, PCKh@0.5, OKS AP/AR through pycocotools) and their bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from click.testing import CliRunner
from conftest import make_coco, make_mpii
from torch.utils.data import default_collate

from sslbench.cli.main import main
from sslbench.contract.errors import DataError
from sslbench.contract.interfaces import Geometry, SampleKey
from sslbench.contract.skeleton import LSP, Skeleton
from sslbench.data import joints as lsp_joints
from sslbench.data.loaders import TaskDataset
from sslbench.data.pipeline import Augment
from sslbench.tasks.metrics import normalisers, pck, per_part, skeleton_metrics
from sslbench.tasks.oks import oks_metrics
from sslbench.tasks.pose import PoseTask
from sslbench.tasks.semi import MaskedPoseTask, pose_task_for
from sslbench_plugins.coco import COCO_KEYPOINTS, COCOKeypoints
from sslbench_plugins.mpii import ANNOTATION_FILE, MPII_SKELETON, MPIIHumanPose

GEOMETRY = Geometry(64, 8)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(excinfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


# ----------------------------------------------------------------------------- skeletons


def test_lsp_skeleton_spells_the_old_constants():
    assert LSP.joints == lsp_joints.JOINT_NAMES and LSP.num_joints == 14
    assert LSP.flip_index == (5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 12, 13)
    assert LSP.torso == (9, 2) and LSP.joints[9] == "l_shoulder" and LSP.joints[2] == "r_hip"
    assert LSP.part_names == ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Mean")
    assert Skeleton.from_dict(json.loads(json.dumps(LSP.to_dict()))) == LSP
    assert PoseTask().config() == PoseTask(skeleton=LSP).config() and "skeleton" not in PoseTask().config()


def test_lsp_samples_have_the_keys_they_always_had(lsp_root):
    from sslbench_plugins.lsp import LSP as LSPDataset

    data = LSPDataset.create(root=lsp_root)
    sample = TaskDataset(data, [0], PoseTask(), GEOMETRY, seed=0, train=True)[0]
    assert data.annotation(0) == {} and data.skeleton is LSP
    assert set(sample) == {"image", "centermap", "target", "matrix", "flip", "joints", "input_joints", "index"}


def test_a_skeleton_naming_an_out_of_range_joint_is_a_one_line_error():
    with pytest.raises(DataError) as excinfo:
        Skeleton("mine", ("a", "b", "c"), flip_pairs=((0, 3),), normalise="box")
    one_line_error(excinfo, "mine", "flip pair (0, 3)", "joint 3", "3 joints")
    with pytest.raises(DataError, match="torso"):
        Skeleton("mine", ("a", "b"), normalise="torso")


# ----------------------------------------------------------------------------- coco


def test_coco_people_are_cropped_by_their_boxes_with_unlabelled_joints_unknown(coco_root):
    data = COCOKeypoints.create(root=coco_root)
    document = json.loads((coco_root / "annotations.json").read_text())
    assert len(data) == len(document["annotations"]) == 24 and data.unknown_joints
    assert data.skeleton.joints == COCO_KEYPOINTS and data.skeleton.num_joints == 17
    assert ("left_eye", "right_eye") in [
        (data.skeleton.joints[a], data.skeleton.joints[b]) for a, b in data.skeleton.flip_pairs
    ]
    assert len(data.skeleton.flip_pairs) == 8 and data.skeleton.part_names[:3] == ("Nose", "Eye", "Ear")
    assert data.skeleton.limbs[0] == (15, 13)  # COCO's [16, 14], 1-based
    assert data.skeleton.sigmas is not None and data.skeleton.sigmas[0] == pytest.approx(0.026)
    annotation = document["annotations"][1]
    triples = np.asarray(annotation["keypoints"], dtype=np.float64).reshape(17, 3)
    joints, extras = data.joints(1), data.annotation(1)
    x, y, w, h = annotation["bbox"]
    origin = (max(0, int(np.floor(x - 0.25 * h))), max(0, int(np.floor(y - 0.25 * h))))
    assert data.image(1).shape == (120, 160 - origin[0], 3)  # box + 25 % context, clipped to the picture
    assert extras["box"] == (x - origin[0], y - origin[1], w, h) and extras["scale"] == max(w, h)
    assert extras["area"] == annotation["area"]
    labelled = triples[:, 2] > 0
    assert np.isnan(joints[~labelled, :2]).all()
    np.testing.assert_allclose(joints[labelled, :2], triples[labelled, :2] - origin, atol=1e-4)
    assert (joints[:, 2] == (triples[:, 2] == 2)).all()  # v = 1: labelled but occluded


def test_coco_splits_keep_pictures_together_and_separate_files_are_their_splits(tmp_path):
    data = COCOKeypoints.create(root=make_coco(tmp_path))
    splits = data.splits("standard", None, 0)
    pictures = [{data.instances[i].path for i in part} for part in (splits.train, splits.val, splits.test)]
    assert all(pictures) and not (pictures[0] & pictures[1] or pictures[0] & pictures[2] or pictures[1] & pictures[2])
    assert sorted(splits.train + splits.val + splits.test) == list(range(len(data)))
    assert data.splits("standard", 6, 1).train == data.splits("standard", 6, 1).train
    assert set(data.splits("standard", 4, 0).train) <= set(data.splits("standard", 8, 0).train)

    separate = COCOKeypoints.create(root=make_coco(tmp_path, name="coco-files", split_files=True))
    splits = separate.splits("standard", None, 0)
    val_people = len(json.loads((separate.root / "val.json").read_text())["annotations"])
    assert splits.test == list(range(len(separate) - val_people, len(separate)))  # val.json is the test split
    assert splits.val and not {separate.instances[i].path for i in splits.val} & {
        separate.instances[i].path for i in splits.train
    }


def _edit(root: Path, change) -> Path:
    path = root / "annotations.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize(
    "change, fragments",
    [
        (lambda d: d["categories"][0].pop("keypoints"), ["categories[0]", "'person'", "no 'keypoints'"]),
        (
            lambda d: d["annotations"][3].update(keypoints=[1.0] * 48),
            ["annotations[3]", "id 201", "48 values", "expected 51"],
        ),
        (lambda d: d["annotations"][5].update(image_id=999), ["annotations[5]", "image_id 999", "not in 'images'"]),
        (lambda d: d["categories"][0]["skeleton"].append([3, 18]), ["categories[0]", "[3, 18]", "1-17"]),
        (lambda d: d["categories"][0].update(sigmas=[0.1] * 3), ["categories[0]", "'sigmas'", "(17)"]),
    ],
)
def test_bad_coco_annotations_are_one_line_errors_naming_the_file_and_entry(coco_root, change, fragments):
    path = _edit(coco_root, change)
    with pytest.raises(DataError) as excinfo:
        COCOKeypoints.create(root=coco_root)
    one_line_error(excinfo, str(path), *fragments)


def test_a_coco_annotation_of_a_missing_image_is_named_and_verify_says_it_in_one_line(coco_root):
    (coco_root / "images" / "000000000004.jpg").unlink()
    with pytest.raises(DataError) as excinfo:
        COCOKeypoints.create(root=coco_root)
    one_line_error(excinfo, "annotations.json", "annotations[6]", "000000000004.jpg", "not found")
    result = run("data", "verify", "--data", "coco", "--root", coco_root)
    assert result.exit_code == 2 and "Traceback" not in result.output and "000000000004.jpg" in result.output


# ----------------------------------------------------------------------------- mpii


def test_mpii_reads_single_person_training_people_with_head_sizes(mpii_root):
    data = MPIIHumanPose.create(root=mpii_root)
    release = scipy.io.loadmat(mpii_root / ANNOTATION_FILE, struct_as_record=False, squeeze_me=True)["RELEASE"]
    assert len(data) == 11 and data.skeleton == MPII_SKELETON  # the 12th picture is a test image
    rect = release.annolist[4].annorect
    joints, extras = data.joints(4), data.annotation(4)
    assert extras["scale"] == pytest.approx(0.6 * np.hypot(rect.x2 - rect.x1, rect.y2 - rect.y1))
    assert np.isnan(data.joints(0)[6, :2]).all() and np.isfinite(joints[6, :2]).all()  # pelvis left out of picture 1
    origin = np.asarray(data.instances[4].origin)
    by_id = {int(p.id): p for p in rect.annopoints.point}
    np.testing.assert_allclose(joints[9, :2], [by_id[9].x - origin[0], by_id[9].y - origin[1]], atol=1e-4)
    assert joints[0, 2] == 0.0 and joints[1, 2] == 1.0  # is_visible 0 / 1
    splits = data.splits("standard", None, 0)
    assert splits.test and splits.val and sorted(splits.train + splits.val + splits.test) == list(range(11))


def test_bad_mpii_annotations_are_one_line_errors(tmp_path):
    root = make_mpii(tmp_path)
    path = root / ANNOTATION_FILE
    release = scipy.io.loadmat(path, simplify_cells=True)["RELEASE"]
    release["single_person"][2] = np.array([2.0])
    scipy.io.savemat(path, {"RELEASE": release})
    with pytest.raises(DataError) as excinfo:
        MPIIHumanPose.create(root=root)
    one_line_error(excinfo, str(path), "annolist(3).annorect(2)", "rectangle 2", "has 1")
    scipy.io.savemat(path, {"joints": np.zeros(3)})
    with pytest.raises(DataError) as excinfo:
        MPIIHumanPose.create(root=root)
    one_line_error(excinfo, str(path), "RELEASE")


# ----------------------------------------------------------------------------- samples, flips, metrics


@pytest.mark.parametrize("maker", [make_coco, make_mpii])
def test_a_flipped_sample_swaps_the_declared_pairs(tmp_path, maker):
    data = (COCOKeypoints if maker is make_coco else MPIIHumanPose).create(root=maker(tmp_path))
    flipping = PoseTask(augment=Augment(rotation=0.0, scale=(1.0, 1.0), flip=True), skeleton=data.skeleton)
    plain = PoseTask(augment=None, skeleton=data.skeleton)
    index = 2
    args = (data.image(index), data.joints(index))
    epoch = next(e for e in range(20) if Augment(flip=True).draw(SampleKey(0, index, e).rng())[2])
    flipped = flipping.make_sample(*args, SampleKey(0, index, epoch), True, GEOMETRY, **data.annotation(index))
    straight = plain.make_sample(*args, SampleKey(0, index, epoch), True, GEOMETRY, **data.annotation(index))
    assert bool(flipped["flip"]) and not bool(straight["flip"])
    order = list(data.skeleton.flip_index)
    mirrored_x = GEOMETRY.input_size - 1 - straight["input_joints"][order, 0]
    known = torch.isfinite(mirrored_x)
    torch.testing.assert_close(flipped["input_joints"][known, 0], mirrored_x[known], atol=1e-3, rtol=0)
    masked = MaskedPoseTask(augment=Augment(rotation=0.0, scale=(1.0, 1.0), flip=True), skeleton=data.skeleton)
    weight = masked.make_sample(*args, SampleKey(0, index, epoch), True, GEOMETRY, **data.annotation(index))["weight"]
    assert (weight[: data.skeleton.num_joints] == torch.isfinite(torch.from_numpy(args[1][order, 0])).float()).all()


def test_box_and_head_normalised_pck_and_pckh_match_hand_computed_values():
    truth = np.zeros((2, 16, 3))
    predicted = np.zeros((2, 16, 2))
    predicted[:, :, 0] = np.arange(16) * 1.0  # joint j is j px off
    predicted[1, :, 0] *= 2
    truth[1, 6:8, :2] = np.nan  # pelvis and thorax unknown in image 2
    sizes = normalisers(truth, MPII_SKELETON, np.array([10.0, 20.0]))
    distances = np.linalg.norm(predicted - truth[..., :2], axis=-1)
    # image 1: 0..15 px, limit 0.5 x 10 = 5 -> joints 0-5 hit (6 of 16); image 2: 0, 2, .., 30 px,
    # limit 10 -> joints 0-5 hit, 6 and 7 unscored (6 of 14)
    assert pck(distances, sizes, 0.5) == pytest.approx(100 * 12 / 30)
    # PCKh@0.5 leaves pelvis and thorax out: image 1 hits 0-5 of 14, image 2 0-5 of 14
    assert skeleton_metrics(distances, sizes, MPII_SKELETON) == {"pckh@0.5": pytest.approx(100 * 12 / 28)}
    table = per_part(np.arange(16, dtype=np.float64), MPII_SKELETON)
    assert table["Head"] == 8.5 and table["Wrist"] == 12.5 and table["Mean"] == 7.5
    with pytest.raises(DataError, match="no scale"):
        normalisers(truth, MPII_SKELETON)


def test_oks_ap_comes_from_cocoeval_and_ranks_by_score():
    truth = np.zeros((2, 17, 3))
    truth[:, :, 0] = np.linspace(10, 90, 17)
    truth[:, :, 1] = 50.0
    truth[:, :, 2] = 1.0
    truth[1, 3, :2] = np.nan  # one unlabelled joint: not scored
    areas = np.array([4000.0, 4000.0])
    sigmas = [0.05] * 17
    perfect = truth[:, :, :2].copy()
    perfect[1, 3] = (500.0, 500.0)  # anything at the unlabelled joint
    scores = np.ones((2, 17))
    assert oks_metrics(perfect, scores, truth, areas, sigmas)["oks.ap"] == pytest.approx(100.0)
    wrong = perfect.copy()
    wrong[1] += 40.0  # far off: OKS ~0
    # one of two people found: precision 1 up to recall 0.5 -> 51 of COCO's 101 recall points
    assert oks_metrics(wrong, scores * [[0.9], [0.1]], truth, areas, sigmas)["oks.ap"] == pytest.approx(100 * 51 / 101)
    # ranked first, the wrong one halves the precision at every recall reached
    result = oks_metrics(wrong, scores * [[0.1], [0.9]], truth, areas, sigmas)
    assert result["oks.ap"] == pytest.approx(50 * 51 / 101) and result["oks.ar"] == pytest.approx(50.0)


def test_the_coco_pose_metric_scores_perfect_maps_fully(coco_root):
    data = COCOKeypoints.create(root=coco_root)
    task = pose_task_for(data)
    assert isinstance(task, MaskedPoseTask) and task.num_outputs == 18
    samples = TaskDataset(data, list(range(8)), task, GEOMETRY, seed=0, train=False)
    batch = default_collate([samples[i] for i in range(len(samples))])
    augmented = TaskDataset(data, list(range(8)), task, GEOMETRY, seed=0, train=True)
    for sample in (batch, default_collate([augmented[i] for i in range(8)])):  # the box side, whatever the zoom
        assert sample["scale"].tolist() == [data.annotation(i)["scale"] for i in range(8)]
        assert sample["area"].tolist() == [data.annotation(i)["area"] for i in range(8)]
    metric = task.new_metric()
    metric.update([batch["target"].float()], batch)
    result = metric.compute()
    assert result["pck@0.2"] == 100.0 and result["oks.ap"] == pytest.approx(100.0)
    assert [k for k in result if k.startswith("joint.")] == [f"joint.{n}" for n in COCO_KEYPOINTS]
    assert MaskedPoseTask.from_config(task.config()).skeleton == data.skeleton


# ----------------------------------------------------------------------------- commands


@pytest.mark.parametrize("maker, name", [(make_coco, "coco"), (make_mpii, "mpii")])
def test_data_verify_and_preview_work_on_both(tmp_path, maker, name):
    root = maker(tmp_path)
    result = run("data", "verify", "--data", name, "--root", root)
    assert result.exit_code == 0, result.output
    out = tmp_path / "grid.png"
    result = run("data", "preview", "--data", name, "--root", root, "--out", out, "--count", 4, "--input-size", 64)
    assert result.exit_code == 0, result.output
    assert out.is_file() and "target peaks decode to within" in result.output


@pytest.mark.slow
def test_a_smoke_run_on_coco_records_oks_and_its_skeleton_columns(coco_root, tmp_path):
    """Rotation pretraining on the person crops of the same files (keypoints ignored), transferred, then pose."""
    from sslbench.results.store import load_results

    result = run("run", "--profile", "smoke", "--data", "coco", "--root", coco_root, "--train-size", "8",
                 "--pretext", "rotation", "--policy", "first+middle", "--pretext-data", "coco", "--pretext-root", coco_root,
                 "--set", "downstream.epochs=1", "--workdir", tmp_path / "runs", "--results", tmp_path / "res")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "runs" / "pretext").glob("rotation-*/run/events.out.tfevents.*"))  # a TensorBoard run of its own
    (path,) = (tmp_path / "res" / "cells").glob("*.json")
    metrics = json.loads(path.read_text())["metrics"]
    record = json.loads(path.read_text())
    assert sorted(metrics["per_joint"]) == sorted(COCO_KEYPOINTS) and record["skeleton"]["joints"] == list(
        COCO_KEYPOINTS
    )
    assert record["skeleton"]["parts"] == [
        "Nose",
        "Eye",
        "Ear",
        "Shoulder",
        "Elbow",
        "Wrist",
        "Hip",
        "Knee",
        "Ankle",
        "Mean",
    ]
    assert 0.0 <= metrics["oks.ap"] <= 100.0 and 0.0 <= metrics["pck@0.2"] <= 100.0
    table = load_results(tmp_path / "res")
    assert [c for c in table.columns if c.startswith("part.")][:3] == ["part.Nose", "part.Eye", "part.Ear"]
    assert [c for c in table.columns if c.startswith("joint.")] == [f"joint.{n}" for n in COCO_KEYPOINTS]
    assert table["skeleton"].tolist() == ["coco"]
    assert list((tmp_path / "runs" / "cells").glob("*/downstream/events.out.tfevents.*"))
    (best,) = (tmp_path / "runs" / "cells").glob("*/downstream/best.json")
    scored = run("evaluate", "--checkpoint", best, "--data", "coco", "--root", coco_root, "--json", tmp_path / "eval.json")
    assert scored.exit_code == 0 and "OKS AP" in scored.output, scored.output
    assert json.loads((tmp_path / "eval.json").read_text())["metrics"]["oks.ap"] == pytest.approx(metrics["oks.ap"])
    refused = run("evaluate", "--checkpoint", best, "--data", "mpii", "--root", make_mpii(tmp_path))
    assert refused.exit_code == 2 and "skeleton mpii" in refused.output and "Traceback" not in refused.output
    report = run("report", tmp_path / "res", "--format", "markdown")
    assert report.exit_code == 0 and "Shoulder" in report.output, report.output


# ----------------------------------------------------------------------------- transfer, curves


def _tiny_cpm(num_outputs: int):
    from sslbench.contract.registry import default_registry

    torch.manual_seed(0)
    return default_registry().create(
        "backbone", "cpm6", "--backbone", num_outputs=num_outputs, input_size=32, width=0.0625
    )


@pytest.mark.slow
def test_a_coco_pose_network_transfers_into_an_lsp_one_but_its_adapters(coco_root, lsp_root, tmp_path, one_thread):
    """17 + 1 maps to 14 + 1: every layer group is copied, only the task adapters differ (and train afresh)."""
    from sslbench.contract.config import TrainSettings
    from sslbench.contract.registry import default_registry
    from sslbench.experiment.transfer import transfer
    from sslbench.training.loop import fit
    from sslbench.training.steps import evaluate
    from sslbench_plugins.lsp import LSP as LSPDataset

    settings = TrainSettings(epochs=1, batch_size=8, num_workers=0, device="cpu", precision="fp32", tensorboard=False)
    coco = COCOKeypoints.create(root=coco_root)
    source = _tiny_cpm(pose_task_for(coco).num_outputs)
    geometry = Geometry(source.input_size, source.stride)
    task = pose_task_for(coco)
    fit(source, task, TaskDataset(coco, range(16), task, geometry, 0, True), TaskDataset(coco, range(16, 20), task, geometry, 0, False),
        settings, tmp_path / "coco-fit", seed=0)  # fmt: skip
    lsp = LSPDataset.create(root=lsp_root)
    target = _tiny_cpm(PoseTask().num_outputs)
    report = transfer(source.state_dict(), target, default_registry().create("policy", "all", "--policy"), freeze=False)
    assert report.transferred_parameters == report.total_parameters - sum(a.parameters for a in report.adapters)
    adapters, fresh = tuple(target.adapters()), _tiny_cpm(PoseTask().num_outputs).state_dict()
    for name, value in target.state_dict().items():
        if name.startswith(adapters):  # the fresh initialisation (shapes of 15 maps, not 18)
            assert torch.equal(value, fresh[name]), name
        else:
            assert torch.equal(value, source.state_dict()[name]), name
    pose = PoseTask()
    metrics = evaluate(target, pose, TaskDataset(lsp, range(8), pose, geometry, 0, False), settings)
    assert len([k for k in metrics if k.startswith("joint.")]) == 14


def _tiny_fit(root: Path, run_dir: Path, **settings):
    from sslbench.contract.config import TrainSettings
    from sslbench.training.loop import fit

    data = COCOKeypoints.create(root=root)
    task = pose_task_for(data)
    model = _tiny_cpm(task.num_outputs)
    geometry = Geometry(model.input_size, model.stride)
    train_settings = TrainSettings(
        **{"epochs": 2, "batch_size": 8, "num_workers": 0, "device": "cpu", "precision": "fp32", **settings}
    )
    fit(model, task, TaskDataset(data, range(8), task, geometry, 0, True), TaskDataset(data, range(8, 12), task, geometry, 0, False),
        train_settings, run_dir, seed=0)  # fmt: skip


@pytest.mark.slow
def test_fit_writes_tensorboard_curves_beside_metrics_jsonl_unless_turned_off(coco_root, tmp_path, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _tiny_fit(coco_root, tmp_path / "on")
    lines = [json.loads(line) for line in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "on")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "lr", "throughput/images_per_s", "val/pck@0.2", "val/oks.ap", "val/loss"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([r["train_loss"] for r in lines])
    assert [e.value for e in events.Scalars("val/pck@0.2")] == pytest.approx([r["val.pck@0.2"] for r in lines])

    _tiny_fit(coco_root, tmp_path / "off", tensorboard=False)
    assert (tmp_path / "off" / "metrics.jsonl").is_file() and not list((tmp_path / "off").glob("events.out.tfevents.*"))


def test_the_tensorboard_setting_is_not_part_of_cell_ids_or_pretext_keys():
    from sslbench.contract.config import RunConfig, TrainSettings, config_hash

    on = RunConfig(pretext="rotation", policy="all")
    off = RunConfig(pretext="rotation", policy="all", pretrain=TrainSettings(tensorboard=False),
                    downstream=TrainSettings(tensorboard=False))  # fmt: skip
    assert on.cell_id == off.cell_id and config_hash(on.pretext_key()) == config_hash(off.pretext_key())


def test_without_tensorboard_installed_a_run_says_so_once_and_trains_on(monkeypatch, tmp_path):
    import builtins

    from sslbench.training import live_curves

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ImportError("TensorBoard logging requires TensorBoard version 1.15 or above")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    monkeypatch.setattr(live_curves, "_warned", False)
    with pytest.warns(live_curves.CurvesWarning, match=r"tensorboard is not installed.*pip install tensorboard"):
        curves = live_curves.TrainingCurves(tmp_path, enabled=True)
    curves.add_epoch({"epoch": 1, "train_loss": 1.0})
    assert curves.writer is None and not list(tmp_path.iterdir())


def test_mpii_test_images_list_gives_the_test_split(tmp_path):
    root = make_mpii(tmp_path)
    listed = tmp_path / "valid.txt"
    listed.write_text("# Tompson et al.'s validation images\n000000002.jpg\n000000005.jpg  # two people\n\n")
    data = MPIIHumanPose.create(root=root, test_images=str(listed))
    splits = data.splits("standard", None, 0)
    assert sorted(data.instances[i].path.name for i in splits.test) == ["000000002.jpg", "000000005.jpg"]
    assert not {data.instances[i].path.name for i in splits.train + splits.val} & {"000000002.jpg", "000000005.jpg"}
    default = MPIIHumanPose.create(root=root).splits("standard", None, 0)
    assert len(splits.train) + len(splits.val) + len(splits.test) == len(default.train) + len(default.val) + len(default.test)


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "names no image"), ("000000012.jpg\n", "1 listed image(s) hold no single-person training people")],
)
def test_a_bad_mpii_test_image_list_is_a_one_line_error(tmp_path, text, message):
    listed = tmp_path / "valid.txt"
    listed.write_text(text)
    with pytest.raises(DataError, match=f"valid.txt: .*{re.escape(message)}"):
        MPIIHumanPose.create(root=make_mpii(tmp_path), test_images=str(listed))
