"""A trained model applied to photos: logit gaps at model resolution, masks and boxes at the photo's size.

"Logit gap" is the foreground logit minus the background logit (> 0: reading region). The crop
"margin" of compress is another thing: padding around the region's box.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import load_model
from .config import CROP_MARGIN
from .photos import load_photo


def pick_device(name="auto"):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_input(images_uint8, device):
    """uint8 (N,3,S,S) to the normalised float input the models take, channels_last.

    channels_last is faster on GPUs, and on the CPU for the folded inference model and for
    one-thread training (benchmarks/README.md).
    """
    x = images_uint8.to(device, non_blocking=True).float().div_(255).sub_(0.5).div_(0.25)
    return x.contiguous(memory_format=torch.channels_last)


def image_batch(im):
    """A PIL RGB image as a uint8 (1,3,H,W) tensor, the models' input before to_input."""
    return torch.from_numpy(np.asarray(im).transpose(2, 0, 1).copy())[None]


def photo_input(path, size, data=None):
    """One photo (its path, or its bytes named by path) as uint8 (1,3,size,size) input, and its original (W, H)."""
    im, orig = load_photo(path, size, data)
    return image_batch(im), orig


def logit_gap_to_mask(gap, size):
    """Upsample one (S,S) logit gap bilinearly to (W,H) = size and threshold at 0: (bool mask, confidence).

    Confidence is the mean foreground probability inside the mask (0 if it is empty).
    """
    w, h = size
    m = F.interpolate(gap[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    mask = m > 0
    inside = m[mask]
    return mask.numpy(), float(torch.sigmoid(inside).mean()) if len(inside) else 0.0


def _taps(n_in, n_out, lo, hi):
    """Source indices and weights of output pixels lo..hi-1 of a bilinear resize n_in -> n_out,
    computed as torch's CPU kernel does (align_corners=False), in float32."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.maximum(scale * (np.arange(lo, hi, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = src.astype(np.int64)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (np.float32(1) - w1).astype(np.float32), w1


def gap_box(gap, size):
    """(box, confidence) of the mask logit_gap_to_mask would give, upsampling only a window around the region.

    A photo pixel is interpolated from its 4 nearest model pixels, so it can be > 0 only next to
    a model pixel > 0: the window of those neighbours holds the whole region, and the box comes
    out the same at a fraction of the cost. box = (x0, y0, x1, y1), exclusive ends, or None.
    """
    g = gap.numpy().astype(np.float32) if isinstance(gap, torch.Tensor) else np.asarray(gap, np.float32)
    rows, cols = np.flatnonzero((g > 0).any(axis=1)), np.flatnonzero((g > 0).any(axis=0))
    if len(rows) == 0:
        return None, 0.0
    (s_h, s_w), (w, h) = g.shape, size

    def window(first, last, n_in, n_out):  # output pixels whose taps may reach model pixels first..last
        k = n_out / n_in
        return max(0, math.floor((first - 1) * k) - 2), min(n_out, math.ceil((last + 2) * k) + 2)

    y_lo, y_hi = window(rows[0], rows[-1], s_h, h)
    x_lo, x_hi = window(cols[0], cols[-1], s_w, w)
    r0, r1, rw0, rw1 = _taps(s_h, h, y_lo, y_hi)
    c0, c1, cw0, cw1 = _taps(s_w, w, x_lo, x_hi)
    top = g[r0][:, c0] * cw0 + g[r0][:, c1] * cw1
    bottom = g[r1][:, c0] * cw0 + g[r1][:, c1] * cw1
    up = rw0[:, None] * top + rw1[:, None] * bottom
    inside = up > 0
    ys, xs = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if len(ys) == 0:
        return None, 0.0
    conf = float(np.mean(1 / (1 + np.exp(-up[inside].astype(np.float64)))))
    return (x_lo + int(xs[0]), y_lo + int(ys[0]), x_lo + int(xs[-1]) + 1, y_lo + int(ys[-1]) + 1), conf


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


class Predictor:
    """A model ready for inference, with the input size it was trained at and the device it runs on."""

    def __init__(self, model, cfg, device="cpu"):
        self.model, self.cfg, self.device = model, cfg, torch.device(device)
        self.size = cfg["size"]
        # compress's margin: the one notebook 05 chose on validation for this model (analysis.ship_margin)
        self.crop_margin = cfg.get("crop_margin", CROP_MARGIN)

    @classmethod
    def load(cls, checkpoint, device="auto", expect=None):
        """From a checkpoint file (see checkpoint.load_model for what is refused)."""
        device = pick_device(device)
        model, cfg = load_model(checkpoint, expect, device)
        return cls(model, cfg, device)

    def inputs(self, path, data=None):
        """(uint8 (1,3,S,S), original (W, H)) of one photo."""
        return photo_input(path, self.size, data)

    @torch.no_grad()
    def logit_gaps(self, images_uint8, batch=16):
        """Logit gap at model resolution, (N,S,S) float on the CPU; > 0 means reading region."""
        out = []
        for i in range(0, len(images_uint8), batch):
            x = to_input(images_uint8[i:i + batch], self.device)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
                logits = self.model(x).float()
            out.append((logits[:, 1] - logits[:, 0]).cpu())
        return torch.cat(out)

    def mask(self, path):
        """(bool mask at the photo's own size, confidence) of one photo file."""
        x, orig = self.inputs(path)
        return logit_gap_to_mask(self.logit_gaps(x)[0], orig)
