"""Checkpoints and inference: load a model safely, predict masks at a photo's own size."""
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .data import DataError, load_photo
from .models import build_model

class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file."""


def pick_device(name="auto"):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def save_checkpoint(path, state):
    """torch.save to a temp file, then rename, so a kill never leaves half a checkpoint."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def model_state(model, cfg, **extra):
    """What a model checkpoint holds: the weights, the config as JSON, and plain extras."""
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return {"state_dict": sd, "config": json.dumps(cfg), **extra}


def load_model(path, expect=None, device="cpu"):
    """(model ready for inference, config dict) from a checkpoint, refusing pickled code.

    expect: model settings the caller needs (e.g. {"model": "attunet"}); a checkpoint
    built otherwise is refused with a message that names both.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for code, RuntimeError/EOFError for junk
        raise CheckpointError(f"{path}: refused: not a plain weights checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(ck, dict) or "state_dict" not in ck or "config" not in ck:
        raise CheckpointError(f"{path}: not a meterseg checkpoint (needs state_dict and config)")
    cfg = json.loads(ck["config"])
    for k, v in (expect or {}).items():
        if cfg.get(k) != json.loads(json.dumps(v)):  # as stored: tuples become lists
            raise CheckpointError(f"{path}: checkpoint has {k}={cfg.get(k)!r} but {v!r} was asked for")
    model = build_model(cfg["model"], cfg["base"], tuple(cfg["gates"]))
    try:
        model.load_state_dict(ck["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit {cfg['model']} base={cfg['base']} gates={cfg['gates']}: {str(e)[:300]}") from None
    return for_inference(model.to(device)), cfg


def for_inference(model):
    """Eval mode, each BatchNorm folded into the conv before it, channels_last weights.

    Same outputs up to float rounding; on the CPU the cpu-profile model infers 1.4x faster at
    batch 1 and 1.6x at batch 8 (benchmarks/README.md). For prediction only: not to be trained.
    """
    model.eval()
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            for i in range(len(seq) - 1):
                if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                    seq[i], seq[i + 1] = fuse_conv_bn_eval(seq[i], seq[i + 1]), nn.Identity()
    return model.to(memory_format=torch.channels_last)


def to_input(images_uint8, device):
    """uint8 (N,3,S,S) to the normalised float input the models take, channels_last.

    channels_last is faster on GPUs; on the CPU it is what makes the folded inference model
    fast, and it trains the cpu profile 1.1x faster on one thread (as the study's parallel
    runs train), 0.94x on two (benchmarks/README.md).
    """
    x = images_uint8.to(device, non_blocking=True).float().div_(255).sub_(0.5).div_(0.25)
    return x.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def foreground_margin(model, images_uint8, device="cpu", batch=16):
    """Logit margin (fg - bg) at model resolution, (N,S,S) float on CPU; > 0 means reading region."""
    out = []
    for i in range(0, len(images_uint8), batch):
        x = to_input(images_uint8[i:i + batch], device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
            logits = model(x).float()
        out.append((logits[:, 1] - logits[:, 0]).cpu())
    return torch.cat(out)


def margin_to_mask(margin, size):
    """Upsample one (S,S) margin bilinearly to (W,H) = size and threshold at 0: (bool mask, confidence).

    Confidence is the mean foreground probability inside the mask (0 if it is empty).
    """
    w, h = size
    m = F.interpolate(margin[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    mask = m > 0
    inside = m[mask]
    return mask.numpy(), float(torch.sigmoid(inside).mean()) if len(inside) else 0.0


def photo_input(path, size):
    """One photo as the models' uint8 (1,3,size,size) input, and its original (W, H)."""
    im, orig = load_photo(path, size)
    return torch.from_numpy(np.asarray(im).transpose(2, 0, 1).copy())[None], orig


def predict_photo(model, cfg, path, device="cpu"):
    """(bool mask at the photo's size, confidence) for one photo file; see margin_to_mask."""
    x, orig = photo_input(path, cfg["size"])
    return margin_to_mask(foreground_margin(model, x, device)[0], orig)

