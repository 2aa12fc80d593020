"""Product pictures for the generated demo catalog, drawn with PIL.

The demo must exercise the real image path (JPEG decoding, CNN/CLIP encoders), so its images are
real JPEGs whose visible content — a coloured shape on a tinted card with a printed word — is the
item's latent attributes made visible. An image encoder can then recover what the text says and
what users like, which is the point of a multimodal demo.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "ring")

# Saturated, well-separated colours, so the dominant colour survives JPEG and resizing.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (235, 205, 25),
    "green": (35, 150, 65),
    "blue": (35, 85, 205),
    "purple": (130, 55, 175),
    "pink": (240, 105, 170),
    "brown": (120, 75, 35),
}

# Pale card backgrounds; far from every shape colour so the shape stays the dominant hue.
BACKGROUNDS = ((250, 250, 245), (238, 244, 250), (246, 240, 232), (236, 246, 238))
TEXT_COLOUR = (40, 40, 40)


@dataclass(frozen=True)
class Drawing:
    """What one picture shows; `size` in pixels, angles in degrees, offsets in pixels."""

    shape: str
    colour: str
    word: str
    background: int = 0
    size: int = 256
    rotation: float = 0.0
    scale: float = 1.0
    dx: int = 0
    dy: int = 0

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}")
        if self.colour not in COLOURS:
            raise ValueError(f"colour must be one of {tuple(COLOURS)}, got {self.colour!r}")
        if not 64 <= self.size <= 1024:
            raise ValueError(f"size must be in 64..1024, got {self.size}")
        if not 0 <= self.background < len(BACKGROUNDS):
            raise ValueError(f"background must be in 0..{len(BACKGROUNDS) - 1}, got {self.background}")


@lru_cache(maxsize=8)
def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font: no system font dependency, identical pixels on every machine."""
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _regular(n: int, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    return [
        (
            cx + r * math.cos(math.radians(rot + 360 * k / n - 90)),
            cy + r * math.sin(math.radians(rot + 360 * k / n - 90)),
        )
        for k in range(n)
    ]


def _star(cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        rr = r if k % 2 == 0 else r * 0.45
        a = math.radians(rot + 36 * k - 90)
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def _rotated(base: list[tuple[float, float]], cx: float, cy: float, rot: float) -> list[tuple[float, float]]:
    c, s = math.cos(math.radians(rot)), math.sin(math.radians(rot))
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in base]


def _cross(cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    w = r * 0.38
    base = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
    return _rotated(base, cx, cy, rot)


def _draw_shape(draw: ImageDraw.ImageDraw, d: Drawing, cx: float, cy: float, r: float) -> None:
    fill = COLOURS[d.colour]
    if d.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif d.shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(3, int(r * 0.32)))
    elif d.shape == "square":
        draw.polygon(_regular(4, cx, cy, r * 1.15, 45 + d.rotation), fill=fill)
    elif d.shape == "diamond":
        draw.polygon(
            _rotated([(0, -1.2 * r), (0.75 * r, 0), (0, 1.2 * r), (-0.75 * r, 0)], cx, cy, d.rotation), fill=fill
        )
    elif d.shape == "triangle":
        draw.polygon(_regular(3, cx, cy + r * 0.15, r * 1.15, d.rotation), fill=fill)
    elif d.shape == "hexagon":
        draw.polygon(_regular(6, cx, cy, r, 30 + d.rotation), fill=fill)
    elif d.shape == "star":
        draw.polygon(_star(cx, cy, r * 1.15, d.rotation), fill=fill)
    elif d.shape == "cross":
        draw.polygon(_cross(cx, cy, r, d.rotation), fill=fill)


def draw(d: Drawing) -> Image.Image:
    """The RGB picture of one product: shape in the upper part, the word printed below."""
    img = Image.new("RGB", (d.size, d.size), BACKGROUNDS[d.background])
    pen = ImageDraw.Draw(img)
    s = d.size
    r = s * 0.27 * d.scale
    _draw_shape(pen, d, s / 2 + d.dx, s * 0.42 + d.dy, r)
    font = _font(max(10, s // 10))
    word = d.word[:18]
    left, top, right, bottom = pen.textbbox((0, 0), word, font=font)
    pen.text(((s - (right - left)) / 2 - left, s * 0.86 - (bottom - top) / 2 - top), word, fill=TEXT_COLOUR, font=font)
    return img


def jpeg_bytes(d: Drawing, quality: int = 90) -> bytes:
    """Encoded JPEG of `d`; deterministic for a given Pillow build (no EXIF, no timestamps)."""
    buf = io.BytesIO()
    draw(d).save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()
