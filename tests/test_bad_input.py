"""Bad input through the real command line: one line naming the file or option, exit 2, no traceback.

Also the first impressions of the command line: a fast ``--help``, a whole ``plugins`` table,
sslbench's own warnings as one line.
"""

from __future__ import annotations

import errno
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from sslbench.cli.main import main
from sslbench.training import atomic


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(result, *fragments: str) -> str:
    """The one ``error:`` line of *result* (exit 2, no traceback), checked for *fragments*."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], result.output
    for fragment in fragments:
        assert fragment in errors[0], result.output
    return errors[0]


SMOKE = ["--profile", "smoke", "--train-size", "6", "--input-size", "32", "--set", "data_options.size=24",
         "--set", "downstream.epochs=1"]  # fmt: skip


# ------------------------------------------------------------------- 1: --set value types


@pytest.mark.parametrize(
    ("assignment", "fragments"),
    [
        ("downstream.epochs=abc", ["--set downstream.epochs=abc", "downstream.epochs must be int, got 'abc'"]),
        ("downstream.epochs=2.5", ["downstream.epochs must be int, got 2.5"]),
        ("downstream.batch_size=true", ["downstream.batch_size must be int, got True"]),
        ("downstream=3", ["--set downstream=3", "downstream is a section"]),
        ("backbone_options=3", ["backbone_options must be dict[str, Any], got 3"]),
        ("downstream.lrr=1", ["no such setting 'downstream.lrr'", "Did you mean 'downstream.lr'?"]),
    ],
)
def test_run_rejects_a_wrongly_typed_set_value_before_any_work(tmp_path, assignment, fragments):
    workdir = tmp_path / "runs"
    result = invoke("run", *SMOKE, "--set", assignment, "--workdir", workdir, "--results", tmp_path / "res")
    error_line(result, *fragments)
    assert not workdir.exists()  # nothing trained, nothing written


def test_run_and_sweep_share_one_validation_of_set_values(tmp_path):
    for assignment in ("downstream.epochs=abc", "downstream=3", "downstream.batch_size=true"):
        run = error_line(invoke("run", "--profile", "smoke", "--set", assignment, "--workdir", tmp_path / "w"))
        sweep = error_line(invoke("sweep", "--profile", "smoke", "--set", assignment, "--dry-run"))
        assert run == sweep


def test_sweep_spec_with_a_wrongly_typed_value_names_its_line(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text('profile = "smoke"\n[set]\ndownstream.batch_size = true\n')
    error_line(invoke("sweep", spec, "--dry-run"), f"{spec}:3: set.downstream.batch_size", "must be int, got True")


# ------------------------------------------------------------- 2: unwritable output places


def _read_only(monkeypatch, folder: Path) -> None:
    """Make creating files in *folder* fail as on a read-only mount (root ignores permission bits)."""
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if Path(kwargs.get("dir") or args[2] if len(args) > 2 else kwargs.get("dir", "")).resolve() == folder.resolve():
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, **kwargs)

    monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)


def test_run_with_a_read_only_results_folder_fails_before_training(tmp_path, monkeypatch):
    mount = tmp_path / "mount"
    mount.mkdir()
    _read_only(monkeypatch, mount)
    workdir = tmp_path / "runs"
    result = invoke("run", *SMOKE, "--workdir", workdir, "--results", mount / "res")
    error_line(result, f"--results {mount / 'res'}", "not writable", "Read-only file system")
    assert not workdir.exists()


@pytest.mark.parametrize("option", ["--workdir", "--results"])
def test_run_and_sweep_with_an_output_folder_under_a_file_fail_at_once(tmp_path, option):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    target = blocker / "out"
    others = {"--workdir": tmp_path / "runs", "--results": tmp_path / "res"}
    others[option] = target
    args = [a for pair in others.items() for a in pair]
    error_line(invoke("run", *SMOKE, *args), f"{option} {target}", f"{blocker} is not a folder")
    error_line(invoke("sweep", "--profile", "smoke", *args), f"{option} {target}", "is not a folder")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "res").exists()


def _results(tmp_path: Path) -> Path:
    from test_report import make_record  # a complete record of the shape the runner writes

    from sslbench.results.store import write_record

    results = tmp_path / "results" / "r"
    for seed in range(2):
        write_record(results, make_record(tmp_path, "supervised", seed, 50.0 + seed))
    return results


def test_report_with_an_unwritable_out_or_plots_fails_before_reading(tmp_path, monkeypatch):
    results = _results(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("x\n")
    error_line(invoke("report", results, "--out", blocker / "report.md"), "--out", f"{blocker} is not a folder")
    error_line(invoke("report", results, "--plots", blocker / "plots"), "--plots", "is not a folder")
    mount = tmp_path / "ro"
    mount.mkdir()
    _read_only(monkeypatch, mount)
    error_line(invoke("report", results, "--plots", mount), f"--plots {mount}", "Read-only file system")
    assert list(mount.iterdir()) == []


def test_check_writable_leaves_nothing_behind(tmp_path):
    atomic.check_writable(tmp_path / "new" / "deeper", "--results")
    atomic.check_writable(tmp_path / "file.md", "--out", is_file=True)
    assert list(tmp_path.iterdir()) == []  # probed, not created


# ------------------------------------------------------------------- 3: spec not UTF-8


def test_sweep_spec_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    spec = tmp_path / "latin1.toml"
    spec.write_bytes('description = "Überblick"\n'.encode("latin-1"))
    error_line(invoke("sweep", spec, "--dry-run"), f"sweep spec {spec}", "not UTF-8")


# ------------------------------------------------------------------- 11: --skip-bad


@pytest.mark.slow
def test_run_on_a_corrupt_image_hints_at_skip_bad_which_works(tmp_path):
    from conftest import make_lsp

    root = make_lsp(tmp_path, n=40)
    (root / "images" / "im0003.jpg").write_bytes(b"not a jpeg")
    common = ["run", "--profile", "smoke", "--data", "lsp", "--root", root, "--set", "train_size=null", "--input-size", "32",
              "--set", "downstream.epochs=1", "--results", tmp_path / "res"]  # fmt: skip
    error_line(invoke(*common, "--workdir", tmp_path / "w1"), "im0003.jpg", "cannot read image", "--skip-bad")
    skipped = invoke(*common, "--workdir", tmp_path / "w2", "--skip-bad")
    assert skipped.exit_code == 0, skipped.output
    warning = [line for line in skipped.output.splitlines() if "skipped 1 unreadable image" in line]
    assert len(warning) == 1 and warning[0].startswith("warning:"), skipped.output
    assert "warnings.warn" not in skipped.output and "Warning:" not in skipped.output


# ---------------------------------------------------------------- --help, plugins, warnings


def test_help_lists_every_command_without_importing_torch():
    code = "import sys; from sslbench.cli.main import main; main(['--help'])"
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code + "\n"], capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - started
    assert out.returncode == 0, out.stderr
    for name in ("bench", "data", "evaluate", "plugins", "predict", "report", "run", "sweep"):
        assert f"  {name} " in out.stdout
    probe = "import sys, sslbench.cli.main; print(sorted(m for m in ('torch', 'pandas', 'scipy') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60).stdout.strip()
    assert loaded == "[]"
    assert seconds < 30  # generous: the point is the imports above, not this machine's speed


def test_lazy_command_help_texts_match_the_commands():
    from sslbench.cli.main import LAZY_COMMANDS

    group = main
    for name, (_, _, short) in LAZY_COMMANDS.items():
        command = group.get_command(None, name)
        assert command is not None and command.get_short_help_str(limit=300) == short, name


def test_plugins_table_never_cuts_a_provider():
    result = invoke("plugins")
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    assert "sslbench (sslbench_plugins.jigsaw_heatmap)" in result.output


def test_omp_wait_policy_defaults_to_passive_and_a_user_setting_wins():
    probe = "import os, sslbench.cli.main; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    default = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert default.stdout.strip() == "PASSIVE"
    chosen = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                            env={**env, "OMP_WAIT_POLICY": "ACTIVE"})  # fmt: skip
    assert chosen.stdout.strip() == "ACTIVE"


def test_an_error_from_a_loader_worker_is_shown_as_its_last_line():
    from sslbench.cli.main import one_line
    from sslbench.contract.errors import DataError

    wrapped = DataError(
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\nsslbench.errors.DataError: im0003.jpg: cannot read image: broken\n'
    )
    assert one_line(wrapped) == "im0003.jpg: cannot read image: broken"
