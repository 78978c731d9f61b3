"""What ``sslbench bench`` measures: the step variants and the plan of a run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from sslbench.contract.config import TrainSettings
from sslbench.contract.errors import ConfigError

SCHEMA = 1
#: side of the random images jigsaw puzzles are cut from (LSP images are about this size)
JIGSAW_IMAGE_SIDE = 250
#: the pretext whose sample generation and loader are measured
JIGSAW_PRETEXT = "jigsaw-heatmap"
#: the data pipeline should produce at least this many times the samples the step consumes
LOADER_TARGET_RATIO = 3.0


# ------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class Variant:
    """One way of running the training step; None fields keep the profile's setting."""

    name: str
    description: str
    precision: str | None = None
    channels_last: bool | None = None
    batch_factor: float = 1.0
    threads: int | None = None
    mkldnn: bool = True
    compile: bool = False

    def settings(self, base: TrainSettings) -> TrainSettings:
        changes: dict[str, Any] = {"batch_size": max(1, round(base.batch_size * self.batch_factor))}
        if self.precision is not None:
            changes["precision"] = self.precision
        if self.channels_last is not None:
            changes["channels_last"] = self.channels_last
        return replace(base, **changes)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Thread count and oneDNN switch of this variant, restored afterwards."""
        threads, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        torch.backends.mkldnn.enabled = mkldnn and self.mkldnn
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.backends.mkldnn.enabled = mkldnn


PROFILE = Variant("profile", "as fit trains it (the profile's precision and memory format)")
BASELINE = Variant("baseline", "plain PyTorch step: fp32, NCHW, no tweaks", precision="fp32", channels_last=False)
#: what ``--variant NAME`` adds: each changes one thing of the profile variant
EXPLORE = (
    Variant("threads-1", "profile, one torch thread", threads=1),
    Variant("no-mkldnn", "profile, oneDNN (mkldnn) convolutions off", mkldnn=False),
    Variant("bf16", "profile with bf16 autocast", precision="bf16"),
    Variant("fp32", "profile in fp32", precision="fp32"),
    Variant("batch-x2", "profile at twice the batch size", batch_factor=2.0),
    Variant("batch-half", "profile at half the batch size", batch_factor=0.5),
    Variant("compile", "profile under torch.compile (inductor)", compile=True),
)


@dataclass(frozen=True)
class BenchPlan:
    """How much of everything to measure (more steps: steadier medians, longer run)."""

    steps: int = 10
    inference_reps: int = 10
    samples: int = 60
    loader_batches: int = 6
    rss_epochs: int = 3
    peak_matmul: int = 2048
    #: (batch, channels, side, kernel) of the peak convolution: a full-width CPM 9x9 layer
    peak_conv: tuple[int, int, int, int] = (4, 128, 46, 9)
    peak_reps: int = 3
    #: training variants timed side by side; the first must be ``profile``
    variants: tuple[Variant, ...] = (PROFILE, BASELINE)
    #: pretexts whose training step is timed next to the pose step (``all``: every one that trains)
    pretexts: tuple[str, ...] = ()

    @classmethod
    def for_profile(cls, profile: str, steps: int | None = None, rss_epochs: int | None = None,
                    compare_baseline: bool = True, explore: Sequence[str] = (),
                    pretexts: Sequence[str] = ()) -> BenchPlan:  # fmt: skip
        """Defaults per profile: ``smoke`` measures everything briefly (tests), others properly.

        *explore* names variants of :data:`EXPLORE` to time as well (``all``: every one).
        """
        variants = (PROFILE, BASELINE) if compare_baseline else (PROFILE,)
        known = {v.name: v for v in EXPLORE}
        for name in explore:
            if name != "all" and name not in known:
                raise ConfigError(f"--variant: unknown variant {name!r} (choose from {', '.join(known)} or all)")
        chosen = list(known) if "all" in explore else list(dict.fromkeys(explore))
        variants += tuple(known[name] for name in chosen)
        if profile == "smoke":
            plan = cls(steps=3, inference_reps=3, samples=12, loader_batches=2, rss_epochs=2, peak_matmul=512,
                       peak_conv=(2, 32, 16, 5), peak_reps=2, variants=variants)  # fmt: skip
        else:
            plan = cls(variants=variants)
        plan = replace(plan, pretexts=tuple(dict.fromkeys(pretexts)))
        if steps is not None:
            if steps < 1:
                raise ConfigError(f"--steps must be >= 1, got {steps}")
            plan = replace(plan, steps=steps, inference_reps=steps, samples=max(8, 6 * steps),
                           loader_batches=max(2, min(6, steps)))  # fmt: skip
        if rss_epochs is not None:
            if rss_epochs < 0:
                raise ConfigError(f"--rss-epochs must be >= 0, got {rss_epochs}")
            plan = replace(plan, rss_epochs=rss_epochs)
        return plan
