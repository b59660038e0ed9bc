#!/usr/bin/env python3
"""Table and plot of scripts/cache_curves.sh: per step-caching setting, the share of full DiT
evaluations against `flux2 eval` all-three adherence, next to the uncached run on the same
captions and noise.

Adherence gets a 95 % Wilson interval; the difference from uncached is paired (the same
captions and noise per picture), so its 95 % interval is the normal one over the per-picture
differences, much narrower than either run's own interval. Needs only the standard library;
curves.png needs matplotlib.

    python3 scripts/cache_curves.py target/cache-curves
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def paired(a: list[bool], b: list[bool], z: float = 1.96) -> tuple[float, float, float]:
    """Mean of b - a over pictures and its 95 % interval."""
    d = [int(y) - int(x) for x, y in zip(a, b)]
    n = len(d)
    m = sum(d) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1)) if n > 1 else 0.0
    return m, m - z * sd / math.sqrt(n), m + z * sd / math.sqrt(n)


def load(work: Path) -> dict:
    runs = {}
    for rep in sorted(work.glob("eval-*/report.json")):
        name = rep.parent.name.removeprefix("eval-")
        policy = name.replace("_", ":", 1).replace("_", ",")
        r = json.loads(rep.read_text())
        c = r["dit_evaluations"]
        total = c["full"] + c["first_block_only"] + c["skipped"]
        runs[policy] = {
            "all": [i["all"] for i in r["items"]],
            "captions": [(i["prompt"], i["seed"]) for i in r["items"]],
            "full": c["full"], "first": c["first_block_only"], "skipped": c["skipped"], "total": total,
            "seconds": r["seconds"],
        }
    return runs


def table(runs: dict) -> list[str]:
    base = runs.get("off")
    if base is None:
        sys.exit("no uncached run (eval-off/report.json)")
    lines = [
        "| setting | full DiT evaluations | first block only | skipped | all three [95 % Wilson] | vs uncached, paired [95 %] | ≤ 60 % full and ≥ uncached − 3 | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = ["off"] + sorted((p for p in runs if p != "off"), key=lambda p: (p.split(":")[0], float(p.split(":")[1].split(",")[0])))
    for p in order:
        r = runs[p]
        if r["captions"] != base["captions"]:
            sys.exit(f"{p}: not the uncached run's captions and seeds")
        n, k = len(r["all"]), sum(r["all"])
        lo, hi = wilson(k, n)
        share = r["full"] / r["total"]
        if p == "off":
            diff, ok = "—", "—"
        else:
            m, dlo, dhi = paired(base["all"], r["all"])
            diff = f"{100 * m:+.1f} [{100 * dlo:+.1f}, {100 * dhi:+.1f}]"
            ok = "yes" if share <= 0.6 and m >= -0.03 else ("no" if share <= 0.6 else "(> 60 % full)")
        lines.append(
            f"| `{p}` | {r['full']}/{r['total']} ({100 * share:.0f} %) | {r['first']} | {r['skipped']} | "
            f"{100 * k / n:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}] ({k}/{n}) | {diff} | {ok} | {r['seconds']:.0f} |"
        )
    return lines


def plot(runs: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    base = runs["off"]
    b = 100 * sum(base["all"]) / len(base["all"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.axhspan(b - 3, b, color="0.9", label="uncached − 3 points")
    ax.axhline(b, color="k", lw=1, label=f"uncached {b:.1f} %")
    ax.axvline(60, color="0.6", ls=":", lw=1)
    for kind, mark in [("fbc", "o"), ("mag", "s"), ("taylor", "^"), ("tea", "D")]:
        pts = sorted((100 * r["full"] / r["total"], 100 * sum(r["all"]) / len(r["all"]), wilson(sum(r["all"]), len(r["all"])))
                     for p, r in runs.items() if p.startswith(kind + ":"))
        if not pts:
            continue
        xs, ys = [x for x, _, _ in pts], [y for _, y, _ in pts]
        err = [[y - 100 * w[0] for _, y, w in pts], [100 * w[1] - y for _, y, w in pts]]
        ax.errorbar(xs, ys, yerr=err, marker=mark, capsize=3, label=kind)
    ax.set_xlabel("full DiT evaluations (% of uncached)")
    ax.set_ylabel("flux2 eval all three (%)")
    ax.set_title(f"Step caching on the shapes model ({len(base['all'])} captions, 95 % Wilson)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "target/cache-curves")
    runs = load(work)
    lines = table(runs)
    (work / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if plot(runs, work / "curves.png"):
        print(f"wrote {work / 'curves.png'}")


if __name__ == "__main__":
    main()
