"""`meterseg export`: a checkpoint as ONNX files and a machine-readable model card, so that the tool
(`compress`, `read`) runs on machines without torch. The segmenter graph takes uint8 photos at the
model's size and gives the logit gap, so normalisation travels inside it."""
import json
import os
from dataclasses import asdict
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from .tool.card import CARD, READER_ONNX, SEGMENTER_ONNX, CheckpointError, CropRule
from .checkpoint import load_model, torch_load
from .config import REPO
from .tool.recognisers import HEIGHT, WIDTH

UPSTREAM = {"name": "water-meters", "source": "github.com/iaoqian/water_meter_recognition", "folder": "WaterMeterDataset",
            "commit": "53bdd22a3b91f18ed4f8140757368fe6ee44ecb7", "licence": "MIT (the repository's; no separate "
            "licence is stated for the photos: research use, cite the source)"}
LIMITS = ("Trained on household mechanical water meters photographed in one city (Hangzhou, China), 850 labelled "
          "photos; not tested on gas meters, other meter types, other cameras or other cities. The crop rule was "
          "chosen on validation photos; a crop can still cut the counter window on unseen photos (see the study's README).")


class GapNet(nn.Module):
    """uint8 (N,3,S,S) photos -> float32 (N,S,S) logit gaps: the normalisation and the gap inside the graph."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        logits = self.model((x.float() / 255 - 0.5) / 0.25)
        return logits[:, 1] - logits[:, 0]


def _onnx(module, example, path, in_name, out_name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
        torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=[in_name], output_names=[out_name],
                          dynamic_axes={in_name: {0: "n"}, out_name: {0: "n"}}, opset_version=17)


def find_summary(checkpoint, cfg):
    """The run summary behind a checkpoint: summary.json beside it (a run folder), else the shipped
    model's run under ../runs/<profile>/ (results/models/attunet.pt); None when there is none."""
    import dataclasses
    from .config import Config
    from .train import run_name
    checkpoint = Path(checkpoint).resolve()
    run = run_name(Config(**{f.name: cfg[f.name] for f in dataclasses.fields(Config) if f.name in cfg}))
    for path in (checkpoint.parent / "summary.json", checkpoint.parent.parent / "runs" / cfg.get("profile", "") / run / "summary.json"):
        if path.is_file():
            return json.loads(path.read_text())
    return None


def model_card(ck, cfg, summary, has_reader):
    """What model.json says: input, classes, the crop and accept rules, test metrics, data, use and limits."""
    from .tool.pipeline import MIN_CONFIDENCE, REFINE_MARGIN, VOTE_JITTER_PX, VOTES
    test = (summary or {}).get("test")
    return {
        "format": "meterseg-export/1",
        "segmenter": {"file": SEGMENTER_ONNX, "model": cfg["model"], "gates": cfg.get("gates", []), "base": cfg["base"],
                      "loss": cfg.get("loss"), "epochs": cfg.get("epochs"), "seed": cfg.get("seed"),
                      "best_epoch": ck.get("epoch"), "val_dice": ck.get("val_dice")},
        "input": {"size": cfg["size"], "dtype": "uint8", "layout": "NCHW RGB, the photo resized (bilinear) to size x size",
                  "normalisation": "inside the graph: (x / 255 - 0.5) / 0.25"},
        "output": {"name": "gap", "meaning": "logit(counter window) - logit(background) per model pixel",
                   "classes": ["background", "counter window"], "threshold": 0.0},
        "crop": {**asdict(CropRule.of(cfg)),
                 "rule": CropRule.__doc__.split(":", 1)[1].strip().replace("\n    ", " ")},
        "reading": {"file": READER_ONNX if has_reader else None, "strip": [HEIGHT, WIDTH], "digits": 5,
                    "min_confidence": MIN_CONFIDENCE, "refine_margin": REFINE_MARGIN, "votes": VOTES,
                    "vote_jitter_px": VOTE_JITTER_PX, "reader_epoch": ck.get("reader", {}).get("epoch"),
                    "reader_val_exact": ck.get("reader", {}).get("val_exact"), "accept": ck.get("reader", {}).get("accept"),
                    "tuned": ck.get("reader", {}).get("tuned"),  # meterseg tune: what it learned from
                    "statuses": "ok: the accept rule stands behind the reading; review: a person should check it; "
                                "unreadable: not 5 digits or confidence under min_confidence; no_region"},
        "test_metrics": None if test is None else {
            "split": "test", "photos": test["n"], "resolution": "each photo's original size",
            **{k: round(v, 4) for k, v in test.items() if k != "n"}},
        "trained_by": None if summary is None else {k: summary.get(k) for k in ("run", "git_commit", "profile", "torch",
                                                                                  "device", "finished", "data_fingerprint")},
        "training_data": UPSTREAM | {"train_val_test_photos": None if summary is None else
                                     [summary.get("n_train"), summary.get("n_val"), summary.get("n_test")],
                                     "split_file": "data/splits/water-meters.csv"},
        "intended_use": "Find the counter window in a site photo of a mechanical water meter, crop the photo to it "
                        "for storage, and read the 5 wheels; doubtful readings go to a person.",
        "known_limits": LIMITS,
    }


def export(checkpoint, out, summary=None):
    """Write out/ (refused when it exists): segmenter.onnx, reader.onnx when the checkpoint carries
    our CRNN, and model.json. summary: the run's summary dict (default: find_summary)."""
    out = Path(out)
    if out.exists():
        raise CheckpointError(f"{out}: already exists; export writes a new folder and never replaces one")
    checkpoint = Path(checkpoint)
    model, cfg = load_model(checkpoint)
    ck = torch_load(checkpoint)
    summary = summary if summary is not None else find_summary(checkpoint, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        _onnx(GapNet(model.to(memory_format=torch.contiguous_format)).eval(),
              torch.zeros(1, 3, cfg["size"], cfg["size"], dtype=torch.uint8), tmp / SEGMENTER_ONNX, "image", "gap")
        if "reader" in ck:
            from .ownreader import OwnReader
            crnn = OwnReader.from_state(ck["reader"]).model.eval()
            _onnx(crnn, torch.zeros(1, 1, HEIGHT, WIDTH), tmp / READER_ONNX, "strip", "logp")
        card = model_card(ck, cfg, summary, "reader" in ck)
        (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n")
        licence = REPO / "LICENSE"
        if licence.is_file():
            shutil.copyfile(licence, tmp / "LICENSE")
        os.chmod(tmp, 0o777 & ~_umask())
        os.rename(tmp, out)  # whole or not at all; a non-empty folder created meanwhile makes this fail, never merge
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
