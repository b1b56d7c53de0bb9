"""What notebook 06 reports: does cropping help a machine read the meter? Five ways of giving the
same recogniser the same test photo, scored against the billing truth (labels.truth_of) and upstream's labels."""
import io
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.stats import beta

from .tool.geometry import corner_error
from .labels import truth_of, turning_wheels, units_off
from .tool.photos import read_label
from .tool.recognisers import DIGITS, Read
from .tool.pipeline import MIN_CONFIDENCE, VOTE_JITTER_PX, VOTES, crop, crop_box, decide, load, quad, read_quad, segment

WAYS = ("whole photo", "box crop (compress)", "rectified labelled quad (ceiling)",
        "rectified predicted quad (the tool)", "stored crop, rectified predicted quad")
TARGET_ERROR = 0.01  # the accept rule's target: at most 1 % of 'ok' readings wrong by billing (docs/protocol.md), none gross


def digit_accuracy(reading, truth, digits=DIGITS):
    """Share of the `digits` wheel positions read right against one reading."""
    r = (reading or "").ljust(digits, "?")[:digits]
    return sum(a == b for a, b in zip(r, truth.ljust(digits, "!")[:digits])) / digits


def scored(read, truth):
    """A Read scored against a photo's labels.Truth: billing strict (the one billing reading), billing with
    ambiguity accepted (the headline, `exact_billing`), upstream's any candidate, per digit against the billing
    reading; units_off (from the nearest accepted reading; NaN where the reading is not 5 digits) and gross (a
    5-digit reading more than one unit off)."""
    off = units_off(read.digits, truth)
    return {"reading": read.digits, "confidence": read.confidence, "billing": truth.billing, "also_ok": truth.also_ok,
            "state": truth.state, "exact_strict": read.digits == truth.billing, "exact_billing": read.digits in truth.accepted,
            "exact_any": read.digits in truth.candidates, "digit_acc": digit_accuracy(read.digits, truth.billing),
            "units_off": float("nan") if off is None else off, "gross": off is not None and off > 1,
            "min_digit_confidence": min(read.digit_confidence, default=0.0), "agreement": read.agreement,
            "half_turn": ";".join(f"{u:.3f}" for u in read.half_turn),
            "half_turned_truth": ";".join(map(str, turning_wheels(truth)))}


def photo_quad(predictor, path):
    """(the tool's corners or None, the photo as RGB uint8) of one photo file."""
    photo = segment(predictor, [load(str(path), Path(path).read_bytes(), predictor.size)])[0]
    return quad(predictor, photo), np.asarray(photo.rgb)


def reading_study(predictor, reader, photos, labels, votes=VOTES):
    """One row per photo and way, the stored crop made by the model's crop rule as compress makes it:
    the reading scored by both rules (scored), seconds, the predicted quad's corner error in photo
    pixels, and the tool's status where the reader has an accept rule. Quads, labelled (the ceiling:
    the tool's reading given the right corners) and predicted, are read as the tool reads them."""
    rows = []
    for photo, label in zip(photos, labels):
        photo = Path(photo)
        t0 = time.perf_counter()
        loaded = segment(predictor, [load(str(photo), photo.read_bytes(), predictor.size)])[0]
        corners = quad(predictor, loaded)
        t_quad = time.perf_counter() - t0
        image = np.asarray(loaded.rgb)
        truth_quad = np.array(read_label(label, loaded.size))
        truth = truth_of(label)
        box, _, _ = crop_box(loaded, predictor.crop_rule)
        crop_bytes, f = crop(loaded, box, predictor.crop_rule.margin)
        stored = np.asarray(Image.open(io.BytesIO(crop_bytes)).convert("RGB"))
        # way: (image, quad to rectify and read or None, reads voted over, seconds spent before reading)
        views = {WAYS[0]: (image, None, 1, 0.0), WAYS[1]: (stored, None, 1, 0.0), WAYS[2]: (image, truth_quad, votes, 0.0)}
        if corners is not None:
            views[WAYS[3]] = (image, corners, votes, t_quad)
            views[WAYS[4]] = (stored, corners - np.array([f["x0"], f["y0"]]), votes, 0.0)
        for way in WAYS:
            row = {"image": photo.stem, "way": way, "candidates": " ".join(truth.candidates),
                   "corner_error_px": corner_error(corners, truth_quad) if corners is not None else np.nan}
            if way not in views:
                rows.append(row | scored(Read("", 0.0, agreement=0.0), truth) | {"status": "no_region", "seconds": np.nan})
                continue
            view, q, n, before = views[way]
            t = time.perf_counter()
            read = reader.read(view) if q is None else read_quad(reader, view, q, n)
            rows.append(row | scored(read, truth) | {"status": decide(read, reader.accept),
                                                          "seconds": before + time.perf_counter() - t})
    return pd.DataFrame(rows)


