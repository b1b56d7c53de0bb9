"""Table III from the GPU runs: each run's test Dice and the seed-level comparison (stats.compare).

Usage: python benchmarks/paper_gpu/compare.py RUNS_DIR  (the folder run.sh's tarball unpacks into)
"""
import json
import sys
from pathlib import Path

import pandas as pd

from meterseg.stats import compare

runs = Path(sys.argv[1])
rows, tables = [], {}
for d in sorted(p for p in runs.iterdir() if (p / "test_metrics.csv").exists()):
    model, seed = d.name.rsplit("-s", 1)
    hist = pd.read_csv(d / "history.csv")
    best = hist.loc[hist.val_dice.idxmax()]
    cfg = json.loads((d / "config.json").read_text())
    t = pd.read_csv(d / "test_metrics.csv")
    tables.setdefault(model, []).append(t)
    rows.append({"run": d.name, "model": model, "seed": int(seed), "epochs_planned": cfg["epochs"],
                 "epochs_done": int(hist.epoch.max()), "best_epoch": int(best.epoch), "best_val_dice": round(best.val_dice, 4),
                 "test_dice": round(t.dice.mean(), 4), "seconds_per_epoch": round(hist.seconds.mean(), 1),
                 "stopped_by_time_limit": (d / "stopped.json").exists()})
runs_df = pd.DataFrame(rows)
print(runs_df.to_string(index=False))
runs_df.to_csv(runs / "runs.csv", index=False)
if {"unet", "attunet"} <= tables.keys():
    c = pd.DataFrame([compare("U-Net", tables["unet"], "AttU (gates 1+2)", tables["attunet"])])
    print(c.T.to_string(header=False))
    c.to_csv(runs / "comparison.csv", index=False)
