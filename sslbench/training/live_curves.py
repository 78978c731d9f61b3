"""Live training curves: each fit's per-epoch record as TensorBoard scalars beside its ``metrics.jsonl``.

:func:`sslbench.training.loop.fit` writes, through ``torch.utils.tensorboard``, into its own run directory
(``runs/cells/<id>/downstream``, ``runs/pretext/<pretext>-<hash>/run``, a teacher's or student's
directory), so every phase is a TensorBoard run of its own and ``tensorboard --logdir runs/``
shows a sweep's cells side by side while they train. Scalars, by epoch: ``train/loss``, ``lr``,
``throughput/images_per_s``, ``time/epoch_s`` and every numeric validation metric as ``val/<name>``.

The setting is :attr:`sslbench.contract.config.TrainSettings.tensorboard` (``--set downstream.tensorboard=false``,
``pretrain.tensorboard``); it changes no result, so cell ids and pretext cache keys leave it out.
TensorBoard is a dependency; in an environment without it a run says so once and trains on, with
``metrics.jsonl`` only. A resumed fit drops the curves' steps after the
epoch it resumes from (``purge_step``), as ``metrics.jsonl`` is cut there; a fresh one starts them over.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

#: event files TensorBoard writes (``events.out.tfevents.<time>.<host>...``)
EVENT_GLOB = "events.out.tfevents.*"
MISSING = (
    "tensorboard is not installed: no live training curves, metrics.jsonl only "
    "(pip install tensorboard; --set downstream.tensorboard=false --set pretrain.tensorboard=false silences this)"
)
_warned = False


class CurvesWarning(UserWarning):
    """Live curves cannot be written (the command line shows it as one ``warning:`` line)."""


def _summary_writer() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, or None (with one warning per process) without tensorboard."""
    global _warned
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if not _warned:
            warnings.warn(MISSING, CurvesWarning, stacklevel=3)
            _warned = True
        return None
    return SummaryWriter


class TrainingCurves:
    """The TensorBoard run of one fit in *run_dir*; does nothing when *enabled* is False.

    *first_epoch* is the epoch training continues at (1 for a fresh fit, whose old event files are
    removed first).
    """

    def __init__(self, run_dir: Path, enabled: bool, first_epoch: int = 1) -> None:
        self.writer = None
        if not enabled or (writer_class := _summary_writer()) is None:
            return
        run_dir = Path(run_dir)
        if first_epoch <= 1:
            for old in run_dir.glob(EVENT_GLOB):
                old.unlink(missing_ok=True)
        self.writer = writer_class(log_dir=str(run_dir), purge_step=first_epoch if first_epoch > 1 else None)

    def add_epoch(self, record: dict[str, Any]) -> None:
        """Scalars of one epoch's ``metrics.jsonl`` record, written through at once."""
        if self.writer is None:
            return
        epoch = int(record["epoch"])
        named = {"train/loss": record.get("train_loss"), "lr": record.get("lr"),
                 "throughput/images_per_s": record.get("images_per_s"), "time/epoch_s": record.get("seconds")}  # fmt: skip
        named.update({f"val/{key[4:]}": value for key, value in record.items() if key.startswith("val.")})
        for tag, value in named.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(tag, float(value), epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
