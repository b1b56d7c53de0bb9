"""`compress` photos/s against the floor (a full decode and JPEG encode of each photo) on the same threads,
in one process: the steady rate, from a model already loaded, over a fresh output folder each time.

    METERSEG_DATA=../shared/datasets/water-meters .venv/bin/python benchmarks/compress_speed.py [--export]

Runs against whichever meterseg is importable, so the code before a change can be timed the same way:
PYTHONPATH=<old checkout>/lib python benchmarks/compress_speed.py (the one-pipeline change's "before").
"""
import argparse
import io
import itertools
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from meterseg.config import REPO
from meterseg.dataset import find_data, unlabelled_photos


def compressor(checkpoint, exported, workers):
    """compress(src, out) -> rows, with the model loaded once, for this checkout's API or the one before it."""
    try:
        from meterseg.tool.runner import compress
        from meterseg.tool.model import load_tool
    except ImportError:  # before the one-pipeline change: compress.compress(predictor, ...)
        from meterseg.compress import compress as old
        from meterseg.predictor import Predictor
        predictor = Predictor.load(checkpoint, "cpu")
        return lambda src, out: old(predictor, src, out, workers=workers, progress=False), "torch (before)"
    tool = load_tool(exported or checkpoint, device="cpu")
    return lambda src, out: compress(tool, src, out, workers=workers, progress=False), tool.backend


def floor(p):
    Image.open(p).convert("RGB").save(io.BytesIO(), "JPEG", quality=90)


def best(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=100)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--checkpoint", default=str(REPO / "results" / "models" / "attunet.pt"))
    ap.add_argument("--export", action="store_true", help="also export the checkpoint and run the tool from ONNX")
    a = ap.parse_args()
    photos = unlabelled_photos(find_data())[:a.photos]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for p in photos:
            (src / p.name).write_bytes(p.read_bytes())
        models = [None]
        if a.export:
            from meterseg.export import export
            models.append(export(a.checkpoint, Path(tmp) / "export"))
        runs = itertools.count()
        for exported in models:
            for workers in (1, 2):
                run, backend = compressor(a.checkpoint, exported, workers)
                with ThreadPoolExecutor(workers) as pool:
                    t_ours = best(lambda: run(src, Path(tmp) / f"out{next(runs)}"), a.reps)
                    t_floor = best(lambda: list(pool.map(floor, photos)), a.reps)
                n = len(photos)
                print(f"| {backend} | {workers} | {n / t_ours:.1f} | {n / t_floor:.1f} | {t_floor / t_ours:.2f}x |", flush=True)


if __name__ == "__main__":
    print("| model backend | threads | compress photos/s | decode+encode photos/s | ratio |\n|---|---|---|---|---|")
    main()
