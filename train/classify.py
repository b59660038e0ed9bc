"""A Python mirror of the Rust classifier (eval/src/classify.rs, crate flux2-eval), used only to
watch training; the reported numbers come from `flux2 eval`. Rules: every pixel takes its
nearest palette colour; the background is the most common colour on the border; the shape is the
largest 4-connected region of other pixels (none below 1 % of the image); its colour is the
most common there; its kind comes from its bounding box (aspect within [0.6, 1/0.6]) and how
much of it the region fills (square >= 0.88, circle >= 0.66, upright triangle >= 0.35 with at
most 40 % of its area in the upper half)."""

from __future__ import annotations

from collections import deque

import numpy as np

import shapes


def _largest_region(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    seen = np.zeros_like(mask)
    best = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        region, q = [], deque([start])
        while q:
            y, x = q.popleft()
            region.append((y, x))
            for yy, xx in ((y, x - 1), (y, x + 1), (y - 1, x), (y + 1, x)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    q.append((yy, xx))
        if len(region) > len(best):
            best = region
    return np.array(best).reshape(-1, 2)


def shape_region(img: np.ndarray):
    """Steps 1-3 of the rules: (palette labels per pixel, background label, the shape's pixels as
    (y, x) rows or None below 1 % of the image), labels indexing sorted(shapes.PALETTE)."""
    names = sorted(shapes.PALETTE)
    pal = np.array([shapes.PALETTE[n] for n in names], dtype=np.int64)
    idx = ((img[..., None, :].astype(np.int64) - pal) ** 2).sum(-1).argmin(-1)
    h, w = idx.shape
    border = np.concatenate([idx[0], idx[-1], idx[:, 0], idx[:, -1]])
    bg = int(np.bincount(border, minlength=len(names)).argmax())
    region = _largest_region(idx != bg)
    return idx, bg, (region if len(region) >= 0.01 * h * w else None)


def classify(img: np.ndarray):
    names = sorted(shapes.PALETTE)
    idx, bg, region = shape_region(img)
    if region is None:
        return None, None, names[bg]
    color = names[int(np.bincount(idx[region[:, 0], region[:, 1]], minlength=len(names)).argmax())]
    ys, xs = region[:, 0], region[:, 1]
    bw, bh = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    if not (0.6 <= bw / bh <= 1 / 0.6):
        return color, None, names[bg]
    fill = len(region) / float(bw * bh)
    if fill >= 0.88:
        return color, "square", names[bg]
    if fill >= 0.66:
        return color, "circle", names[bg]
    if fill < 0.35:
        return color, None, names[bg]
    mid2 = ys.min() + ys.max()
    top = np.where(2 * ys < mid2, 2, np.where(2 * ys == mid2, 1, 0)).sum() / (2.0 * len(region))
    return color, ("triangle" if top <= 0.4 else None), names[bg]


def hit_counts(imgs, wants) -> np.ndarray:
    """How many of the pictures `imgs` are right on colour, shape, background and all three, against
    their (color, shape, background) triples `wants`."""
    ok = np.zeros(4)
    for img, want in zip(imgs, wants):
        got = classify(img)
        hits = [got[k] == want[k] for k in range(3)]
        ok += np.array(hits + [all(hits)], dtype=float)
    return ok
