"""The shipped model, results/models/attunet.pt and its README, built in one place (build) from the decisions
the notebooks record in results/models/decisions.json: 02 the segmenter run, 05 the crop rule, 06 the reader.

A notebook records its decision and the shipped file is built again from all of them, never amended in place.
The crop rule and the reader were chosen on one segmenter, so choosing another segmenter drops them.
"""
import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from . import study
from .analysis import SAFETY
from .checkpoint import save_checkpoint
from .config import PAPER_LOSS_WEIGHT
from .metrics import METRICS
from .reading_eval import TARGET_ERROR
from .tool.stores import atomic_write
from .tune import pool_of

DECISIONS = "decisions.json"
READER = "reader.pt"  # the CRNN notebook 06 ships, beside attunet.pt and out of git (only attunet.pt is committed)
SECTIONS = {"segmenter": "", "crop_rule": "\n## The crop rule\n\n", "reader": "\n## The reader\n\n"}  # README order


def decisions(results):
    path = Path(results) / "models" / DECISIONS
    return json.loads(path.read_text()) if path.is_file() else {}


def decide(results, step, text, **decision):
    """Record one step's decision with the README section that explains it, then build the shipped model."""
    made = decisions(results)
    if step == "segmenter" and made.get("segmenter", {}).get("run") != decision["run"]:
        made = {}  # the crop rule and the reader were chosen on another segmenter
    if "segmenter" not in made and step != "segmenter":
        raise ValueError(f"{Path(results) / 'models' / DECISIONS}: no segmenter chosen yet (notebook 02 chooses it)")
    made[step] = {**decision, "text": text, **({} if step == "segmenter" else {"on_segmenter": made["segmenter"]["run"]})}
    (Path(results) / "models").mkdir(parents=True, exist_ok=True)
    shipped = build(results, made, step)  # first: a decision the shipped file cannot carry is not recorded
    atomic_write(Path(results) / "models" / DECISIONS, (json.dumps(made, indent=1) + "\n").encode())
    return shipped


def build(results, made, step):
    """results/models/attunet.pt from the decisions `made` (the latest, `step`): the chosen run's best.pt, with the
    crop rule in its config and the reader under the key `reader` where they are decided; README.md beside it says
    where each came from. Git keeps attunet.pt but not the run's best.pt or reader.pt, so on a fresh clone a part
    that `step` did not change, and whose file is not here, is taken from the shipped attunet.pt as it stands."""
    results = Path(results)
    path = results / "models" / "attunet.pt"

    def part(name, file):
        if file.is_file():
            return torch.load(file, map_location="cpu", weights_only=True)
        shipped = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else {}
        stand_in = shipped if name == "segmenter" else shipped.get("reader")
        if step == name or not stand_in:
            raise FileNotFoundError(f"{file}: missing, and {path.name} cannot stand in for it; run the notebook that "
                                    f"decides the {name} again")
        return stand_in

    ck = {k: v for k, v in part("segmenter", results / made["segmenter"]["checkpoint"]).items() if k != "reader"}
    if "crop_rule" in made:
        ck["config"] = json.dumps({**json.loads(ck["config"]), **made["crop_rule"]["config"]})
    if "reader" in made:
        ck["reader"] = part("reader", results / made["reader"]["checkpoint"])
    save_checkpoint(path, ck)
    readme = "".join(head + made[s]["text"] for s, head in SECTIONS.items() if s in made)
    atomic_write(results / "models" / "README.md", readme.encode())
    return path


# The shipped model's longer training, by profile: the table runs' recipe (the cosine stretched) for the seed
# whose table run has the best validation Dice. The cpu rows train at their converged length (docs/protocol.md)
# and ship as they are, like any profile not listed.
SHIP_EPOCHS = {"smoke": 12}


