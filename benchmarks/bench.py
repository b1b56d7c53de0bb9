"""Speed figures for this machine, all measured in one run:

- training and inference img/s (batch 8) of our AttU (gates 1+2) and MONAI's AttentionUnet at
  equal widths and size, both memory layouts, and their ratio (peers take turns, best of 7);
- achieved GFLOP/s of a training step (FlopCounterMode) as % of a 2048^3 fp32 matmul timed here;
- the study's way of training: one run with every core against one run per core side by side;
- (`compress` against decoding and re-encoding the same photos: benchmarks/compress_speed.py)

Run: .venv/bin/pip install monai && .venv/bin/python benchmarks/bench.py
"""
import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from meterseg.config import PAPER_LOSS_WEIGHT, make_config
from meterseg.losses import get_loss
from meterseg.models import UNet
from meterseg.train import native_bf16, train_step


def best_times(fns, warmup=2, reps=7):
    """Best seconds of each of fns {name: fn} over reps, the fns taking turns.

    Turns, so that the peers being compared see the same machine; the best, not the median,
    because on a shared VM one call can take 2x another (neighbours, clock): the best is the
    most repeatable figure of what the code can do.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    ts = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t)
    return {k: min(v) for k, v in ts.items()}


def cpu_name():
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = next(line for line in lines if line.startswith("flags")).split()
        isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
        return f"{name} ({isa})"
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def monai_attunet(base):
    from monai.networks.nets import AttentionUnet
    return AttentionUnet(spatial_dims=2, in_channels=3, out_channels=2,
                         channels=tuple(base * 2**i for i in range(5)), strides=(2, 2, 2, 2))


def matmul_gflops(n=2048):
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / best_times({"mm": lambda: a @ b}, reps=20)["mm"] / 1e9


def study_step(model, x, y):
    """The study's training step (train.train_step: bf16 where this CPU computes it natively, else fp32)."""
    opt, bf16 = torch.optim.Adam(model.parameters(), 1e-3), native_bf16(make_config("cpu"), torch.device("cpu"))
    return lambda: train_step(model, opt, get_loss("combo", PAPER_LOSS_WEIGHT), x, y, bf16)


def measure(models, size, channels_last, batch=8):
    """{name: train img/s, GFLOP/s of a training step, eval-mode inference img/s} of models {name: model}."""
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 2, (batch, size, size))
    if channels_last:
        models = {k: m.to(memory_format=torch.channels_last) for k, m in models.items()}
        x = x.contiguous(memory_format=torch.channels_last)
    steps = {k: study_step(m, x, y) for k, m in models.items()}
    train = best_times(steps)
    flops = {}
    for k, step in steps.items():
        with FlopCounterMode(display=False) as fc:
            step()
        flops[k] = fc.get_total_flops()
    for m in models.values():
        m.eval()
    with torch.no_grad():
        infer = best_times({k: (lambda m=m: m(x)) for k, m in models.items()})
    return {k: {"train": batch / train[k], "gflops": flops[k] / train[k] / 1e9, "infer": batch / infer[k]}
            for k in models}


def bench_models(peak, configs):
    print("| widths | size | layout | ours train img/s | MONAI train img/s | ratio | ours GFLOP/s (% of matmul) "
          "| MONAI GFLOP/s (%) | ours infer img/s | MONAI infer img/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for base, size in configs:
        for cl in (False, True):
            models = {"ours": UNet(base, gates=(1, 2))}
            try:
                models["monai"] = monai_attunet(base)
            except ImportError:
                pass
            r = measure(models, size, cl)
            o, m = r["ours"], r.get("monai")
            na = "n/a (pip install monai)"
            print(f"| {base} | {size} | {'channels_last' if cl else 'NCHW'} | {o['train']:.1f} | "
                  + (f"{m['train']:.1f} | {o['train'] / m['train']:.2f}x | " if m else f"{na} | | ")
                  + f"{o['gflops']:.1f} ({100 * o['gflops'] / peak:.0f}%) | "
                  + (f"{m['gflops']:.1f} ({100 * m['gflops'] / peak:.0f}%) | " if m else " | ")
                  + f"{o['infer']:.1f} | " + (f"{m['infer']:.1f} |" if m else " |"), flush=True)


def bench_width_sweep(peak, size=128):
    """Our training step's share of the matmul peak as the network widens (base 64 = the paper's widths)."""
    cells = []
    for base in (8, 16, 32, 64):
        g = measure({"ours": UNet(base, gates=(1, 2))}, size, True)["ours"]["gflops"]
        cells.append(f"base {base}: {g:.1f} GFLOP/s ({100 * g / peak:.0f}%)")
    print(f"training step @{size} px, channels_last, by width: " + "; ".join(cells), flush=True)


def bench_inference_model(base=8, size=128):
    """Our model as predict/compress run it (BatchNorm folded, channels_last) against plain eval mode."""
    try:
        from meterseg.checkpoint import for_inference
    except ImportError:  # an older checkout, measured for a before/after comparison
        return
    x = torch.randn(8, 3, size, size)
    plain = UNet(base, gates=(1, 2)).eval()
    fast = for_inference(UNet(base, gates=(1, 2)))
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for bs in (1, 8):
            t = best_times({"plain": lambda: plain(x[:bs]), "fast": lambda: fast(xc[:bs])})
            a, b = bs / t["plain"], bs / t["fast"]
            print(f"inference base {base} @{size} batch {bs}: plain eval NCHW {a:.1f} img/s, "
                  f"BN folded + channels_last {b:.1f} img/s ({b / a:.2f}x)")


def worker_throughput():
    """Run as a subprocess: train img/s of the cpu-profile AttU as the study trains it (channels_last)."""
    torch.manual_seed(0)
    x = torch.randn(8, 3, 128, 128).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (8, 128, 128))
    step = study_step(UNet(8, gates=(1, 2)).to(memory_format=torch.channels_last), x, y)
    for _ in range(3):
        step()
    t, n = time.perf_counter(), 60
    for _ in range(n):
        step()
    print(8 * n / (time.perf_counter() - t))


def bench_parallel_runs():
    """Images/s of the whole machine: one run with every core, against one one-thread run per core."""
    cores = os.cpu_count() or 1

    def launch(threads, k):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        procs = [subprocess.Popen([sys.executable, __file__, "--worker"], env=env, stdout=subprocess.PIPE, text=True)
                 for _ in range(k)]
        return sum(float(p.communicate()[0]) for p in procs)
    one = max(launch(cores, 1), launch(cores, 1))  # taking turns, best of two each
    many = max(launch(1, cores), launch(1, cores))
    print(f"cpu-profile training on the whole machine: 1 run x {cores} threads {one:.1f} img/s; "
          f"{cores} runs x 1 thread {many:.1f} img/s together ({many / one:.2f}x)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker_throughput()
    try:
        import monai
        mv = f", MONAI {monai.__version__}"
    except ImportError:
        mv = ", MONAI not installed"
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads{mv}")
    peak = matmul_gflops()
    print(f"fp32 matmul 2048^3, best of 20: {peak:.1f} GFLOP/s (the peak we compare against)")
    bench_models(peak, ((16, 128), (16, 256), (8, 128)))
    bench_width_sweep(peak)
    bench_inference_model()
    bench_parallel_runs()
    print(f"matmul again at the end, best of 20: {matmul_gflops():.1f} GFLOP/s (a large change: the machine was busy)")


if __name__ == "__main__":
    main()
