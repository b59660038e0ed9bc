#!/usr/bin/env python3
"""Markdown table of a study folder, one row per run (<dir>/<name>/checkpoint/training.json):
the `flux2 eval` accuracies when <name>/eval/report.json exists, else the run's end-of-training
Python check (same sampler, 48 fixed captions, classify.py)."""

import json
import sys
from pathlib import Path

root = Path(sys.argv[1])
print("| run | training t | DiT steps (s) | colour | shape | background | all three | judged by |")
print("|---|---|---|---|---|---|---|---|")
for meta_path in sorted(root.glob("*/checkpoint/training.json")):
    meta = json.loads(meta_path.read_text())
    rep = meta_path.parent.parent / "eval" / "report.json"
    if rep.exists():
        r = json.loads(rep.read_text())
        a, how = r["accuracy"], f"flux2 eval, {r['prompts']} captions"
    else:
        a, how = meta["python_checks"][-1], "python check, 48 captions"
    dist = "ts" if meta["dist"] == "ts" else f"{meta['dist']}(mu={meta['mu']:g}, sigma={meta['sigma']:g})"
    print(
        f"| {meta_path.parent.parent.name} | {dist}, alpha {meta['alpha']:g} | {meta['steps']} ({meta['dit_train_seconds']}) |"
        f" {100 * a['color']:.1f} % | {100 * a['shape']:.1f} % | {100 * a['background']:.1f} % |"
        f" **{100 * a['all']:.1f} %** | {how} |"
    )
