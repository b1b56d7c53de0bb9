"""A utility correcting its readings month after month, simulated on the train split (docs/protocol.md, Tuning
from corrections): a base reader trained on part of it, the rest read as months by the tool, every reading not
`ok` corrected from its billing label and merged by `review --apply`, and `tune` from the base after each month
with every FINAL.csv so far. Each model is measured on the validation and test splits and on the month it reads."""
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from .dataset import split_pairs
from .labels import truth_of, units_off
from .reading_eval import (FOLD_RETRIES, TARGET_ERROR, accepted, choose_accept_rule, half_turned_threshold,
                           learned_reader, out_of_fold_reads, tool_reads)
from .tool.review import apply_corrections, read_table
from .tool.runner import read
from .tune import pool_of, tune, tune_epochs

MONTHS = {"smoke": 2}  # months by profile (else 4): smoke only checks that the loop runs, and is in every test run
PER_MONTH = {"smoke": 10}  # photos a month by profile (else 100)
ARMS = {"corrections": False, "corrections + ok rows": True}  # arm -> tune's with_ok
TARGET_CORRECTIONS, TARGET_GAIN = 150, 5.0  # after about 150 corrected photos, test coverage 5 points above the base's


def months(cfg, seed=0):
    """(base, [month, ...]), each a (photos, labels) pair: the train split in a random order (seed), its last
    n * PER_MONTH photos as n = MONTHS months and the photos before them as the base."""
    photos, labels = split_pairs(cfg, "train")
    n = MONTHS.get(cfg.profile, 4)
    per = PER_MONTH.get(cfg.profile, 100)
    cut = len(photos) - n * per
    if cut < 10:
        raise ValueError(f"{len(photos)} train photos: too few for a base and {n} months of {per}")
    order = np.random.default_rng(seed).permutation(len(photos))
    part = lambda idx: ([photos[i] for i in idx], [labels[i] for i in idx])  # noqa: E731
    return part(order[:cut]), [part(order[cut + k * per:cut + (k + 1) * per]) for k in range(n)]


def base_model(cfg, shipped, base, out, folds=5):
    """The simulation's starting model, written to out: the shipped segmenter with a CRNN trained as the shipped
    one on the base photos only, and the accept rule chosen on its own out-of-fold reads of them (its pool). The
    base CRNN is trained again if it stalls, as a fold CRNN is, up to twice as many times: a base that never
    learned makes the months measure nothing. Returns the table of every CRNN trained: the base's, then the folds'."""
    import torch
    from .checkpoint import save_checkpoint
    from .predictor import Predictor
    predictor = Predictor.load(shipped, "cpu", cpu_bf16=False)
    reader, history, tried = learned_reader(cfg, predictor, *base, retries=2 * FOLD_RETRIES.get(cfg.profile, 2), step=folds)
    oof, crnns = out_of_fold_reads(cfg, predictor, folds, train=base)
    rule, _ = choose_accept_rule(oof, half_turned=half_turned_threshold(oof)[0])
    best = history.loc[history["val_exact"].idxmax()]
    ck = torch.load(shipped, map_location="cpu", weights_only=True)
    ck["reader"] = reader.state(epoch=int(best["epoch"]), val_exact=float(best["val_exact"]), accept=asdict(rule),
                                pool=pool_of(oof))
    save_checkpoint(out, ck, new=True)
    return pd.concat([pd.DataFrame([{"fold": "base"} | t for t in tried]), crnns], ignore_index=True)


def tool_of(model):
    """The tool `meterseg read` runs from a checkpoint, its segmenter in fp32 so that every CPU gives the same."""
    from .predictor import Predictor
    from .tool.model import Tool, load_reader
    return Tool(Predictor.load(model, "cpu", cpu_bf16=False), load_reader(model, "own"))


def measured(tool, pairs, split):
    """What the tool's accept rule does on a split: share ok, ok wrong and gross (billing, ambiguity accepted),
    and the readings right whatever their status."""
    a = accepted(tool_reads(tool.segmenter, tool.reader, *pairs), tool.reader.accept)
    return {f"{split}_ok_pct": a["coverage_pct"], f"{split}_ok": a["ok"], f"{split}_ok_wrong": a["ok_wrong"],
            f"{split}_ok_gross": a["ok_gross"], f"{split}_right_pct": a["all_right_billing_pct"]}


