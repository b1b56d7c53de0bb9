"""`read`'s time a photo, one thread, by stage: load and the first pass (region), the second pass and
the corners (quad), the nine reads of the vote; from the torch checkpoint and from its export.

    METERSEG_DATA=../shared/datasets/water-meters .venv/bin/python benchmarks/read_speed.py [--photos 50]
"""
import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from meterseg.config import REPO, make_config
from meterseg.dataset import split_pairs
from meterseg.export import export
from meterseg.tool.pipeline import load, quad, read_quad, segment
from meterseg.tool.model import load_tool


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=50)
    ap.add_argument("--checkpoint", default=str(REPO / "results" / "models" / "attunet.pt"))
    a = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    photos = split_pairs(make_config("cpu"), "val")[0][:a.photos]
    with tempfile.TemporaryDirectory() as tmp:
        tools = {"torch checkpoint": load_tool(a.checkpoint, "auto", "cpu"),
                 "exported (ONNX)": load_tool(export(a.checkpoint, Path(tmp) / "e"), "auto")}
        print("| model | reader | region ms | quad ms | 9 reads ms | total ms a photo |\n|---|---|---|---|---|---|")
        for name, tool in tools.items():
            t = defaultdict(float)
            for p in photos:
                s = time.perf_counter()
                photo = segment(tool.segmenter, [load(p.name, p.read_bytes(), tool.segmenter.size)])[0]
                t["region"] += time.perf_counter() - s
                s = time.perf_counter()
                corners = quad(tool.segmenter, photo)
                t["quad"] += time.perf_counter() - s
                s = time.perf_counter()
                if corners is not None:
                    read_quad(tool.reader, np.asarray(photo.rgb), corners)
                t["reads"] += time.perf_counter() - s
            ms = {k: 1e3 * v / len(photos) for k, v in t.items()}
            print(f"| {name} ({tool.backend}) | {tool.reader.name} | {ms['region']:.1f} | {ms['quad']:.1f} | "
                  f"{ms['reads']:.1f} | {sum(ms.values()):.1f} |")


if __name__ == "__main__":
    main()
