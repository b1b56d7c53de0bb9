"""A training step (batch 8, cpu profile: 128 px, base 8) in fp32 and under bf16 autocast, taking
turns, best of 7, one thread (as each of the study's two parallel runs has): the figure behind
Config.bf16. Prints ms per batch and the ratio, and whether this CPU has bf16 units.

Run: .venv/bin/python benchmarks/bf16_training.py
"""
import os
import time

import torch

from meterseg.config import make_config
from meterseg.losses import get_loss
from meterseg.models import build_model
from meterseg.train import train_step


def step_time(model_name, gates, bf16, reps=7, warmup=3):
    """Best seconds of one optimizer step (forward, loss in fp32, backward, Adam) over reps."""
    cfg = make_config("cpu")
    torch.manual_seed(0)
    model = build_model(model_name, cfg.base, gates).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), cfg.lr)
    loss_fn = get_loss("combo", cfg.loss_weight)
    x = torch.randn(cfg.batch_size, 3, cfg.size, cfg.size).to(memory_format=torch.channels_last)
    y = (torch.rand(cfg.batch_size, cfg.size, cfg.size) < 0.05).long()
    best = float("inf")
    for i in range(warmup + reps):
        t = time.perf_counter()
        train_step(model, opt, loss_fn, x, y, bf16)
        if i >= warmup:
            best = min(best, time.perf_counter() - t)
    return best


def main():
    torch.set_num_threads(1)
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    print(f"torch {torch.__version__}, 1 thread, CPU bf16 units (avx512_bf16/amx_bf16): "
          f"{'yes' if ('avx512_bf16' in flags or 'amx_bf16' in flags) else 'no'}")
    for name, gates in (("attunet", (1, 2)), ("unet", ())):
        fp32, bf16 = [], []
        for _ in range(3):  # the two take turns, so both see the same machine
            fp32.append(step_time(name, gates, False))
            bf16.append(step_time(name, gates, True))
        print(f"{name:8s} fp32 {1e3 * min(fp32):6.1f} ms/batch   bf16 {1e3 * min(bf16):6.1f} ms/batch   "
              f"fp32/bf16 {min(fp32) / min(bf16):.2f}x")


if __name__ == "__main__":
    main()
