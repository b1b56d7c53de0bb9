"""Training runs: profiles, one run directory per run, resume after a kill, reuse when finished."""
import csv
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import data as D
from .infer import foreground_margin, load_model, margin_to_mask, model_state, pick_device, save_checkpoint, to_input
from .losses import get_loss
from .metrics import image_scores, summarize
from .models import build_model


@dataclass
class Config:
    """Everything that decides a run's result. Profiles set defaults; any field can be overridden."""
    profile: str = "cpu"
    data: str = ""  # a dataset folder, "synthetic", or "" to find the real photos (see data.find_data)
    model: str = "attunet"  # attunet | unet
    gates: tuple = (1, 2)  # counted from the deepest skip; ignored (empty) for unet
    loss: str = "combo"  # ce | dice | combo
    loss_weight: float = 0.36
    size: int = 128
    base: int = 8
    epochs: int = 11  # validation Dice flattens within 3 epochs of the drop; 10 with the drop at 7 cost quality
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-9
    step_size: int = 8  # StepLR: lr /= 1/gamma every step_size epochs
    gamma: float = 0.1
    augment: bool = True  # random horizontal flips
    max_photos: int = 0  # cap on training photos (0 = all), for quick runs
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        self.gates = () if self.model == "unet" else tuple(sorted(int(g) for g in self.gates))


PROFILES = {
    # seconds: synthetic photos, a tiny net
    "smoke": dict(data="synthetic", size=64, base=8, epochs=15, step_size=12),
    # the default: real photos, sized for a 2-core CPU (see README for how it differs from the paper)
    "cpu": dict(),
    # the paper's Sec. IV-B settings; GPU work
    "paper": dict(size=256, base=64, epochs=100, step_size=25),
}


