"""LSP joint conventions: order, left/right pairs, parts and the skeleton drawn on previews."""

from __future__ import annotations

JOINT_NAMES: tuple[str, ...] = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle",
    "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
    "neck", "head_top",
)  # fmt: skip
NUM_JOINTS = len(JOINT_NAMES)

#: left/right pairs swapped by a horizontal flip
FLIP_PAIRS: tuple[tuple[int, int], ...] = ((0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9))


def _flip_index() -> tuple[int, ...]:
    index = list(range(NUM_JOINTS))
    for a, b in FLIP_PAIRS:
        index[a], index[b] = b, a
    return tuple(index)


#: joint i of a flipped image is joint FLIP_INDEX[i] of the original
FLIP_INDEX: tuple[int, ...] = _flip_index()

#: PCK torso size: left shoulder to right hip (LSP convention)
TORSO: tuple[int, int] = (9, 2)

#: per-part tables average left and right
PARTS: dict[str, tuple[int, ...]] = {
    "Head": (12, 13),
    "Shoulder": (8, 9),
    "Elbow": (7, 10),
    "Wrist": (6, 11),
    "Hip": (2, 3),
    "Knee": (1, 4),
    "Ankle": (0, 5),
}

#: limbs drawn on previews and overlays: (joint a, joint b)
SKELETON: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (5, 4), (4, 3), (2, 3),
    (6, 7), (7, 8), (11, 10), (10, 9), (8, 9),
    (8, 2), (9, 3), (12, 13), (8, 12), (9, 12),
)  # fmt: skip
