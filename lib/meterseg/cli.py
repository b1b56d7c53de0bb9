"""Command line: meterseg {train, predict, evaluate, compress, study, fetch}."""
import argparse
import csv
import dataclasses
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from . import data as D
from .infer import CheckpointError, load_model, pick_device, predict_photo
from .metrics import METRICS, image_scores, summarize


def _gates(text):
    return tuple(int(g) for g in text.replace("+", ",").split(",") if g.strip())


def cmd_train(a):
    from .train import Config, make_config, train
    overrides = {f.name: getattr(a, f.name) for f in dataclasses.fields(Config) if f.name != "profile" and hasattr(a, f.name)}
    cfg = make_config(a.profile, **overrides)
    s = train(cfg, a.out)
    t = s["test"]
    print(f"{a.out}: test dice {t['dice']:.4f} ± {t['dice_sd']:.4f} (n={t['n']}, pooled {t['pooled_dice']:.4f}), "
          f"best epoch {s['best_epoch']}, {s['train_seconds']:.0f}s training on {s['device']}")
    return 0


def cmd_predict(a):
    device = pick_device(a.device)
    model, cfg = load_model(a.checkpoint, device=device)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for photo in a.photos:
        try:
            mask, conf = predict_photo(model, cfg, photo, device)
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{Path(photo).stem}.png")
            print(f"{photo}: {int(mask.sum())} region pixels, confidence {conf:.3f}")
        except (D.DataError, OSError) as e:
            failed += 1
            print(f"error: {e}", file=sys.stderr)
    return 1 if failed else 0


def cmd_evaluate(a):
    pred_dir, truth_dir = Path(a.pred), Path(a.truth)
    for d in (pred_dir, truth_dir):
        if not d.is_dir():
            print(f"error: {d}: folder not found", file=sys.stderr)
            return 2
    truths = {p.stem: p for p in sorted(truth_dir.iterdir()) if p.suffix.lower() in D.PHOTO_EXT}
    rows, failed = [], 0
    for stem, tpath in truths.items():
        matches = [p for p in pred_dir.iterdir() if p.stem == stem and p.suffix.lower() in D.PHOTO_EXT]
        try:
            if not matches:
                raise D.DataError(f"{pred_dir / stem}.*: no prediction for ground truth {tpath}")
            pred, truth = D.read_mask(matches[0]), D.read_mask(tpath)
            if pred.shape != truth.shape:
                raise D.DataError(f"{matches[0]}: size {pred.shape[::-1]} differs from {tpath} {truth.shape[::-1]}")
            rows.append({"image": stem, **image_scores(pred, truth)})
        except D.DataError as e:
            failed += 1
            print(f"error: {e}", file=sys.stderr)
    if not rows:
        print(f"error: {truth_dir}: no image could be evaluated", file=sys.stderr)
        return 2
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", *METRICS], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    s = summarize(rows)
    print(f"{len(rows)} images ({failed} failed): " + ", ".join(f"{m} {s[m]:.4f}±{s[m + '_sd']:.4f}" for m in METRICS)
          + f", pooled dice {s['pooled_dice']:.4f} (SD with ddof=1)")
    return 1 if failed else 0


def cmd_compress(a):
    from .storage import compress
    device = pick_device(a.device)
    model, cfg = load_model(a.checkpoint, device=device)
    rows = compress(model, cfg, a.in_dir, a.out_dir, a.margin, a.format, a.quality, device, a.workers)
    ok = [r for r in rows if r["status"] == "ok"]
    errors = [r for r in rows if r["status"].startswith("error")]
    bi, bo = sum(int(r["bytes_in"]) for r in ok), sum(int(r["bytes_out"]) for r in ok)
    print(f"{len(rows)} photos: {len(ok)} cropped, {sum(r['status'] == 'no_region' for r in rows)} copied whole "
          f"(no region), {len(errors)} errors; cropped bytes {bi} -> {bo}"
          + (f" ({100 * (1 - bo / bi):.1f}% saved)" if bi else "") + f"; manifest {Path(a.out_dir) / 'manifest.csv'}")
    for r in errors:
        print(f"{r['source']}: {r['status']}", file=sys.stderr)
    return 1 if errors else 0


def cmd_fetch(a):
    dest = D.fetch_upstream(a.dest or D.REPO / "data" / "water-meters")
    print(f"{dest}: verified")
    return 0


def cmd_study(a):
    from .study import run_notebooks
    names = a.notebooks or sorted(p.stem for p in (D.REPO / "notebooks").glob("[0-9]*.ipynb"))
    run_notebooks(names, a.profile, a.results or (D.REPO / "results" if a.profile == "cpu" else D.REPO / "results" / a.profile),
                  a.data, a.seeds, a.jobs)
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="meterseg", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train one run into a directory (reused if finished, resumed if killed)")
    t.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "paper"])
    t.add_argument("--model", choices=["unet", "attunet"])
    t.add_argument("--gates", type=_gates, help="gate positions from the deepest skip, e.g. 1,2")
    t.add_argument("--loss", choices=["ce", "dice", "combo"])
    t.add_argument("--out", required=True, help="run directory")
    for name, typ in [("seed", int), ("data", str), ("size", int), ("base", int), ("epochs", int),
                      ("batch_size", int), ("lr", float), ("weight_decay", float), ("step_size", int),
                      ("loss_weight", float), ("max_photos", int), ("device", str)]:
        t.add_argument("--" + name.replace("_", "-"), dest=name, type=typ)
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("predict", help="write a 0/255 mask PNG per photo, at the photo's size")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--out", required=True)
    pr.add_argument("--device", default="auto")
    pr.add_argument("photos", nargs="+")
    pr.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", help="per-image metrics of predicted masks against truth masks, by stem")
    e.add_argument("--pred", required=True)
    e.add_argument("--truth", required=True)
    e.add_argument("--out", required=True, help="CSV to write")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("compress", help="crop photos to the predicted reading region, with a manifest")
    c.add_argument("--checkpoint", required=True)
    c.add_argument("--margin", type=float, default=0.2, help="growth of the box, as a share of its longer side")
    c.add_argument("--format", default="lossless", choices=["lossless", "jpeg", "webp", "png"])
    c.add_argument("--quality", type=int, default=90)
    c.add_argument("--workers", type=int)
    c.add_argument("--device", default="auto")
    c.add_argument("in_dir")
    c.add_argument("out_dir")
    c.set_defaults(func=cmd_compress)

    st = sub.add_parser("study", help="run the notebooks through papermill into results/")
    st.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "paper"])
    st.add_argument("--results", help="output folder (default results/, or results/<profile> for other profiles)")
    st.add_argument("--data", default="")
    st.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 for every table row")
    st.add_argument("--jobs", type=int, help="runs trained at once (default: one per CPU core, or 1 on a GPU)")
    st.add_argument("notebooks", nargs="*", help="notebook names (default: all, in order)")
    st.set_defaults(func=cmd_study)

    f = sub.add_parser("fetch", help="download the upstream photos at the pinned commit and verify SHA-256")
    f.add_argument("--dest")
    f.set_defaults(func=cmd_fetch)
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    try:
        return a.func(a)
    except (D.DataError, CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
