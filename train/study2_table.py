#!/usr/bin/env python3
"""Tables and plots of study 2 (train/study2.sh) and of the sampling-shift study
(train/shift_study.sh): adherence ("all three" of `flux2 eval`) per run, and per arm the mean over
training seeds with a 95 % interval.

Intervals: per run, Wilson's score interval of a binomial proportion over its captions; per arm,
Student's t interval of the seed means (t(0.975, n-1) * sd / sqrt(n)), which carries the
seed-to-seed variation of training; with one seed only the pooled Wilson interval is given.

    python train/study2_table.py train/runs/study2      -> table.md, adherence.png, grid.png
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (c - h, c + h)


def seed_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t interval of per-seed values (fractions)."""
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return (m, float("nan"), float("nan"))
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    h = T975.get(n - 1, 1.96) * sd / math.sqrt(n)
    return (m, m - h, m + h)


def load(report: Path) -> dict:
    r = json.loads(report.read_text())
    items = r["items"]
    k = sum(1 for i in items if i["all"])
    squares = [i for i in items if i["expected"]["shape"] == "square"]
    return {"k": k, "n": len(items), "all": k / len(items), "acc": r["accuracy"], "shift": r.get("shift") or "empirical",
            "squares": (sum(1 for i in squares if i["all"]), len(squares)), "seconds": r["seconds"], "report": report}


