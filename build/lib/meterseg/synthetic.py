"""Synthetic meter photos with exact quads: the tests' and the smoke profile's data."""
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


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
