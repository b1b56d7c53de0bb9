"""Checkpoints: saved atomically, loaded with weights_only (pickled code refused), checked against their config."""
import io
import json
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .tool.card import CheckpointError
from .models import build_model
from .tool.stores import atomic_write


def torch_load(path):
    """A checkpoint's dict, loaded with weights_only; an error naming the file when it is not a meterseg checkpoint."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for code, RuntimeError/EOFError for junk
        raise CheckpointError(f"{path}: refused: not a plain weights checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(ck, dict) or "state_dict" not in ck or "config" not in ck:
        raise CheckpointError(f"{path}: not a meterseg checkpoint (needs state_dict and config)")
    return ck


def save_checkpoint(path, state, new=False):
    """torch.save, written whole or not at all, so a kill never leaves half a checkpoint; new: never over a file."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue(), new=new)


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
    ck = torch_load(path)
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

    Same outputs up to float rounding, and faster on the CPU (benchmarks/README.md).
    For prediction only: not to be trained.
    """
    model.eval()
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            for i in range(len(seq) - 1):
                if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                    seq[i], seq[i + 1] = fuse_conv_bn_eval(seq[i], seq[i + 1]), nn.Identity()
    return model.to(memory_format=torch.channels_last)
