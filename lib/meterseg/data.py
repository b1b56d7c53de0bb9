"""Meter photos and their reading-region masks: finding, fetching, reading, caching, splitting.

Two layouts are read:
- upstream (iaoqian/water_meter_recognition): `train_imgs/NAME.jpg` with
  `train_labels/labels/NAME.txt` = `x1 y1 ... x4 y4 READING...` (a quad in photo pixels);
- generic: `images/NAME.*` with `masks/NAME.*` (0/1, 0/255, palette or two-colour RGB).

Orientation: masks, labels and crop boxes all refer to the stored pixel grid of the file.
EXIF orientation tags are ignored on reading and kept on writing, so a viewer shows a
crop turned the same way as its photo.
"""
import hashlib
import os
import shutil
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[2]
UPSTREAM_COMMIT = "53bdd22a3b91f18ed4f8140757368fe6ee44ecb7"
UPSTREAM_URL = f"https://raw.githubusercontent.com/iaoqian/water_meter_recognition/{UPSTREAM_COMMIT}/WaterMeterDataset"
UPSTREAM_SUMS = REPO / "data" / "UPSTREAM-SHA256SUMS"
PHOTO_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
MAX_PIXELS = 64_000_000  # larger than any camera photo; refuses decompression bombs
CACHE_VERSION = "1"  # bump when decoding or rasterising changes


class DataError(ValueError):
    """A photo, label or mask that cannot be used; the message starts with the file's path."""


# ---------------------------------------------------------------- reading one file

def open_photo(path):
    """Open a photo lazily as PIL, checking that it is a readable, sane image file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
        if im.width * im.height > MAX_PIXELS:
            raise DataError(f"{path}: {im.width}x{im.height} is over {MAX_PIXELS} pixels (decompression bomb?)")
        return im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: refused as a decompression bomb ({e})") from None
    except (OSError, SyntaxError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None


def to_rgb(im, path):
    """Decode fully and convert any mode (L, RGBA, CMYK, I;16, P) to 8-bit RGB."""
    try:
        im.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: image data is damaged or truncated ({e})") from None
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: scale to 8 bits, not clip
        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray((a * (255.0 / max(a.max(), 1))).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    return im.convert("RGB")


def load_photo(path, size=None):
    """A photo as (RGB PIL image, original (W, H)); resized to size x size when size is given.

    JPEGs are decoded at a reduced scale (libjpeg's DCT scaling) when the model needs
    fewer pixels, which is several times faster than a full decode.
    """
    im = open_photo(path)
    orig = im.size
    if size is not None and im.format == "JPEG":
        im.draft("RGB", (size, size))
    im = to_rgb(im, path)
    if size is not None:
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    return im, orig


def read_label(path, photo_size):
    """The quad of an upstream label file as 4 (x, y) corners, checked against the photo size."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing label file")
    try:
        fields = path.read_text(encoding="utf-8", errors="strict").split()
    except UnicodeDecodeError:
        raise DataError(f"{path}: label is not UTF-8 text") from None
    if len(fields) < 8:
        raise DataError(f"{path}: expected 8 corner coordinates, found {len(fields)} fields")
    try:
        xy = [float(v) for v in fields[:8]]
    except ValueError:
        raise DataError(f"{path}: corner coordinates are not numbers: {' '.join(fields[:8])!r}") from None
    if not all(np.isfinite(xy)):
        raise DataError(f"{path}: corner coordinates are not finite")
    w, h = photo_size
    corners = list(zip(xy[0::2], xy[1::2]))
    if any(not (0 <= x <= w and 0 <= y <= h) for x, y in corners):
        raise DataError(f"{path}: a corner lies outside the {w}x{h} photo: {corners}")
    return corners


def polygon_mask(corners, photo_size, size=None):
    """Rasterise a quad to a bool mask at the photo's size, or area-resampled to size x size."""
    m = Image.new("L", photo_size, 0)
    ImageDraw.Draw(m).polygon([tuple(c) for c in corners], fill=255)
    return resize_mask(np.asarray(m) > 0, size)


def resize_mask(m, size):
    """A bool mask area-resampled to size x size: a pixel is in when at least half of it is covered."""
    if size is None:
        return m
    return np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BOX)) >= 128


