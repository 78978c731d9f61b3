"""The results store: atomic records, corrupt and leftover files, concurrent writers, old schemas."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from sslbench.contract.config import RunConfig
from sslbench.contract.errors import DataError
from sslbench.data.joints import JOINT_NAMES, PARTS
from sslbench.experiment.strategies import transfer_label
from sslbench.results.store import ResultsStore, load_results, read_record, write_record


def record(seed: int = 0, pretext: str = "none", policy: str = "none", freeze: bool = False, pck: float = 60.0,
           train_size: int = 100, status: str = "done") -> dict[str, Any]:  # fmt: skip
    """A complete schema-1 record of the shape the runner writes."""
    config = RunConfig(seed=seed, pretext=pretext, policy=policy, freeze=freeze, train_size=train_size)
    return {
        "schema": 1, "cell_id": config.cell_id, "status": status,
        "error": None if status == "done" else "RuntimeError: boom", "strategy": "supervised" if config.pretext == "none" else transfer_label(config),
        "config": config.to_dict(), "seed": seed, "train_size": train_size,
        "metrics": {} if status != "done" else {
            "pck@0.2": pck, "pck@0.1": pck / 2, "auc@0.2": pck / 3,
            "per_joint": {name: pck + i for i, name in enumerate(JOINT_NAMES)},
            "per_part": dict.fromkeys([*PARTS, "Mean"], pck), "test_loss": 0.5, "report_loss": 320.0,
            "val_pck@0.2": pck + 1, "best_epoch": 7, "converge_epoch": 9, "epochs_run": 12,
        },
        "pretext_metrics": {} if pretext == "none" else {"tile_accuracy": 0.6},
        "timing": {"pretrain_s": 0.0, "pretrain_cached": False, "downstream_s": 10.0, "eval_s": 1.0, "total_s": 11.0,
                   "downstream_img_per_s": 30.0, "pretrain_img_per_s": None},
        "env": {"sslbench": "0.1.0", "torch": "2.5", "python": "3.11", "platform": "linux", "device": "cpu",
                "cpu": "x", "gpu": None, "commit": "abc"},
        "files": {"run_dir": "runs/x", "metrics_jsonl": "runs/x/metrics.jsonl", "best_checkpoint": "runs/x/best"},
        "created": "2024-05-01T12:00:00+00:00",
    }  # fmt: skip


class Warnings(list):
    def __call__(self, message: str) -> None:
        self.append(message)


def test_record_round_trip_leaves_no_temporary_files(tmp_path: Path) -> None:
    rec = record()
    path = write_record(tmp_path, rec)
    assert path == tmp_path / "cells" / f"{rec['cell_id']}.json"
    assert read_record(path) == rec
    assert [p.name for p in (tmp_path / "cells").iterdir()] == [path.name]


def test_failed_write_keeps_the_previous_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = record(pck=10.0)
    write_record(tmp_path, old)

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_record(tmp_path, record(pck=90.0))
    monkeypatch.undo()
    assert read_record(tmp_path / "cells" / f"{old['cell_id']}.json")["metrics"]["pck@0.2"] == 10.0
    assert len(list((tmp_path / "cells").iterdir())) == 1  # the temporary file was removed


def test_leftover_temp_file_and_truncated_record_are_skipped_with_warnings(tmp_path: Path) -> None:
    good = record(seed=0)
    write_record(tmp_path, good)
    text = json.dumps(record(seed=1))
    (tmp_path / "cells" / "deadbeef0001.json").write_text(text[: len(text) // 2])
    (tmp_path / "cells" / ".deadbeef0002.json.x1y2.tmp").write_text(text)
    (tmp_path / "cells" / "notarecord.json").write_text("[1, 2]")
    warnings = Warnings()
    df = load_results(tmp_path, warn=warnings)
    assert list(df["cell_id"]) == [good["cell_id"]]
    joined = "\n".join(warnings)
    assert "deadbeef0001.json: corrupt result record" in joined
    assert ".deadbeef0002.json.x1y2.tmp: leftover temporary file" in joined
    assert "notarecord.json: not a result record" in joined
    assert ResultsStore(tmp_path).status("deadbeef0001", warn=warnings) is None  # a corrupt cell runs again


WRITER = textwrap.dedent(
    """
    import sys
    from sslbench.results.store import ResultsStore
    store = ResultsStore(sys.argv[1])
    prefix, count, padding = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    for i in range(count):
        store.write({"schema": 1, "cell_id": f"{prefix}{i:04d}", "status": "done", "strategy": "supervised",
                     "metrics": {"pck@0.2": float(i)}, "padding": "x" * padding})
        if i % 5 == 0:
            store.write_csv()
    store.write_csv()
    """
)


def test_two_processes_writing_into_one_directory_lose_nothing(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), prefix, "12", "1000"]) for prefix in ("aaaa", "bbbb")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    ids = sorted(p.stem for p in (tmp_path / "cells").glob("*.json"))
    assert ids == sorted(f"{prefix}{i:04d}" for prefix in ("aaaa", "bbbb") for i in range(12))
    table = pd.read_csv(tmp_path / "results.csv")
    assert sorted(table["cell_id"]) == ids
    assert not list(tmp_path.glob(".results.csv*.tmp"))


def test_sigkill_during_writes_never_leaves_a_corrupt_record(tmp_path: Path) -> None:
    loop = WRITER.replace("for i in range(count):", "for i in range(10**9):").replace('f"{prefix}{i:04d}"', '"cell0001"')
    proc = subprocess.Popen([sys.executable, "-c", loop, str(tmp_path), "x", "0", "500000"])
    deadline = time.monotonic() + 60
    while not (tmp_path / "cells" / "cell0001.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # now it is rewriting the same record over and over
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    warnings = Warnings()
    df = load_results(tmp_path, warn=warnings)
    assert list(df["cell_id"]) == ["cell0001"]  # whole, readable, exactly once
    assert all("leftover temporary file" in w for w in warnings if ".tmp" in w)
    assert not [w for w in warnings if "corrupt" in w]


def test_flat_table_has_documented_columns_and_reads_back_from_csv(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.write(record(seed=0))
    store.write(record(seed=1, pretext="jigsaw-heatmap", policy="first", freeze=True, pck=70.0))
    store.write(record(seed=2, status="failed"))
    df = load_results(tmp_path, warn=Warnings())
    row = df[df["strategy"] == "jigsaw-heatmap/first:frozen"].iloc[0]
    assert (row["pretext"], row["policy"], row["freeze"], row["mode"]) == ("jigsaw-heatmap", "first", True, "frozen")
    assert row["pck@0.2"] == 70.0 and row["joint.head_top"] == 70.0 + 13 and row["part.Knee"] == 70.0
    assert row["pretext.tile_accuracy"] == 0.6 and row["timing.total_s"] == 11.0 and row["env.commit"] == "abc"
    assert row["config.downstream.lr"] == RunConfig().downstream.lr and row["train_size"] == 100
    assert set(df["mode"]) == {"scratch", "frozen"}
    assert df.loc[df["status"] == "failed", "error"].iloc[0] == "RuntimeError: boom"
    store.write_csv()
    back = pd.read_csv(store.csv_path)
    assert list(back.columns) == list(df.columns)
    assert len(back) == 3


def test_records_of_other_schemas_load_what_they_can_with_warnings(tmp_path: Path) -> None:
    old = record(seed=0)
    old["schema"] = 0
    del old["timing"], old["env"]
    del old["metrics"]["pck@0.1"], old["metrics"]["per_part"]
    old["metrics"]["accuracy"] = 0.5  # a column the old version had
    write_record(tmp_path, old)
    new = record(seed=1)
    new["schema"] = 2
    new["hardware"] = {"watts": 300}
    write_record(tmp_path, new)
    warnings = Warnings()
    df = load_results(tmp_path, warn=warnings)
    assert len(df) == 2
    joined = "\n".join(warnings)
    assert "written by an older sslbench (schema 0" in joined
    assert "written by a newer sslbench (schema 2" in joined
    assert "field 'hardware' unknown to this sslbench" in joined
    assert "1 finished record(s) lack column(s) pck@0.1, timing.pretrain_s" in joined
    assert "part.Head" in joined
    by_seed = df.set_index("seed")
    assert pd.isna(by_seed.loc[0, "pck@0.1"]) and by_seed.loc[1, "pck@0.1"] == 30.0
    assert by_seed.loc[0, "accuracy"] == 0.5 and by_seed.loc[1, "hardware.watts"] == 300


def test_empty_or_missing_results_directory_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist"):
        load_results(tmp_path / "nope")
    with pytest.raises(DataError, match=r"holds no result records \(no cells/ directory\); run `sslbench sweep` first"):
        load_results(tmp_path)
    (tmp_path / "cells").mkdir()
    with pytest.raises(DataError, match="no readable result records"):
        load_results(tmp_path)


def test_parent_directory_loads_every_sweep_and_keeps_the_newest_duplicate(tmp_path: Path) -> None:
    first, second = record(seed=0, pck=10.0), record(seed=0, pck=20.0)
    second["created"] = "2025-01-01T00:00:00+00:00"
    write_record(tmp_path / "a", first)
    write_record(tmp_path / "b", second)
    write_record(tmp_path / "b", record(seed=1))
    df = load_results(tmp_path, warn=Warnings())
    assert len(df) == 2
    assert df.set_index("seed").loc[0, "pck@0.2"] == 20.0


def test_claim_is_exclusive_until_released(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    with store.claim("abc") as mine:
        assert mine
        with ResultsStore(tmp_path).claim("abc") as other:
            assert not other
        with store.claim("def") as different:
            assert different
    with ResultsStore(tmp_path).claim("abc") as again:
        assert again
