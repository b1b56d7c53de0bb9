"""What notebook 05 reports: savings by crop margin, by format, baselines at equal bytes, an archive."""
import io
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .tool.card import CropRule
from .tool.geometry import grow_box, region_box
from .tool.pipeline import crop, crop_box, encode, load, region, segment

MARGINS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
PROBABILITIES = (0.5, 0.1, 0.03, 0.01)  # box thresholds the crop rule may use: lower ones grow the box where the model is unsure
SAFETY = 2.0  # the crop margin is this x the largest one a validation photo needed (docs/protocol.md)
PAPER_SAVING_BYTES = 2e6  # "about 2 MB saved per photo"


def gt_kept(box, truth):
    """Share of ground-truth pixels of a bool mask inside box (1.0 when the truth is empty)."""
    total = int(truth.sum())
    if total == 0:
        return 1.0
    x0, y0, x1, y1 = box
    return int(truth[y0:y1, x0:x1].sum()) / total


def psnr(a, b):
    """PSNR in dB of two uint8 arrays (inf when identical)."""
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ssim(a, b, sigma=1.5):
    """Mean SSIM (Wang et al. 2004; 11x11 Gaussian window, K1=0.01, K2=0.03) of two greyscale uint8 arrays."""
    x = torch.from_numpy(a.astype(np.float64))[None, None]
    y = torch.from_numpy(b.astype(np.float64))[None, None]
    r = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-r**2 / (2 * sigma**2))
    g = g / g.sum()
    win = (g[:, None] * g[None, :])[None, None]
    blur = lambda t: torch.nn.functional.conv2d(t, win)  # noqa: E731 ("valid" windows only)
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def _grey(im):
    return np.asarray(im.convert("L"))


def _largest_quality_under(im, target, fmt="jpeg"):
    """The highest JPEG quality (1..95) whose bytes fit target, or 1: (quality, bytes)."""
    lo, hi, best = 1, 95, None
    while lo <= hi:
        q = (lo + hi) // 2
        data = encode(im, fmt, q)
        if len(data) <= target:
            best, lo = (q, data), q + 1
        else:
            hi = q - 1
    return best or (1, encode(im, fmt, 1))


def _largest_scale_under(im, target, quality=90):
    """The largest downscale factor (bisection) whose JPEG fits target: (scale, bytes)."""
    def shrink(s):
        return im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.LANCZOS)
    lo, hi, best = 0.02, 1.0, None
    for _ in range(12):
        s = (lo + hi) / 2
        data = encode(shrink(s), "jpeg", quality)
        if len(data) <= target:
            best, lo = (s, data), s
        else:
            hi = s
    return best or (lo, encode(shrink(lo), "jpeg", quality))


def needed_margins(predictor, photos, truths, probabilities=PROBABILITIES):
    """Per photo and box probability: the smallest margin whose crop keeps the whole labelled region
    (its shortfall over the predicted box, a share of the box's longer side; inf with no box), the
    region's confidence, and the box's size in pixels."""
    rows = []
    for photo, truth in zip(photos, truths):
        photo = Path(photo)
        loaded = segment(predictor, [load(str(photo), photo.read_bytes(), predictor.size)])[0]
        t = region_box(truth)
        for p in probabilities:
            box, conf = region(loaded, p)
            w, h = (np.nan, np.nan) if box is None else (box[2] - box[0], box[3] - box[1])
            short = np.inf if box is None else max(box[0] - t[0], box[1] - t[1], t[2] - box[2], t[3] - box[3], 0)
            rows.append({"image": photo.stem, "probability": p, "confidence": conf, "needed_margin": short / max(w, h),
                         "box_w": w, "box_h": h, "width": loaded.size[0], "height": loaded.size[1]})
    return pd.DataFrame(rows)


