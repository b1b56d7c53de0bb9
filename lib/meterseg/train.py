"""One training run: its directory, the schedule, resume after a kill, reuse when config and data match."""
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_model, model_state, save_checkpoint
from .config import PAPER_LOSS_WEIGHT, REPO, make_config
from .dataset import prepare_data
from .losses import get_loss
from .metrics import image_scores, summarize
from .models import build_model
from .tool.photos import truth_mask
from .tool.geometry import gap_to_mask
from .tool.stores import atomic_write, rows_csv
from .predictor import Predictor, cpu_has_bf16, pick_device, to_input


def train_step(model, opt, loss_fn, x, y, bf16):
    """One optimizer step as every run (and every benchmark of one) takes it: the forward pass under bf16
    autocast when bf16, the loss in fp32, backward, the optimizer. Returns the loss."""
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
    loss = loss_fn(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def native_bf16(cfg, device):
    """Whether this run trains under bf16 autocast: asked for (cfg.bf16) and native here (a GPU, or a CPU
    with bf16 units); elsewhere fp32, since emulated bf16 is ~11x slower (benchmarks/README.md)."""
    return cfg.bf16 and (device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()))


def run_name(cfg):
    """A readable directory name for a run: model, gates, loss, seed, and epochs and peak lr where not the profile's."""
    gates = "g" + "".join(map(str, cfg.gates)) if cfg.gates else "nogate"
    loss = cfg.loss + (f"{cfg.loss_weight:g}" if cfg.loss == "combo" and cfg.loss_weight != PAPER_LOSS_WEIGHT else "")
    profile = make_config(cfg.profile)
    epochs = "" if cfg.epochs == profile.epochs else f"-e{cfg.epochs}"
    lr = "" if cfg.lr == profile.lr else f"-lr{cfg.lr:g}"
    return f"{cfg.model}-{gates}-{loss}-s{cfg.seed}{epochs}{lr}"


def git_commit():
    """HEAD's commit, with -dirty when tracked files outside results/ differ from it; "unknown" outside a checkout."""
    def git(*args):
        r = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None
    try:
        sha = git("rev-parse", "--verify", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")  # what a study writes
    except OSError:
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


SCHEDULES = ("step", "cosine")


def lr_factor(cfg, n_batches):
    """The learning-rate multiplier after `it` optimizer steps, for cfg.schedule.

    step: the paper's StepLR, gamma every step_size epochs. cosine: linear warm-up over
    cfg.warmup epochs, then half a cosine down to 0 at the last step.
    """
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {cfg.schedule!r}: expected one of {SCHEDULES}")
    total, warm = cfg.epochs * n_batches, cfg.warmup * n_batches

    def factor(it):
        if cfg.schedule == "step":
            return cfg.gamma ** (it // n_batches // cfg.step_size)
        if it < warm:
            return (it + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (it - warm) / max(1, total - warm))))
    return factor


@torch.no_grad()
def val_dice(predictor, ds, ii):
    """Mean per-image Dice at model resolution (cheap; used to pick the best epoch)."""
    predictor.model.eval()
    gaps = predictor.logit_gaps(ds["images"][ii])
    truth = ds["masks"][ii].bool()
    return float(np.mean([image_scores(g > 0, t)["dice"] for g, t in zip(gaps, truth)]))


def test_metrics(predictor, ds, ii):
    """Per-image metrics at each photo's original resolution, masks re-read from the label files."""
    predictor.model.eval()
    gaps = predictor.logit_gaps(ds["images"][ii])
    rows = []
    for g, i in zip(gaps, ii):
        truth = truth_mask(ds["photos"][i], ds["labels"][i])
        pred, _ = gap_to_mask(g.numpy(), (truth.shape[1], truth.shape[0]))
        rows.append({"image": ds["stems"][i], **image_scores(pred, truth)})
    return rows


def _write_csv(path, rows):
    atomic_write(path, rows_csv(rows, list(rows[0])))


def _write_json(path, obj):
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def finished(out_dir):
    """Whether a run directory holds a finished run that train reuses: its summary and its network."""
    return all((Path(out_dir) / n).exists() for n in ("summary.json", "best.pt"))


