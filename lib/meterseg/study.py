"""The study behind the notebooks: which runs make Tables I-III, how they are summarised and compared."""
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .config import PAPER_LOSS_WEIGHT, QUALITY_THRESHOLDS, REPO, make_config, results_dir, shown
from .dataset import prepare_data, split_pairs
from . import stats
from .metrics import METRICS
from .train import finished, git_commit, run_name, train

W = f"{PAPER_LOSS_WEIGHT:g}"

# The paper's numbers (mean ± SD in %), quoted beside ours; they are citations, not results.
PAPER = {
    "table1": {
        "AttU + Dice": "81.75±0.15 71.93±0.14 87.53±0.13 81.08±0.83 97.55±0.01",
        "AttU + CE": "81.91±0.17 72.37±0.28 88.23±0.11 81.73±0.44 97.63±0.04",
        f"AttU + {W}(Dice+CE)": "82.98±0.05 74.37±0.11 89.09±0.09 82.73±0.23 97.71±0.02",
    },
    "table2": {
        "gate 1": "81.13±0.12 73.14±0.04 88.15±0.16 82.21±0.64 97.58±0.11",
        "gate 2": "81.56±0.09 72.43±0.15 87.66±0.13 82.15±0.88 97.46±0.06",
        "gates 1+2": "82.98±0.05 74.37±0.11 89.09±0.09 82.73±0.23 97.71±0.02",
    },
    "table3": {
        "U-Net": "81.21±0.14 71.75±0.13 87.47±0.11 81.05±0.92 97.54±0.03",
        "AttU": "82.98±0.05 74.37±0.11 89.09±0.09 82.73±0.23 97.71±0.02",
    },
}

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


# The converged length (issue 21; README, Protocol, written before these runs): each length is a run of its own,
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


def seed_table(runs):
    """Mean and SD (ddof=1) across seeds of each run's mean test metric, in %: one row per label.

    `best_epochs` is the range of the seeds' best-validation epochs; `lowest_dice` the worst seed's test
    Dice. Whether the rows' length has converged is the length check's to say (length_note), not the runs'.
    """
    rows = []
    for label, summaries in runs.items():
        v = {m: np.array([s["test"][m] for s in summaries]) * 100 for m in METRICS}
        best = sorted(s["best_epoch"] for s in summaries)
        row = {"model": label, "seeds": len(summaries), "best_epochs": f"{best[0]}-{best[-1]}" if best[0] != best[-1] else f"{best[0]}",
               "lowest_dice": float(v["dice"].min())}
        for m in METRICS:
            row[m + "_mean"] = v[m].mean()
            row[m + "_sd"] = v[m].std(ddof=1) if len(v[m]) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(df, paper=None, title=""):
    """The paper's column order, 'mean±sd' in %, with the paper's row beside ours."""
    head = ("| Model | seeds | best epoch | Dice% | Jaccard% | Precision% | Recall% | Acc% | lowest seed Dice% |"
            + (" paper (Dice Jac Prec Rec Acc) |" if paper else ""))
    lines = [f"**{title}**", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in df.to_dict("records"):
        cells = [f"{r[m + '_mean']:.2f}±{r[m + '_sd']:.2f}" for m in METRICS]
        tail = f" {paper.get(r['model'], '')} |" if paper else ""
        lines.append(f"| {r['model']} | {r['seeds']} | {r['best_epochs']} | " + " | ".join(cells)
                     + f" | {r['lowest_dice']:.2f} |" + tail)
    return "\n".join(lines) + "\n"


def length_note(results):
    """The length check's verdict (tables/length_check.csv) as the tables' footnote; '' where it was not run.
    A run's own curve cannot say it converged (its cosine brings the learning rate to 0 whatever it learnt)."""
    path = Path(results) / "tables" / "length_check.csv"
    if not path.exists():
        return ""
    t = pd.read_csv(path)
    gains = []
    for model, d in t.groupby("model", sort=False):
        e = d["epochs"].tolist()
        gains.append(f"{model} " + ", ".join(f"{a}->{b} {g:+.4f}" for a, b, g in zip(e, e[1:], d["gain_to_next_length"])))
    length = t["converged_length"].dropna()
    verdict = (f"converged at {int(length.iloc[0])} epochs" if len(length) else
               f"no length tried met the rule (gain < {CONVERGED_GAIN} for both models), so the rows train the longest "
               f"length tried, {t['epochs'].max()} epochs, and may still gain a little")
    return (f"Length (README, Protocol): independent runs at each length, best validation Dice, mean of seeds "
            f"{list(LENGTH_SEEDS)}: {'; '.join(gains)}. The length check: {verdict}.")


def write_table(df, name, results, paper=None, title="", note=""):
    """results/tables/<name>.csv and .md (its footnote: note, then the length check's verdict)."""
    out = Path(results) / "tables"
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / f"{name}.csv", index=False, float_format="%.4f")
    note = " ".join(n for n in (note, length_note(results)) if n)
    (out / f"{name}.md").write_text(markdown_table(df, paper, title) + (f"\n{note}\n" if note else ""))
    return out / f"{name}.md"