def choose_crop_rule(needs, safety=SAFETY):
    """The protocol's crop rule from validation's needed margins: for each box probability, the margin is
    `safety` x the largest margin a validation photo needed; the probability kept is the one whose grown
    boxes cover the least photo area (bytes follow area); photos less confident than every validation
    photo are stored whole (outside what validation vouches for). Returns (CropRule, table per probability)."""
    rows = []
    for p, d in needs.groupby("probability"):
        margin = round(safety * float(d["needed_margin"].max()), 4)
        pad = 2 * margin * np.maximum(d["box_w"], d["box_h"])
        grown = (np.minimum(d["box_w"] + pad, d["width"]) * np.minimum(d["box_h"] + pad, d["height"])) / (d["width"] * d["height"])
        rows.append({"probability": p, "largest_needed": d["needed_margin"].max(), "margin": margin,
                     "mean_area_share": grown.mean()})
    table = pd.DataFrame(rows)
    best = table.loc[table["mean_area_share"].idxmin()]
    lowest = math.floor(float(needs["confidence"].min()) * 1e4) / 1e4  # rounded down: the lowest photo itself is in
    rule = CropRule(float(best["margin"]), float(best["probability"]), lowest)
    table["chosen"] = table["probability"] == rule.probability
    return rule, table


def crop_study(predictor, photos, truths, rules, qualities=(30, 50, 70, 90), rules_only=False):
    """Everything notebook 05 reports, per photo: (by rule, by format, baselines) as DataFrames.

    Crops are made by compress's own stages (pipeline.crop_box, pipeline.crop) for each CropRule of
    `rules`; the first is the one formats and baselines use. truths: a bool mask per photo at its own
    size (or None for an unlabelled photo). rules_only: skip formats and baselines.
    """
    by_rule, by_format, baselines = [], [], []
    for photo, truth in zip(photos, truths):
        photo = Path(photo)
        loaded = segment(predictor, [load(str(photo), photo.read_bytes(), predictor.size)])[0]
        data, orig = loaded.data, loaded.size
        outs = []
        for rule in rules:
            box0, _, status = crop_box(loaded, rule)
            out, f = crop(loaded, box0, rule.margin)
            box = (f["x0"], f["y0"], f["x1"], f["y1"])
            outs.append((box0, out, box))
            by_rule.append({"image": photo.stem, "probability": rule.probability, "margin": rule.margin, "status": status,
                            "bytes_in": len(data), "bytes_out": len(out), "method": f["method"],
                            "gt_kept": gt_kept(box, truth) if truth is not None else np.nan,
                            "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3]})
        (box0, kept_bytes, lbox), margin = outs[0], rules[0].margin
        if box0 is None or truth is None or rules_only:
            continue
        full = loaded.rgb
        cut_out = full.crop(grow_box(box0, margin, orig))
        for fmt in ("jpeg", "webp"):
            for q in qualities:
                by_format.append({"image": photo.stem, "format": fmt, "quality": q, "bytes_out": len(encode(cut_out, fmt, q))})
        by_format.append({"image": photo.stem, "format": "png", "quality": 100, "bytes_out": len(encode(cut_out, "png", 0))})
        target = len(kept_bytes)
        roi = region_box(truth)  # judge legibility on the ground-truth region's box
        ref = _grey(full.crop(roi))
        cut = (roi[0] - lbox[0], roi[1] - lbox[1], roi[2] - lbox[0], roi[3] - lbox[1])
        kept = _grey(Image.open(io.BytesIO(kept_bytes)).convert("RGB").crop(cut)) if gt_kept(lbox, truth) == 1 else None
        q, data1 = _largest_quality_under(full, target)
        requal = _grey(Image.open(io.BytesIO(data1)).convert("RGB").crop(roi))
        s, data2 = _largest_scale_under(full, target)
        down = _grey(Image.open(io.BytesIO(data2)).convert("RGB").resize(full.size, Image.Resampling.BICUBIC).crop(roi))
        for name, rec, nbytes, setting in (("crop (as compress stores it)", kept, target, margin),
                                           ("whole photo, lower JPEG quality", requal, len(data1), q),
                                           ("whole photo, downscaled", down, len(data2), round(s, 3))):
            baselines.append({"image": photo.stem, "method": name, "setting": setting, "bytes": nbytes,
                              "psnr": psnr(ref, rec) if rec is not None else np.nan,
                              "ssim": ssim(ref, rec) if rec is not None else np.nan})
    return pd.DataFrame(by_rule), pd.DataFrame(by_format), pd.DataFrame(baselines)


def trade_off_rules(rule, margins=MARGINS):
    """The rules of notebook 05's trade-off curve: the chosen one first, then the margin grid at its
    probability and at 0.5 (the plain region's box)."""
    grid = [CropRule(m, p, rule.min_confidence) for p in sorted({rule.probability, 0.5}) for m in margins]
    return [rule] + [r for r in grid if r != rule]


def _at(crops, rule):
    return crops[(crops["probability"] == rule.probability) & (crops["margin"] == rule.margin)]


def saving_at(crops, rule):
    """The headline of one rule: photos, mean KB before and after, share saved, share fully kept, stored whole."""
    at = _at(crops, rule)
    saved = at["bytes_in"] - at["bytes_out"]
    return {"photos": len(at), "probability": rule.probability, "margin": rule.margin,
            "mean_kb_in": at["bytes_in"].mean() / 1e3, "mean_kb_out": at["bytes_out"].mean() / 1e3,
            "mean_kb_saved": saved.mean() / 1e3, "saved_pct": 100 * saved.sum() / at["bytes_in"].sum(),
            "fully_kept_pct": 100 * (at["gt_kept"] >= 1).mean(), "no_region": int((at["status"] == "no_region").sum()),
            "uncertain": int((at["status"] == "uncertain").sum()), "methods": ", ".join(sorted(at["method"].unique()))}


def misses(crops, rule):
    """Photos whose crop by rule loses part of the ground-truth region, worst first."""
    at = _at(crops, rule)
    return at[at["gt_kept"] < 1].sort_values("gt_kept")


def margin_curve(crops):
    """Per box probability and margin: share of bytes saved and share of photos whose whole region is kept, in %."""
    g = crops.groupby(["probability", "margin"])
    return pd.DataFrame({
        "saving_pct": 100 * (1 - g["bytes_out"].sum() / g["bytes_in"].sum()),
        "photos_fully_kept_pct": 100 * g["gt_kept"].apply(lambda k: (k >= 1).mean()),
    }).reset_index()


def format_table(by_format, crops, rule):
    """Mean bytes of the crop by rule per format and quality, and the share of the photo it saves."""
    at = _at(crops, rule)
    at = at[at["status"] == "ok"]
    fmt = by_format.groupby(["format", "quality"])["bytes_out"].mean().reset_index()
    fmt["saving_pct"] = 100 * (1 - fmt["bytes_out"] / at["bytes_in"].mean())
    return fmt


def baseline_table(baselines):
    """Mean bytes, PSNR and SSIM of the region per way of storing it at equal bytes."""
    return baselines.groupby("method")[["bytes", "psnr", "ssim", "setting"]].mean()


def archive_table(crops, rule, photos=1_000_000):
    """An archive of `photos` photos in TB before and after, for our photos and for photos large
    enough that our saving fraction saves the paper's 2 MB each."""
    at = _at(crops, rule)
    frac = 1 - at["bytes_out"].sum() / at["bytes_in"].sum()
    sizes = {"ours": at["bytes_in"].mean(), "paper-sized (2 MB saved each)": PAPER_SAVING_BYTES / frac}
    rows = [{"photos": name, "mean_photo_MB": b / 1e6, "saving_fraction": frac,
             "archive_TB_before": b * photos / 1e12, "archive_TB_after": b * photos * (1 - frac) / 1e12,
             "saved_TB": b * photos * frac / 1e12} for name, b in sizes.items()]
    return pd.DataFrame(rows)


def compress_summary(predictor, folder, margin=None):
    """Run compress over a folder into a throw-away output (margin None: the model's own, as compress
    uses): (manifest rows as a DataFrame, summary dict)."""
    from .tool.runner import compress
    from .tool.model import Tool
    with tempfile.TemporaryDirectory() as tmp:
        rows = pd.DataFrame(compress(Tool(predictor), folder, tmp, margin, progress=False))
    ok = rows[rows["status"] == "ok"]
    b_in, b_out = (pd.to_numeric(rows[c], errors="coerce") for c in ("bytes_in", "bytes_out"))
    return rows, {"photos": len(rows), "cropped": len(ok), "whole_no_region": int((rows["status"] == "no_region").sum()),
                  "whole_uncertain": int((rows["status"] == "uncertain").sum()),
                  "errors": int(rows["status"].str.startswith("error").sum()),
                  "mean_kb_in": b_in.mean() / 1e3, "mean_kb_out": b_out.mean() / 1e3,
                  "saved_pct": 100 * (1 - b_out.sum() / b_in.sum()),
                  "methods": dict(rows["method"].value_counts())}
