"""Print speed figures for this machine: training and inference throughput against MONAI's
AttentionUnet, achieved GFLOP/s against a large fp32 matmul, and compress against bare
decode + encode. Run: .venv/bin/pip install monai && .venv/bin/python benchmarks/bench.py
"""
import argparse
import io
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from meterseg.data import REPO, find_data, unlabelled_photos
from meterseg.losses import combo_loss
from meterseg.models import UNet


def timed(fn, warmup=1, reps=3):
    """Median seconds of fn over reps, after warmup calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


def train_step(model, x, y, opt):
    def step():
        opt.zero_grad(set_to_none=True)
        combo_loss(model(x), y).backward()
        opt.step()
    return step


def monai_attunet(base):
    from monai.networks.nets import AttentionUnet
    return AttentionUnet(spatial_dims=2, in_channels=3, out_channels=2,
                         channels=tuple(base * 2**i for i in range(5)), strides=(2, 2, 2, 2))


def matmul_gflops(n=2048):
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / timed(lambda: a @ b) / 1e9


def bench_training(base, size, batch=8, channels_last=False):
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 2, (batch, size, size))
    out = {}
    for name, make in (("ours", lambda: UNet(base, gates=(1, 2))), ("monai", lambda: monai_attunet(base))):
        try:
            m = make()
        except ImportError:
            out[name] = None
            continue
        xx = x
        if channels_last:
            m, xx = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.Adam(m.parameters(), 1e-3)
        s = timed(train_step(m, xx, y, opt))
        with FlopCounterMode(display=False) as fc:
            train_step(m, xx, y, opt)()
        m.eval()
        with torch.no_grad():
            inf = timed(lambda: m(xx))
        out[name] = {"train_img_s": batch / s, "gflop_s": fc.get_total_flops() / s / 1e9, "infer_img_s": batch / inf}
    return out


def bench_compress(n=40):
    from meterseg.infer import load_model
    from meterseg.storage import compress
    photos = unlabelled_photos(find_data())[:n]
    model, cfg = load_model(REPO / "results" / "models" / "attunet.pt")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for p in photos:
            (src / p.name).write_bytes(p.read_bytes())
        t = time.perf_counter()
        compress(model, cfg, src, Path(tmp) / "out", progress=False)
        ours = len(photos) / (time.perf_counter() - t)
    t = time.perf_counter()
    for p in photos:  # the floor: decode every photo fully and encode it again once
        buf = io.BytesIO()
        Image.open(p).convert("RGB").save(buf, "JPEG", quality=90)
    floor = len(photos) / (time.perf_counter() - t)
    return ours, floor


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-compress", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    peak = matmul_gflops()
    print(f"fp32 matmul 2048^3: {peak:.1f} GFLOP/s (the peak we compare against)")
    print("| widths | size | layout | ours train img/s | MONAI train img/s | ratio | ours GFLOP/s (% of matmul) | ours infer img/s | MONAI infer img/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for base, size in ((16, 128), (16, 256), (8, 128)):
        for cl in (False, True):
            r = bench_training(base, size, channels_last=cl)
            o, m = r["ours"], r["monai"]
            ratio = f"{o['train_img_s'] / m['train_img_s']:.2f}x" if m else "n/a"
            print(f"| {base} | {size} | {'channels_last' if cl else 'NCHW'} | {o['train_img_s']:.1f} | "
                  f"{m['train_img_s'] if m else float('nan'):.1f} | {ratio} | {o['gflop_s']:.1f} ({100 * o['gflop_s'] / peak:.0f}%) | "
                  f"{o['infer_img_s']:.1f} | {m['infer_img_s'] if m else float('nan'):.1f} |", flush=True)
    if not a.skip_compress:
        ours, floor = bench_compress()
        print(f"compress: {ours:.1f} photos/s; bare decode+encode: {floor:.1f} photos/s; ratio {ours / floor:.2f}x")


if __name__ == "__main__":
    main()
