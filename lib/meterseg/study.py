"""The study's runs: which rows make Tables I-III and the checks, training them (or reusing them), and
loading what they recorded. tables.py summarises them, notebook.py runs the notebooks on them."""
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .config import PAPER_LOSS_WEIGHT, make_config, results_dir
from .dataset import prepare_data, split_pairs
from . import stats
from .train import finished, git_commit, run_name, train

W = f"{PAPER_LOSS_WEIGHT:g}"


# Each table row: its label and the config fields that differ from the paper's AttU.
TABLES = {
    "table1": {"AttU + Dice": dict(loss="dice"), "AttU + CE": dict(loss="ce"), f"AttU + {W}(Dice+CE)": dict()},
    "table2": {"gate 1": dict(gates=(1,)), "gate 2": dict(gates=(2,)), "gates 1+2": dict()},
    "table3": {"U-Net": dict(model="unet"), "AttU": dict()},
}
PAPER_ATTU = dict(model="attunet", gates=(1, 2), loss="combo")


def runs_dir(results, profile):
    return Path(results) / "runs" / profile


def row_config(profile, seed, **fields):
    """The Config of a table row: the paper's AttU with `fields` changed, for one seed."""
    return make_config(profile, **{**PAPER_ATTU, **fields}, seed=seed)


def run_dir(results, cfg):
    return runs_dir(results, cfg.profile) / run_name(cfg)


def ensure_run(results, profile, seed, data="", progress=None, **fields):
    """Train (or reuse) the run of profile + fields + seed under results/runs/<profile>/; its summary."""
    cfg = row_config(profile, seed, **fields, data=data)
    return train(cfg, run_dir(results, cfg), progress)


LOSS_SCALE = {f"AttU + {W}(Dice+CE)": dict(), "AttU + 1.0(Dice+CE)": dict(loss_weight=1.0)}

# The pairs the paper compares, (table or check, row a, row b): each gets seed-level statistics of b - a.
COMPARISONS = [
    ("table1", "AttU + Dice", f"AttU + {W}(Dice+CE)"), ("table1", "AttU + CE", f"AttU + {W}(Dice+CE)"),
    ("table1", "AttU + Dice", "AttU + CE"),
    ("table2", "gate 1", "gates 1+2"), ("table2", "gate 2", "gates 1+2"), ("table2", "gate 2", "gate 1"),
    ("table3", "U-Net", "AttU"),
    ("loss_scale", "AttU + 1.0(Dice+CE)", f"AttU + {W}(Dice+CE)"),
]
ROWS = {**{k: v for t in TABLES.values() for k, v in t.items()}, **LOSS_SCALE}


def study_runs(profile, seeds):
    """(seed, fields) of every run notebooks 02-04 train, each once: Tables I-III and the loss-scale check."""
    specs = [(s, f) for f in ROWS.values() for s in seeds]
    unique = {}
    for s, f in specs:
        unique.setdefault(run_name(row_config(profile, s, **f)), (s, f))
    return list(unique.values())


def _train_in_worker(threads, results, profile, seed, data, fields):
    import torch
    torch.set_num_threads(threads)
    return ensure_run(results, profile, seed, data, progress=False, **fields)


def train_all(results, profile, seeds, data="", jobs=None):
    """Train (or reuse) every run of the study, `jobs` at a time, before the notebooks read them."""
    return train_runs(results, profile, study_runs(profile, seeds), data, jobs, "train_all")


