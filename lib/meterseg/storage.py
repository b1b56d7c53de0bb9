"""Crop meter photos to their predicted reading region for storage: `meterseg compress`.

Guarantees: IN_DIR is only read; every output is written to a temp file and renamed;
a photo with no region found is copied whole and flagged; a bad file gets an error row
and the batch goes on; a second run skips what is done, so a run can be killed and rerun.
"""
import csv
import io
import math
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data import PHOTO_EXT, DataError, open_photo, to_rgb
from .infer import foreground_margin, margin_to_mask, photo_input

MANIFEST_FIELDS = ["source", "status", "method", "bytes_in", "bytes_out", "x0", "y0", "x1", "y1", "output", "confidence"]
FORMATS = ("lossless", "jpeg", "webp", "png")
JPEGTRAN = shutil.which("jpegtran")


def region_box(mask):
    """Bounding box (x0, y0, x1, y1), exclusive ends, of a bool (H, W) mask, or None if empty."""
    xs, ys = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))  # not np.nonzero: 5x faster
    if len(xs) == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def grow_box(box, margin, size):
    """Grow a box by margin x its longer side on every side, clipped to size = (W, H)."""
    x0, y0, x1, y1 = box
    pad = math.ceil(margin * max(x1 - x0, y1 - y0))
    return max(0, x0 - pad), max(0, y0 - pad), min(size[0], x1 + pad), min(size[1], y1 + pad)


def gt_kept(box, truth):
    """Share of ground-truth pixels of a bool mask inside box (1.0 when the truth is empty)."""
    total = int(truth.sum())
    if total == 0:
        return 1.0
    x0, y0, x1, y1 = box
    return int(truth[y0:y1, x0:x1].sum()) / total


def _atomic_write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def jpeg_lossless_crop(src, box):
    """Crop a JPEG on its block grid with jpegtran, without re-encoding: (bytes, actual box).

    jpegtran moves the top-left corner down to the block (iMCU) grid and keeps the far
    corner, so the actual box holds the asked one. -perfect refuses what it cannot do exactly.
    """
    x0, y0, x1, y1 = box
    r = subprocess.run([JPEGTRAN, "-copy", "all", "-perfect", "-crop", f"{x1 - x0}x{y1 - y0}+{x0}+{y0}", str(src)],
                       capture_output=True, timeout=60)
    if r.returncode != 0 or not r.stdout:
        raise DataError(f"{src}: jpegtran failed: {r.stderr.decode(errors='replace').strip()[:200]}")
    w, h = Image.open(io.BytesIO(r.stdout)).size
    return r.stdout, (x1 - w, y1 - h, x1, y1)


def encode(im, fmt, quality, exif=None):
    """Encode a PIL image as jpeg, webp or png bytes (keeping EXIF where the format can)."""
    buf = io.BytesIO()
    kw = {"exif": exif} if exif else {}
    if fmt == "jpeg":
        im.save(buf, "JPEG", quality=quality, **kw)
    elif fmt == "webp":
        im.save(buf, "WEBP", quality=quality, method=4, **kw)
    elif fmt == "png":
        im.save(buf, "PNG", optimize=False)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return buf.getvalue()


def crop_to_region(src, margin_map, orig, margin=0.2, fmt="lossless", quality=90):
    """Crop one photo of size orig = (W, H) to the region of its model-resolution margin map: (bytes, row fields).

    Raises DataError on a bad photo."""
    mask, conf = margin_to_mask(margin_map, orig)
    box = region_box(mask)
    if box is None:
        return Path(src).read_bytes(), {"status": "no_region", "method": "copy", "confidence": 0.0,
                                        "x0": 0, "y0": 0, "x1": orig[0], "y1": orig[1]}
    box = grow_box(box, margin, orig)
    im = open_photo(src)
    if fmt == "lossless" and im.format == "JPEG" and JPEGTRAN:
        data, box = jpeg_lossless_crop(src, box)
        method = "lossless-jpegtran"
    else:
        out_fmt = "png" if fmt == "lossless" else fmt  # lossless without jpegtran or for non-JPEG: PNG
        data = encode(to_rgb(im, src).crop(box), out_fmt, quality, im.info.get("exif"))
        method = f"reencode-{out_fmt}"
    return data, {"status": "ok", "method": method, "confidence": round(conf, 4),
                  "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3]}


def _ext(method, src):
    if method == "copy" or method.startswith("lossless"):
        return Path(src).suffix
    return {"reencode-jpeg": ".jpg", "reencode-webp": ".webp", "reencode-png": ".png"}[method]


def read_manifest(path):
    """Rows of a manifest, dropping a torn last line left by a kill."""
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if None not in r.values() and r.get("confidence") is not None]