def accuracy_table(study):
    """Per way: photos, exact readings by billing with ambiguity accepted (the headline), billing strict and
    upstream's any candidate, per-digit accuracy (against the billing reading), in %; one-unit and gross errors
    (5-digit readings one unit, or more, from every accepted reading), counted; and mean seconds."""
    g = study.groupby("way", sort=False)
    return pd.DataFrame({"photos": g.size(), "exact_billing_pct": 100 * g["exact_billing"].mean(),
                         "exact_strict_pct": 100 * g["exact_strict"].mean(), "exact_any_pct": 100 * g["exact_any"].mean(),
                         "digit_pct": 100 * g["digit_acc"].mean(), "one_unit": g["units_off"].apply(lambda u: int((u == 1).sum())),
                         "gross": g["gross"].sum().astype(int), "mean_seconds": g["seconds"].mean()}).reindex(WAYS)


def failures(study, way=WAYS[3], n=8):
    """The tool's wrong readings by billing (ambiguity accepted), lowest confidence first."""
    wrong = study[(study["way"] == way) & ~study["exact_billing"]]
    return wrong.sort_values("confidence")[["image", "reading", "billing", "also_ok", "state", "candidates", "confidence",
                                            "status", "corner_error_px"]].head(n)


def gap_sources(study):
    """Where the tool loses against the ceiling: photos the labelled quad reads right and the tool does not,
    split by whether the predicted corners were far off (more than 10 px mean error) or not."""
    wide = study.pivot(index="image", columns="way", values="exact_billing")
    lost = wide[wide[WAYS[2]] & ~wide[WAYS[3]]].index
    err = study[study["way"] == WAYS[3]].set_index("image")["corner_error_px"]
    return {"ceiling_right_tool_wrong": len(lost), "of_which_corners_over_10px": int((err.reindex(lost) > 10).sum()),
            "tool_right_ceiling_wrong": int((~wide[WAYS[2]] & wide[WAYS[3]]).sum())}


def verdict(acc, own=None):
    """The paper's claim ("the crop improves machine reading") against the accuracy table, in words, by
    billing with ambiguity accepted (upstream's any candidate in brackets); own: our reader's accuracy table."""
    def pct(table, way):
        return f"{table['exact_billing_pct'][way]:.1f} % ({table['exact_any_pct'][way]:.1f} %)"
    e = acc["exact_billing_pct"]
    whole, box, ceiling, tool, stored = (e[w] for w in WAYS)
    return (f"Exact readings on {int(acc['photos'].iloc[0])} test photos, billing (upstream's any candidate): whole photo "
            f"{pct(acc, WAYS[0])}, box crop {pct(acc, WAYS[1])}, rectified labelled quad {pct(acc, WAYS[2])} (ceiling), "
            f"rectified predicted quad {pct(acc, WAYS[3])} (the tool), stored crop {pct(acc, WAYS[4])}.\n"
            f"The crop helps a recogniser only when it is tight and straightened: the box crop adds {box - whole:+.1f} "
            f"points over the whole photo, the rectified predicted quad {tool - whole:+.1f}. The tool is "
            f"{abs(ceiling - tool):.1f} points {'below' if ceiling >= tool else 'above'} the ceiling; storing the crop "
            f"losslessly costs {tool - stored:.1f} points."
            + ("" if own is None else f"\nOur own CRNN: rectified labelled quad {pct(own, WAYS[2])}, rectified predicted "
               f"quad {pct(own, WAYS[3])}, stored crop {pct(own, WAYS[4])}."))


READER_EPOCHS = {"smoke": 3}  # the CRNN's epochs by profile (else 20): smoke only checks that notebook 06 runs, and
# its CRNNs learn nothing from the synthetic strips in 20 epochs either
FOLD_RETRIES = {"smoke": 0}  # retries of a failed fold CRNN by profile (else 2): under smoke every fold "fails"


def train_own_reader(cfg, predictor, photos=None, labels=None, epochs=None, jitter=8.0, copies=3, seed=0):
    """Our CRNN trained on rectified labelled quads of the train split (or of the photos given), every photo
    with its billing reading as the target, each also with `copies` copies whose corners are jittered by
    `jitter` px, like predicted corners, for `epochs` (READER_EPOCHS); its epoch picked on the validation split
    as the tool sees it (predicted quads): (OwnReader, history DataFrame)."""
    from .dataset import split_pairs
    from .ownreader import OwnReader, labelled_strips, train_reader
    photos, labels = (photos, labels) if photos is not None else split_pairs(cfg, "train")
    epochs = epochs or READER_EPOCHS.get(cfg.profile, 20)
    x, ys = labelled_strips(photos, labels, jitter=jitter, copies=copies, seed=seed)
    vp, vl = split_pairs(cfg, "val")
    xv, yv = labelled_strips(vp, vl, quads=[photo_quad(predictor, p)[0] for p in vp])
    model, history = train_reader(x, ys, xv, yv, epochs=epochs, seed=seed)
    return OwnReader(model), pd.DataFrame(history, columns=["epoch", "ctc_loss", "val_exact"])


