"""The segmenter on the CPU, head to head in one run: eager fp32 (as the study evaluates), bf16 autocast,
ONNX Runtime fp32 (what the tool runs from an export), ONNX Runtime int8 (static QDQ quantisation,
calibrated on train photos) and OpenVINO fp32 (and bf16 on a CPU with bf16 units; when its wheel is installed), at batch 8 on one
thread and two; then, on the validation photos, what each backend changes against eager fp32:
mask Dice, crop boxes that move (and by how much), photos whose crop loses labelled region pixels.

    METERSEG_DATA=../shared/datasets/water-meters .venv/bin/python benchmarks/inference.py
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from meterseg.config import REPO, make_config
from meterseg.dataset import split_pairs
from meterseg.export import export
from meterseg.tool.geometry import gap_box, gap_to_mask, grow_box
from meterseg.tool.photos import load_photo, truth_mask
from meterseg.predictor import Predictor, cpu_has_bf16
from meterseg.tool.model import load_tool


def batch_of(photos, size):
    return np.stack([np.asarray(load_photo(p, size)[0]).transpose(2, 0, 1) for p in photos])


def ort_session(path, threads):
    import onnxruntime as ort
    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
    s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    return lambda x: s.run(None, {"image": x})[0]


def openvino_model(path, threads, precision="f32"):
    import openvino as ov
    core = ov.Core()
    m = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision})
    return lambda x: m(x)[0]


def quantise(fp32, out, calib):
    """Static int8 (QDQ) quantisation of the segmenter, calibrated on uint8 batches of train photos."""
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"image": c[None]} for c in calib])

        def get_next(self):
            return next(self.it, None)
    quantize_static(str(fp32), str(out), Reader(), activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def backends(predictor, folder, threads, int8):
    torch.set_num_threads(threads)

    def eager(x):  # logit_gaps is fp32 on the CPU; predictor.gaps (the tool's) is bf16 on a CPU with bf16 units
        return predictor.logit_gaps(torch.from_numpy(x)).numpy()

    def bf16(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return predictor.logit_gaps(torch.from_numpy(x)).float().numpy()
    out = {"eager fp32": eager, "eager bf16 autocast": bf16, "onnxruntime fp32": ort_session(folder / "segmenter.onnx", threads)}
    if int8:
        out["onnxruntime int8 (QDQ)"] = ort_session(int8, threads)
    try:
        out["openvino fp32"] = openvino_model(folder / "segmenter.onnx", threads)
        if cpu_has_bf16():  # OpenVINO runs bf16 only on CPUs with bf16 units
            out["openvino bf16"] = openvino_model(folder / "segmenter.onnx", threads, "bf16")
    except ImportError:
        pass
    return out


def best_ms(fn, x, reps=30):
    fn(x)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t)
    return 1e3 * best / len(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=str(REPO / "results/models/attunet.pt"))
    ap.add_argument("--photos", type=int, default=0, help="validation photos to compare on (0 = all)")
    a = ap.parse_args()
    import platform
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, bf16 units: {cpu_has_bf16()}")
    predictor = Predictor.load(a.checkpoint, "cpu")
    cfg = make_config("cpu")
    val_photos, val_labels = split_pairs(cfg, "val")
    if a.photos:
        val_photos, val_labels = val_photos[:a.photos], val_labels[:a.photos]
    train_photos, _ = split_pairs(cfg, "train")
    with tempfile.TemporaryDirectory() as tmp:
        folder = export(a.checkpoint, Path(tmp) / "export")
        int8 = None
        try:
            int8 = quantise(folder / "segmenter.onnx", Path(tmp) / "int8.onnx", batch_of(train_photos[:32], predictor.size))
        except Exception as e:  # report, go on without it
            print(f"int8 quantisation failed: {type(e).__name__}: {e}")
        x8 = batch_of(val_photos[:8], predictor.size)
        print("\nms a photo, batch 8 (best of 30):")
        print("| backend | 1 thread | 2 threads |\n|---|---|---|")
        times = {}
        for threads in (1, 2):
            for name, fn in backends(predictor, folder, threads, int8).items():
                times.setdefault(name, {})[threads] = best_ms(fn, x8)
        for name, t in times.items():
            print(f"| {name} | {t[1]:.2f} | {t[2]:.2f} |")
        # agreement on validation photos, one thread
        fns = backends(predictor, folder, 1, int8)
        x = batch_of(val_photos, predictor.size)
        gaps = {name: np.concatenate([fn(x[i:i + 8]) for i in range(0, len(x), 8)]) for name, fn in fns.items()}
        margin = predictor.crop_rule.margin
        print(f"\nagainst eager fp32 on {len(val_photos)} validation photos (masks at photo size, crops at margin {margin}):")
        print("| backend | mean mask Dice | min mask Dice | boxes moved | max move px | photos losing region px vs fp32 |\n"
              "|---|---|---|---|---|---|")
        truths = [truth_mask(p, l) for p, l in zip(val_photos, val_labels)]
        sizes = [(t.shape[1], t.shape[0]) for t in truths]
        ref_masks = [gap_to_mask(g, s)[0] for g, s in zip(gaps["eager fp32"], sizes)]
        ref_boxes = [gap_box(g, s)[0] for g, s in zip(gaps["eager fp32"], sizes)]
        for name, gs in gaps.items():
            if name == "eager fp32":
                continue
            dice, moved, lost = [], [], 0
            for g, s, rm, rb, t in zip(gs, sizes, ref_masks, ref_boxes, truths):
                m = gap_to_mask(g, s)[0]
                inter = (m & rm).sum()
                dice.append(2 * inter / max(1, m.sum() + rm.sum()))
                b = gap_box(g, s)[0]
                if b != rb:
                    moved.append(np.inf if b is None or rb is None else max(abs(p - q) for p, q in zip(b, rb)))
                if b is not None and rb is not None:
                    kept = lambda box: t[box[1]:box[3], box[0]:box[2]].sum()
                    lost += kept(grow_box(b, margin, s)) < kept(grow_box(rb, margin, s))
            print(f"| {name} | {np.mean(dice):.5f} | {np.min(dice):.5f} | {len(moved)} | {max(moved, default=0):.0f} | {lost} |")
        tool = load_tool(folder)
        t = time.perf_counter()
        tool.segmenter.gaps(x[:8])
        print(f"\ntool from the export: {tool.backend} ({1e3 * (time.perf_counter() - t) / 8:.2f} ms a photo, one call)")


if __name__ == "__main__":
    main()