def make_config(profile="cpu", **overrides):
    """A Config from a profile plus overrides (None and "" mean: keep the profile's value)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: expected one of {sorted(PROFILES)}")
    known = {f.name for f in dataclasses.fields(Config)}
    bad = set(overrides) - known
    if bad:
        raise ValueError(f"unknown config fields {sorted(bad)}")
    values = {**PROFILES[profile], **{k: v for k, v in overrides.items() if v is not None and v != ""}}
    return Config(profile=profile, **values)


def run_name(cfg):
    """A readable directory name for a run: model, gates, loss, seed."""
    gates = "g" + "".join(map(str, cfg.gates)) if cfg.gates else "nogate"
    loss = cfg.loss + (f"{cfg.loss_weight:g}" if cfg.loss == "combo" and cfg.loss_weight != 0.36 else "")
    return f"{cfg.model}-{gates}-{loss}-s{cfg.seed}"


def git_commit():
    """HEAD's commit, with -dirty when tracked files differ from it; "unknown" outside a checkout."""
    def git(*args):
        r = subprocess.run(["git", *args], cwd=D.REPO, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None
    try:
        sha = git("rev-parse", "--verify", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


def resolve_data(cfg):
    """The dataset folder a config names; synthetic photos are generated once into the cache."""
    if cfg.data == "synthetic":
        root = Path(os.environ.get("METERSEG_CACHE", D.REPO / "data" / "cache")) / f"synthetic-{cfg.seed}"
        if not (root / "train_imgs").is_dir():
            D.make_synthetic(root.with_name(root.name + ".tmp"), seed=cfg.seed)
            os.replace(root.with_name(root.name + ".tmp"), root)
        return root
    return D.find_data(cfg.data or None)


def split_file(root):
    """Where a dataset's split lives: committed under data/splits for named datasets."""
    root = Path(root)
    if root.name.startswith("synthetic"):
        return root / "split.csv"
    return D.REPO / "data" / "splits" / f"{root.name}.csv"


def prepare_data(cfg, progress=False):
    """The cached dataset and the indices of its train/val/test parts."""
    root = resolve_data(cfg)
    ds = D.load_dataset(root, cfg.size, progress=progress)
    split = D.load_split(ds["stems"], split_file(root))
    idx = {p: [i for i, s in enumerate(ds["stems"]) if split[s] == p] for p in ("train", "val", "test")}
    if cfg.max_photos:
        idx["train"] = idx["train"][: cfg.max_photos]
    for p, ii in idx.items():
        if not ii:
            raise D.DataError(f"{root}: the {p} split is empty; add photos")
    return ds, idx


@torch.no_grad()
def val_dice(model, ds, ii, device):
    """Mean per-image Dice at model resolution (cheap; used to pick the best epoch)."""
    model.eval()
    margin = foreground_margin(model, ds["images"][ii], device)
    truth = ds["masks"][ii].bool()
    return float(np.mean([image_scores(m > 0, t)["dice"] for m, t in zip(margin, truth)]))


def test_metrics(model, ds, ii, device):
    """Per-image metrics at each photo's original resolution, masks re-read from the label files."""
    model.eval()
    margin = foreground_margin(model, ds["images"][ii], device)
    rows = []
    for m, i in zip(margin, ii):
        truth = D.truth_mask(ds["photos"][i], ds["labels"][i])
        pred, _ = margin_to_mask(m, (truth.shape[1], truth.shape[0]))
        rows.append({"image": ds["stems"][i], **image_scores(pred, truth)})
    return rows


def _write_csv(path, rows):
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _write_json(path, obj):
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def train(cfg, out_dir, progress=None):
    """Train one run into out_dir and return its summary.

    A finished run with the same config is returned as is; an interrupted one resumes
    from last.pt (same epochs, same batches, same result); a different config in
    out_dir is refused rather than overwritten.
    """
    out = Path(out_dir)
    cfg_dict = dataclasses.asdict(cfg)
    cfg_json = json.loads(json.dumps(cfg_dict))  # tuples -> lists, as stored
    if (out / "config.json").exists():
        stored = json.loads((out / "config.json").read_text())
        if stored != cfg_json:
            diff = {k: (stored.get(k), v) for k, v in cfg_json.items() if stored.get(k) != v}
            raise ValueError(f"{out}: holds a run with another config {diff}; use another --out or remove it")
        if (out / "summary.json").exists():
            return json.loads((out / "summary.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "config.json", cfg_json)
    progress = (not os.environ.get("CI")) if progress is None else progress

    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    ds, idx = prepare_data(cfg, progress)
    model = build_model(cfg.model, cfg.base, cfg.gates).to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    loss_fn = get_loss(cfg.loss, cfg.loss_weight)
    history, best, start = [], -1.0, 0
    if (out / "last.pt").exists():
        ck = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        history, best, start = json.loads(ck["history"]), ck["best"], ck["epoch"]

    from tqdm import tqdm
    train_ii = torch.tensor(idx["train"])
    n_batches = len(train_ii) // cfg.batch_size or 1  # drop the ragged last batch: BatchNorm needs > 1 sample
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
            x, y = to_input(x, device), y.to(device, non_blocking=True)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            bar.set_postfix(loss=f"{total / (b + 1):.4f}")
        lr = opt.param_groups[0]["lr"]
        sched.step()
        dice = val_dice(model, ds, idx["val"], device)
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
    rows = test_metrics(best_model, ds, idx["test"], device)
    _write_csv(out / "test_metrics.csv", rows)
    best_epoch = max(history, key=lambda h: h["val_dice"])
    summary = {
        "run": run_name(cfg), "profile": cfg.profile, "seed": cfg.seed, "data": str(ds["root"]),
        "n_train": len(idx["train"]), "n_val": len(idx["val"]), "n_test": len(idx["test"]),
        "skipped_photos": ds["errors"], "best_epoch": best_epoch["epoch"], "best_val_dice": best_epoch["val_dice"],
        "test": summarize(rows), "test_resolution": "each photo's original size",
        "train_seconds": sum(h["seconds"] for h in history), "eval_seconds": time.perf_counter() - t0,
        "seconds_per_epoch": float(np.mean([h["seconds"] for h in history])),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__, "git_commit": git_commit(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(out / "summary.json", summary)
    (out / "last.pt").unlink(missing_ok=True)  # resume state is not needed once finished
    return summary
