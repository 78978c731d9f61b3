"""LSP joint conventions as constants: order, left/right pairs, parts and the skeleton drawn on previews.

They spell out :data:`sslbench.contract.skeleton.LSP`, the skeleton of the LSP-format datasets; code that
handles any dataset reads the dataset's :class:`~sslbench.contract.skeleton.Skeleton` instead.
"""

from __future__ import annotations

from sslbench.contract.skeleton import LSP

JOINT_NAMES: tuple[str, ...] = LSP.joints
NUM_JOINTS = LSP.num_joints

#: left/right pairs swapped by a horizontal flip
FLIP_PAIRS: tuple[tuple[int, int], ...] = LSP.flip_pairs

#: joint i of a flipped image is joint FLIP_INDEX[i] of the original
FLIP_INDEX: tuple[int, ...] = LSP.flip_index

#: PCK torso size: left shoulder to right hip (LSP convention)
assert LSP.torso is not None
TORSO: tuple[int, int] = LSP.torso

#: per-part tables average left and right
PARTS: dict[str, tuple[int, ...]] = dict(LSP.parts)

#: limbs drawn on previews and overlays: (joint a, joint b)
SKELETON: tuple[tuple[int, int], ...] = LSP.limbs
