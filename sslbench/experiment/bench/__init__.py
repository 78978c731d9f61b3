"""How fast the training loop runs on this machine, and how close to the machine's limit.

``sslbench bench`` measures, in one process and one run so ratios compare like with like:

- the training step of :func:`sslbench.training.steps.train_step` (the step :func:`~sslbench.training.loop.fit`
  takes) in *variants* timed round-robin, one step of each in turn, so a busy machine
  slows them alike: ``profile`` (precision and memory format resolved exactly as ``fit``
  resolves them), ``baseline`` (plain fp32, NCHW) and optional explorations;
- inference: latency per image at batch 1 and evaluation throughput at the batch size
  (:func:`sslbench.training.steps.eval_step`: forward, decoding, metric);
- sample generation (jigsaw puzzles on 250 x 250 images, pose crops with augmentation
  and heatmaps) and the data loader end to end (:class:`TaskDataset` + :func:`make_loader`,
  one worker process) as a multiple of the training step's images per second;
- model FLOP utilisation: FLOPs of one training image (forward + backward, counted with
  :class:`torch.utils.flop_counter.FlopCounterMode`) x images per second, over the peak
  of a large matmul and a large convolution timed here in the same precision;
- memory: peak RSS, and RSS after every epoch of a few short :func:`fit` epochs (growth
  would mean a leak).

Results are a JSON-able dict with the machine and commit (:func:`sslbench.experiment.environment.describe`)
and the load average before and after: figures taken on a busy machine are lower bounds.

:mod:`~sslbench.experiment.bench.plan` names the variants, :mod:`~sslbench.experiment.bench.measures` times them,
:mod:`~sslbench.experiment.bench.run` runs a plan and :mod:`~sslbench.experiment.bench.output` shows the result.
"""

from sslbench.experiment.bench.measures import (
    count_flops,
    pose_batch,
    slice_batch,
    time_pretext,
    time_training,
    train_flops_per_image,
)
from sslbench.experiment.bench.output import busy_warning, result_table
from sslbench.experiment.bench.plan import BASELINE, JIGSAW_IMAGE_SIDE, PROFILE, BenchPlan, Variant
from sslbench.experiment.bench.run import run_bench

__all__ = [
    "BASELINE", "JIGSAW_IMAGE_SIDE", "PROFILE", "BenchPlan", "Variant", "busy_warning", "count_flops",
    "pose_batch", "result_table", "run_bench", "slice_batch", "time_pretext", "time_training", "train_flops_per_image",
]  # fmt: skip
