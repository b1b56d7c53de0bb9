"""One photo through the tool: loaded once, then pure stages, region -> crop -> (quad -> strip -> reading).

A Photo holds a photo's bytes, its model-size pixels, its stored size and, once the segmenter has
run on its batch, its logit gap; its full RGB is decoded only when a stage needs it. `compress_row`
and `read_row` are the per-photo work of `meterseg compress` and `meterseg read`, whatever runs them
(runner.py). The two row schemas are defined here, once.
"""
import hashlib
import io
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from .geometry import fit_quad, gap_box, gap_to_mask, grow_box, rectify
from .jpegcrop import lossless_crop, lossless_method
from .photos import error_status, model_view, open_photo, to_rgb
from .recognisers import DIGITS

SOURCE_FIELDS = ["source", "status", "bytes_in", "mtime_ns", "etag", "sha256"]  # what the resume rule keys on
MANIFEST_FIELDS = SOURCE_FIELDS + ["method", "bytes_out", "x0", "y0", "x1", "y1", "output", "confidence",
                                   "reading", "reading_confidence", "reading_status"]
CORNERS = [f"{a}{i}" for i in range(4) for a in "xy"]
READ_FIELDS = SOURCE_FIELDS + ["reading", "confidence"] + CORNERS
FORMATS = ("lossless", "jpeg", "webp", "png")
EXTENSIONS = {"jpeg": (".jpg", ".jpeg"), "webp": (".webp",), "png": (".png",)}  # first: the one appended
MIN_CONFIDENCE = 0.5  # rapidocr's own default text score; fixed beforehand, not tuned
REFINE_MARGIN = 1.0  # second pass on the region's box grown by this; chosen on validation (README, Protocol)
VOTES = 9  # reads of a predicted quad: itself and 8 copies with jittered corners; chosen on validation
VOTE_JITTER_PX = 4.0  # their corners' Gaussian jitter (sd, photo pixels); chosen on validation


@dataclass
class Photo:
    """A photo loaded once: bytes, model-size pixels uint8 (3,S,S), stored (W, H), format, EXIF, and its gap when set."""
    source: str
    data: bytes
    pixels: np.ndarray
    size: tuple
    format: str
    exif: bytes = None
    gap: np.ndarray = None

    @cached_property
    def rgb(self):
        """The whole photo as RGB PIL, decoded on first use."""
        return to_rgb(open_photo(self.source, self.data), self.source)


def load(source, data, size):
    """A Photo from its bytes (source names it in errors); JPEGs are decoded at a reduced DCT scale
    when the model needs fewer pixels. Raises DataError on a bad photo."""
    im = open_photo(source, data)
    fmt, orig, exif = im.format, im.size, im.info.get("exif")
    return Photo(source, data, np.asarray(model_view(im, size, source)).transpose(2, 0, 1), orig, fmt, exif)


def segment(segmenter, photos, batch=8):
    """Set each photo's logit gap, batch photos at a time (a batch costs the model less per photo)."""
    for i in range(0, len(photos), batch):
        chunk = photos[i:i + batch]
        for p, g in zip(chunk, segmenter.gaps(np.stack([p.pixels for p in chunk]))):
            p.gap = g
    return photos


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def output_name(source, method):
    """The output's relative path for a source's and the method that made it: the source's own name,
    or, for a re-encoding to another format, the new extension appended (m.tiff -> m.tiff.png)."""
    if method == "copy" or method.startswith("lossless"):
        return source
    exts = EXTENSIONS[method.removeprefix("reencode-")]
    return source if Path(source).suffix.lower() in exts else source + exts[0]


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
        raise ValueError(f"unknown format {fmt!r}: expected one of {FORMATS}")
    return buf.getvalue()


def region(photo):
    """(box on the photo's grid or None, confidence) of the predicted counter window."""
    return gap_box(photo.gap, photo.size)