def read_mask(path, size=None):
    """A mask file as bool (H, W): 0/1, 0/255, palette (index > 0) or two-colour RGB with black."""
    im = open_photo(path)
    try:
        im.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: mask data is damaged ({e})") from None
    if im.mode == "P":
        fg = np.asarray(im) > 0
    elif im.mode in ("1", "L", "I;16", "I"):
        a = np.asarray(im)
        vals = set(np.unique(a).tolist())
        if not (vals <= {0, 1} or vals <= {0, 255}):
            raise DataError(f"{path}: mask values must be 0/1 or 0/255, found {sorted(vals)[:8]}")
        fg = a > 0
    elif im.mode in ("RGB", "RGBA"):
        a = np.asarray(im.convert("RGB")).reshape(-1, 3)
        colours = np.unique(a, axis=0)
        if len(colours) > 2 or (len(colours) == 2 and not (colours == 0).all(axis=1).any()):
            raise DataError(f"{path}: an RGB mask must hold black and one other colour, found {len(colours)} colours")
        fg = (np.asarray(im.convert("RGB")) > 0).any(axis=2)
    else:
        raise DataError(f"{path}: unsupported mask mode {im.mode}")
    return resize_mask(fg, size)


# ---------------------------------------------------------------- a dataset folder

def find_pairs(root):
    """(stem, photo path, label-or-mask path) of every labelled photo, for either layout."""
    root = Path(root)
    if (root / "train_imgs").is_dir():
        photos, labels, kind = root / "train_imgs", root / "train_labels" / "labels", "label"
    elif (root / "images").is_dir():
        photos, labels, kind = root / "images", root / "masks", "mask"
    else:
        raise DataError(f"{root}: neither the upstream layout (train_imgs/) nor images/ + masks/")
    if not labels.is_dir():
        raise DataError(f"{labels}: folder missing")
    by_stem = {p.stem: p for p in labels.iterdir() if p.suffix.lower() in (PHOTO_EXT | {".txt"})}
    pairs = []
    for p in sorted(photos.iterdir()):
        if p.suffix.lower() in PHOTO_EXT:
            pairs.append((p.stem, p, by_stem.get(p.stem, labels / (p.stem + (".txt" if kind == "label" else ".png")))))
    if not pairs:
        raise DataError(f"{photos}: no photos found")
    return pairs


def unlabelled_photos(root):
    """Photos without labels: upstream's test_imgs/test_imgs, or a plain folder of photos."""
    root = Path(root)
    folder = root / "test_imgs" / "test_imgs" if (root / "test_imgs").is_dir() else root
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_EXT)


def truth_mask(photo, label, size=None):
    """Ground-truth mask of one pair, from a quad label or a mask file, at the photo's size or size x size."""
    orig = open_photo(photo).size
    if Path(label).suffix == ".txt":
        return polygon_mask(read_label(label, orig), orig, size)
    m = read_mask(label)
    if m.shape != (orig[1], orig[0]):
        raise DataError(f"{label}: mask is {m.shape[1]}x{m.shape[0]} but its photo {photo} is {orig[0]}x{orig[1]}")
    return resize_mask(m, size)


def _load_pair(args):
    stem, photo, label, size = args
    try:
        im, orig = load_photo(photo, size)
        mask = truth_mask(photo, label, size)
        return stem, np.asarray(im).transpose(2, 0, 1).copy(), mask, orig, None
    except DataError as e:
        return stem, None, None, None, str(e)