def runs_table(summaries):
    """One row per run: seed, best epoch, validation and test metrics, time, device."""
    return pd.DataFrame([{"seed": s["seed"], "best_epoch": s["best_epoch"], "val_dice": s["best_val_dice"],
                          **{m: s["test"][m] for m in (*METRICS, "pooled_dice")},
                          "train_s": s["train_seconds"], "s_per_epoch": s["seconds_per_epoch"], "device": s["device"]}
                         for s in summaries])


def row_metrics(results, profile, seeds, label):
    """Per-seed test-metric frames of one table row."""
    return [load_run(results, profile, s, **ROWS[label])[2] for s in seeds]


def comparisons(results, profile, seeds):
    """Seed-level statistics (stats.compare) of every pair the paper compares, one row each, in points."""
    return pd.DataFrame([{"table": t, **stats.compare(a, row_metrics(results, profile, seeds, a),
                                                       b, row_metrics(results, profile, seeds, b))}
                         for t, a, b in COMPARISONS])


def comparisons_markdown(df):
    """The comparisons as a markdown table, in Dice points."""
    lines = ["| table | b - a | seeds | diff of seed means | Welch 95% CI | Welch p | hier. bootstrap 95% CI | per seed "
             "| TOST +-0.5: 90% CI, p | these networks, per image (CI, p) | verdict (seeds) |", "|" + "---|" * 11]
    for r in df.to_dict("records"):
        lines.append(f"| {r['table']} | {r['b']} - {r['a']} | {r['seeds']} | {r['diff_of_seed_means']:+.2f} | "
                     f"[{r['welch_ci95_lo']:+.2f}, {r['welch_ci95_hi']:+.2f}] | {r['welch_p']:.3f} | "
                     f"[{r['hier_boot_ci95_lo']:+.2f}, {r['hier_boot_ci95_hi']:+.2f}] | {r['per_seed_diffs']} | "
                     f"[{r['tost_ci90_lo']:+.2f}, {r['tost_ci90_hi']:+.2f}], {r['tost_p']:.3f} | "
                     f"{r['networks_paired_diff']:+.2f} [{r['networks_ci95_lo']:+.2f}, {r['networks_ci95_hi']:+.2f}], "
                     f"p {r['networks_sign_flip_p']:.4f} | {r['verdict_seeds']} |")
    return "\n".join(lines) + "\n"


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


def time_to_quality(histories, thresholds=QUALITY_THRESHOLDS):
    """Training seconds (cumulative over epochs) until validation Dice first reaches each threshold."""
    rows = []
    for label, h in histories.items():
        t = h["seconds"].cumsum()
        row = {"run": label}
        for th in thresholds:
            hit = h.index[h["val_dice"] >= th]
            row[f"epoch_to_{th:.2f}"] = int(h.loc[hit[0], "epoch"]) if len(hit) else None
            row[f"seconds_to_{th:.2f}"] = float(t[hit[0]]) if len(hit) else None
        rows.append(row)
    return pd.DataFrame(rows)


# The shipped model's longer training, by profile: the table runs' recipe (the cosine stretched) for the seed
# whose table run has the best validation Dice. The cpu rows train at their converged length (README, Protocol)
# and ship as they are, like any profile not listed.
SHIP_EPOCHS = {"smoke": 20}


