"""The synthetic captioned domain: one solid shape on a solid background.

Caption: ``a {color} {shape} on a {background} background``. The shape's colour differs from
the background. Shapes are a circle, an axis-aligned square and an upright isosceles triangle
(base at the bottom, apex at the top centre, height = base), each with side (diameter, base)
drawn uniformly in 30-70 % of the image side and placed uniformly so it lies fully inside.
Images are rendered at 4x supersampling and box-filtered down, so edges are anti-aliased.

Everything is a pure function of a seed (numpy PCG64), so a dataset is reproducible.
"""

from __future__ import annotations

import numpy as np

TEMPLATE = "a {color} {shape} on a {background} background"

# Eight well-separated colours (every pair differs by >= 100 in some channel).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "orange": (245, 140, 30),
    "purple": (140, 60, 180),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ["circle", "square", "triangle"]
SIDE_RANGE = (0.30, 0.70)
SUPERSAMPLE = 4


def caption(color: str, shape: str, background: str) -> str:
    return TEMPLATE.format(color=color, shape=shape, background=background)


def all_captions() -> list[tuple[str, str, str]]:
    """Every (color, shape, background) triple with color != background, in a fixed order."""
    names = list(PALETTE)
    return [(c, s, b) for s in SHAPES for c in names for b in names if c != b]


def shape_mask(shape: str, size: int, side: float, x0: float, y0: float) -> np.ndarray:
    """Coverage in [0, 1] of a shape whose bounding box is [x0, x0+side] x [y0, y0+side] (pixels)."""
    n = size * SUPERSAMPLE
    c = (np.arange(n) + 0.5) / SUPERSAMPLE
    x, y = np.meshgrid(c, c)
    u, v = (x - x0) / side, (y - y0) / side  # unit box coordinates, v grows downwards
    inside_box = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if shape == "square":
        m = inside_box
    elif shape == "circle":
        m = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    elif shape == "triangle":
        m = inside_box & (np.abs(u - 0.5) <= 0.5 * v)
    else:
        raise ValueError(f"unknown shape '{shape}' (expected one of {SHAPES})")
    return m.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


def render(color: str, shape: str, background: str, size: int, side: float, x0: float, y0: float) -> np.ndarray:
    """uint8 HxWx3 image."""
    if color == background:
        raise ValueError(f"shape colour and background are both '{color}'")
    a = shape_mask(shape, size, side, x0, y0)[..., None]
    fg = np.array(PALETTE[color], dtype=np.float64)
    bg = np.array(PALETTE[background], dtype=np.float64)
    return np.round(a * fg + (1 - a) * bg).astype(np.uint8)


def sample(rng: np.random.Generator, size: int, shape_p: list[float] | None = None):
    """One random example: (image uint8 HxWx3, caption, (color, shape, background)); the shape
    is uniform, or drawn with probabilities `shape_p` (in SHAPES order)."""
    names = list(PALETTE)
    color = names[rng.integers(len(names))]
    others = [n for n in names if n != color]
    background = others[rng.integers(len(others))]
    shape = SHAPES[rng.integers(len(SHAPES)) if shape_p is None else rng.choice(len(SHAPES), p=shape_p)]
    side = rng.uniform(*SIDE_RANGE) * size
    x0 = rng.uniform(0, size - side)
    y0 = rng.uniform(0, size - side)
    img = render(color, shape, background, size, side, x0, y0)
    return img, caption(color, shape, background), (color, shape, background)


def dataset(n: int, size: int, seed: int):
    """n examples: images uint8 (n, H, W, 3) and their (color, shape, background) triples."""
    rng = np.random.default_rng(seed)
    imgs = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = []
    for i in range(n):
        imgs[i], _, lab = sample(rng, size)
        labels.append(lab)
    return imgs, labels


def vocabulary(size: int, steps: int, guidance: float, text_layers: list[int]) -> dict:
    """The `vocabulary.json` shipped with the model: captions, and the size, steps and
    guidance it is meant to run at (flux2 export records the last three as the export's
    defaults)."""
    return {
        "template": TEMPLATE,
        "colors": {k: list(v) for k, v in PALETTE.items()},
        "shapes": list(SHAPES),
        "size": [size, size],
        "steps": steps,
        "guidance": guidance,
        "text_layers": list(text_layers),
    }
