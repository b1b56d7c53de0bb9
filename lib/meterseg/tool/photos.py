"""Reading one photo, one label or one mask, with an error that names the file when it is bad.

Two label kinds are read:
- upstream (iaoqian/water_meter_recognition): `NAME.txt` = `x1 y1 ... x4 y4 READING...`, a quad
  in photo pixels;
- a mask image (0/1, 0/255, palette or two-colour RGB).

Orientation: masks, labels and crop boxes all refer to the stored pixel grid of the file.
EXIF orientation tags are ignored on reading and kept on writing, so a viewer shows a
crop turned the same way as its photo.
"""
import io
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PHOTO_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
MAX_PIXELS = 64_000_000  # larger than any camera photo; refuses decompression bombs


class DataError(ValueError):
    """A photo, label or mask that cannot be used; the message starts with the file's path."""


def error_status(e):
    """The status of a photo that failed, in a manifest or readings row: its message on one line, cut to 400 characters."""
    return ("error: " + " ".join(str(e).splitlines()))[:400]


def open_photo(path, data=None):
    """Open a photo lazily as PIL, checking that it is a readable, sane image file.

    data: the file's bytes, already read (path then only names it in messages).
    """
    if data is None:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (0 bytes)")
    elif len(data) == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path if data is None else io.BytesIO(data))
        if im.width * im.height > MAX_PIXELS:
            raise DataError(f"{path}: {im.width}x{im.height} is over {MAX_PIXELS} pixels (decompression bomb?)")
        return im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: refused as a decompression bomb ({e})") from None
    except (OSError, SyntaxError) as e:
        raise DataError(f"{path}: not a readable image ({re.sub(r'<_io.BytesIO object at 0x[0-9a-f]+>', 'its bytes', str(e))})") from None


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


def load_photo(path, size=None, data=None):
    """A photo as (RGB PIL image, original (W, H)); resized to size x size when size is given.

    JPEGs are decoded at a reduced scale (libjpeg's DCT scaling) when the model needs
    fewer pixels, which is several times faster than a full decode.
    """
    im = open_photo(path, data)
    orig = im.size  # before model_view's draft shrinks it
    return (to_rgb(im, path) if size is None else model_view(im, size, path)), orig


def model_view(im, size, path):
    """An opened photo as the models see it (training and the tool alike): RGB, size x size, bilinear."""
    if im.format == "JPEG":
        im.draft("RGB", (size, size))  # libjpeg's DCT scaling: several times faster than a full decode
    return to_rgb(im, path).resize((size, size), Image.Resampling.BILINEAR)


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


def label_readings(path):
    """The candidate readings of an upstream label file (every run of digits after the 8 corners)."""
    fields = Path(path).read_text(encoding="utf-8").split()[8:]
    return [d for f in fields for d in re.findall(r"\d+", f)]  # "00470.00479": a typo for two candidates


def billing_reading(candidates):
    """The reading billing takes from a label's candidates: each half-turned wheel at the digit it is
    leaving (9 for a wheel between 9 and 0), so the meter is not billed for a unit it has not reached.
    For two candidates this is the smaller; for four (two wheels turning, 00179 00170 00180 00189)
    it is 00179, where the smallest, 00170, is a reading the meter never showed."""
    if len(candidates) < 2:
        return candidates[0] if candidates else ""
    wheels = []
    for digits in zip(*candidates):
        d = sorted({int(c) for c in digits})
        wheels.append(str(d[0]) if len(d) == 1 else "9" if d == [0, 9] else str(d[0]) if len(d) == 2 and d[1] == d[0] + 1
                      else None)
    return "".join(wheels) if None not in wheels else min(candidates)  # not adjacent digits: a label typo, take the smaller


def half_turned_wheels(candidates):
    """The wheels (1 = leftmost) whose digit differs between a label's candidates."""
    return [i + 1 for i, digits in enumerate(zip(*candidates)) if len(set(digits)) > 1] if len(candidates) > 1 else []


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


def truth_mask(photo, label, size=None):
    """Ground-truth mask of one pair, from a quad label or a mask file, at the photo's size or size x size."""
    orig = open_photo(photo).size
    if Path(label).suffix == ".txt":
        return polygon_mask(read_label(label, orig), orig, size)
    m = read_mask(label)
    if m.shape != (orig[1], orig[0]):
        raise DataError(f"{label}: mask is {m.shape[1]}x{m.shape[0]} but its photo {photo} is {orig[0]}x{orig[1]}")
    return resize_mask(m, size)
