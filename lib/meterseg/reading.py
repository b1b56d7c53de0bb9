"""Reading the meter: the counter window's 4 corners from the predicted region, the window
rectified to an upright strip, and its digits recognised by an offline recogniser (rapidocr's
PP-OCR recognition model, shipped inside its wheel; nothing is downloaded at run time)."""
import re
import time

import numpy as np

STRIP_HEIGHT = 48  # pixels of the rectified window; the recogniser resizes to its own 48 anyway
DIGITS = 5  # a water-meter counter shows 5 wheels
MIN_CONFIDENCE = 0.5  # rapidocr's own default text score; fixed beforehand, not tuned
READ_FIELDS = ["image", "status", "reading", "confidence", "x0", "y0", "x1", "y1", "x2", "y2", "x3", "y3"]
REFINE_MARGIN = 1.0  # second pass on the region's box grown by this; chosen on validation (README, Protocol)
VOTES = 9  # reads of a predicted quad: itself and 8 copies with jittered corners; chosen on validation
VOTE_JITTER_PX = 4.0  # their corners' Gaussian jitter (sd, photo pixels); chosen on validation


def order_corners(pts):
    """4 points as (top-left, top-right, bottom-right, bottom-left): clockwise in image coordinates."""
    pts = np.asarray(pts, dtype=np.float64)
    c = pts.mean(axis=0)
    pts = pts[np.argsort(np.arctan2(pts[:, 1] - c[1], pts[:, 0] - c[0]))]  # clockwise when y points down
    start = np.argmin(pts.sum(axis=1))  # the top-left corner has the smallest x + y
    return np.roll(pts, -start, axis=0)


def fit_quad(mask):
    """The 4 corners of the region of a bool (H, W) mask, ordered as order_corners, or None if empty.

    The largest connected part's outline is simplified to 4 vertices (Douglas-Peucker with a
    growing tolerance); where it will not reduce to 4, its minimum-area rectangle is used.
    """
    import cv2
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    hull = cv2.convexHull(max(contours, key=cv2.contourArea))
    perimeter = cv2.arcLength(hull, True)
    for eps in (0.01, 0.02, 0.03, 0.05, 0.08):
        approx = cv2.approxPolyDP(hull, eps * perimeter, True)
        if len(approx) == 4:
            return order_corners(approx[:, 0, :] + 0.5)  # pixel centres
        if len(approx) < 4:
            break
    return order_corners(cv2.boxPoints(cv2.minAreaRect(hull)) + 0.5)


def predict_quad(predictor, image, gap, orig):
    """The window's corners from a photo (PIL RGB) and its first-pass logit gap.

    The first pass (the whole photo at the model's 128 px, ~7 photo px a model pixel) finds the
    region; a second pass of the same model on the region's box grown by REFINE_MARGIN sees it on
    a finer grid, and the corners are fitted there. Falls back to the first pass's corners.
    """
    from PIL import Image
    from .predictor import gap_box, grow_box, image_batch, logit_gap_to_mask
    first = fit_quad(logit_gap_to_mask(gap, orig)[0])
    box, _ = gap_box(gap, orig)
    if first is None or box is None:
        return first
    x0, y0, x1, y1 = grow_box(box, REFINE_MARGIN, orig)
    crop = image.crop((x0, y0, x1, y1))
    small = image_batch(crop.resize((predictor.size, predictor.size), Image.Resampling.BILINEAR))
    second = fit_quad(logit_gap_to_mask(predictor.logit_gaps(small)[0], crop.size)[0])
    return first if second is None else second + np.array([x0, y0])


def photo_gap(predictor, path, data=None):
    """(the photo as PIL RGB, its first-pass logit gap, its original (W, H)) of one photo file (or its bytes named by path)."""
    from .photos import open_photo, to_rgb
    x, orig = predictor.inputs(path, data)
    return to_rgb(open_photo(path, data), path), predictor.logit_gaps(x)[0], orig


def photo_quad(predictor, path, data=None):
    """(the tool's corners or None, the photo as PIL RGB) of one photo file (or its bytes named by path)."""
    image, gap, orig = photo_gap(predictor, path, data)
    return predict_quad(predictor, image, gap, orig), image


def corner_error(pred, truth):
    """Mean distance in pixels between corresponding corners (both ordered as order_corners)."""
    return float(np.linalg.norm(order_corners(pred) - order_corners(truth), axis=1).mean())


