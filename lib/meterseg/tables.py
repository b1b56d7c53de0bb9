"""The study's tables: each row's mean and SD over seeds, the markdown the notebooks write, and the
seed-level comparisons of the pairs the paper compares (stats.compare)."""
from pathlib import Path

import numpy as np
import pandas as pd

from . import stats
from .config import QUALITY_THRESHOLDS
from .metrics import METRICS
from .study import COMPARISONS, CONVERGED_GAIN, LENGTH_SEEDS, W, row_metrics

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
    return (f"Length (docs/protocol.md): independent runs at each length, best validation Dice, mean of seeds "
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
