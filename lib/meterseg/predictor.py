"""A trained torch model applied to photos: logit gaps at model resolution (geometry.py turns them
into masks and boxes at the photo's size). The study evaluates with it; the tool runs it as one
of its segmenters (tool.py), or runs its ONNX export.
"""
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .tool.card import CropRule
from .checkpoint import load_model
from .tool.geometry import gap_to_mask
from .tool.photos import DataError, load_photo


def cpu_has_bf16(cpuinfo="/proc/cpuinfo"):
    """Whether this CPU computes bf16 natively (AMX-BF16 or AVX512-BF16): only there is bf16 autocast
    faster than fp32; elsewhere it is emulated and many times slower (benchmarks/README.md)."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in open(cpuinfo) if line.startswith("flags")), [])
    except OSError:  # not Linux: assume not, and run fp32
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


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


class Predictor:
    """A model ready for inference, with the input size it was trained at and the device it runs on."""

    def __init__(self, model, cfg, device="cpu", cpu_bf16=True):
        self.model, self.cfg, self.device = model, cfg, torch.device(device)
        self.size = cfg["size"]
        self.crop_rule = CropRule.of(cfg)  # compress's: notebook 05 stores the one validation chose
        # gaps: bf16 on a GPU, and on a CPU with bf16 units unless cpu_bf16 is False (the study's analyses: their
        # figures must not depend on the CPU); else fp32. logit_gaps (training's evaluation): fp32 on every CPU.
        self.bf16 = self.device.type == "cuda" or (self.device.type == "cpu" and cpu_bf16 and cpu_has_bf16())
        self.backend = f"torch {'bf16' if self.bf16 else 'fp32'} {self.device}"

    @classmethod
    def load(cls, checkpoint, device="auto", expect=None, cpu_bf16=True):
        """From a checkpoint file (see checkpoint.load_model for what is refused)."""
        device = pick_device(device)
        model, cfg = load_model(checkpoint, expect, device)
        return cls(model, cfg, device, cpu_bf16)

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

    def gaps(self, images):
        """The tool's segmenter interface: uint8 (N,3,S,S) numpy in, float32 (N,S,S) numpy out."""
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.logit_gaps(torch.from_numpy(np.ascontiguousarray(images))).float().numpy()

    def mask(self, path):
        """(bool mask at the photo's own size, confidence) of one photo file."""
        im, orig = load_photo(path, self.size)
        x = torch.from_numpy(np.asarray(im).transpose(2, 0, 1).copy())[None]
        return gap_to_mask(self.logit_gaps(x)[0].numpy(), orig)


def mask_names(photos):
    """Output mask name of each photo: its path relative to the photos' common folder, whole
    file name kept, '.png' appended (a/x.jpg -> a/x.jpg.png), so two photos never share a mask."""
    paths = [Path(p).resolve() for p in photos]
    if not paths:
        return {}
    root = Path(os.path.commonpath([p.parent for p in paths]))
    return {p: p.relative_to(root).as_posix() + ".png" for p in paths}


def write_masks(predictor, photos, out):
    """`meterseg predict`: a 0/255 mask PNG per photo at its own size, named by mask_names; the batch goes
    on past a bad photo (its error printed). Returns how many failed."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out}: cannot create the output folder ({e.strerror})") from None
    failed = 0
    for photo, name in mask_names(dict.fromkeys(photos)).items():
        try:
            mask, conf = predictor.mask(photo)
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / name)
            print(f"{photo}: {int(mask.sum())} region pixels, confidence {conf:.3f} -> {out / name}")
        except (DataError, OSError) as e:
            failed += 1
            print(f"error: {e}", file=sys.stderr)
    return failed
