"""Boxes and quads on a photo's stored pixel grid, from a logit gap at model resolution; numpy and OpenCV only.

"Logit gap" is the foreground logit minus the background logit (> 0: reading region). Boxes are
(x0, y0, x1, y1) with exclusive ends; quads are 4 (x, y) corners, clockwise from top-left.
"""
import math

import numpy as np


def _taps(n_in, n_out, lo, hi):
    """Source indices and weights of output pixels lo..hi-1 of a bilinear resize n_in -> n_out,
    computed as torch's CPU kernel does (align_corners=False), in float32."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.maximum(scale * (np.arange(lo, hi, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = src.astype(np.int64)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (np.float32(1) - w1).astype(np.float32), w1


def upsample(gap, size, window=None):
    """The (S,S) gap bilinearly resized to the photo's (W, H) = size, over window = (x0, y0, x1, y1) only
    (default: the whole photo); the same numbers as torch's F.interpolate(align_corners=False)."""
    g = np.asarray(gap, np.float32)
    (s_h, s_w), (w, h) = g.shape, size
    x_lo, y_lo, x_hi, y_hi = window or (0, 0, w, h)
    r0, r1, rw0, rw1 = _taps(s_h, h, y_lo, y_hi)
    c0, c1, cw0, cw1 = _taps(s_w, w, x_lo, x_hi)
    top = g[r0][:, c0] * cw0 + g[r0][:, c1] * cw1
    bottom = g[r1][:, c0] * cw0 + g[r1][:, c1] * cw1
    return rw0[:, None] * top + rw1[:, None] * bottom


def mean_probability(logits):
    """Mean sigmoid of the given logits (0 for none): a region's confidence."""
    return float(np.mean(1 / (1 + np.exp(-logits.astype(np.float64))))) if logits.size else 0.0


def gap_to_mask(gap, size):
    """(bool mask at the photo's (W, H) = size, confidence): the gap upsampled and thresholded at 0.
    Confidence is the mean foreground probability inside the mask (0 if it is empty)."""
    up = upsample(gap, size)
    mask = up > 0
    return mask, mean_probability(up[mask])


def gap_box(gap, size):
    """(box, confidence) of the mask gap_to_mask would give, upsampling only a window around the region.

    A photo pixel is interpolated from its 4 nearest model pixels, so it can be > 0 only next to
    a model pixel > 0: the window of those neighbours holds the whole region, and the box comes
    out the same at a fraction of the cost. box is None when there is no region.
    """
    g = np.asarray(gap, np.float32)
    rows, cols = np.flatnonzero((g > 0).any(axis=1)), np.flatnonzero((g > 0).any(axis=0))
    if len(rows) == 0:
        return None, 0.0
    (s_h, s_w), (w, h) = g.shape, size

    def window(first, last, n_in, n_out):  # output pixels whose taps may reach model pixels first..last
        k = n_out / n_in
        return max(0, math.floor((first - 1) * k) - 2), min(n_out, math.ceil((last + 2) * k) + 2)

    y_lo, y_hi = window(rows[0], rows[-1], s_h, h)
    x_lo, x_hi = window(cols[0], cols[-1], s_w, w)
    up = upsample(g, size, (x_lo, y_lo, x_hi, y_hi))
    inside = up > 0
    ys, xs = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if len(ys) == 0:
        return None, 0.0
    return (x_lo + int(xs[0]), y_lo + int(ys[0]), x_lo + int(xs[-1]) + 1, y_lo + int(ys[-1]) + 1), mean_probability(up[inside])


def region_box(mask):
    """Bounding box of a bool (H, W) mask, or None if empty."""
    xs, ys = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))  # not np.nonzero: 5x faster
    if len(xs) == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def grow_box(box, margin, size):
    """Grow a box by margin x its longer side on every side, clipped to size = (W, H)."""
    x0, y0, x1, y1 = box
    pad = math.ceil(margin * max(x1 - x0, y1 - y0))
    return max(0, x0 - pad), max(0, y0 - pad), min(size[0], x1 + pad), min(size[1], y1 + pad)


def order_corners(pts):
    """4 points as (top-left, top-right, bottom-right, bottom-left), clockwise in image coordinates, with the
    top edge on a long side: a counter window is wider than tall, however the photo was turned. Of the two
    such orders, the one that starts at the corner with the smaller x + y."""
    pts = np.asarray(pts, dtype=np.float64)
    c = pts.mean(axis=0)
    pts = pts[np.argsort(np.arctan2(pts[:, 1] - c[1], pts[:, 0] - c[0]))]  # clockwise when y points down
    edge = np.linalg.norm(pts - np.roll(pts, -1, axis=0), axis=1)  # edge i joins corner i to corner i + 1
    long = 0 if edge[0] + edge[2] >= edge[1] + edge[3] else 1
    start = min((long, long + 2), key=lambda i: pts[i].sum())
    return np.roll(pts, -start, axis=0)


def fit_quad(mask):
    """The 4 corners of the region of a bool (H, W) mask, ordered as order_corners, or None if empty: the
    minimum-area rectangle of its largest connected part (an outline simplified to 4 vertices cut wheels
    off: docs/protocol.md, "Reading")."""
    import cv2
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    return order_corners(cv2.boxPoints(cv2.minAreaRect(max(contours, key=cv2.contourArea))) + 0.5)  # pixel centres


def corner_error(pred, truth):
    """Mean distance in pixels between corresponding corners (both ordered as order_corners)."""
    return float(np.linalg.norm(order_corners(pred) - order_corners(truth), axis=1).mean())


def rectify(image, quad, height=48):
    """Warp the quad of an RGB uint8 (H, W, 3) image to an upright strip of the given height."""
    import cv2
    q = order_corners(quad).astype(np.float32)
    w = max(np.linalg.norm(q[1] - q[0]), np.linalg.norm(q[2] - q[3]))
    h = max(np.linalg.norm(q[3] - q[0]), np.linalg.norm(q[2] - q[1]), 1.0)
    width = max(1, int(round(height * w / h)))
    dst = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float32)
    return cv2.warpPerspective(np.ascontiguousarray(image), cv2.getPerspectiveTransform(q, dst), (width, height),
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
