"""Model selection and early stopping on a monitored validation value."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

#: an epoch has converged when its monitored value is within this fraction of the best
CONVERGE_TOLERANCE = 0.01


def is_better(value: float, best: float | None, mode: str) -> bool:
    """Whether *value* improves on *best* (``mode`` ``max`` or ``min``); a non-finite value never does."""
    if best is None:
        return True
    if not math.isfinite(value):
        return False
    if not math.isfinite(best):
        return True
    return value > best if mode == "max" else value < best


@dataclass
class EarlyStopping:
    """The best epoch so far by the monitored value, and whether *patience* epochs passed without one.

    ``patience`` 0 never stops early. The four tracked fields are part of a run's resumable
    state (:meth:`state`), stored in its last checkpoint.
    """

    mode: str
    patience: int
    best_epoch: int = 0
    best_value: float | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    bad_epochs: int = 0

    TRACKED: ClassVar[tuple[str, ...]] = ("best_epoch", "best_value", "best_metrics", "bad_epochs")

    def update(self, epoch: int, value: float, metrics: dict[str, float]) -> bool:
        """Take epoch *epoch*'s monitored *value*; returns whether it is the new best."""
        if is_better(value, self.best_value, self.mode):
            self.best_value, self.best_epoch, self.best_metrics, self.bad_epochs = value, epoch, metrics, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return bool(self.patience and self.bad_epochs >= self.patience)

    def state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.TRACKED}

    def restore(self, state: dict[str, Any]) -> None:
        for name in self.TRACKED:
            if name in state:
                setattr(self, name, state[name])


def converge_epoch(history: list[dict[str, Any]], key: str, best: float | None, mode: str) -> int:
    """First epoch whose *key* is within 1% (relative) of *best*; see :class:`~sslbench.training.loop.FitResult`."""
    if best is None or not math.isfinite(best):
        return history[-1]["epoch"] if history else 0
    tolerance = CONVERGE_TOLERANCE * abs(best)
    for record in history:
        value = record.get(key)
        if value is None or not math.isfinite(value):
            continue
        if (mode == "max" and value >= best - tolerance) or (mode == "min" and value <= best + tolerance):
            return int(record["epoch"])
    return int(history[-1]["epoch"]) if history else 0
