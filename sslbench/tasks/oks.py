"""OKS average precision and recall of COCO-format keypoints, computed by pycocotools' ``COCOeval``.

Every evaluated person is its own image with one ground truth (the crop the pose task made from
its box) and one detection (the decoded joints, scored by their mean peak), so the figures are
COCO's keypoint AP/AR with ground-truth boxes. Unknown joints (NaN, COCO ``v = 0``) are written
with ``v = 0``, as in the annotation file, and so are not scored; a person with no labelled joint is
left out (COCOeval ignores such ground truths).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np

#: COCOeval's summary, in its order, as metric names (percent; NaN where no person falls in the range)
STAT_NAMES: tuple[str, ...] = (
    "oks.ap", "oks.ap50", "oks.ap75", "oks.ap_medium", "oks.ap_large",
    "oks.ar", "oks.ar50", "oks.ar75", "oks.ar_medium", "oks.ar_large",
)  # fmt: skip


def oks_metrics(
    predicted: np.ndarray,
    scores: np.ndarray,
    truth: np.ndarray,
    areas: np.ndarray,
    sigmas: Sequence[float],
) -> dict[str, float]:
    """COCOeval keypoint AP/AR for predictions (N, K, 2) with peak *scores* (N, K) against *truth*
    (N, K, 3: x, y, visibility; NaN position = unlabelled) of object *areas* (N,)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    count = truth.shape[1]
    labelled = np.isfinite(truth[:, :, :2]).all(axis=2)
    images, annotations, detections = [], [], []
    for n in np.flatnonzero(labelled.any(axis=1)):
        image_id = int(n) + 1
        flags = np.where(labelled[n], np.where(truth[n, :, 2] >= 0.5, 2, 1), 0)
        xy = np.where(labelled[n, :, None], truth[n, :, :2], 0.0)
        low, high = xy[labelled[n]].min(axis=0), xy[labelled[n]].max(axis=0)
        images.append({"id": image_id})
        annotations.append({
            "id": image_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
            "keypoints": np.column_stack([xy, flags]).ravel().tolist(), "num_keypoints": int(labelled[n].sum()),
            "area": float(areas[n]), "bbox": [*map(float, low), *map(float, high - low)],
        })  # fmt: skip
        points = np.column_stack([predicted[n], scores[n]]).ravel().tolist()
        detections.append(
            {"image_id": image_id, "category_id": 1, "keypoints": points, "score": float(scores[n].mean())}
        )
    if not annotations:
        return {name: float("nan") for name in STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": 1, "name": "person", "keypoints": [str(k) for k in range(count)]}]}  # fmt: skip
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(detections), "keypoints")
        evaluation.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {
        name: float(value) * 100.0 if value >= 0 else float("nan") for name, value in zip(STAT_NAMES, evaluation.stats)
    }
