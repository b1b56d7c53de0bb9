"""Per-image overlap metrics from the confusion counts, and their summaries.

Empty-mask rule: a ratio whose denominator is zero scores 1 when the prediction and
the truth agree (no false positives and no false negatives) and 0 otherwise. So an
image with no foreground and an empty prediction scores 1 on every metric.
"""
import numpy as np
import torch

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