def runs(root: Path) -> dict:
    """arm -> setting -> [run dicts], from <root>/<arm>-s<seed>/eval*/report.json (no -s<seed>: seed 0)."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for rep in sorted(root.glob("*/eval*/report.json")):
        name = rep.parent.parent.name
        m = re.fullmatch(r"(.*)-s(\d+)", name)
        arm, seed = (m.group(1), int(m.group(2))) if m else (name, 0)
        r = load(rep)
        r["seed"] = seed
        meta = rep.parent.parent / "checkpoint" / "training.json"
        info = json.loads(meta.read_text()) if meta.exists() else {}
        r["train_s"] = info.get("dit_train_cpu_seconds", info.get("dit_train_seconds"))
        setting = rep.parent.name.removeprefix("eval").lstrip("-") or "default"
        out[arm][setting].append(r)
    return out


def table(data: dict) -> list[str]:
    lines = ["| arm | setting | seeds | all three per seed | mean [95 % t interval over seeds] | pooled [Wilson] | squares | training CPU s per run |",
             "|---|---|---|---|---|---|---|---|"]
    for arm in sorted(data):
        for setting, rs in sorted(data[arm].items()):
            rs = sorted(rs, key=lambda r: r["seed"])
            m, lo, hi = seed_interval([r["all"] for r in rs])
            k, n = sum(r["k"] for r in rs), sum(r["n"] for r in rs)
            plo, phi = wilson(k, n)
            sq = (sum(r["squares"][0] for r in rs), sum(r["squares"][1] for r in rs))
            per = ", ".join(f"{100 * r['all']:.1f}" for r in rs)
            ci = f"{100 * m:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" if len(rs) > 1 else f"{100 * m:.1f} (1 seed)"
            ts = ", ".join(str(r["train_s"]) for r in rs if r["train_s"] is not None)
            lines.append(f"| {arm} | {setting} | {len(rs)} | {per} | {ci} | {100 * k / n:.1f} [{100 * plo:.1f}, {100 * phi:.1f}] | {sq[0]}/{sq[1]} | {ts} |")
    return lines


def paired(data: dict, setting: str = "empirical") -> list[str]:
    """Arm-against-arm differences on the same captions and noise: per caption, verdict(a) -
    verdict(b) for every seed both arms have, pooled; mean with a normal 95 % interval."""
    lines = [f"", f"Paired differences, setting {setting} (same captions and noise; seeds both arms have, pooled):", "",
             "| a − b | seeds | difference, points [95 %] | verdicts changed |", "|---|---|---|---|"]
    arms = sorted(a for a in data if setting in data[a])
    for i, a in enumerate(arms):
        for b in arms[i + 1:]:
            ra = {r["seed"]: r for r in data[a][setting]}
            rb = {r["seed"]: r for r in data[b][setting]}
            seeds = sorted(set(ra) & set(rb))
            d = []
            for sd in seeds:
                va = [bool(x["all"]) for x in json.loads(ra[sd]["report"].read_text())["items"]]
                vb = [bool(x["all"]) for x in json.loads(rb[sd]["report"].read_text())["items"]]
                d += [int(x) - int(y) for x, y in zip(va, vb)]
            if len(d) < 2:
                continue
            m = sum(d) / len(d)
            h = 1.96 * math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1)) / math.sqrt(len(d))
            lines.append(f"| {a} − {b} | {','.join(map(str, seeds))} | {100 * m:+.1f} [{100 * (m - h):+.1f}, {100 * (m + h):+.1f}] | {sum(1 for x in d if x)}/{len(d)} |")
    return lines


def plot(data: dict, path: Path, title: str) -> None:
    """One panel per judged size: settings named 128-<shift> (eval128-*) are 128², the rest 64²."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [(arm, s, rs) for arm in sorted(data) for s, rs in sorted(data[arm].items())]
    panels = [(f"{size}²", [r for r in rows if r[1].startswith("128") == (size == 128)]) for size in (64, 128)]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 1.1 * max(len(p[1]) for p in panels)), 4 * len(panels)),
                             squeeze=False)
    for (label, prow), ax in zip(panels, axes[:, 0]):
        panel(ax, prow, f"{title}, judged at {label}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def panel(ax, rows: list, title: str) -> None:
    for x, (arm, s, rs) in enumerate(rows):
        m, lo, hi = seed_interval([r["all"] for r in rs])
        if len(rs) > 1:
            ax.errorbar([x], [100 * m], yerr=[[100 * (m - lo)], [100 * (hi - m)]], fmt="o", capsize=6, color="C0")
        else:
            plo, phi = wilson(rs[0]["k"], rs[0]["n"])
            ax.errorbar([x], [100 * m], yerr=[[100 * (m - plo)], [100 * (phi - m)]], fmt="s", capsize=6, color="C1")
        ax.scatter([x] * len(rs), [100 * r["all"] for r in rs], color="k", s=10, zorder=3)
    ax.set_xticks(range(len(rows)), [f"{a}\n{s}" for a, s, _ in rows], fontsize=8)
    ax.set_ylabel("all three right (%)")
    ax.set_title(title + "\n(blue: mean, 95 % t interval over seeds; orange: one seed, Wilson; dots: seeds)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def grid(data: dict, path: Path) -> None:
    """One row per arm and setting: the first 8 captions of its lowest seed (first.png of judge.py)."""
    from PIL import Image, ImageDraw
    rows = []
    for arm in sorted(data):
        for s, rs in sorted(data[arm].items()):
            f = min(rs, key=lambda r: r["seed"])["report"].parent / "first.png"
            if f.exists():
                rows.append((f"{arm} {s} s{min(r['seed'] for r in rs)}", Image.open(f).convert("RGB")))
    if not rows:
        return
    w = max(im.width for _, im in rows) + 160
    out = Image.new("RGB", (w, sum(im.height for _, im in rows)), "white")
    y = 0
    for label, im in rows:
        out.paste(im, (160, y))
        ImageDraw.Draw(out).text((4, y + im.height // 2 - 6), label, fill="black")
        y += im.height
    out.save(path)


def main():
    root = Path(sys.argv[1])
    title = sys.argv[2] if len(sys.argv) > 2 else f"{root.name}: flux2 eval adherence"
    data = runs(root)
    if not data:
        raise SystemExit(f"{root}: no */eval*/report.json yet")
    lines = table(data) + paired(data)
    (root / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(data, root / "adherence.png", title)
    grid(data, root / "grid.png")
    print(f"wrote {root / 'table.md'}, {root / 'adherence.png'}")


if __name__ == "__main__":
    main()
