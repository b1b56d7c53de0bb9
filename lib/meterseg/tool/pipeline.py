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

from .card import CropRule
from .geometry import fit_quad, gap_box, gap_to_mask, grow_box, rectify
from .jpegcrop import lossless_crop, lossless_method
from .photos import error_status, model_view, open_photo, to_rgb
from .recognisers import DIGITS, Read

SOURCE_FIELDS = ["source", "status", "bytes_in", "mtime_ns", "etag", "sha256"]  # what the resume rule keys on
CORNERS = [f"{a}{i}" for i in range(4) for a in "xy"]  # the read quad's corners in photo pixels
MANIFEST_FIELDS = SOURCE_FIELDS + ["method", "bytes_out", "x0", "y0", "x1", "y1", "output", "confidence",
                                   "reading", "reading_confidence", "reading_status", "digit_confidence", "half_turned"] + CORNERS
READ_FIELDS = SOURCE_FIELDS + ["reading", "confidence", "digit_confidence", "half_turned", "agreement"] + CORNERS
NEEDS_A_PERSON = ("review", "unreadable", "no_region")  # read's statuses a person should look at (and errors)
STORED = ("ok", "no_region", "uncertain")  # compress's statuses of a photo stored: cropped, or whole (flagged)
FORMATS = ("lossless", "jpeg", "webp", "png")
EXTENSIONS = {"jpeg": (".jpg", ".jpeg"), "webp": (".webp",), "png": (".png",)}  # first: the one appended
MIN_CONFIDENCE = 0.5  # rapidocr's own default text score; fixed beforehand, not tuned
REFINE_MARGIN = 1.0  # second pass on the region's box grown by this; chosen on validation (docs/protocol.md)
VOTES = 9  # reads of a predicted quad: itself and 8 copies with jittered corners (docs/protocol.md)
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


def region(photo, probability=0.5):
    """(box on the photo's grid or None, confidence) of the predicted counter window: the box of the pixels
    the model gives at least `probability`; confidence is the mean probability inside the 0.5 region."""
    box, conf = gap_box(photo.gap, photo.size)
    if probability != 0.5 and box is not None:
        box = gap_box(photo.gap - CropRule(probability=probability).logit, photo.size)[0]
    return box, conf


def crop_box(photo, rule):
    """(box to crop to, before the margin, or None to store the photo whole; confidence; status): 'ok',
    'no_region', or 'uncertain' when the region's confidence is under the rule's (stored whole, flagged)."""
    box, conf = region(photo, rule.probability)
    if box is None:
        return None, conf, "no_region"
    return (box, conf, "ok") if conf >= rule.min_confidence else (None, conf, "uncertain")