def _fingerprint(root, pairs, size):
    h = hashlib.sha256(f"{CACHE_VERSION}:{size}:{Path(root).resolve()}".encode())
    for stem, photo, label in pairs:
        for p in (photo, label):
            st = p.stat() if p.exists() else None
            h.update(f"{p.name}:{st and st.st_size}:{st and st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def load_dataset(root, size, cache_dir=None, progress=False):
    """Every labelled photo of root, resized to size x size, as uint8 tensors held in memory.

    Decoding happens once: the result is cached under cache_dir keyed by the files'
    names, sizes and mtimes. Bad pairs are skipped and listed under "errors".
    """
    root = Path(root)
    pairs = find_pairs(root)
    cache_dir = Path(cache_dir or os.environ.get("METERSEG_CACHE", REPO / "data" / "cache"))
    cache = cache_dir / f"{root.name}-{size}-{_fingerprint(root, pairs, size)}.pt"
    if cache.exists():
        ds = torch.load(cache, weights_only=True)
        for e in ds["errors"]:
            warnings.warn(f"skipped: {e}", stacklevel=2)
        return ds
    from tqdm.auto import tqdm
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:  # PIL decodes without the GIL
        jobs = pool.map(_load_pair, [(s, p, l, size) for s, p, l in pairs])
        out = list(tqdm(jobs, total=len(pairs), desc=f"decode {root.name}@{size}", disable=not progress))
    good = [o for o in out if o[4] is None]
    errors = [o[4] for o in out if o[4] is not None]
    for e in errors:
        warnings.warn(f"skipped: {e}", stacklevel=2)
    if not good:
        raise DataError(f"{root}: no usable labelled photo ({len(errors)} bad)")
    kept = {o[0] for o in good}
    ds = {
        "root": str(root),
        "stems": [o[0] for o in good],
        "photos": [str(p) for s, p, l in pairs if s in kept],
        "labels": [str(l) for s, p, l in pairs if s in kept],
        "images": torch.from_numpy(np.stack([o[1] for o in good])),
        "masks": torch.from_numpy(np.stack([o[2] for o in good])).to(torch.uint8),
        "orig_sizes": torch.tensor([o[3] for o in good]),
        "errors": errors,
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save(ds, tmp)
    os.replace(tmp, cache)
    return ds


# ---------------------------------------------------------------- split

def _stem_hash(stem):
    return hashlib.sha256(stem.encode()).hexdigest()


def assign_split(stems, fractions=(0.75, 0.125)):
    """train/val/test of stems in the paper's 75/12.5/12.5 proportions, ordered by a hash of each stem.

    The order depends on the names alone, not on file order or counts.
    """
    ranked = sorted(stems, key=_stem_hash)
    n_train, n_val = round(fractions[0] * len(ranked)), round(sum(fractions) * len(ranked))
    return {s: "train" if r < n_train else ("val" if r < n_val else "test") for r, s in enumerate(ranked)}


def load_split(stems, split_file):
    """The split of each stem, read from split_file; stems it lacks are assigned and written back.

    Stems already in the file never move, so a grown dataset keeps its old test photos.
    """
    split_file = Path(split_file)
    known = {}
    if split_file.exists():
        for line in split_file.read_text().splitlines()[1:]:
            stem, part = line.rsplit(",", 1)
            known[stem] = part
    new = [s for s in stems if s not in known]
    known.update(assign_split(new))
    if new or not split_file.exists():
        split_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = split_file.with_suffix(".tmp")
        tmp.write_text("stem,split\n" + "".join(f"{s},{known[s]}\n" for s in sorted(known)))
        os.replace(tmp, split_file)
    return {s: known[s] for s in stems}


# ---------------------------------------------------------------- finding and fetching

def find_data(path=None):
    """The dataset folder: path, else $METERSEG_DATA, else data/water-meters (fetched if missing)."""
    for cand in (path, os.environ.get("METERSEG_DATA")):
        if cand:
            if not Path(cand).is_dir():
                raise DataError(f"{cand}: data folder not found")
            return Path(cand)
    local = REPO / "data" / "water-meters"
    if not (local / ".verified").exists():
        fetch_upstream(local)
    return local


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_upstream(dest, base_url=None, sums_file=UPSTREAM_SUMS, progress=True):
    """Download every file of sums_file from base_url into dest and verify its SHA-256.

    Files already present with the right sum are kept, so an interrupted fetch resumes.
    """
    base_url = base_url or os.environ.get("METERSEG_DATA_URL", UPSTREAM_URL)
    dest = Path(dest)
    entries = [line.split(None, 1) for line in Path(sums_file).read_text().splitlines() if line.strip()]
    from tqdm.auto import tqdm
    failed = []
    for i, (digest, rel) in enumerate(tqdm(entries, desc="fetch", disable=not progress)):
        rel = rel.strip().lstrip("*").removeprefix("./")
        target = dest / rel
        if target.exists() and sha256_file(target) == digest:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        try:
            url = f"{base_url}/{urllib.request.quote(rel)}"
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
            if sha256_file(tmp) != digest:
                raise DataError(f"{rel}: SHA-256 mismatch after download")
            os.replace(tmp, target)
        except (OSError, DataError) as e:
            tmp.unlink(missing_ok=True)
            failed.append(f"{rel}: {e}")
            if len(failed) == i + 1 == 3:  # nothing has worked: stop rather than try every file
                raise DataError(f"{base_url}: the first downloads all failed ({e}); no network? "
                                "Point METERSEG_DATA at a local copy of the photos.") from None
    if failed:
        raise DataError(f"{dest}: {len(failed)} of {len(entries)} files failed to fetch or verify, e.g. {failed[0]}")
    (dest / ".verified").write_text(f"{UPSTREAM_COMMIT}\n")
    return dest


# ---------------------------------------------------------------- synthetic meter photos

def synthetic_photo(rng, size=(320, 240)):
    """A fake meter photo and its counter-window quad: clutter, a dial, a light window with digits."""
    w, h = size
    bg = tuple(int(v) for v in rng.integers(40, 200, 3))
    im = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(im)
    for _ in range(6):  # clutter
        x, y = rng.integers(0, w), rng.integers(0, h)
        r = int(rng.integers(5, w // 4))
        d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    cx, cy = rng.uniform(0.35, 0.65) * w, rng.uniform(0.35, 0.65) * h
    r = min(w, h) * rng.uniform(0.3, 0.45)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(20, 20, 30), outline=(160, 160, 170), width=4)
    ww, wh, a = r * rng.uniform(0.9, 1.3), r * rng.uniform(0.25, 0.35), rng.uniform(-0.25, 0.25)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    quad = [tuple(np.array([cx, cy]) + rot @ np.array([sx * ww / 2, sy * wh / 2]))
            for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]  # clockwise from top-left
    d.polygon(quad, fill=(235, 235, 225))
    for k in range(5):  # digits
        t = (k + 0.5) / 5 - 0.5
        c = np.array([cx, cy]) + rot @ np.array([t * ww * 0.9, 0])
        d.rectangle([c[0] - ww * 0.05, c[1] - wh * 0.3, c[0] + ww * 0.05, c[1] + wh * 0.3], fill=(10, 10, 10))
    noise = rng.normal(0, 8, (h, w, 3))
    im = Image.fromarray(np.clip(np.asarray(im, dtype=float) + noise, 0, 255).astype(np.uint8))
    return im, quad


def make_synthetic(dest, n=96, n_unlabelled=4, seed=0, size=(320, 240)):
    """Write n synthetic labelled photos (upstream layout) and a few unlabelled ones under dest."""
    dest = Path(dest)
    rng = np.random.default_rng(seed)
    (dest / "train_imgs").mkdir(parents=True, exist_ok=True)
    (dest / "train_labels" / "labels").mkdir(parents=True, exist_ok=True)
    (dest / "test_imgs" / "test_imgs").mkdir(parents=True, exist_ok=True)
    for i in range(n + n_unlabelled):
        sz = size if rng.random() < 0.5 else size[::-1]
        im, quad = synthetic_photo(rng, sz)
        if i < n:
            im.save(dest / "train_imgs" / f"train_{i}.jpg", quality=90)
            coords = " ".join(f"{v:.0f}" for xy in quad for v in np.clip(xy, 0, [sz[0], sz[1]]))
            (dest / "train_labels" / "labels" / f"train_{i}.txt").write_text(f"{coords} 0{i:04d}\n")
        else:
            im.save(dest / "test_imgs" / "test_imgs" / f"test_{i - n}.jpg", quality=90)
    return dest


def data_card(root, split_path):
    """One row per labelled photo: size, bytes, mask and box share of the photo, readings, split, error."""
    import pandas as pd
    rows = []
    for stem, photo, label in find_pairs(root):
        row = {"stem": stem, "bytes": photo.stat().st_size, "error": ""}
        try:
            w, h = open_photo(photo).size
            m = truth_mask(photo, label)
            ys, xs = np.nonzero(m)
            box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1) if len(xs) else 0
            readings = Path(label).read_text().split()[8:] if Path(label).suffix == ".txt" else []
            row.update(width=w, height=h, mask_share=m.mean(), bbox_share=box / (w * h), n_readings=len(readings))
        except DataError as e:
            row["error"] = str(e)
        rows.append(row)
    df = pd.DataFrame(rows)
    split = load_split(list(df["stem"]), split_path)
    df["split"] = df["stem"].map(split)
    return df