def ship_model(results, profile, seeds, data=""):
    """Copy the paper AttU with the best validation Dice (not test Dice) to results/models/attunet.pt.

    The candidates are the table runs of `seeds` and the best of them trained SHIP_EPOCHS[profile]
    epochs (trained here if it is not yet). (path, summary of the shipped run, candidates table).
    """
    runs = [(load_run(results, profile, s)[0], {}) for s in seeds]
    seed = max(runs, key=lambda r: r[0]["best_val_dice"])[0]["seed"]
    longer = ""
    if profile in SHIP_EPOCHS:
        runs.append((ensure_run(results, profile, seed, data, epochs=SHIP_EPOCHS[profile]), dict(epochs=SHIP_EPOCHS[profile])))
        longer = f" and seed {seed} (their best) trained {SHIP_EPOCHS[profile]} epochs"
    best, chosen = max(runs, key=lambda r: r[0]["best_val_dice"])
    cfg = row_config(profile, best["seed"], **chosen)
    out = Path(results) / "models"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir(results, cfg) / "best.pt", out / "attunet.pt")
    candidates = pd.DataFrame([{"run": r["run"], "seed": r["seed"], "epochs": row_config(profile, r["seed"], **f).epochs,
                                "best_epoch": r["best_epoch"], "val_dice": r["best_val_dice"], "shipped": r is best}
                               for r, f in runs])
    t = best["test"]
    (out / "README.md").write_text(
        f"# attunet.pt\n\nThe `{profile}`-profile Attention U-Net (gates 1+2, {W}(CE+Dice)), run `{best['run']}` "
        f"(seed {best['seed']}, {cfg.epochs} epochs), chosen by validation Dice ({best['best_val_dice']:.4f}, epoch "
        f"{best['best_epoch']}) among the table runs of seeds {list(seeds)}{longer}.\n\n"
        f"Test split ({t['n']} photos, metrics at each photo's original size, SD with ddof=1):\n\n"
        + "| metric | mean | sd |\n|---|---|---|\n"
        + "".join(f"| {m} | {100 * t[m]:.2f}% | {100 * t[m + '_sd']:.2f}% |\n" for m in METRICS)
        + f"| pooled dice | {100 * t['pooled_dice']:.2f}% | |\n\n"
        f"Produced by commit `{best['git_commit']}` on {best['device']} ({best['train_seconds']:.0f} s of training).\n\n"
        "Use: `meterseg predict --checkpoint results/models/attunet.pt --out masks/ photo.jpg`\n")
    return out / "attunet.pt", best, candidates


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


def run_notebooks(names, profile, results="", data="", seeds=5, jobs=None):
    """Train every run (train_all), then execute notebooks/<name>.ipynb with papermill into
    <results>/notebooks/, recording wall times.

    Paths reach the notebooks relative to the repository where they can (a folder outside it
    goes through the environment instead), so executed notebooks carry no absolute path.
    """
    import papermill as pm
    profile, results = results_dir(profile, results)
    (results / "notebooks").mkdir(parents=True, exist_ok=True)
    times, t0 = {}, time.time()
    train_all(results, profile, list(range(seeds)), data, jobs)
    times["train_all"] = round(time.time() - t0, 1)
    inside = not shown(results).startswith("<")
    env = {"METERSEG_RESULTS": str(results)} if not inside else {}
    if os.environ.get("METERSEG_DATA"):  # the kernels run in notebooks/: a relative folder must not move
        env["METERSEG_DATA"] = str(Path(os.environ["METERSEG_DATA"]).resolve())
    if data and Path(data).is_absolute():
        env["METERSEG_DATA"], data = str(data), ""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for name in names:
            t = time.time()
            print(f"[study] {name} (profile {profile}) ...", flush=True)
            src, dst = REPO / "notebooks" / f"{name}.ipynb", results / "notebooks" / f"{name}.ipynb"
            pm.execute_notebook(src, dst, parameters={"PROFILE": profile, "RESULTS": shown(results) if inside else "",
                                                      "DATA": data, "SEEDS": seeds},
                                cwd=REPO / "notebooks", progress_bar=False)
            nb = json.loads(dst.read_text())  # papermill records where it read and wrote: as the repo sees it
            nb["metadata"]["papermill"].update(input_path=shown(src), output_path=shown(dst))
            dst.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            times[name] = round(time.time() - t, 1)
            print(f"[study] {name}: {times[name]:.0f} s", flush=True)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    total = time.time() - t0
    every = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9]*.ipynb"))
    record(results, "study" if sorted(names) == every else "study: " + ", ".join(names), profile, total,
           notebook_seconds=times)
    print(f"[study] total {total / 60:.1f} min; executed notebooks in {shown(results / 'notebooks')}")
    return times
