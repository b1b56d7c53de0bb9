"""Where the time goes: a cpu-profile training step (channels_last, as train() runs it) by
operator and by convolution shape (torch.profiler), and a compress run by stage, per photo,
on one thread.

Run: .venv/bin/python benchmarks/breakdown.py [--base 8 --size 128]
"""
import argparse
import io
import time
from collections import defaultdict

import torch
from PIL import Image
from torch.profiler import ProfilerActivity, profile

from meterseg.dataset import find_data, unlabelled_photos
from meterseg.config import PAPER_LOSS_WEIGHT, REPO, make_config
from meterseg.losses import get_loss
from meterseg.models import UNet
from meterseg.train import native_bf16, train_step
from pathlib import Path


def profile_training_step(base, size, steps=5):
    torch.manual_seed(0)
    model = UNet(base, gates=(1, 2)).to(memory_format=torch.channels_last)  # as train() runs it
    x = torch.randn(8, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (8, size, size))
    opt, bf16 = torch.optim.Adam(model.parameters(), 1e-3), native_bf16(make_config("cpu"), torch.device("cpu"))

    def step():
        train_step(model, opt, get_loss("combo", PAPER_LOSS_WEIGHT), x, y, bf16)
    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"training step, base {base} @{size} px, batch 8, {torch.get_num_threads()} threads: "
          f"{total / steps / 1e3:.1f} ms per step (under the profiler)")
    print("| operator | ms/step | share |\n|---|---|---|")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]:
        print(f"| {e.key} | {e.self_cpu_time_total / steps / 1e3:.2f} | {100 * e.self_cpu_time_total / total:.1f}% |")
    print("\nconvolutions by input shape (forward = mkldnn_convolution):")
    print("| op | input, weight-or-grad | calls/step | ms/step |\n|---|---|---|---|")
    convs = [e for e in prof.key_averages(group_by_input_shape=True)
             if e.key in ("aten::convolution_backward", "aten::mkldnn_convolution", "aten::einsum")]
    for e in sorted(convs, key=lambda e: -e.self_cpu_time_total)[:10]:
        print(f"| {e.key.removeprefix('aten::')} | {e.input_shapes[:2]} | {e.count // steps} | "
              f"{e.self_cpu_time_total / steps / 1e3:.2f} |")


def profile_compress(n=40, checkpoint=REPO / "results" / "models" / "attunet.pt"):
    """What each stage of compress (pipeline.py) costs a photo, one thread, from the torch checkpoint and its export."""
    import tempfile
    from meterseg.tool import pipeline
    from meterseg.export import export
    from meterseg.tool.model import load_tool
    torch.set_num_threads(1)
    photos = unlabelled_photos(find_data())[:n]
    with tempfile.TemporaryDirectory() as tmp:
        tools = {"torch": load_tool(checkpoint, device="cpu"), "onnxruntime": load_tool(export(checkpoint, Path(tmp) / "e"))}
        t = defaultdict(float)

        def timed(name, fn):
            s = time.perf_counter()
            out = fn()
            t[name] += time.perf_counter() - s
            return out
        datas = [timed("read the file", p.read_bytes) for p in photos]
        loaded = [timed("decode at reduced size + resize (pipeline.load)", lambda: pipeline.load(p.name, d, 128))
                  for p, d in zip(photos, datas)]
        for name, tool in tools.items():
            pipeline.segment(tool.segmenter, loaded[:8])
            timed(f"model, batch 8 ({tool.backend})", lambda: pipeline.segment(tool.segmenter, loaded))
        for p in loaded:
            box = timed("box on a window of the model grid (pipeline.region)", lambda: pipeline.region(p))[0]
            timed("lossless crop in process (pipeline.crop, turbojpeg)", lambda: pipeline.crop(p, box, 0.05))
            timed("sha256 of the photo (the resume rule)", lambda: pipeline.sha256_bytes(p.data))
        for d in datas:
            timed("floor: full decode + JPEG encode", lambda: Image.open(io.BytesIO(d)).convert("RGB").save(io.BytesIO(), "JPEG", quality=90))
    print(f"\ncompress stages, one thread, mean over {len(photos)} unlabelled photos:")
    print("| stage | ms/photo |\n|---|---|")
    for k, v in t.items():
        print(f"| {k} | {1e3 * v / len(photos):.2f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    a = ap.parse_args()
    profile_training_step(a.base, a.size)
    profile_compress()


if __name__ == "__main__":
    main()