def tool_reads(predictor, reader, photos, labels):
    """The tool's voted read of each photo's predicted quad, scored (scored): one row per photo."""
    rows = []
    for photo, label in zip(photos, labels):
        corners, image = photo_quad(predictor, photo)
        read = Read("", 0.0, agreement=0.0) if corners is None else read_quad(reader, image, corners)
        rows.append({"image": Path(photo).stem} | scored(read, truth_of(label)))
    return pd.DataFrame(rows)


FAILED_FOLD = 0.5  # a CRNN under this best validation exact (one read) failed to train (CTC can stall): retrained


def learned_reader(cfg, predictor, photos, labels, seed=0, retries=None, step=1):
    """train_own_reader on the photos given until a CRNN learns: one whose best validation exact is under
    FAILED_FOLD stalled and would stand for no reader we ship, so it is trained again with seed + step, up to
    `retries` (FOLD_RETRIES) times. (reader, history, one row per CRNN trained: seed, best validation exact, used)."""
    retries = FOLD_RETRIES.get(cfg.profile, 2) if retries is None else retries
    trained = []
    for attempt in range(1 + retries):
        s = seed + attempt * step
        reader, history = train_own_reader(cfg, predictor, photos, labels, seed=s)
        best = float(history["val_exact"].max())
        trained.append({"seed": s, "best_val_exact": best, "used": best >= FAILED_FOLD or attempt == retries})
        if trained[-1]["used"]:
            return reader, history, trained


def out_of_fold_reads(cfg, predictor, folds=5, seed=0, retries=None, train=None):
    """The tool's reads of every train photo by a CRNN that did not train on it (folds CRNNs, each trained
    as train_own_reader on the other folds): what the accept rule is chosen on, since 106 validation
    photos are too few for a 1 % error rate. The segmenter did train on these photos, so their quads
    are better than unseen photos' (the rule is then checked on validation). A fold CRNN that stalls is
    trained again with the next seed (learned_reader). `train`: (photos, labels) in place of the train split.
    Returns (reads, one row per CRNN trained: fold, seed, best validation exact, used)."""
    from .dataset import split_pairs
    photos, labels = train or split_pairs(cfg, "train")
    fold = np.random.default_rng(seed).permutation(len(photos)) % folds
    parts, trained = [], []
    for k in range(folds):
        inside = [i for i in range(len(photos)) if fold[i] != k]
        reader, _, tried = learned_reader(cfg, predictor, [photos[i] for i in inside], [labels[i] for i in inside],
                                          seed + k, retries, step=folds)
        trained += [{"fold": k} | t for t in tried]
        out = [i for i in range(len(photos)) if fold[i] == k]
        parts.append(tool_reads(predictor, reader, [photos[i] for i in out], [labels[i] for i in out]).assign(fold=k))
    return pd.concat(parts, ignore_index=True), pd.DataFrame(trained)


def upper_error(errors, n, confidence=0.95):
    """One-sided Clopper-Pearson upper bound of an error rate seen as errors in n."""
    return 1.0 if n == 0 else float(beta.ppf(confidence, errors + 1, n - errors)) if errors < n else 1.0


def half_turned_threshold(reads, grid=(0.05, 0.1, 0.2, 0.3, 0.5)):
    """The half-turn probability from which a wheel is called half-turned: the one of the grid with the best F1
    against the labelled half-turned wheels of `reads` (a frame of scored rows)."""
    table = []
    for t in grid:
        tp = fp = fn = 0
        for nd, truth in zip(reads["half_turn"], reads["half_turned_truth"]):
            said = {i + 1 for i, u in enumerate(map(float, filter(None, nd.split(";")))) if u >= t}
            real = {int(w) for w in filter(None, truth.split(";"))}
            tp, fp, fn = tp + len(said & real), fp + len(said - real), fn + len(real - said)
        f1 = 2 * tp / max(1, 2 * tp + fp + fn)
        table.append({"threshold": t, "true": tp, "false": fp, "missed": fn, "f1": f1})
    table = pd.DataFrame(table)
    return float(table.loc[table["f1"].idxmax(), "threshold"]), table


