"""What notebook 05 reports: savings by crop margin, by format, baselines at equal bytes, an archive."""
import io
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .geometry import grow_box, region_box
from .pipeline import crop, encode, load, region, segment

MARGINS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
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


def crop_study(predictor, photos, truths, margins=MARGINS, default_margin=None, qualities=(30, 50, 70, 90),
               margins_only=False):
    """Everything notebook 05 reports, per photo: (by margin, by format, baselines) as DataFrames.

    Crops are made by compress's own stages (pipeline.region, pipeline.crop). truths: a bool mask per
    photo at its own size (or None for an unlabelled photo). default_margin: the formats' and baselines'
    (None: the model's own, as compress uses). margins_only: skip formats and baselines.
    """
    default_margin = predictor.crop_margin if default_margin is None else default_margin
    by_margin, by_format, baselines = [], [], []
    for photo, truth in zip(photos, truths):
        photo = Path(photo)
        loaded = segment(predictor, [load(str(photo), photo.read_bytes(), predictor.size)])[0]
        data, orig = loaded.data, loaded.size
        box0, _ = region(loaded)
        for m in margins:
            out, f = crop(loaded, box0, m)
            box = (f["x0"], f["y0"], f["x1"], f["y1"])
            by_margin.append({"image": photo.stem, "margin": m, "bytes_in": len(data), "bytes_out": len(out),
                              "method": f["method"], "found": box0 is not None,
                              "gt_kept": gt_kept(box, truth) if truth is not None else np.nan,
                              "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3]})
        if box0 is None or truth is None or margins_only:
            continue
        full = loaded.rgb
        cut_out = full.crop(grow_box(box0, default_margin, orig))
        for fmt in ("jpeg", "webp"):
            for q in qualities:
                by_format.append({"image": photo.stem, "format": fmt, "quality": q, "bytes_out": len(encode(cut_out, fmt, q))})
        by_format.append({"image": photo.stem, "format": "png", "quality": 100, "bytes_out": len(encode(cut_out, "png", 0))})
        kept_bytes, f = crop(loaded, box0, default_margin)
        lbox = (f["x0"], f["y0"], f["x1"], f["y1"])
        target = len(kept_bytes)
        roi = region_box(truth)  # judge legibility on the ground-truth region's box
        ref = _grey(full.crop(roi))
        cut = (roi[0] - lbox[0], roi[1] - lbox[1], roi[2] - lbox[0], roi[3] - lbox[1])
        kept = _grey(Image.open(io.BytesIO(kept_bytes)).convert("RGB").crop(cut)) if gt_kept(lbox, truth) == 1 else None
        q, data1 = _largest_quality_under(full, target)
        requal = _grey(Image.open(io.BytesIO(data1)).convert("RGB").crop(roi))
        s, data2 = _largest_scale_under(full, target)
        down = _grey(Image.open(io.BytesIO(data2)).convert("RGB").resize(full.size, Image.Resampling.BICUBIC).crop(roi))
        for name, rec, nbytes, setting in (("crop (as compress stores it)", kept, target, default_margin),
                                           ("whole photo, lower JPEG quality", requal, len(data1), q),
                                           ("whole photo, downscaled", down, len(data2), round(s, 3))):
            baselines.append({"image": photo.stem, "method": name, "setting": setting, "bytes": nbytes,
                              "psnr": psnr(ref, rec) if rec is not None else np.nan,
                              "ssim": ssim(ref, rec) if rec is not None else np.nan})
    return pd.DataFrame(by_margin), pd.DataFrame(by_format), pd.DataFrame(baselines)


def choose_margin(by_margin, target_pct=99.0):
    """The smallest margin whose crop keeps the whole region on at least target_pct % of the photos
    (run on the validation split: the protocol's rule), or the largest margin tried if none does."""
    curve = margin_curve(by_margin)
    ok = curve[curve["photos_fully_kept_pct"] >= target_pct]
    return float(ok["margin"].min() if len(ok) else curve["margin"].max())


def ship_margin(checkpoint, margin, val_curve):
    """Store the margin chosen on validation in the shipped checkpoint's config, so that `compress` uses
    it by default (Predictor.crop_margin); its README gets the validation figures behind it."""
    import json
    from .checkpoint import amend_shipped
    kept = val_curve.set_index("margin")["photos_fully_kept_pct"][margin]
    return amend_shipped(checkpoint, lambda ck: ck.update(config=json.dumps({**json.loads(ck["config"]), "crop_margin": margin})),
        "The crop margin", f"`compress` grows the region's box by {margin} x its longer side unless `--margin` says otherwise: "
        f"the smallest margin tried that keeps the whole labelled region on >= 99 % of the validation photos ({kept:.1f} %; "
        "notebook 05, results/tables/05_val_crops_by_margin.csv).\n")


def saving_at(by_margin, margin):
    """The headline at one margin: photos, mean KB before and after, share saved, share fully kept."""
    at = by_margin[by_margin["margin"] == margin]
    saved = at["bytes_in"] - at["bytes_out"]
    return {"photos": len(at), "margin": margin, "mean_kb_in": at["bytes_in"].mean() / 1e3,
            "mean_kb_out": at["bytes_out"].mean() / 1e3, "mean_kb_saved": saved.mean() / 1e3,
            "saved_pct": 100 * saved.sum() / at["bytes_in"].sum(),
            "fully_kept_pct": 100 * (at["gt_kept"] >= 1).mean(), "no_region": int((~at["found"]).sum()),
            "methods": ", ".join(sorted(at["method"].unique()))}


def misses(by_margin, margin):
    """Photos whose crop at margin loses part of the ground-truth region, worst first."""
    at = by_margin[by_margin["margin"] == margin]
    return at[at["gt_kept"] < 1].sort_values("gt_kept")


def margin_curve(by_margin):
    """Per margin: share of bytes saved and share of photos whose whole region is kept, in %."""
    g = by_margin.groupby("margin")
    return pd.DataFrame({
        "saving_pct": 100 * (1 - g["bytes_out"].sum() / g["bytes_in"].sum()),
        "photos_fully_kept_pct": 100 * g["gt_kept"].apply(lambda k: (k >= 1).mean()),
    }).reset_index()


def format_table(by_format, by_margin, margin):
    """Mean bytes of the crop at margin per format and quality, and the share of the photo it saves."""
    at = by_margin[(by_margin["margin"] == margin) & by_margin["found"]]
    fmt = by_format.groupby(["format", "quality"])["bytes_out"].mean().reset_index()
    fmt["saving_pct"] = 100 * (1 - fmt["bytes_out"] / at["bytes_in"].mean())
    return fmt


def baseline_table(baselines):
    """Mean bytes, PSNR and SSIM of the region per way of storing it at equal bytes."""
    return baselines.groupby("method")[["bytes", "psnr", "ssim", "setting"]].mean()


def archive_table(by_margin, margin, photos=1_000_000):
    """An archive of `photos` photos in TB before and after, for our photos and for photos large
    enough that our saving fraction saves the paper's 2 MB each."""
    at = by_margin[by_margin["margin"] == margin]
    frac = 1 - at["bytes_out"].sum() / at["bytes_in"].sum()
    sizes = {"ours": at["bytes_in"].mean(), "paper-sized (2 MB saved each)": PAPER_SAVING_BYTES / frac}
    rows = [{"photos": name, "mean_photo_MB": b / 1e6, "saving_fraction": frac,
             "archive_TB_before": b * photos / 1e12, "archive_TB_after": b * photos * (1 - frac) / 1e12,
             "saved_TB": b * photos * frac / 1e12} for name, b in sizes.items()]
    return pd.DataFrame(rows)


def compress_summary(predictor, folder, margin=None):
    """Run compress over a folder into a throw-away output (margin None: the model's own, as compress
    uses): (manifest rows as a DataFrame, summary dict)."""
    from .runner import compress
    from .tool import Tool
    with tempfile.TemporaryDirectory() as tmp:
        rows = pd.DataFrame(compress(Tool(predictor), folder, tmp, margin, progress=False))
    ok = rows[rows["status"] == "ok"]
    b_in, b_out = (pd.to_numeric(rows[c], errors="coerce") for c in ("bytes_in", "bytes_out"))
    return rows, {"photos": len(rows), "cropped": len(ok), "copied_whole": int((rows["status"] == "no_region").sum()),
                  "errors": int(rows["status"].str.startswith("error").sum()),
                  "mean_kb_in": b_in.mean() / 1e3, "mean_kb_out": b_out.mean() / 1e3,
                  "saved_pct": 100 * (1 - b_out.sum() / b_in.sum()),
                  "methods": dict(rows["method"].value_counts())}
