"""`meterseg tune`: the reader taught by the readings people corrected. The rows of FINAL.csv files
(`review --apply`) made by a person are new targets on the quads they name; the CRNN goes on from the
model's weights on them and the training photos together, and its accept rule is chosen again with
their reads in the pool (docs/protocol.md, Tuning from corrections). A new checkpoint is written; MODEL
and every existing file stay as they are."""
import hashlib
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from .labels import Truth
from .reading_eval import READER_EPOCHS, choose_accept_rule, photo_quad, scored
from .tool.card import CheckpointError, accept_rule
from .tool.photos import DataError
from .tool.pipeline import CORNERS, READ_FIELDS
from .tool.recognisers import DIGITS, Read
from .tool.review import read_table

FINAL_FIELDS = READ_FIELDS + ["reading_by", "model_reading"]  # what `review --apply` writes of a readings CSV
POOL_FIELDS = ("image", "reading", "confidence", "min_digit_confidence", "agreement", "half_turn", "exact_billing", "gross")
TUNE_EPOCHS = 8
TUNE_LR = 5e-4  # a quarter of training's peak: move from the weights rather than forget them
JITTER_PX, COPIES = 8.0, 3  # as in training (reading_eval.train_own_reader)


def pool_of(reads):
    """The accept rule's pool as the checkpoint keeps it: plain lists of POOL_FIELDS from scored reads."""
    return {k: [v.item() if hasattr(v, "item") else v for v in reads[k]] for k in POOL_FIELDS}


def _floats(text):
    return tuple(float(v) for v in filter(None, (text or "").split(";")))


def corrected_read(row):
    """A FINAL row's read, the model's as it was, scored against the person's reading: a pool row. Its
    half-turned wheels (the list `read` wrote at the model's threshold) become probabilities 1 and 0."""
    wheels = {int(w) for w in filter(None, row["half_turned"].replace("n/a", "").split(";"))}
    digits = row["model_reading"]
    read = Read(digits, float(row["confidence"] or 0), _floats(row["digit_confidence"]),
                tuple(float(i + 1 in wheels) for i in range(len(digits))) if digits else (),
                float(row["agreement"] or 0))
    return {"image": row["sha256"]} | scored(read, Truth(row["reading"], "", "person", ()))


def photo_roots(paths, photos):
    """The folder each FINAL.csv's sources are under: one folder for all, or one per file (each month's)."""
    roots = [photos] if isinstance(photos, (str, Path)) else list(photos)
    if len(roots) not in (1, len(paths)):
        raise DataError(f"{len(roots)} photo folders for {len(paths)} FINAL.csv files: give one for all, or one per file")
    return roots * len(paths) if len(roots) == 1 else roots


def read_finals(paths, photos, with_ok=False):
    """(targets, rows left out for having no quad) of FINAL.csv files, every bad line an error naming its file
    and line. targets: one per photo (by SHA-256, the last file's row winning) a person corrected, or with_ok
    also the model's `ok` rows: {path, quad (4, 2), reading, by, row}. Photos are found by their source under
    `photos`: one folder, or one per file."""
    found, errors, no_quad = {}, [], 0
    for path, photos in zip(paths, photo_roots(paths, photos)):
        rows, fields = read_table(path)
        missing = [f for f in FINAL_FIELDS if f not in fields]
        if missing:
            errors.append(f"{path}: not a FINAL.csv of `review --apply` over `meterseg read`: no column {', '.join(missing)}")
            continue
        for n, row in enumerate(rows, start=2):
            by = row["reading_by"]
            if by not in ("person", "model"):
                errors.append(f"{path}: line {n}: reading_by {by!r} is neither person nor model")
                continue
            if not (by == "person" or (with_ok and row["status"] == "ok")):
                continue
            where = f"{path}: line {n}"
            photo = Path(photos) / row["source"]
            if not re.fullmatch(rf"\d{{{DIGITS}}}", row["reading"]):
                errors.append(f"{where}: reading {row['reading']!r} is not {DIGITS} digits")
            elif not photo.is_file():
                errors.append(f"{where}: photo {row['source']!r} not found under {photos}")
            elif not all(row[k] for k in CORNERS):
                no_quad += 1  # the tool found no window: a person may bill it, but it has no strip to teach
            else:
                found[row["sha256"] or str(photo)] = {"path": photo, "quad": np.array([float(row[k]) for k in CORNERS]).reshape(4, 2),
                                                      "reading": row["reading"], "by": by, "row": row}
    if errors:
        raise DataError("\n".join(errors))
    if not any(t["by"] == "person" for t in found.values()):
        raise DataError(f"{', '.join(map(str, paths))}: no row with reading_by = person: nothing a person corrected to learn from")
    return list(found.values()), no_quad