def crop(photo, box, margin, fmt="lossless", quality=90):
    """(output bytes, fields) of the photo cropped to box grown by margin; a photo with no region is
    copied whole and says so. A JPEG's lossless crop keeps its original pixels (jpegcrop.py)."""
    if box is None:
        return photo.data, {"status": "no_region", "method": "copy", "x0": 0, "y0": 0, "x1": photo.size[0], "y1": photo.size[1]}
    box = grow_box(box, margin, photo.size)
    if fmt == "lossless" and photo.format == "JPEG" and lossless_method():
        (out, box), method = lossless_crop(photo.data, box, photo.source), lossless_method()
    else:
        out_fmt = "png" if fmt == "lossless" else fmt  # lossless for a non-JPEG: PNG
        out, method = encode(photo.rgb.crop(box), out_fmt, quality, photo.exif), f"reencode-{out_fmt}"
    return out, {"status": "ok", "method": method, "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3]}


def quad(segmenter, photo):
    """The window's 4 corners, or None. The first pass (the whole photo at the model's size, ~7 photo px
    a model pixel) finds the region; a second pass of the same model on the region's box grown by
    REFINE_MARGIN sees it on a finer grid, and the corners are fitted there (else the first pass's)."""
    first = fit_quad(gap_to_mask(photo.gap, photo.size)[0])
    box, _ = region(photo)
    if first is None or box is None:
        return first
    x0, y0, x1, y1 = grow_box(box, REFINE_MARGIN, photo.size)
    window = photo.rgb.crop((x0, y0, x1, y1))
    small = np.asarray(window.resize((segmenter.size, segmenter.size), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    second = fit_quad(gap_to_mask(segmenter.gaps(small[None])[0], window.size)[0])
    return first if second is None else second + np.array([x0, y0])


def read_quad(reader, image, corners, votes=VOTES, jitter=VOTE_JITTER_PX, seed=0):
    """(digits, confidence) of the quad of an RGB uint8 image, voted over `votes` reads of its strip:
    the quad itself and copies whose corners are moved by N(0, jitter) px, since predicted corners
    are off by a few pixels. The DIGITS-digit reading with the highest summed confidence wins, with
    its mean confidence; when no read has DIGITS digits, the quad's own read is returned."""
    corners = np.asarray(corners, dtype=np.float64)
    rng = np.random.default_rng(seed)
    reads = [reader.read(rectify(image, q)) for q in [corners] + [corners + rng.normal(0, jitter, corners.shape)
                                                                  for _ in range(votes - 1)]]
    tally = {}
    for digits, conf in reads:
        if len(digits) == DIGITS:
            tally.setdefault(digits, []).append(conf)
    if not tally:
        return reads[0]
    best = max(tally, key=lambda d: sum(tally[d]))
    return best, float(np.mean(tally[best]))


def plausible(reading, confidence, min_confidence=MIN_CONFIDENCE):
    """'ok', or why a reading is flagged 'unreadable': not DIGITS digits, or low confidence."""
    if len(reading) != DIGITS:
        return f"unreadable: {len(reading)} digits"
    if confidence < min_confidence:
        return f"unreadable: confidence {confidence:.2f} < {min_confidence}"
    return "ok"


def reading(tool, photo, min_confidence=MIN_CONFIDENCE):
    """The tool's reading of a photo: (corners or None, digits, confidence rounded to 4 places, status)."""
    corners = quad(tool.segmenter, photo)
    if corners is None:
        return None, "", 0.0, "no_region"
    digits, conf = read_quad(tool.reader, np.asarray(photo.rgb), corners)
    return corners, digits, round(conf, 4), plausible(digits, conf, min_confidence)


def source_fields(photo, listed):
    """The row fields that say which version of the source was done (listed: size, mtime_ns, etag)."""
    return {"source": photo.source, "bytes_in": len(photo.data), "mtime_ns": listed.get("mtime_ns", ""),
            "etag": listed.get("etag", ""), "sha256": sha256_bytes(photo.data)}


def compress_row(tool, photo, listed, margin=None, fmt="lossless", quality=90, read=False, min_confidence=MIN_CONFIDENCE):
    """compress's per-photo work: (crop bytes, manifest row). margin None: the model's. The row names
    the output the crop is to be written to; the runner writes it."""
    box, conf = region(photo)
    out, fields = crop(photo, box, tool.segmenter.crop_margin if margin is None else margin, fmt, quality)
    row = dict.fromkeys(MANIFEST_FIELDS, "") | source_fields(photo, listed) | fields
    row |= {"confidence": round(conf, 4), "bytes_out": len(out), "output": output_name(photo.source, fields["method"])}
    if read:
        _, digits, rconf, status = reading(tool, photo, min_confidence)
        row |= {"reading": digits, "reading_confidence": rconf, "reading_status": status}
    return out, row


def read_row(tool, photo, listed, min_confidence=MIN_CONFIDENCE, **_):
    """read's per-photo work: (None, readings row) with the corners in photo pixels."""
    corners, digits, conf, status = reading(tool, photo, min_confidence)
    xy = {k: "" if corners is None else round(float(corners[i // 2][i % 2]), 1) for i, k in enumerate(CORNERS)}
    return None, dict.fromkeys(READ_FIELDS, "") | source_fields(photo, listed) | {
        "status": status, "reading": digits, "confidence": conf} | xy


JOBS = {"compress": (compress_row, MANIFEST_FIELDS), "read": (read_row, READ_FIELDS)}


def error_row(fields, source, e, listed=None):
    """The row of a photo that failed: one line whose message names the photo; the batch goes on."""
    msg = str(e)
    named = msg if source in msg else f"{source}: {msg}"
    return dict.fromkeys(fields, "") | {"source": source, "status": error_status(named),
                                        "bytes_in": (listed or {}).get("size", "")}
