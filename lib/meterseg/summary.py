"""results/README.md, written from the committed tables: the paper's claims against what the study measured,
with the commit, profile and wall time of each notebook. Every number in it is read from a file beside it."""
import json
from pathlib import Path

import pandas as pd

from .simulation import verdict
from .tables import PAPER

KB = 1000  # bytes: the archive table's MB are 10^6 bytes
HEADER = ("# Results\n\nWritten by the study (`meterseg.summary`, at the end of each notebook) from the tables in "
          "`tables/` and the records beside them; never edited by hand. The test split is read once.\n")


def _dice(table, row):
    return float(PAPER[table][row].split("±")[0])


def _tables(results):
    t = Path(results) / "tables"
    return {p.stem: pd.read_csv(p) for p in t.glob("*.csv")} if t.is_dir() else {}


def _claims(tb):
    """Rows (claim, paper, measured, verdict) of the segmentation claims, from comparisons.csv."""
    if "comparisons" not in tb:
        return []
    c = tb["comparisons"].set_index(["table", "a", "b"])
    asked = [("Attention gates help (Table III)", "table3", "U-Net", "AttU"),
             ("Gates 1+2 beat gate 1 alone (Table II)", "table2", "gate 1", "gates 1+2"),
             ("Gates 1+2 beat gate 2 alone (Table II)", "table2", "gate 2", "gates 1+2"),
             ("0.36(CE+Dice) beats CE alone (Table I)", "table1", "AttU + CE", "AttU + 0.36(Dice+CE)"),
             ("0.36(CE+Dice) beats Dice alone (Table I)", "table1", "AttU + Dice", "AttU + 0.36(Dice+CE)")]
    rows = []
    for claim, table, a, b in asked:
        if (table, a, b) not in c.index:
            continue
        r = c.loc[(table, a, b)]
        paper = _dice(table, b) - _dice(table, a)
        rows.append((claim, f"{paper:+.2f}", f"{r['diff_of_seed_means']:+.2f} [{r['welch_ci95_lo']:+.2f}, "
                     f"{r['welch_ci95_hi']:+.2f}], {r['seeds']} seeds", r["verdict_seeds"]))
    if ("loss_scale", "AttU + 1.0(Dice+CE)", "AttU + 0.36(Dice+CE)") in c.index:
        r = c.loc[("loss_scale", "AttU + 1.0(Dice+CE)", "AttU + 0.36(Dice+CE)")]
        rows.append(("The 0.36 factor matters (eq. 3)", "(chosen)", f"{r['diff_of_seed_means']:+.2f} [{r['welch_ci95_lo']:+.2f}, "
                     f"{r['welch_ci95_hi']:+.2f}], {r['seeds']} seeds", r["verdict_seeds"]))
    return rows


def _storage(tb, crop):
    """(claim row, sentence) of the storage claim, from 05_crops_by_rule.csv at the shipped crop rule and 05_archive.csv."""
    if "05_crops_by_rule" not in tb or "05_archive" not in tb or not crop:
        return None, ""
    c = tb["05_crops_by_rule"]
    at = c[(c["probability"] == crop["crop_probability"]) & (c["margin"] == crop["crop_margin"])]
    kept, stored_whole = int((at["gt_kept"] >= 1).sum()), int(at["status"].isin(["uncertain", "no_region"]).sum())
    before, after = at["bytes_in"].mean() / KB, at["bytes_out"].mean() / KB
    ours, paper = tb["05_archive"].iloc[0], tb["05_archive"].iloc[1]
    row = ("The crop saves about 2 MB a photo", "~2 MB", f"{before - after:.1f} KB of {before:.1f} KB "
           f"({100 * (1 - after / before):.1f} %); whole window kept on {kept} of {len(at)}",
           f"the fraction carries over; these photos are {paper['mean_photo_MB'] / ours['mean_photo_MB']:.1f}x smaller "
           "than the paper's, so the bytes cannot")
    text = (f"Crop rule (chosen on validation, notebook 05): the box of the pixels with window probability >= "
            f"{crop['crop_probability']}, grown by {crop['crop_margin']} x its longer side; a photo whose region "
            f"confidence is under {crop['crop_min_confidence']} is stored whole. On the {len(at)} test photos: "
            f"{before:.1f} KB -> {after:.1f} KB a photo, the whole window kept on {kept}, {stored_whole} stored whole.")
    return row, text


