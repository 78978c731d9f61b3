"""How things look: a person's colours and clothing, clothing patterns, cluttered backgrounds and distractors."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from sslbench_plugins.synthetic_people.draws import Random, Range
from sslbench_plugins.synthetic_people.shapes import capsule

#: image sides are drawn from this range (pixels), like LSP's crops around one person
MIN_SIDE, MAX_SIDE = 160, 260


@dataclass(frozen=True)
class Look:
    """Colours and clothing of one person."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    shirt: tuple[int, int, int]
    trousers: tuple[int, int, int]
    shoes: tuple[int, int, int]
    sleeves: str  # none | short | long
    long_trousers: bool
    shirt_pattern: str  # plain | stripes | noise
    trouser_pattern: str


SKIN_TONES = ((255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 134, 96), (141, 85, 54), (94, 58, 38))
HAIR_COLOURS = ((20, 16, 14), (60, 40, 25), (110, 75, 40), (200, 165, 100), (150, 150, 150), (150, 60, 30))
Colour = tuple[int, int, int]


def _hsv(r: Random, sat: Range, val: Range) -> Colour:
    """A colour of random hue with saturation and value (0..255) drawn from the given ranges."""
    hue, s, v = r.u(0, 6), r.u(*sat), r.u(*val)
    x = 1 - abs(hue % 2 - 1)
    rgb = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(hue) % 6]
    red, green, blue = (int(v * (1 - s + s * c)) for c in rgb)
    return (red, green, blue)


def _clothing(r: Random) -> Colour:
    """A clothing colour: a saturated hue, or now and then black, white or grey."""
    if r.chance(0.25):
        v = r.pick((25, 45, 200, 235, r.i(60, 180)))
        return (v, v, v)
    return _hsv(r, (0.45, 1.0), (90, 250))


def jitter(colour: Colour, r: Random, amount: int) -> Colour:
    """*colour* with each channel moved by up to *amount*."""
    red, green, blue = (min(255, max(0, c + r.i(-amount, amount + 1))) for c in colour)
    return (red, green, blue)


def scaled(colour: Colour, factor: float) -> Colour:
    red, green, blue = (min(255, int(c * factor)) for c in colour)
    return (red, green, blue)


def sample_look(r: Random) -> Look:
    return Look(
        skin=jitter(r.pick(SKIN_TONES), r, 12),
        hair=jitter(r.pick(HAIR_COLOURS), r, 10),
        shirt=_clothing(r),
        trousers=_clothing(r),
        shoes=_clothing(r),
        sleeves=r.pick(("none", "short", "long"), (0.2, 0.5, 0.3)),
        long_trousers=r.chance(0.5),
        shirt_pattern=r.pick(("plain", "stripes", "noise"), (0.4, 0.35, 0.25)),
        trouser_pattern=r.pick(("plain", "stripes", "noise"), (0.6, 0.15, 0.25)),
    )