def train_runs(results, profile, specs, data="", jobs=None, name="train_all"):
    """Train (or reuse) the runs (seed, fields) of `specs`, `jobs` at a time, recorded as `name`.

    Each job is a process with cpu_count // jobs threads. On a 2-core CPU two one-thread runs
    side by side train ~1.3x the images/s of one two-thread run (small convolutions scale
    poorly across threads; benchmarks/README.md). On a GPU the default is one job.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    import torch
    jobs = jobs or (1 if torch.cuda.is_available() else os.cpu_count() or 1)
    existing = sum(finished(run_dir(results, row_config(profile, s, **f))) for s, f in specs)
    t0 = time.time()
    if jobs == 1:
        summaries = [ensure_run(results, profile, s, data, **f) for s, f in specs]
    else:
        prepare_data(make_config(profile, data=data))  # decode cache and split once, not raced by the workers
        threads = max(1, (os.cpu_count() or 1) // jobs)
        print(f"[study] {len(specs)} runs, {jobs} at a time, {threads} thread(s) each", flush=True)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_train_in_worker, threads, str(results), profile, s, data, f): i
                       for i, (s, f) in enumerate(specs)}
            summaries = [None] * len(specs)
            for fut in as_completed(futures):
                summaries[futures[fut]] = s = fut.result()
                print(f"[study] {s['run']}: test dice {s['test']['dice']:.4f}, {s['train_seconds']:.0f} s training",
                      flush=True)
    # a rerun that only reuses finished runs keeps the record of the call that trained them
    record(results, name if existing < len(specs) else f"{name}_reused", profile, time.time() - t0,
           runs=len(specs), trained=len(specs) - existing, jobs=jobs)
    return summaries


# The converged length (docs/protocol.md, written before these runs): each length is a run of its own,
# its cosine schedule decaying to 0 at that length, so a decayed learning rate cannot pass the rule by itself.
LENGTHS = (10, 20, 30, 40)
CONVERGED_GAIN = 0.002  # converged: the run 10 epochs longer gains less best validation Dice than this, seed mean
LENGTH_ROWS = {"AttU": dict(), "U-Net": dict(model="unet")}
LENGTH_SEEDS = (0, 1)


def length_check(results, profile, seeds=LENGTH_SEEDS, lengths=LENGTHS, gain=CONVERGED_GAIN, data="", jobs=None):
    """The shortest length after which the next length gains less than `gain` best validation Dice (mean
    over `seeds`) for both LENGTH_ROWS; lengths are trained two at a time and no further than needed.
    (length or None when no length tried converged, one row per model and length)."""
    for i, length in enumerate(lengths[:-1]):
        pair = lengths[i:i + 2]
        specs = [(s, dict(f, epochs=n)) for n in pair for f in LENGTH_ROWS.values() for s in seeds]
        train_runs(results, profile, specs, data, jobs, "length_check_runs")
        rows = [{"model": m, "epochs": n, "seed": s,
                 "best_val_dice": load_run(results, profile, s, **f, epochs=n)[0]["best_val_dice"]}
                for m, f in LENGTH_ROWS.items() for n in lengths[:i + 2] for s in seeds]
        table = pd.DataFrame(rows).groupby(["model", "epochs"], as_index=False)["best_val_dice"].mean()
        table["gain_to_next_length"] = table.groupby("model")["best_val_dice"].transform(lambda v: v.shift(-1) - v)
        if (table[table["epochs"] == length]["gain_to_next_length"] < gain).all():
            return length, table
    return None, table


def recipe_check(results, profile, fields, seeds=LENGTH_SEEDS, margin=CONVERGED_GAIN, data="", jobs=None):
    """Whether a cheaper recipe (the profile's with `fields` changed) keeps the profile's quality: for both
    LENGTH_ROWS, its best validation Dice (mean over `seeds`) at least the profile recipe's minus `margin`.
    Trains what is missing of both. (adopt, one row per model and recipe with its training seconds)."""
    recipes = {"profile": {}, "tried": dict(fields)}
    train_runs(results, profile, [(s, dict(f, **r)) for r in recipes.values() for f in LENGTH_ROWS.values() for s in seeds],
               data, jobs, "recipe_check_runs")
    rows = []
    for m, f in LENGTH_ROWS.items():
        for name, r in recipes.items():
            runs = [load_run(results, profile, s, **f, **r)[0] for s in seeds]
            rows.append({"model": m, "recipe": name, "fields": json.dumps(r), "best_val_dice": np.mean([x["best_val_dice"] for x in runs]),
                         "train_seconds": np.mean([x["train_seconds"] for x in runs])})
    table = pd.DataFrame(rows)
    wide = table.pivot(index="model", columns="recipe", values="best_val_dice")
    return bool((wide["tried"] >= wide["profile"] - margin).all()), table


def write_check(profile="", results="", data="", jobs=None, recipe=None):
    """`meterseg study --length-check [--try-recipe k=v,...]`: length_check (or recipe_check of the recipe given)
    into <results>/tables/length_check.csv (recipe_check.csv), recorded."""
    profile, results = results_dir(profile, results)
    t0 = time.time()
    if recipe:
        passed, table = recipe_check(results, profile, recipe, data=data, jobs=jobs)
        name, table, verdict = "recipe_check", table.assign(adopt=passed), f"adopt {recipe}: {passed}"
    else:
        passed, table = length_check(results, profile, data=data, jobs=jobs)
        name, table, verdict = "length_check", table.assign(converged_length=passed), f"converged length: {passed} epochs"
    (Path(results) / "tables").mkdir(parents=True, exist_ok=True)
    table.to_csv(Path(results) / "tables" / f"{name}.csv", index=False)
    record(results, name, profile, time.time() - t0, outcome=verdict)
    print(table.round(4).to_string(index=False), f"\n{verdict}", flush=True)
    return passed, table


def ensure_table(results, table, profile, seeds, data=""):
    """Every run of a table for every seed; {row label: [summary per seed]}."""
    rows = {**TABLES, "loss_scale": LOSS_SCALE}[table]
    return {label: [ensure_run(results, profile, s, data, **f) for s in seeds] for label, f in rows.items()}


def run_checkpoint(results, profile, seed, **fields):
    """The best.pt of a finished run of profile + fields + seed."""
    return run_dir(results, row_config(profile, seed, **fields)) / "best.pt"


def load_run(results, profile, seed, **fields):
    """(summary, history, per-image test metrics) of a finished run."""
    d = run_dir(results, row_config(profile, seed, **fields))
    return (json.loads((d / "summary.json").read_text()), pd.read_csv(d / "history.csv"),
            pd.read_csv(d / "test_metrics.csv"))


def row_metrics(results, profile, seeds, label):
    """Per-seed test-metric frames of one table row."""
    return [load_run(results, profile, s, **ROWS[label])[2] for s in seeds]


def histories(results, profile, seeds, labels=None):
    """{row label: [history per seed]} for every row (or the labels given)."""
    return {label: [load_run(results, profile, s, **ROWS[label])[1] for s in seeds] for label in (labels or ROWS)}


def fig3_picks(results, profile, seeds, k=2):
    """The rule Fig. 3 uses, fixed before looking: the k test photos where AttU beats U-Net most and
    the k where U-Net beats AttU most, by per-image Dice averaged over seeds. [(stem, diff)]."""
    d = stats.per_image_dice_diff(row_metrics(results, profile, seeds, "U-Net"), row_metrics(results, profile, seeds, "AttU"))
    d = d.sort_values()
    return [(s, float(d[s])) for s in list(d.index[::-1][:k]) + list(d.index[:k])]


def runs_below(results, profile, seeds, dice=0.92):
    """Every run of the study whose test Dice is below `dice`: (label, seed, test Dice, best epoch)."""
    return pd.DataFrame([{"row": label, "seed": s, "test_dice": sm["test"]["dice"], "best_epoch": sm["best_epoch"]}
                         for label, f in ROWS.items() for s in seeds
                         for sm in [load_run(results, profile, s, **f)[0]] if sm["test"]["dice"] < dice],
                        columns=["row", "seed", "test_dice", "best_epoch"])


def record(results, name, profile, seconds, **extra):
    """Append a notebook's provenance (commit, profile, wall time) to results/provenance.json."""
    path = Path(results) / "provenance.json"
    prov = json.loads(path.read_text()) if path.exists() else {}
    prov[name] = {"git_commit": git_commit(), "profile": profile, "wall_seconds": round(seconds, 1),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(prov, indent=2) + "\n")
    return prov[name]


def test_pairs(profile, data=""):
    """(photos, labels) of the test split, the same photos the runs score (dataset.prepare_data)."""
    return split_pairs(make_config(profile, data=data), "test")


def run_histories(results, profile, runs):
    """{run name: history} of finished runs, by their directory names."""
    return {r: pd.read_csv(runs_dir(results, profile) / r / "history.csv") for r in runs}


def loss_scale_traces(results, profile, seed):
    """The paper's 0.36(CE+Dice) against 1.0(CE+Dice) for one seed, epoch by epoch: losses and validation Dice."""
    ha, hb = load_run(results, profile, seed)[1], load_run(results, profile, seed, loss_weight=1.0)[1]
    df = pd.DataFrame({"epoch": ha["epoch"], f"loss_{W}": ha["train_loss"], "loss_1.0": hb["train_loss"],
                       f"val_dice_{W}": ha["val_dice"], "val_dice_1.0": hb["val_dice"]})
    df["loss_ratio"] = df[f"loss_{W}"] / df["loss_1.0"]
    df["val_dice_diff"] = df["val_dice_1.0"] - df[f"val_dice_{W}"]
    return df