def _reading(tb):
    """(claim row, lines) of the reading claim and the reader's targets, from 06_reader_comparison.csv and the
    tool's test reads (06_readings_own.csv, whose status is the shipped accept rule's)."""
    if "06_reader_comparison" not in tb:
        return None, []
    r = tb["06_reader_comparison"].set_index(tb["06_reader_comparison"].columns[0])
    col = "own CRNN exact_billing_pct"
    whole, box, tool = (r[col][w] for w in ("whole photo", "box crop (compress)", "rectified predicted quad (the tool)"))
    row = ("The crop helps a machine read the meter", "(qualitative)",
           f"our CRNN, billing: whole photo {whole:.1f} %, box crop {box:.1f} %, rectified predicted quad {tool:.1f} %",
           "holds only for a tight, straightened crop" if tool > max(whole, box) else "does not hold")
    lines = ["| way | " + " | ".join(c for c in r.columns) + " |", "|---|" + "---|" * len(r.columns)]
    lines += [f"| {w} | " + " | ".join(f"{v:g}" for v in r.loc[w]) + " |" for w in r.index]
    if "06_readings_own" in tb:
        t = tb["06_readings_own"]
        t = t[t["way"] == "rectified predicted quad (the tool)"]
        ok = t["status"] == "ok"
        wrong = ok & ~t["exact_billing"].astype(bool)
        gross = ok & t["gross"].astype(bool)
        lines += ["", f"The tool on the {len(t)} test photos (billing, ambiguity accepted): {100 * t['exact_billing'].mean():.1f} % "
                  f"read right; {int(ok.sum())} `ok` ({100 * ok.mean():.1f} %), of which {int(wrong.sum())} wrong "
                  f"({100 * wrong.sum() / max(int(ok.sum()), 1):.1f} %) and {int(gross.sum())} gross (more than one unit off)."]
    return row, lines


def _tuning(tb):
    """Lines of the simulated months of corrections (07_tuning_months.csv): each arm's steps on test and validation."""
    if "07_tuning_months" not in tb:
        return []
    lines = ["| arm | months | photos corrected | test ok % | test ok wrong | test ok gross | validation ok % | "
             "validation ok wrong | validation right % |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['arm']} | {r['months']} | {r['corrections']} | {r['test_ok_pct']:.1f} | {r['test_ok_wrong']} of "
              f"{r['test_ok']} | {r['test_ok_gross']} | {r['val_ok_pct']:.1f} | {r['val_ok_wrong']} of {r['val_ok']} | "
              f"{r['val_right_pct']:.1f} |" for _, r in tb["07_tuning_months"].iterrows()]
    return lines + ["", verdict(tb["07_tuning_months"])]


def _shipped(results, decisions):
    """A sentence on the shipped segmenter's run and test Dice, from its summary.json."""
    if not decisions.exists():
        return ""
    run = json.loads(decisions.read_text()).get("segmenter", {}).get("run")
    found = sorted(Path(results).glob(f"runs/*/{run}/summary.json")) if run else []
    if not found:
        return ""
    s = json.loads(found[0].read_text())
    return (f"`models/attunet.pt`: run `{run}` (seed {s['seed']}), best validation Dice {s['best_val_dice']:.4f} at epoch "
            f"{s['best_epoch']}; test Dice {100 * s['test']['dice']:.2f} % (pooled {100 * s['test']['pooled_dice']:.2f} %).")


def _provenance(results):
    path = Path(results) / "provenance.json"
    if not path.exists():
        return []
    prov = json.loads(path.read_text())
    lines = ["| step | commit | profile | wall time | finished |", "|---|---|---|---|---|"]
    lines += [f"| {k} | `{v['git_commit'][:7]}` | {v['profile']} | {v['wall_seconds'] / 60:.1f} min | {v['finished'][:10]} |"
              for k, v in prov.items()]
    return lines


def write(results):
    """Write results/README.md from what the results folder holds now; returns its path."""
    results = Path(results)
    tb = _tables(results)
    decisions = results / "models" / "decisions.json"
    crop = json.loads(decisions.read_text()).get("crop_rule", {}).get("config", {}) if decisions.exists() else {}
    storage, storage_text = _storage(tb, crop)
    reading, reading_lines = _reading(tb)
    claims = _claims(tb) + [r for r in (storage, reading) if r]
    out = [HEADER, "## The paper's claims", "",
           "Segmentation: test Dice, difference of seed means in points with its Welch 95 % CI; the verdict by the "
           "seed-level rule of docs/protocol.md (equivalence margin +-0.5 points).", "",
           "| claim | paper | measured | verdict |", "|---|---|---|---|"]
    out += [f"| {' | '.join(r)} |" for r in claims]
    notes = []
    for name in ("table1", "table2", "table3", "loss_scale"):
        md = results / "tables" / f"{name}.md"
        if md.exists():  # each table ends with the same length note: shown once, after them
            table, *note = md.read_text(encoding="utf-8").strip().split("\n\n", 1)
            out += ["", table]
            notes += [n for n in note if n not in notes]
    out += [""] + notes if notes else []
    shipped = _shipped(results, decisions)
    if shipped:
        out += ["", "## The shipped segmenter", "", shipped]
    if storage_text:
        out += ["", "## Storage (notebook 05)", "", storage_text]
    if reading_lines:
        out += ["", "## Reading (notebook 06)", "", "Exact readings in %, by billing with ambiguity accepted, billing "
                "strict and upstream's any candidate; per digit; gross errors counted.", ""] + reading_lines
    tuning = _tuning(tb)
    if tuning:
        out += ["", "## Tuning from corrections (notebook 07)", "", "A base reader trained on part of the train split, "
                "the rest read as months, every reading not `ok` corrected and `meterseg tune` run after each month "
                "(docs/protocol.md); `ok` readings wrong by billing with ambiguity accepted, gross: more than one unit "
                "off. Month 0 is the base.", ""] + tuning
    out += ["", "## What produced these files", ""] + _provenance(results)
    path = results / "README.md"
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path