@functools.lru_cache(maxsize=1)
def noise_tiles() -> tuple[Image.Image, Image.Image]:
    """Fixed noise images, cropped at random offsets: RGB pixel noise round 128, blotchy grey noise."""
    rng = np.random.default_rng(20240229)
    side = MAX_SIDE + 64
    pixel = np.clip(rng.normal(128.0, 40.0, (side, side, 3)), 0, 255).astype(np.uint8)
    coarse = Image.fromarray(rng.integers(0, 256, (side // 6, side // 6), dtype=np.uint8))
    fine = Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8))
    return Image.fromarray(pixel), Image.blend(coarse.resize((side, side), Image.Resampling.BICUBIC), fine, 0.35)


def crop(tile: Image.Image, size: tuple[int, int], r: Random) -> Image.Image:
    """A *size* window of *tile* at a random offset (the tile is stretched if it is too small)."""
    if size[0] > tile.width or size[1] > tile.height:
        tile = tile.resize((max(size[0], tile.width), max(size[1], tile.height)))
    x, y = r.i(0, tile.width - size[0] + 1), r.i(0, tile.height - size[1] + 1)
    return tile.crop((x, y, x + size[0], y + size[1]))


def any_colour(r: Random) -> Colour:
    return (r.i(0, 256), r.i(0, 256), r.i(0, 256))


def background(r: Random, size: tuple[int, int]) -> Image.Image:
    """A scene: smooth colour field, maybe a floor with court lines, many random shapes.

    Colours come from a per-image theme (a base colour and a spread) so scenes range
    from muted to garish; a share of the shapes ignore the theme.
    """
    w, h = size
    base, spread = _hsv(r, (0.0, 0.8), (40, 230)), r.u(25, 140)

    def themed() -> Colour:
        return jitter(base, r, int(spread)) if r.chance(0.7) else any_colour(r)

    k = r.i(2, 7)
    field = np.array(base) + spread * (2 * r.rng.random((k, k, 3)) - 1)
    if r.chance(0.4):  # a few cells of any colour at all
        field = np.where(r.rng.random((k, k, 1)) < 0.3, r.rng.random((k, k, 3)) * 255, field)
    field = field.clip(0, 255).astype(np.uint8)
    canvas = Image.fromarray(field).resize(size, Image.Resampling.BICUBIC if k > 2 else Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(canvas)
    if r.chance(0.6):  # a floor, maybe sloping, with a few lines on it
        y0, y1 = r.u(0.45, 0.95) * h, r.u(0.45, 0.95) * h
        draw.polygon([(0, y0), (w, y1), (w, h), (0, h)], fill=themed())
        for _ in range(r.i(0, 4)):
            ya, yb = r.u(max(y0, y1), h), r.u(max(y0, y1), h)
            draw.line([(0, ya), (w, yb)], fill=jitter((235, 235, 235), r, 20), width=r.i(1, 4))
    for _ in range(r.i(6, 22)):
        x0, y0 = r.u(-20, w), r.u(-20, h)
        box = (x0, y0, x0 + r.u(4, 0.5 * w), y0 + r.u(4, 0.5 * h))
        shape, fill = r.i(0, 5), themed()
        if shape == 0:
            draw.rectangle(box, fill=fill)
        elif shape == 1:
            draw.ellipse(box, fill=fill)
        elif shape == 2:
            draw.line([(x0, y0), (x0 + r.u(-w, w) / 2, y0 + r.u(-h, h) / 2)], fill=fill, width=r.i(1, 7))
        elif shape == 3:
            draw.polygon([(r.u(box[0], box[2]), r.u(box[1], box[3])) for _ in range(3)], fill=fill)
        else:
            draw.rectangle(box, outline=fill, width=r.i(1, 5))
    return canvas


def draw_distractors(canvas: Image.Image, r: Random, look: Look, height: float) -> None:
    """Limb-like rimmed capsules that belong to nobody, in skin and clothing colours."""
    draw = ImageDraw.Draw(canvas)
    w, h = canvas.size
    for _ in range(r.i(1, 5)):
        a = (r.u(0, w), r.u(0, h))
        angle, length = r.u(0, 2 * math.pi), r.u(0.1, 0.3) * height
        b = (a[0] + length * math.cos(angle), a[1] + length * math.sin(angle))
        ra, rb = r.u(0.015, 0.05) * height, r.u(0.015, 0.05) * height
        colour = r.pick((look.skin, look.shirt, _clothing(r), any_colour(r)))
        draw.polygon(capsule(a, b, ra, rb), fill=scaled(colour, 0.55))
        draw.polygon(capsule(a, b, max(ra - 1.5, 0.5), max(rb - 1.5, 0.5)), fill=colour)


def clothing_pattern(kind: str, size: tuple[int, int], r: Random, angle: float) -> Image.Image | None:
    """A grey multiplier image for clothing: stripes across *angle* (radians) or blotchy noise."""
    if kind == "stripes":
        pattern = Image.new("L", size, 255)
        draw = ImageDraw.Draw(pattern)
        period = r.u(5, 14)
        width, value = r.i(2, max(3, int(period / 1.6))), r.i(90, 200)
        if r.chance(0.3):
            angle += math.pi / 2
        nx, ny = math.cos(angle), math.sin(angle)
        diag = math.hypot(*size)
        cx, cy = size[0] / 2, size[1] / 2
        for offset in np.arange(-diag / 2, diag / 2, period).tolist():
            px, py = cx + offset * nx, cy + offset * ny
            draw.line([(px + diag * ny, py - diag * nx), (px - diag * ny, py + diag * nx)], fill=value, width=width)
        return pattern
    if kind == "noise":
        low = r.i(60, 170)
        return crop(noise_tiles()[1], size, r).point([low + (255 - low) * v // 255 for v in range(256)])
    return None
