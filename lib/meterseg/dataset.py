"""A dataset folder: its labelled pairs, the decoded cache, the fixed split, and its fingerprint.

Two layouts are read: upstream's (`train_imgs/NAME.jpg` + `train_labels/labels/NAME.txt`) and a
generic `images/NAME.*` + `masks/NAME.*`. Nothing assumes file counts.
"""
import hashlib
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .config import REPO
from .fetch import LOCAL_COPY, fetch_upstream
from .tool.photos import PHOTO_EXT, DataError, load_photo, open_photo, truth_mask
from .tool.stores import atomic_write
from .synthetic import make_synthetic

CACHE_VERSION = "3"  # bump when decoding, rasterising or what the cache holds changes


def cache_root():
    return Path(os.environ.get("METERSEG_CACHE", REPO / "data" / "cache"))


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


def _load_pair(args):
    stem, photo, label, size = args
    try:
        im, orig = load_photo(photo, size)
        mask = truth_mask(photo, label, size)
        digest = hashlib.sha256(Path(photo).read_bytes() + b"\0" + Path(label).read_bytes()).hexdigest()
        return stem, np.asarray(im).transpose(2, 0, 1).copy(), mask, orig, digest, None
    except (DataError, OSError) as e:
        return stem, None, None, None, None, str(e)


def _cache_key(root, pairs, size):
    h = hashlib.sha256(f"{CACHE_VERSION}:{size}:{Path(root).resolve()}".encode())
    for stem, photo, label in pairs:
        for p in (photo, label):
            st = p.stat() if p.exists() else None
            h.update(f"{p.name}:{st and st.st_size}:{st and st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def load_dataset(root, size, cache_dir=None, progress=False):
    """Every labelled photo of root, resized to size x size, as uint8 tensors held in memory.

    Decoding happens once: the result is cached under cache_dir keyed by the files'
    names, sizes and mtimes. Bad pairs are skipped and listed under "errors". "fingerprint"
    hashes the contents of every usable photo and label, wherever the folder lies: a run is
    reused only on data with the same fingerprint.
    """
    root = Path(root).resolve()  # the paths it holds must not depend on the working directory
    pairs = find_pairs(root)
    cache_dir = Path(cache_dir or cache_root())
    cache = cache_dir / f"{root.name}-{size}-{_cache_key(root, pairs, size)}.pt"
    if cache.exists():
        ds = torch.load(cache, weights_only=True)
        for e in ds["errors"]:
            warnings.warn(f"skipped: {e}", stacklevel=2)
        return ds
    from tqdm import tqdm  # not tqdm.auto: in a kernel without ipywidgets it warns, naming its own absolute path
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:  # PIL decodes without the GIL
        jobs = pool.map(_load_pair, [(s, p, l, size) for s, p, l in pairs])
        out = list(tqdm(jobs, total=len(pairs), desc=f"decode {root.name}@{size}", disable=not progress))
    good = [o for o in out if o[5] is None]
    errors = [o[5] for o in out if o[5] is not None]
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
        "fingerprint": hashlib.sha256("".join(f"{o[0]}:{o[4]};" for o in good).encode()).hexdigest()[:16],
        "errors": errors,
    }
    buf = io.BytesIO()
    torch.save(ds, buf)
    atomic_write(cache, buf.getvalue())  # a temp file of its own: two runs may build the same cache at once
    return ds


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
        atomic_write(split_file, ("stem,split\n" + "".join(f"{s},{known[s]}\n" for s in sorted(known))).encode())
    return {s: known[s] for s in stems}


def find_data(path=None):
    """The dataset folder: path, else $METERSEG_DATA, else data/water-meters (fetched if missing)."""
    for cand in (path, os.environ.get("METERSEG_DATA")):
        if cand:
            if not Path(cand).is_dir():
                raise DataError(f"{cand}: data folder not found")
            return Path(cand).resolve()
    if not (LOCAL_COPY / ".verified").exists():
        fetch_upstream(LOCAL_COPY)
    return LOCAL_COPY


def resolve_data(cfg):
    """The dataset folder a config names; synthetic photos are generated once into the cache."""
    if cfg.data == "synthetic":
        root = cache_root() / f"synthetic-{cfg.seed}"
        if not (root / "train_imgs").is_dir():
            make_synthetic(root.with_name(root.name + ".tmp"), seed=cfg.seed)
            os.replace(root.with_name(root.name + ".tmp"), root)
        return root
    return find_data(cfg.data or None)


def split_file(root):
    """Where a dataset's split lives: committed under data/splits for named datasets."""
    root = Path(root)
    if root.name.startswith("synthetic"):
        return root / "split.csv"
    return REPO / "data" / "splits" / f"{root.name}.csv"


def prepare_data(cfg, progress=False):
    """The cached dataset and the indices of its train/val/test parts: the one definition of the split.

    Photos that cannot be read are in no part (load_dataset lists them under "errors").
    """
    root = resolve_data(cfg)
    ds = load_dataset(root, cfg.size, progress=progress)
    split = load_split(ds["stems"], split_file(root))
    idx = {p: [i for i, s in enumerate(ds["stems"]) if split[s] == p] for p in ("train", "val", "test")}
    if cfg.max_photos:
        idx["train"] = idx["train"][: cfg.max_photos]
    for p, ii in idx.items():
        if not ii:
            raise DataError(f"{root}: the {p} split is empty; add photos")
    return ds, idx


def split_pairs(cfg, part="test"):
    """(photos, labels) of one part of the split, in the order the runs score them."""
    ds, idx = prepare_data(cfg)
    return [Path(ds["photos"][i]) for i in idx[part]], [Path(ds["labels"][i]) for i in idx[part]]


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


def split_summary(card):
    """Photos, mean KB and mean region share (%) per part of the split, from a data card."""
    return card.groupby("split").agg(photos=("stem", "size"), mean_kb=("bytes", lambda b: b.mean() / 1e3),
                                     mean_region_pct=("mask_share", lambda m: 100 * m.mean())).round(2)
