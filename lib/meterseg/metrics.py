"""Per-image overlap metrics from the confusion counts, and their summaries.

Empty-mask rule: a ratio whose denominator is zero scores 1 when the prediction and
the truth agree (no false positives and no false negatives) and 0 otherwise. So an
image with no foreground and an empty prediction scores 1 on every metric.
"""
import sys
from pathlib import Path

import numpy as np
import torch

from .tool.photos import PHOTO_EXT, DataError, read_mask
from .tool.stores import atomic_write, rows_csv

METRICS = ("dice", "jaccard", "precision", "recall", "accuracy")


def confusion(pred, truth):
    """TP, FP, FN, TN of two same-shaped boolean masks (numpy or torch), as ints."""
    if tuple(pred.shape) != tuple(truth.shape):
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from truth shape {tuple(truth.shape)}")
    pred, truth = torch.as_tensor(pred).bool(), torch.as_tensor(truth).bool()
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    return tp, fp, fn, pred.numel() - tp - fp - fn


def _ratio(num, den, agree):
    return num / den if den else float(agree)


def scores(tp, fp, fn, tn):
    """Dice, Jaccard, Precision, Recall, Accuracy (fractions) of one image's counts."""
    agree = fp == 0 and fn == 0
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, agree),
        "jaccard": _ratio(tp, tp + fp + fn, agree),
        "precision": _ratio(tp, tp + fp, agree),
        "recall": _ratio(tp, tp + fn, agree),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn, agree),
    }


def image_scores(pred, truth):
    """Counts and scores of one image, as one flat dict."""
    tp, fp, fn, tn = confusion(pred, truth)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, **scores(tp, fp, fn, tn)}


def summarize(rows):
    """Mean and SD (ddof=1, the sample SD) of each metric over rows, plus the pooled Dice.

    Pooled Dice sums TP/FP/FN over all images first, so large regions weigh more.
    """
    out = {"n": len(rows)}
    for m in METRICS:
        v = np.array([r[m] for r in rows], dtype=float)
        out[m] = float(v.mean()) if len(v) else float("nan")
        out[m + "_sd"] = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
    if rows and "tp" in rows[0]:
        tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
        out["pooled_dice"] = scores(tp, fp, fn, 0)["dice"]
    return out


def _mask_stem(path):
    """The photo stem a mask file stands for: x.jpg.png (predict's naming) and x.png both give x."""
    name = Path(path).name.rsplit(".", 1)[0]
    return Path(name).stem if Path(name).suffix.lower() in PHOTO_EXT else name


def evaluate_folders(pred, truth, out):
    """`meterseg evaluate`: per-image metrics of predicted masks against truth masks, matched by photo stem,
    into the CSV out, and a summary line. Returns the exit status (1 when some failed, 2 when none could be)."""
    pred_dir, truth_dir = Path(pred), Path(truth)
    for d in (pred_dir, truth_dir):
        if not d.is_dir():
            print(f"error: {d}: folder not found", file=sys.stderr)
            return 2
    truths = {p.stem: p for p in sorted(truth_dir.iterdir()) if p.suffix.lower() in PHOTO_EXT}
    preds = {}
    for p in sorted(pred_dir.rglob("*")):
        if p.suffix.lower() in PHOTO_EXT and p.is_file():
            preds.setdefault(_mask_stem(p), []).append(p)
    rows, failed = [], 0
    for stem, tpath in truths.items():
        matches = preds.get(stem, [])
        try:
            if not matches:
                raise DataError(f"{pred_dir / stem}.*: no prediction for ground truth {tpath}")
            if len(matches) > 1:
                raise DataError(f"{tpath}: several predictions could be its: {', '.join(map(str, matches))}")
            pred, truth = read_mask(matches[0]), read_mask(tpath)
            if pred.shape != truth.shape:
                raise DataError(f"{matches[0]}: size {pred.shape[::-1]} differs from {tpath} {truth.shape[::-1]}")
            rows.append({"image": stem, **image_scores(pred, truth)})
        except DataError as e:
            failed += 1
            print(f"error: {e}", file=sys.stderr)
    if not rows:
        print(f"error: {truth_dir}: no image could be evaluated", file=sys.stderr)
        return 2
    atomic_write(out, rows_csv(rows, ["image", *METRICS]))
    s = summarize(rows)
    print(f"{len(rows)} images ({failed} failed): " + ", ".join(f"{m} {s[m]:.4f}±{s[m + '_sd']:.4f}" for m in METRICS)
          + f", pooled dice {s['pooled_dice']:.4f} (SD with ddof=1)")
    return 1 if failed else 0