def load_for_tuning(model):
    """(checkpoint dict, its reader's state) of a torch checkpoint that carries our reader and its pool."""
    from .checkpoint import torch_load
    model = Path(model)
    if model.is_dir():
        raise CheckpointError(f"{model}: an exported folder; tuning needs the torch checkpoint it was exported from (.pt)")
    if not model.is_file():
        raise CheckpointError(f"{model}: no such checkpoint")
    ck = torch_load(model)
    state = ck.get("reader")
    if state is None:
        raise CheckpointError(f"{model}: carries no reader of ours to tune (notebook 06 adds it)")
    if "pool" not in state:
        raise CheckpointError(f"{model}: its reader carries no out-of-fold reads to choose an accept rule on; "
                              "build it again with notebook 06")
    return ck, state


def sha256_file(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tune(model, finals, photos, out, cfg, train=None, with_ok=False, epochs=TUNE_EPOCHS, lr=TUNE_LR, seed=0,
         progress=False):
    """Write a tuned copy of checkpoint `model` to `out` (refused if it exists): its reader tuned on the targets
    of the FINAL.csv files `finals` (photos under `photos`, a folder or one per file) together with the train split of the dataset `cfg`
    names (or `train` = (photos, labels)), the epoch kept by reads of its validation split on the model's
    predicted quads; its accept rule chosen again. Every input is checked before anything is trained. Returns
    (out, facts recorded under the reader's `tuned`, history DataFrame, rule table)."""
    import torch
    from .checkpoint import save_checkpoint
    from .dataset import split_pairs
    from .ownreader import OwnReader, labelled_strips, train_reader
    from .predictor import Predictor
    out = Path(out)
    if out.exists():
        raise DataError(f"{out}: already exists; tune writes a new checkpoint and never replaces a file")
    ck, state = load_for_tuning(model)
    targets, no_quad = read_finals(finals, photos, with_ok)
    train, val = train or split_pairs(cfg, "train"), split_pairs(cfg, "val")
    start, old_rule = OwnReader.from_state(state), accept_rule(state.get("accept"))
    half_turned = old_rule.half_turned if old_rule else 0.5

    person = [t for t in targets if t["by"] == "person"]
    x_old, y_old = labelled_strips(*train, jitter=JITTER_PX, copies=COPIES, seed=seed)
    x_new, y_new = labelled_strips([t["path"] for t in targets], [None] * len(targets), quads=[t["quad"] for t in targets],
                                   truths=[Truth(t["reading"], "", "person", ()) for t in targets],
                                   jitter=JITTER_PX, copies=COPIES, seed=seed + 1)
    predictor = Predictor.load(model)
    x_val, y_val = labelled_strips(*val, quads=[photo_quad(predictor, p)[0] for p in val[0]])
    tuned, history = train_reader(torch.cat([x_old, x_new]), y_old + y_new, x_val, y_val, epochs=epochs, seed=seed,
                                  lr=lr, start=start.model, progress=progress)
    history = pd.DataFrame(history, columns=["epoch", "ctc_loss", "val_exact"])

    # the pool: the model's, and each corrected photo's read by the model that read it (a photo once)
    seen = set(state["pool"]["image"])
    fresh = [corrected_read(t["row"]) for t in person if t["row"]["sha256"] not in seen]
    pool = pd.concat([pd.DataFrame(state["pool"]), pd.DataFrame(fresh, columns=list(POOL_FIELDS))], ignore_index=True)
    rule, rule_table = choose_accept_rule(pool, half_turned=half_turned)
    best = history.loc[history["val_exact"].idxmax()]
    facts = {"from": Path(model).name, "from_sha256": sha256_file(model),
             "corrections": len(person), "model_ok_rows": len(targets) - len(person), "no_quad": no_quad,
             "finals": [{"name": Path(f).name, "sha256": sha256_file(f)} for f in finals],
             "train_photos": len(train[0]), "photos": len(train[0]) + len(targets), "epochs": epochs, "lr": lr,
             "pool": len(pool), "pool_new": len(fresh)}
    ck = {**ck, "reader": OwnReader(tuned).state(epoch=int(best["epoch"]), val_exact=float(best["val_exact"]),
                                                 accept=asdict(rule), pool=pool_of(pool), tuned=facts)}
    try:
        save_checkpoint(out, ck, new=True)
    except FileExistsError:
        raise DataError(f"{out}: appeared while tuning; nothing is replaced") from None
    return out, facts, history, rule_table


def tune_epochs(profile):
    """Tuning's epochs by profile: smoke only checks that the loop runs."""
    return min(TUNE_EPOCHS, READER_EPOCHS.get(profile, TUNE_EPOCHS))