def choose_accept_rule(reads, target=TARGET_ERROR, half_turned=0.5):
    """The accept rule with the most readings 'ok' among those whose 'ok' readings have no gross error and an
    error (billing, ambiguity accepted) whose one-sided 95 % upper bound is at most `target`, over a grid of
    digit-confidence floors, vote agreements and whether a half-turned wheel goes to review. (AcceptRule, the
    table of every rule tried)."""
    from .tool.card import AcceptRule
    c = reads["min_digit_confidence"]
    floors = sorted({0.0, *c[c <= c.median()]})  # every floor that changes what is accepted, up to half
    five = (reads["reading"].str.len() == DIGITS) & (reads["confidence"] >= MIN_CONFIDENCE)  # else unreadable
    half = reads["half_turn"].apply(lambda nd: any(float(u) >= half_turned for u in filter(None, nd.split(";"))))
    rows = []
    for floor in floors:
        for a in (0.0, 3 / 9, 5 / 9, 7 / 9, 1.0):
            for rh in (False, True):
                ok = five & (c >= floor) & (reads["agreement"] >= a - 1e-9) & ~(half & rh)
                n, wrong, gross = int(ok.sum()), int((ok & ~reads["exact_billing"]).sum()), int((ok & reads["gross"]).sum())
                rows.append({"min_digit_confidence": floor, "min_agreement": round(a, 4), "review_half_turned": rh,
                             "photos": len(reads), "coverage": n / len(reads), "ok": n, "wrong": wrong, "gross": gross,
                             "upper_error": upper_error(wrong, n)})
    table = pd.DataFrame(rows)
    fit = table[(table["upper_error"] <= target) & (table["gross"] == 0)]
    best = (fit.sort_values(["coverage", "min_digit_confidence"], ascending=[False, True]) if len(fit)
            else table.sort_values(["upper_error", "coverage"], ascending=[True, False], kind="stable")).iloc[0]
    rule = AcceptRule(float(best["min_digit_confidence"]), float(best["min_agreement"]), half_turned,
                      bool(best["review_half_turned"]))
    table["chosen"] = (table["min_digit_confidence"] == rule.min_digit_confidence) & (
        table["min_agreement"] == rule.min_agreement) & (table["review_half_turned"] == rule.review_half_turned)
    return rule, table


def accepted(reads, rule):
    """Coverage and accuracy of the readings the rule calls 'ok', by both rules."""
    ok = reads.apply(lambda r: decide(Read(r["reading"], r["confidence"], (r["min_digit_confidence"],),
                                           tuple(float(u) for u in filter(None, r["half_turn"].split(";"))),
                                           r["agreement"]), rule) == "ok", axis=1)
    n = int(ok.sum())
    return {"photos": len(reads), "ok": n, "coverage_pct": 100 * n / len(reads),
            "ok_right_billing_pct": 100 * reads.loc[ok, "exact_billing"].mean() if n else float("nan"),
            "ok_right_any_pct": 100 * reads.loc[ok, "exact_any"].mean() if n else float("nan"),
            "ok_wrong": int((ok & ~reads["exact_billing"]).sum()), "ok_gross": int((ok & reads["gross"]).sum()),
            "all_right_billing_pct": 100 * reads["exact_billing"].mean()}


def risk_coverage(reads):
    """Accuracy (billing, ambiguity accepted) of the readings accepted against the share accepted, and the gross
    errors among them, accepting by decreasing lowest digit confidence: the curve notebook 06 draws."""
    r = reads.assign(five=reads["reading"].str.len() == DIGITS).sort_values(["five", "min_digit_confidence"], ascending=False)
    right = r["exact_billing"].to_numpy().cumsum()
    n = np.arange(1, len(r) + 1)
    return pd.DataFrame({"coverage_pct": 100 * n / len(r), "accuracy_pct": 100 * right / n,
                         "gross": r["gross"].to_numpy().cumsum()})


def voting_on_validation(predictor, reader, photos, labels, settings=((1, 0.0), (5, 4.0), (9, 2.0), (9, 4.0), (9, 8.0))):
    """Exact readings (%) of the validation photos' predicted quads for each (votes, jitter px): the
    check behind pipeline.VOTES and VOTE_JITTER_PX. Quads are predicted once per photo."""
    rows, quads = [], [photo_quad(predictor, p) for p in photos]
    for votes, jitter in settings:
        exact = [qi[0] is not None and read_quad(reader, qi[1], qi[0], votes, jitter).digits in truth_of(l).accepted
                 for qi, l in zip(quads, labels)]
        rows.append({"votes": votes, "jitter_px": jitter, "photos": len(exact), "val_exact_pct": 100 * np.mean(exact),
                     "shipped": (votes, jitter) == (VOTES, VOTE_JITTER_PX)})
    return pd.DataFrame(rows)


def compare_readers(off_the_shelf, own):
    """Exact-reading % (billing with ambiguity accepted, billing strict, upstream's any candidate), per-digit % and
    gross errors of each way for both readers, side by side."""
    return pd.DataFrame({f"{name} {col}": t[col] for col in ("exact_billing_pct", "exact_strict_pct", "exact_any_pct",
                                                             "digit_pct", "gross")
                         for name, t in (("rapidocr", off_the_shelf), ("own CRNN", own))})
