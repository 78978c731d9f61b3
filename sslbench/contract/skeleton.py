"""A dataset's skeleton as data: joint names, flip pairs, drawn limbs, table parts, PCK normaliser.

Every labelled dataset declares one (:attr:`sslbench.contract.interfaces.ImageDataset.skeleton`); the pose
task, its metric, the results columns (``joint.<name>``, ``part.<Part>``), the report's part tables
and the skeleton drawings read it from there. :data:`LSP` is the 14-joint Leeds Sports Pose
skeleton that ``lsp``, ``lspet``, ``folder`` and ``synthetic`` use (and :mod:`sslbench.data.joints`
spells as constants).

``normalise`` says what PCK divides distances by:

- ``"torso"``: the ground-truth distance between the two joints ``torso`` (LSP: left shoulder to
  right hip);
- ``"head"``: the dataset's head size per person (MPII: 0.6 x the head box diagonal, PCKh);
- ``"box"``: the longer side of the dataset's person box (COCO-format data, as mmpose's bbox PCK).

For ``head`` and ``box`` the dataset's :meth:`~sslbench.contract.interfaces.ImageDataset.annotation` gives
the size as ``scale``. ``sigmas`` (one per joint) are the OKS falloffs of COCO-format data; with
them the pose metric adds OKS AP and AR from pycocotools.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sslbench.contract.errors import DataError

Normalise = Literal["torso", "head", "box"]
NORMALISERS: tuple[str, ...] = ("torso", "head", "box")


@dataclass(frozen=True)
class Skeleton:
    """The joints of one dataset and how they are flipped, drawn, grouped and scored.

    *where* in errors names the file (and entry) the skeleton came from.
    """

    name: str
    joints: tuple[str, ...]
    #: left/right pairs swapped by a horizontal flip
    flip_pairs: tuple[tuple[int, int], ...] = ()
    #: limbs drawn on previews and overlays: (joint a, joint b)
    limbs: tuple[tuple[int, int], ...] = ()
    #: per-part tables: (part, joints averaged into it), in table order
    parts: tuple[tuple[str, tuple[int, ...]], ...] = ()
    normalise: Normalise = "torso"
    #: the two joints whose distance is the torso size (``normalise == "torso"``)
    torso: tuple[int, int] | None = None
    #: OKS falloff per joint (COCO-format data), or None
    sigmas: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        self.check(self.name)

    def check(self, where: str) -> None:
        """Raise a one-line :class:`DataError` naming *where* when an index is out of range."""
        count = len(self.joints)
        if count == 0:
            raise DataError(f"{where}: the skeleton has no joints")
        if len(set(self.joints)) != count:
            raise DataError(f"{where}: joint names repeat: {', '.join(self.joints)}")
        named = [("flip pair", pair) for pair in self.flip_pairs] + [("limb", limb) for limb in self.limbs]
        named += [(f"part {part}", members) for part, members in self.parts]
        if self.torso is not None:
            named.append(("torso", self.torso))
        for what, members in named:
            bad = [j for j in members if not 0 <= int(j) < count]
            if bad:
                raise DataError(
                    f"{where}: {what} {tuple(members)} names joint {bad[0]}, but there are {count} joints (0-{count - 1})"
                )
        if self.normalise not in NORMALISERS:
            raise DataError(f"{where}: normalise must be one of {', '.join(NORMALISERS)}, got {self.normalise!r}")
        if (self.normalise == "torso") != (self.torso is not None):
            raise DataError(f"{where}: a torso joint pair is needed exactly when normalise is 'torso'")
        if self.sigmas is not None and len(self.sigmas) != count:
            raise DataError(f"{where}: {len(self.sigmas)} OKS sigmas for {count} joints")

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    @property
    def flip_index(self) -> tuple[int, ...]:
        """Joint i of a flipped image is joint ``flip_index[i]`` of the original."""
        index = list(range(self.num_joints))
        for a, b in self.flip_pairs:
            index[a], index[b] = b, a
        return tuple(index)

    @property
    def part_names(self) -> tuple[str, ...]:
        """The parts of per-part tables, then ``Mean``."""
        return (*(part for part, _ in self.parts), "Mean")

    def side(self, joint: int) -> str | None:
        """``"left"``, ``"right"`` (by the name's ``l_``/``left``/``r_``/``right`` prefix) or None (a middle joint)."""
        name = self.joints[joint].lower()
        for prefix, side in (("l_", "left"), ("left", "left"), ("r_", "right"), ("right", "right")):
            if name.startswith(prefix):
                return side
        return None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (checkpoints store it for skeletons other than LSP)."""
        return {
            "name": self.name, "joints": list(self.joints), "flip_pairs": [list(p) for p in self.flip_pairs],
            "limbs": [list(limb) for limb in self.limbs], "parts": [[p, list(m)] for p, m in self.parts],
            "normalise": self.normalise, "torso": list(self.torso) if self.torso else None,
            "sigmas": list(self.sigmas) if self.sigmas is not None else None,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Skeleton:
        try:
            return cls(
                name=str(data["name"]),
                joints=tuple(str(j) for j in data["joints"]),
                flip_pairs=tuple((int(a), int(b)) for a, b in data.get("flip_pairs", ())),
                limbs=tuple((int(a), int(b)) for a, b in data.get("limbs", ())),
                parts=tuple((str(p), tuple(int(j) for j in m)) for p, m in data.get("parts", ())),
                normalise=data.get("normalise", "torso"),
                torso=tuple(data["torso"]) if data.get("torso") else None,  # type: ignore[arg-type]
                sigmas=tuple(float(s) for s in data["sigmas"]) if data.get("sigmas") is not None else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"skeleton {data.get('name', '?') if isinstance(data, dict) else data!r}: invalid ({exc})"
            ) from None


#: Leeds Sports Pose: 14 joints, PCK normalised by the torso (left shoulder to right hip)
LSP = Skeleton(
    name="lsp",
    joints=(
        "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle",
        "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
        "neck", "head_top",
    ),
    flip_pairs=((0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9)),
    limbs=(
        (0, 1), (1, 2), (5, 4), (4, 3), (2, 3),
        (6, 7), (7, 8), (11, 10), (10, 9), (8, 9),
        (8, 2), (9, 3), (12, 13), (8, 12), (9, 12),
    ),
    parts=(
        ("Head", (12, 13)), ("Shoulder", (8, 9)), ("Elbow", (7, 10)), ("Wrist", (6, 11)),
        ("Hip", (2, 3)), ("Knee", (1, 4)), ("Ankle", (0, 5)),
    ),
    normalise="torso",
    torso=(9, 2),
)  # fmt: skip