def train(cfg, out_dir, progress=None):
    """Train one run into out_dir and return its summary.

    A finished run with the same config and the same data (data.json: the dataset's content
    fingerprint) is returned as is, unless its best.pt is missing (a fresh clone: git keeps the
    summaries, not the networks), when it is trained again; an interrupted one resumes from last.pt
    (same epochs, same batches, same result); another config or other data in out_dir is refused
    rather than overwritten or silently reused.
    """
    out = Path(out_dir)
    cfg_dict = dataclasses.asdict(cfg)
    cfg_json = json.loads(json.dumps(cfg_dict))  # tuples -> lists, as stored
    progress = (not os.environ.get("CI")) if progress is None else progress
    ds, idx = prepare_data(cfg, progress)
    data_id = {"dataset": Path(ds["root"]).name, "fingerprint": ds["fingerprint"],
               "photos": {p: len(ii) for p, ii in idx.items()}}
    if (out / "config.json").exists():
        stored = json.loads((out / "config.json").read_text())
        if stored != cfg_json:
            diff = {k: (stored.get(k), v) for k, v in cfg_json.items() if stored.get(k) != v}
            raise ValueError(f"{out}: holds a run with another config {diff}; use another --out or remove it")
        stored = json.loads((out / "data.json").read_text()) if (out / "data.json").exists() else {}
        if stored.get("fingerprint") != data_id["fingerprint"]:
            raise ValueError(f"{out}: holds a run trained on other data (fingerprint {stored.get('fingerprint')}, "
                             f"now {data_id['fingerprint']} from {ds['root']}); use another results folder or remove it")
        if finished(out):
            return json.loads((out / "summary.json").read_text())
        if (out / "summary.json").exists():  # a clone of committed results: the record without its network
            print(f"{out}: finished run without best.pt (not committed): trained again", flush=True)
            (out / "summary.json").unlink()  # else a kill mid-run would leave it beside a half-trained best.pt
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "config.json", cfg_json)
    _write_json(out / "data.json", data_id)

    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    model = build_model(cfg.model, cfg.base, cfg.gates)
    foreground = float(ds["masks"][idx["train"]].float().mean())
    if cfg.prior_init:
        model.start_at_prior(foreground)
    model = model.to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_batches = len(idx["train"]) // cfg.batch_size or 1  # drop the ragged last batch: BatchNorm needs > 1 sample
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, n_batches))  # stepped once per batch
    loss_fn = get_loss(cfg.loss, cfg.loss_weight)
    predictor = Predictor(model, cfg_dict, device)
    bf16 = native_bf16(cfg, device)
    history, best, start = [], -1.0, 0
    if (out / "last.pt").exists():
        ck = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        history, best, start = json.loads(ck["history"]), ck["best"], ck["epoch"]

    from tqdm import tqdm
    train_ii = torch.tensor(idx["train"])
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)  # per-epoch, so a resume replays exactly
        order = train_ii[torch.randperm(len(train_ii), generator=g)]
        flips = torch.rand(len(order), generator=g) < 0.5
        total = 0.0
        bar = tqdm(range(n_batches), desc=f"{run_name(cfg)} epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                   leave=False, mininterval=0.1 if sys.stderr.isatty() else 10)  # a saved notebook keeps every redraw
        for b in bar:
            sel = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x, y = ds["images"][sel], ds["masks"][sel].long()
            if cfg.augment:
                f = flips[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                x, y = torch.where(f[:, None, None, None], x.flip(-1), x), torch.where(f[:, None, None], y.flip(-1), y)
            total += train_step(model, opt, loss_fn, to_input(x, device), y.to(device, non_blocking=True), bf16).item()
            sched.step()
            bar.set_postfix(loss=f"{total / (b + 1):.4f}", refresh=False)  # refresh=True would print every batch into a notebook
        lr = opt.param_groups[0]["lr"]  # where the epoch ended
        dice = val_dice(predictor, ds, idx["val"])
        history.append({"epoch": epoch + 1, "train_loss": total / n_batches, "val_dice": dice, "lr": lr,
                        "seconds": time.perf_counter() - t0})
        if progress:
            tqdm.write(f"{run_name(cfg)} epoch {epoch + 1}: loss {total / n_batches:.4f} val dice {dice:.4f} "
                       f"({history[-1]['seconds']:.1f}s)")
        if dice > best:
            best = dice
            save_checkpoint(out / "best.pt", model_state(model, cfg_dict, epoch=epoch + 1, val_dice=dice))
        save_checkpoint(out / "last.pt", {
            "state_dict": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "history": json.dumps(history), "best": best, "epoch": epoch + 1})
        _write_csv(out / "history.csv", history)

    t0 = time.perf_counter()
    best_model, _ = load_model(out / "best.pt", device=device)
    rows = test_metrics(Predictor(best_model, cfg_dict, device), ds, idx["test"])
    _write_csv(out / "test_metrics.csv", rows)
    best_epoch = max(history, key=lambda h: h["val_dice"])
    summary = {
        "run": run_name(cfg), "profile": cfg.profile, "seed": cfg.seed, "data": data_id["dataset"], "data_fingerprint": data_id["fingerprint"],
        "n_train": len(idx["train"]), "train_foreground": foreground, "n_val": len(idx["val"]), "n_test": len(idx["test"]),
        "skipped_photos": ds["errors"], "best_epoch": best_epoch["epoch"], "best_val_dice": best_epoch["val_dice"],
        "last_val_dice_change": history[-1]["val_dice"] - history[-2]["val_dice"]
        if len(history) > 1 else None,
        "test": summarize(rows), "test_resolution": "each photo's original size",
        "train_seconds": sum(h["seconds"] for h in history), "eval_seconds": time.perf_counter() - t0,
        "seconds_per_epoch": float(np.mean([h["seconds"] for h in history])),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "precision": "bf16 autocast" if bf16 else "fp32", "torch": torch.__version__, "git_commit": git_commit(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(out / "summary.json", summary)
    (out / "last.pt").unlink(missing_ok=True)  # resume state is not needed once finished
    return summary