def read_month(tool, pairs, folder):
    """The month read by `meterseg read` from its own folder (as a utility keeps one), each reading not `ok`
    corrected from its billing label and merged by `review --apply` into folder/FINAL.csv. (FINAL.csv, the
    month's photo folder, figures: photos, ok, ok wrong and gross, photos a person looked at)."""
    photos = folder / "photos"
    photos.mkdir(parents=True)
    truth = {}
    for p, label in zip(*pairs):
        shutil.copyfile(p, photos / Path(p).name)
        truth[Path(p).name] = truth_of(label)
    read(tool, photos, folder / "read.csv", progress=False)
    rows, _ = read_table(folder / "read.csv")
    ok = [r for r in rows if r["status"] == "ok"]
    looked = [r for r in rows if r["status"] != "ok"]
    with open(folder / "corrections.csv", "w", newline="") as f:  # what the person types for each
        f.write("source,reading\n" + "".join(f"{r['source']},{truth[r['source']].billing}\n" for r in looked))
    apply_corrections(folder / "corrections.csv", folder / "read.csv", folder / "FINAL.csv")
    off = [units_off(r["reading"], truth[r["source"]]) for r in ok]
    return folder / "FINAL.csv", photos, {
        "month_photos": len(rows), "month_ok": len(ok), "month_ok_wrong": sum(o != 0 for o in off),
        "month_ok_gross": sum(o is not None and o > 1 for o in off), "month_looked_at": len(looked)}


def simulate(cfg, shipped, work, folds=5, seed=0):
    """Both arms (ARMS) of the simulation in the new folder `work`: (one row per arm and step, 0 the base and k
    the model tuned after k months, with what it did on validation and test and on the month it read next; the
    base's fold CRNNs)."""
    base, month_pairs = months(cfg, seed=seed)
    val, test = split_pairs(cfg, "val"), split_pairs(cfg, "test")
    work = Path(work)
    crnns = base_model(cfg, shipped, base, work / "base.pt", folds)
    rows = []
    for arm, with_ok in ARMS.items():
        model, finals, folders, corrected = work / "base.pt", [], [], 0
        for k in range(len(month_pairs) + 1):
            tool = tool_of(model)
            row = {"arm": arm, "months": k, "corrections": corrected, "rule": str(tool.reader.accept),
                   **measured(tool, val, "val"), **measured(tool, test, "test")}
            if k < len(month_pairs):
                final, photos, month = read_month(tool, month_pairs[k], work / arm.replace(" ", "") / f"month{k + 1}")
                finals.append(final)
                folders.append(photos)
                corrected += month["month_looked_at"]
                model, facts, history, _ = tune(work / "base.pt", finals, folders, final.parent / "tuned.pt", cfg, train=base,
                                                with_ok=with_ok, epochs=tune_epochs(cfg.profile), seed=seed)
                row |= month | {"next_val_exact": float(history["val_exact"].max()), "next_pool": facts["pool"]}
            rows.append(row)
    return pd.DataFrame(rows), crnns


def verdict(table):
    """The target and the --with-ok rule of docs/protocol.md, judged on the simulation's table (Markdown)."""
    lines = []
    for arm, t in table.groupby("arm", sort=False):
        base = t.iloc[0]
        at = t.iloc[(t["corrections"] - TARGET_CORRECTIONS).abs().argmin()]  # the step nearest ~150 corrections
        gain = at["test_ok_pct"] - base["test_ok_pct"]
        wrong = at["test_ok_wrong"] / at["test_ok"] if at["test_ok"] else 0.0
        met = gain >= TARGET_GAIN and wrong <= TARGET_ERROR and at["test_ok_gross"] == 0
        lines.append(f"- **{arm}**: after {int(at['months'])} months ({int(at['corrections'])} photos corrected) test "
                     f"`ok` {at['test_ok_pct']:.1f} % against the base's {base['test_ok_pct']:.1f} % ({gain:+.1f} points), "
                     f"{int(at['test_ok_wrong'])} of {int(at['test_ok'])} `ok` wrong ({100 * wrong:.1f} %), "
                     f"{int(at['test_ok_gross'])} gross: the target (+{TARGET_GAIN:g} points, at most "
                     f"{100 * TARGET_ERROR:g} % wrong, no gross) is {'met' if met else '**not met**'}.")
    last = table[table["months"] == table["months"].max()].set_index("arm")
    plain, with_ok = last.loc[[a for a, w in ARMS.items() if not w][0]], last.loc[[a for a, w in ARMS.items() if w][0]]
    right = lambda r: r["val_right_pct"]  # noqa: E731
    adopt = right(with_ok) > right(plain) and with_ok["val_ok"] >= plain["val_ok"]
    lines.append(f"- `--with-ok` at the last month on validation: {right(with_ok):.1f} % right and {int(with_ok['val_ok'])} "
                 f"`ok` against {right(plain):.1f} % and {int(plain['val_ok'])} without: "
                 + ("it becomes the default." if adopt else "it stays off (it must give more right and no fewer `ok`)."))
    return "\n".join(lines)
