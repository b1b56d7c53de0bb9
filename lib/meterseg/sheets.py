"""Label sheets for annotating billing readings by eye (docs/labelling.md): per photo its labelled quad,
rectified into an upright strip, its last two wheels enlarged, and upstream's candidate readings beside them.
A sheet never shows a model's reading. numpy, OpenCV and Pillow only."""
import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .tool.geometry import order_corners, rectify
from .tool.photos import DataError, label_readings, open_photo, read_label, to_rgb

STRIP_H, WHEELS_H = 80, 200  # pixels: the whole strip, and its last two wheels enlarged
PAD = 0.25  # the quad grown by this share of its height above and below, so that a digit half out of the window shows
ROW_W, TEXT_W = 1000, 240


def padded_quad(quad, pad=PAD):
    """The labelled quad grown by `pad` x its height above and below (top and bottom edges moved apart)."""
    q = order_corners(quad)
    down = ((q[3] - q[0]) + (q[2] - q[1])) / 2  # top edge to bottom edge
    return np.array([q[0] - pad * down, q[1] - pad * down, q[2] + pad * down, q[3] + pad * down])


def sheet_row(photo, label):
    """One photo's row (RGB uint8): its name and upstream's candidates, the strip, and its last two wheels enlarged.
    Lines at the window's top and bottom edges show where the labelled quad lies inside the padded strip."""
    image = np.asarray(to_rgb(open_photo(photo), photo))
    quad = read_label(label, (image.shape[1], image.shape[0]))
    strip = rectify(image, padded_quad(quad), height=STRIP_H)
    edge = round(STRIP_H * PAD / (1 + 2 * PAD))  # the window's edges in the padded strip
    wheels = strip[:, round(strip.shape[1] * 3 / 5):]  # the last two of five wheels
    wheels = np.asarray(Image.fromarray(wheels).resize((max(1, round(wheels.shape[1] * WHEELS_H / STRIP_H)), WHEELS_H),
                                                        Image.Resampling.BICUBIC))
    strip_w = min(ROW_W - TEXT_W - wheels.shape[1] - 20, round(strip.shape[1] * 1.6))
    strip = np.asarray(Image.fromarray(strip).resize((strip_w, round(STRIP_H * 1.6)), Image.Resampling.BICUBIC))
    row = Image.new("RGB", (ROW_W, WHEELS_H + 8), "white")
    draw = ImageDraw.Draw(row)
    font = ImageFont.load_default(size=22)
    draw.text((6, 10), Path(photo).stem, fill="black", font=font)
    draw.text((6, 50), "upstream:", fill="grey", font=ImageFont.load_default(size=16))
    for k, c in enumerate(label_readings(label)[:4]):
        draw.text((6, 72 + 28 * k), c, fill="navy", font=font)
    row.paste(Image.fromarray(strip), (TEXT_W, 4))
    row.paste(Image.fromarray(wheels), (ROW_W - wheels.shape[1] - 4, 4))
    for y, h, x0, x1 in ((edge * 1.6, round(STRIP_H * 1.6), TEXT_W, TEXT_W + strip_w),
                         (edge * WHEELS_H / STRIP_H, WHEELS_H, ROW_W - wheels.shape[1] - 4, ROW_W - 4)):
        for yy in (y, h - y):
            draw.line([(x0, 4 + yy), (x0 + 12, 4 + yy)], fill="red", width=2)
            draw.line([(x1 - 12, 4 + yy), (x1, 4 + yy)], fill="red", width=2)
    return np.asarray(row)


def draw_sheets(root, stems, out, rows=12, seed=None):
    """Sheets of `rows` photos each, as PNGs in `out` (sheet_001.png, ...), with index.csv (sheet, row, stem):
    the labelled photos `stems` of the dataset folder `root`, in that order or shuffled by `seed` (a second pass).
    A photo that cannot be drawn is listed in index.csv with its error and left off. Returns the sheets' paths."""
    root, out = Path(root), Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: not empty; sheets are written to a new folder")
    out.mkdir(parents=True, exist_ok=True)
    stems = list(stems)
    if seed is not None:
        stems = [stems[i] for i in np.random.default_rng(seed).permutation(len(stems))]
    index, drawn = [], []
    for stem in stems:
        try:
            drawn.append((stem, sheet_row(root / "train_imgs" / f"{stem}.jpg", root / "train_labels" / "labels" / f"{stem}.txt")))
        except DataError as e:
            index.append({"sheet": "", "row": "", "stem": stem, "error": str(e)})
    paths = []
    for k in range(0, len(drawn), rows):
        page = drawn[k:k + rows]
        path = out / f"sheet_{k // rows + 1:03d}.png"
        Image.fromarray(np.concatenate([r for _, r in page])).save(path)
        paths.append(path)
        index += [{"sheet": path.name, "row": i + 1, "stem": s, "error": ""} for i, (s, _) in enumerate(page)]
    with open(out / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["sheet", "row", "stem", "error"])
        w.writeheader()
        w.writerows(index)
    return paths