def compress(model, cfg, in_dir, out_dir, margin=0.2, fmt="lossless", quality=90, device="cpu",
             workers=None, progress=True, batch=8):
    """Crop every photo under in_dir into out_dir (same relative paths) and write manifest.csv.

    Returns the manifest rows. Photos done by an earlier run are skipped; failed ones are retried.
    Worker threads decode the next batch and crop the last one while the model runs on this
    one: a batch of 8 costs the model half as much per photo as one photo at a time.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: expected one of {FORMATS}")
    in_dir, out_dir = Path(in_dir).resolve(), Path(out_dir).resolve()
    if not in_dir.is_dir():
        raise DataError(f"{in_dir}: input folder not found")
    if out_dir == in_dir or in_dir in out_dir.parents:
        raise DataError(f"{out_dir}: the output folder must not be the input folder or inside it ({in_dir})")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out_dir}: cannot create the output folder ({e.strerror})") from None
    manifest = out_dir / "manifest.csv"
    done = [r for r in read_manifest(manifest)
            if r["status"] in ("ok", "no_region") and (out_dir / r["output"]).is_file()]
    _write_manifest(manifest, done)  # drops error rows (retried now) and a torn line
    skip = {r["source"] for r in done}
    photos = sorted(p for p in in_dir.rglob("*") if p.suffix.lower() in PHOTO_EXT and p.is_file())
    todo = [p for p in photos if p.relative_to(in_dir).as_posix() not in skip]
    batches = [todo[i:i + batch] for i in range(0, len(todo), batch)]

    def load(src):
        try:
            return photo_input(src, cfg["size"])
        except (DataError, OSError) as e:
            return e

    def finish(src, loaded, margin_map):
        rel = src.relative_to(in_dir).as_posix()
        row = {k: "" for k in MANIFEST_FIELDS} | {"source": rel}
        try:
            if isinstance(loaded, Exception):
                raise loaded
            row["bytes_in"] = src.stat().st_size
            data, fields = crop_to_region(src, margin_map, loaded[1], margin, fmt, quality)
            out_rel = Path(rel).with_suffix(_ext(fields["method"], src)).as_posix()
            _atomic_write(out_dir / out_rel, data)
            row |= fields | {"bytes_out": len(data), "output": out_rel}
        except (DataError, OSError, ValueError) as e:
            row["status"] = f"error: {str(e).replace(chr(10), ' ')[:300]}"
        return row

    from tqdm import tqdm
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the model thread and the workers share the cores
    rows, pending = list(done), []
    try:
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count()) as pool, \
                open(manifest, "a", newline="", encoding="utf-8") as f, \
                tqdm(total=len(todo), desc="compress", disable=not progress) as bar:
            w = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
            loading = [pool.submit(load, p) for p in batches[0]] if batches else []
            for k, chunk in enumerate(batches):
                loaded = [j.result() for j in loading]
                if k + 1 < len(batches):
                    loading = [pool.submit(load, p) for p in batches[k + 1]]
                good = [ld[0] for ld in loaded if not isinstance(ld, Exception)]
                maps = iter(foreground_margin(model, torch.cat(good), device, batch) if good else [])
                pending += [pool.submit(finish, p, ld, None if isinstance(ld, Exception) else next(maps))
                            for p, ld in zip(chunk, loaded)]
                while pending and (pending[0].done() or k + 1 == len(batches)):
                    rows.append(pending.pop(0).result())  # in order, each flushed: a kill loses no finished row
                    w.writerow(rows[-1])
                    f.flush()
                    bar.update()
    finally:
        torch.set_num_threads(threads)
    return rows


def _write_manifest(path, rows):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        w.writeheader()
        w.writerows({k: r.get(k, "") for k in MANIFEST_FIELDS} for r in rows)
    os.replace(tmp, path)


# ---------------------------------------------------------------- storage analysis (notebook 05)

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
    lo, hi, best = 0.02, 1.0, None
    for _ in range(12):
        s = (lo + hi) / 2
        small = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.LANCZOS)
        data = encode(small, "jpeg", quality)
        if len(data) <= target:
            best, lo = (s, data), s
        else:
            hi = s
    return best or (lo, encode(im.resize((max(1, round(im.width * lo)), max(1, round(im.height * lo)))), "jpeg", quality))


def crop_study(model, cfg, photos, truths, margins=(0.0, 0.05, 0.1, 0.15, 0.2, 0.3), default_margin=0.2,
               qualities=(30, 50, 70, 90), device="cpu"):
    """Everything notebook 05 reports, per photo: (margins, formats, baselines) as lists of dicts.

    truths: a bool mask per photo at its own size (or None for unlabelled photos).
    """
    by_margin, by_format, baselines = [], [], []
    for photo, truth in zip(photos, truths):
        photo = Path(photo)
        x, orig = photo_input(photo, cfg["size"])
        mask, _ = margin_to_mask(foreground_margin(model, x, device)[0], orig)
        box0, n_in = region_box(mask), photo.stat().st_size
        for m in margins:
            if box0 is None:
                data, box = photo.read_bytes(), (0, 0, *orig)
            else:
                data, box = jpeg_lossless_crop(photo, grow_box(box0, m, orig))
            by_margin.append({"image": photo.stem, "margin": m, "bytes_in": n_in, "bytes_out": len(data),
                              "found": box0 is not None, "gt_kept": gt_kept(box, truth) if truth is not None else np.nan,
                              "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3]})
        if box0 is None or truth is None:
            continue
        full = to_rgb(open_photo(photo), photo)
        box = grow_box(box0, default_margin, orig)
        crop = full.crop(box)
        for fmt in ("jpeg", "webp"):
            for q in qualities:
                by_format.append({"image": photo.stem, "format": fmt, "quality": q, "bytes_out": len(encode(crop, fmt, q))})
        by_format.append({"image": photo.stem, "format": "png", "quality": 100, "bytes_out": len(encode(crop, "png", 0))})
        lossless, lbox = jpeg_lossless_crop(photo, box)
        target = len(lossless)
        roi = region_box(truth)  # judge legibility on the ground-truth region's box
        ref = _grey(full.crop(roi))
        cut = (roi[0] - lbox[0], roi[1] - lbox[1], roi[2] - lbox[0], roi[3] - lbox[1])
        kept = _grey(Image.open(io.BytesIO(lossless)).convert("RGB").crop(cut)) if gt_kept(lbox, truth) == 1 else None
        q, data = _largest_quality_under(full, target)
        requal = _grey(Image.open(io.BytesIO(data)).convert("RGB").crop(roi))
        s, data2 = _largest_scale_under(full, target)
        down = _grey(Image.open(io.BytesIO(data2)).convert("RGB").resize(full.size, Image.Resampling.BICUBIC).crop(roi))
        for name, rec, nbytes, setting in (("crop (lossless)", kept, target, default_margin),
                                           ("whole photo, lower JPEG quality", requal, len(data), q),
                                           ("whole photo, downscaled", down, len(data2), round(s, 3))):
            baselines.append({"image": photo.stem, "method": name, "setting": setting, "bytes": nbytes,
                              "psnr": psnr(ref, rec) if rec is not None else np.nan,
                              "ssim": ssim(ref, rec) if rec is not None else np.nan})
    return by_margin, by_format, baselines