def crop(photo, box, margin, fmt="lossless", quality=90):
    """(output bytes, fields) of the photo cropped to box grown by margin; with no box the photo is
    copied whole. A JPEG's lossless crop keeps its original pixels (jpegcrop.py)."""
    if box is None:
        return photo.data, {"method": "copy", "x0": 0, "y0": 0, "x1": photo.size[0], "y1": photo.size[1]}
    box = grow_box(box, margin, photo.size)
    if fmt == "lossless" and photo.format == "JPEG" and lossless_method():
        (out, box), method = lossless_crop(photo.data, box, photo.source), lossless_method()
    else:
        out_fmt = "png" if fmt == "lossless" else fmt  # lossless for a non-JPEG: PNG
        out, method = encode(photo.rgb.crop(box), out_fmt, quality, photo.exif), f"reencode-{out_fmt}"
    return out, {"method": method, "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3]}


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
    """The Read of the quad of an RGB uint8 image: the quad's own strip read, checked by `votes` - 1 more
    reads of strips whose corners are moved by N(0, jitter) px (predicted corners are off by a few
    pixels). The reading is the quad's own when it has DIGITS digits (one read beat the vote's winner
    on validation with our CRNN; docs/protocol.md), else the DIGITS-digit reading of the jittered reads
    with the highest summed confidence, else the quad's own as it came. Its agreement is the share of
    all reads that gave it; its digit confidences and half-turn probabilities the means over those."""
    corners = np.asarray(corners, dtype=np.float64)
    rng = np.random.default_rng(seed)
    reads = [reader.read(rectify(image, q)) for q in [corners] + [corners + rng.normal(0, jitter, corners.shape)
                                                                  for _ in range(votes - 1)]]
    tally = {}
    for r in reads:
        if len(r.digits) == DIGITS:
            tally.setdefault(r.digits, []).append(r)
    if not tally:
        return reads[0]._replace(agreement=0.0)
    won = tally.get(reads[0].digits) or tally[max(tally, key=lambda d: sum(r.confidence for r in tally[d]))]
    mean = lambda rows: tuple(round(float(v), 4) for v in np.mean(rows, axis=0)) if rows[0] else ()  # noqa: E731
    return Read(won[0].digits, float(np.mean([r.confidence for r in won])), mean([r.digit_confidence for r in won]),
                mean([r.half_turn for r in won]), len(won) / len(reads))


def decide(read, accept, min_confidence=MIN_CONFIDENCE):
    """A reading's status: 'unreadable: ...' (not DIGITS digits, or confidence under min_confidence),
    'ok' when the reader's accept rule stands behind it, else 'review'."""
    if len(read.digits) != DIGITS:
        return f"unreadable: {len(read.digits)} digits"
    if read.confidence < min_confidence:
        return f"unreadable: confidence {read.confidence:.2f} < {min_confidence}"
    return "ok" if accept is not None and accept.accepts(read) else "review"


def reading(tool, photo, min_confidence=MIN_CONFIDENCE):
    """The tool's reading of a photo: (corners or None, Read, status, reading fields for a row)."""
    corners, accept = quad(tool.segmenter, photo), tool.reader.accept
    read = Read("", 0.0, agreement=0.0) if corners is None else read_quad(tool.reader, np.asarray(photo.rgb), corners)
    status = "no_region" if corners is None else decide(read, accept, min_confidence)
    wheels = "n/a" if accept is None or not read.half_turn else ";".join(map(str, accept.half_turned_wheels(read)))
    xy = {k: "" if corners is None else round(float(corners[i // 2][i % 2]), 1) for i, k in enumerate(CORNERS)}
    return corners, read, status, {"digit_confidence": ";".join(f"{c:.3f}" for c in read.digit_confidence),
                                   "half_turned": wheels if corners is not None else ""} | xy


def source_fields(photo, listed):
    """The row fields that say which version of the source was done (listed: size, mtime_ns, etag)."""
    return {"source": photo.source, "bytes_in": len(photo.data), "mtime_ns": listed.get("mtime_ns", ""),
            "etag": listed.get("etag", ""), "sha256": sha256_bytes(photo.data)}


def compress_row(tool, photo, listed, margin=None, fmt="lossless", quality=90, read=False, min_confidence=MIN_CONFIDENCE):
    """compress's per-photo work: (crop bytes, manifest row), by the model's crop rule (margin: its margin
    instead). The row names the output the crop is to be written to; the runner writes it."""
    rule = tool.segmenter.crop_rule
    box, conf, status = crop_box(photo, rule)
    out, fields = crop(photo, box, rule.margin if margin is None else margin, fmt, quality)
    row = dict.fromkeys(MANIFEST_FIELDS, "") | source_fields(photo, listed) | fields | {"status": status}
    row |= {"confidence": round(conf, 4), "bytes_out": len(out), "output": output_name(photo.source, fields["method"])}
    if read:
        _, r, status, fields = reading(tool, photo, min_confidence)
        row |= {"reading": r.digits, "reading_confidence": round(r.confidence, 4), "reading_status": status} | fields
    return out, row


def read_row(tool, photo, listed, min_confidence=MIN_CONFIDENCE, **_):
    """read's per-photo work: (None, readings row) with the corners in photo pixels."""
    _, r, status, fields = reading(tool, photo, min_confidence)
    return None, dict.fromkeys(READ_FIELDS, "") | source_fields(photo, listed) | fields | {
        "status": status, "reading": r.digits, "confidence": round(r.confidence, 4), "agreement": round(r.agreement, 3)}


JOBS = {"compress": (compress_row, MANIFEST_FIELDS), "read": (read_row, READ_FIELDS)}


def error_row(fields, source, e, listed=None):
    """The row of a photo that failed: one line whose message names the photo; the batch goes on."""
    msg = str(e)
    named = msg if source in msg else f"{source}: {msg}"
    return dict.fromkeys(fields, "") | {"source": source, "status": error_status(named),
                                        "bytes_in": (listed or {}).get("size", "")}
