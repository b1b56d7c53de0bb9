"""A trained torch model applied to photos: logit gaps at model resolution (geometry.py turns them
into masks and boxes at the photo's size). The study evaluates with it; the tool runs it as one
of its segmenters (tool.py), or runs its ONNX export.
"""
import numpy as np
import torch

from .checkpoint import load_model
from .geometry import gap_to_mask
from .photos import load_photo
from .tool import default_margin


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


class Predictor:
    """A model ready for inference, with the input size it was trained at and the device it runs on."""

    def __init__(self, model, cfg, device="cpu"):
        self.model, self.cfg, self.device = model, cfg, torch.device(device)
        self.size = cfg["size"]
        self.crop_margin = default_margin(cfg)  # compress's: notebook 05 stores the one validation chose
        self.backend = f"torch fp32 {self.device.type}" if self.device.type == "cpu" else f"torch bf16 {self.device}"

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

    def gaps(self, images):
        """The tool's segmenter interface: uint8 (N,3,S,S) numpy in, float32 (N,S,S) numpy out."""
        return self.logit_gaps(torch.from_numpy(np.ascontiguousarray(images))).numpy()

    def mask(self, path):
        """(bool mask at the photo's own size, confidence) of one photo file."""
        x, orig = self.inputs(path)
        return gap_to_mask(self.logit_gaps(x)[0].numpy(), orig)