def rectify(image, quad, height=STRIP_HEIGHT):
    """Warp the quad of an RGB uint8 (H, W, 3) image to an upright strip of the given height."""
    import cv2
    q = order_corners(quad).astype(np.float32)
    w = max(np.linalg.norm(q[1] - q[0]), np.linalg.norm(q[2] - q[3]))
    h = max(np.linalg.norm(q[3] - q[0]), np.linalg.norm(q[2] - q[1]), 1.0)
    width = max(1, int(round(height * w / h)))
    dst = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float32)
    return cv2.warpPerspective(np.ascontiguousarray(image), cv2.getPerspectiveTransform(q, dst), (width, height),
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def read_quad(reader, image, quad, votes=VOTES, jitter=VOTE_JITTER_PX, seed=0):
    """(digits, confidence) of the quad of an RGB uint8 image, voted over `votes` reads of its strip:
    the quad itself and copies whose corners are moved by N(0, jitter) px, since predicted corners
    are off by a few pixels. The DIGITS-digit reading with the highest summed confidence wins, with
    its mean confidence; when no read has DIGITS digits, the quad's own read is returned."""
    quad = np.asarray(quad, dtype=np.float64)
    rng = np.random.default_rng(seed)
    reads = [reader.read(rectify(image, q)) for q in [quad] + [quad + rng.normal(0, jitter, quad.shape)
                                                             for _ in range(votes - 1)]]
    tally = {}
    for digits, conf in reads:
        if len(digits) == DIGITS:
            tally.setdefault(digits, []).append(conf)
    if not tally:
        return reads[0]
    best = max(tally, key=lambda d: sum(tally[d]))
    return best, float(np.mean(tally[best]))


def label_readings(path):
    """The candidate readings of an upstream label file (every run of digits after the 8 corners)."""
    from pathlib import Path
    fields = Path(path).read_text(encoding="utf-8").split()[8:]
    return [d for f in fields for d in re.findall(r"\d+", f)]  # "00470.00479": a typo for two candidates


def digit_accuracy(reading, candidates, digits=DIGITS):
    """Share of the `digits` wheel positions read right, against the best-matching candidate."""
    if not candidates:
        return float("nan")
    r = (reading or "").ljust(digits, "?")[:digits]
    return max(sum(a == b for a, b in zip(r, c.ljust(digits, "!")[:digits])) for c in candidates) / digits


class Reader:
    """An offline digit recogniser: recognition only (no text detection), one thread by default."""

    def __init__(self, threads=1):
        from rapidocr import RapidOCR
        # Recognition-only is set when the engine is built: a per-call use_det=False was seen to
        # stick to later calls of a shared engine.
        self.engine = RapidOCR(params={"Global.use_det": False, "Global.use_cls": False, "Global.use_rec": True,
                                       "Global.log_level": "error",
                                       "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                                       "EngineConfig.onnxruntime.inter_op_num_threads": 1})

    def read(self, image):
        """(digits only, confidence) of an RGB uint8 image holding one line of text."""
        out = self.engine(np.ascontiguousarray(image[..., ::-1]))  # rapidocr takes OpenCV's BGR order
        text = "".join(out.txts or ())
        scores = [float(s) for s in (out.scores or ())]
        return re.sub(r"\D", "", text), (float(np.mean(scores)) if scores else 0.0)


READERS = ("auto", "own", "rapidocr")


def load_reader(checkpoint, name="auto"):
    """The recogniser `read` and `compress --read` use: "own" is the CRNN that notebook 06 trained
    and stored in the shipped checkpoint (key "reader"), "rapidocr" the off-the-shelf one, "auto"
    the CRNN when the checkpoint carries one, else rapidocr."""
    from pathlib import Path
    import torch
    from .checkpoint import CheckpointError
    from .ownreader import OwnReader
    if name not in READERS:
        raise ValueError(f"unknown reader {name!r}: expected one of {READERS}")
    state = None
    if name != "rapidocr":
        if not Path(checkpoint).is_file():
            raise CheckpointError(f"{checkpoint}: no such checkpoint")
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True).get("reader")
        except Exception as e:
            raise CheckpointError(f"{checkpoint}: refused: not a plain weights checkpoint ({type(e).__name__})") from None
        if state is None and name == "own":
            raise CheckpointError(f"{checkpoint}: carries no reader of ours (notebook 06 adds it); use --reader rapidocr")
    return OwnReader.from_state(state) if state is not None else Reader()


def plausible(reading, confidence, min_confidence):
    """'ok', or why a reading is flagged 'unreadable': not DIGITS digits, or low confidence."""
    if len(reading) != DIGITS:
        return f"unreadable: {len(reading)} digits"
    if confidence < min_confidence:
        return f"unreadable: confidence {confidence:.2f} < {min_confidence}"
    return "ok"


def read_region(predictor, reader, image, gap, orig, min_confidence=MIN_CONFIDENCE):
    """The tool's reading of a photo (PIL RGB) from its first-pass logit gap, for `read` and
    `compress --read` alike: (corners or None, digits, confidence rounded to 4 places, status)."""
    quad = predict_quad(predictor, image, gap, orig)
    if quad is None:
        return None, "", 0.0, "no_region"
    reading, conf = read_quad(reader, np.asarray(image), quad)
    return quad, reading, round(conf, 4), plausible(reading, conf, min_confidence)


def read_photo(predictor, reader, path, data=None, min_confidence=MIN_CONFIDENCE):
    """The whole tool on one photo: region, quad, strip, digits. A dict with status, reading,
    confidence, corners x0..y3 (photo pixels) and seconds. Raises DataError on a bad photo."""
    t0 = time.perf_counter()
    quad, reading, conf, status = read_region(predictor, reader, *photo_gap(predictor, path, data), min_confidence)
    corners = {f"{a}{i}": "" if quad is None else round(float(quad[i][j]), 1) for i in range(4) for j, a in enumerate("xy")}
    return {"status": status, "reading": reading, "confidence": conf, **corners, "seconds": time.perf_counter() - t0}