def segmenter(results, profile, seeds, data=""):
    """Notebook 02: ship the paper AttU with the best validation Dice (not test Dice).

    The candidates are the table runs of `seeds` and the best of them trained SHIP_EPOCHS[profile]
    epochs (trained here if it is not yet). (path, summary of the shipped run, candidates table).
    """
    runs = [(study.load_run(results, profile, s)[0], {}) for s in seeds]
    seed = max(runs, key=lambda r: r[0]["best_val_dice"])[0]["seed"]
    longer = ""
    if profile in SHIP_EPOCHS:
        runs.append((study.ensure_run(results, profile, seed, data, epochs=SHIP_EPOCHS[profile]), dict(epochs=SHIP_EPOCHS[profile])))
        longer = f" and seed {seed} (their best) trained {SHIP_EPOCHS[profile]} epochs"
    best, chosen = max(runs, key=lambda r: r[0]["best_val_dice"])
    cfg = study.row_config(profile, best["seed"], **chosen)
    candidates = pd.DataFrame([{"run": r["run"], "seed": r["seed"], "epochs": study.row_config(profile, r["seed"], **f).epochs,
                                "best_epoch": r["best_epoch"], "val_dice": r["best_val_dice"], "shipped": r is best}
                               for r, f in runs])
    t = best["test"]
    text = (f"# attunet.pt\n\nThe `{profile}`-profile Attention U-Net (gates 1+2, {PAPER_LOSS_WEIGHT:g}(CE+Dice)), run "
            f"`{best['run']}` (seed {best['seed']}, {cfg.epochs} epochs), chosen by validation Dice ({best['best_val_dice']:.4f}, "
            f"epoch {best['best_epoch']}) among the table runs of seeds {list(seeds)}{longer}.\n\n"
            f"Test split ({t['n']} photos, metrics at each photo's original size, SD with ddof=1):\n\n"
            + "| metric | mean | sd |\n|---|---|---|\n"
            + "".join(f"| {m} | {100 * t[m]:.2f}% | {100 * t[m + '_sd']:.2f}% |\n" for m in METRICS)
            + f"| pooled dice | {100 * t['pooled_dice']:.2f}% | |\n\n"
            f"Produced by commit `{best['git_commit']}` on {best['device']} ({best['train_seconds']:.0f} s of training).\n\n"
            "Use: `meterseg predict --checkpoint results/models/attunet.pt --out masks/ photo.jpg`\n")
    checkpoint = (study.run_dir(results, cfg) / "best.pt").relative_to(results)
    return decide(results, "segmenter", text, run=best["run"], checkpoint=checkpoint.as_posix()), best, candidates


def crop_rule(results, rule, table):
    """Notebook 05: ship the crop rule chosen on validation (the table of analysis.choose_crop_rule), so that
    `compress` uses it by default (Predictor.crop_rule)."""
    chosen = table[table["chosen"]].iloc[0]
    text = (f"`compress` crops to the box of the pixels the model gives the window at least {rule.probability}, "
            f"grown by {rule.margin} x its longer side (unless `--margin` says otherwise): {SAFETY:g} x the largest margin a "
            f"validation photo needed ({chosen['largest_needed']:.4f}). A photo whose region confidence is under "
            f"{rule.min_confidence} (the lowest on validation) is stored whole, status `uncertain` (notebook 05, "
            "results/tables/05_val_needed_margins.csv).\n")
    return decide(results, "crop_rule", text, config=rule.stored())


def reader(results, own, history, accept, rule_table, pool):
    """Notebook 06: ship our CRNN (its epoch best on validation) and its accept rule inside attunet.pt (one
    shipped file: region and reading), so that `meterseg read` and `compress --read` use them. `pool`, the
    scored out-of-fold reads the rule was chosen on, goes with it: `meterseg tune` chooses the rule again on
    them with the corrected photos added."""
    best = history.loc[history["val_exact"].idxmax()]
    save_checkpoint(Path(results) / "models" / READER,
                    own.state(epoch=int(best["epoch"]), val_exact=float(best["val_exact"]), accept=asdict(accept),
                              pool=pool_of(pool)))
    chosen = rule_table[rule_table["chosen"]].iloc[0]
    met = chosen["upper_error"] <= TARGET_ERROR and chosen["gross"] == 0
    text = (f"Key `reader`: our CRNN (notebook 06), trained on every train photo's rectified labelled quad with its billing "
            f"reading (data/labels/water-meters-billing.csv; a wheel caught between two digits taught as the digit it is "
            f"leaving, a carry decided by the wheel to its right) as the target, epoch {int(best['epoch'])} chosen by "
            f"billing readings of the validation split's predicted quads ({100 * best['val_exact']:.1f} %). A reading is "
            f"`ok` when {accept} holds, else `review`. It was chosen on out-of-fold reads of the train split for no gross "
            f"error (more than one unit off) and at most {100 * TARGET_ERROR:g} % wrong among `ok` (billing, ambiguity "
            f"accepted; one-sided 95 % bound): there it accepts {int(chosen['ok'])} of {int(chosen['photos'])} "
            f"({100 * chosen['coverage']:.1f} %) with {int(chosen['wrong'])} wrong, {int(chosen['gross'])} gross, "
            + (f"bound {100 * chosen['upper_error']:.2f} %." if met else f"bound {100 * chosen['upper_error']:.2f} %: **no rule "
               "tried met the target**, so this is the one with the lowest bound.")
            + " Validation and test figures: notebook 06, results/tables/06_*.\n\n"
            "Use: `meterseg read --checkpoint results/models/attunet.pt --out readings.csv photo.jpg` "
            "(`--reader rapidocr` for the off-the-shelf recogniser)\n")
    return decide(results, "reader", text, checkpoint=f"models/{READER}", epoch=int(best["epoch"]))
