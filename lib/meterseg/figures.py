"""Figures of the study: overlays, Fig. 3-style comparisons, attention maps, learning curves."""
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from .config import QUALITY_THRESHOLDS
from .metrics import image_scores
from .tool.photos import load_photo, truth_mask
from .tool.geometry import region_box
from .predictor import to_input


def save(fig, results, name):
    """results/figures/<name>.png at 120 dpi; returns the path."""
    out = Path(results) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{name}.png", dpi=120, bbox_inches="tight")
    return out / f"{name}.png"


def overlay(ax, photo, mask, color=(0, 1, 0), title=""):
    """A photo with a mask tinted over it."""
    img = np.asarray(photo, dtype=float) / 255
    if mask is not None:
        img = np.where(mask[..., None], 0.55 * img + 0.45 * np.array(color), img)
    ax.imshow(img)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def comparison(models, photos, labels, notes=None):
    """Fig. 3: photo, ground truth, then each model's mask. On the last model's panel, red marks
    pixels it gets right and the model before it gets wrong, yellow the reverse.
    models: {name: Predictor}, the model of interest last; notes: a line per photo for its title."""
    fig, axes = plt.subplots(len(photos), 2 + len(models), figsize=(2.6 * (2 + len(models)), 2.4 * len(photos)),
                             squeeze=False)
    for k, (row, (photo, label)) in enumerate(zip(axes, zip(photos, labels))):
        full, _ = load_photo(photo)
        truth = truth_mask(photo, label)
        preds = {name: p.mask(photo)[0] for name, p in models.items()}
        overlay(row[0], full, None, title=Path(photo).stem + (f"\n{notes[k]}" if notes else ""))
        overlay(row[1], full, truth, title="ground truth")
        for ax, (name, pred) in zip(row[2:], preds.items()):
            d = image_scores(pred, truth)["dice"]
            overlay(ax, full, pred, color=(0, 0.6, 1), title=f"{name} (Dice {d:.3f})")
        if len(preds) > 1:
            (_, before), (_, last) = list(preds.items())[-2:]
            layer = np.zeros(truth.shape + (4,))
            layer[(last == truth) & (before != truth)] = (1, 0, 0, 1)  # the last model wins
            layer[(last != truth) & (before == truth)] = (1, 0.85, 0, 1)  # the one before wins
            row[-1].imshow(layer)
        zoom = _zoom(region_box(truth), truth.shape)
        for ax in row:
            ax.set_xlim(zoom[0], zoom[2])
            ax.set_ylim(zoom[3], zoom[1])
    if len(models) > 1:
        from matplotlib.patches import Patch
        first, last = list(models)[-2:]
        fig.legend(handles=[Patch(color=(0, 0.6, 1), alpha=0.45, label="predicted region"),
                            Patch(color=(0, 1, 0), alpha=0.45, label="ground truth"),
                            Patch(color=(1, 0, 0), label=f"{last} right, {first} wrong"),
                            Patch(color=(1, 0.85, 0), label=f"{first} right, {last} wrong")],
                   loc="lower center", ncol=4, fontsize=8, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def _zoom(box, shape, pad=1.5):
    """A view around box grown pad x its size on every side, clipped to the photo."""
    h, w = shape
    if box is None:
        return 0, 0, w, h
    x0, y0, x1, y1 = box
    px, py = pad * (x1 - x0), pad * (y1 - y0) + 0.5 * (x1 - x0)
    return max(0, x0 - px), max(0, y0 - py), min(w, x1 + px), min(h, y1 + py)


@torch.no_grad()
def attention_maps(predictor, photos):
    """Each gate's attention coefficients over a few photos: one row per photo."""
    model, size = predictor.model, predictor.size
    gates = model.gates
    fig, axes = plt.subplots(len(photos), 1 + len(gates), figsize=(2.8 * (1 + len(gates)), 2.6 * len(photos)),
                             squeeze=False)
    for row, photo in zip(axes, photos):
        im, _ = load_photo(photo, size)
        x = torch.from_numpy(np.asarray(im).transpose(2, 0, 1).copy())[None]
        _, att = model(to_input(x, predictor.device), return_attention=True)
        overlay(row[0], im, None, title=Path(photo).stem)
        for ax, g in zip(row[1:], gates):
            a = att[g][0, 0].float().cpu().numpy()
            ax.imshow(im)
            h = ax.imshow(a, cmap="magma", alpha=0.6, vmin=0, vmax=1, extent=(0, im.width, im.height, 0))
            ax.set_title(f"gate {g}: alpha ({a.shape[0]}x{a.shape[1]})", fontsize=8)
            ax.axis("off")
        fig.colorbar(h, ax=row[-1], fraction=0.046)
    return fig


def row_learning_curves(histories):
    """Validation Dice per epoch of every row, one panel a row, one line a seed. histories: {row: [DataFrame]}."""
    n = len(histories)
    cols = min(4, n)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(3.2 * cols, 2.6 * ((n + cols - 1) // cols)),
                             squeeze=False, sharey=True)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (label, hs) in zip(axes.flat, histories.items()):
        for s, h in enumerate(hs):
            ax.plot(h["epoch"], h["val_dice"], marker=".", lw=1, label=f"seed {s}")
        ax.set(title=label, xlabel="epoch", ylim=(0.5, 1.0))
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("validation Dice")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def per_seed_differences(comparisons):
    """Each comparison b - a in Dice points: the seeds' own differences (dots), the Welch 95 % CI of the
    difference of seed means (thick bar) and the hierarchical-bootstrap CI (thin bar)."""
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(comparisons) + 1))
    for i, r in enumerate(comparisons.to_dict("records")):
        y = len(comparisons) - 1 - i
        ax.plot([r["welch_ci95_lo"], r["welch_ci95_hi"]], [y, y], color="C0", lw=5, alpha=0.5,
                label="Welch 95% CI (seeds)" if i == 0 else None)
        ax.plot([r["hier_boot_ci95_lo"], r["hier_boot_ci95_hi"]], [y - 0.18] * 2, color="C1", lw=1.5,
                label="hierarchical bootstrap 95% CI" if i == 0 else None)
        d = [float(v) for v in r["per_seed_diffs"].split()]
        ax.scatter(d, [y] * len(d), color="k", s=12, zorder=3, label="seed s - seed s" if i == 0 else None)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(range(len(comparisons)))
    ax.set_yticklabels([f"{r['b']} - {r['a']}" for r in comparisons.to_dict("records")][::-1], fontsize=8)
    ax.set(xlabel="test Dice difference (points)", title="per-seed differences and seed-level CIs")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def learning_curves(histories):
    """Validation Dice and training loss per epoch, one line per run. histories: {label: DataFrame}."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    for label, h in histories.items():
        a.plot(h["epoch"], h["val_dice"], marker=".", label=label)
        b.plot(h["epoch"], h["train_loss"], marker=".", label=label)
    a.set(xlabel="epoch", ylabel="validation Dice (model resolution)", title="validation Dice")
    b.set(xlabel="epoch", ylabel="training loss", yscale="log", title="training loss")
    a.legend(fontsize=8)
    fig.tight_layout()
    return fig


def dice_vs_time(histories, thresholds=QUALITY_THRESHOLDS):
    """Validation Dice against cumulative training seconds, with the quality thresholds marked."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, h in histories.items():
        ax.plot(h["seconds"].cumsum(), h["val_dice"], marker=".", label=label)
    for th in thresholds:
        ax.axhline(th, color="grey", ls=":", lw=0.8)
    ax.set(xlabel="training wall-clock seconds", ylabel="validation Dice", title="time to quality")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def crop_misses(misses, photos, truths, n=6):
    """The photos whose crop loses part of the region (analysis.misses): truth tinted, crop box in red (None if none)."""
    at = misses.set_index("image")
    miss = at.index[:n]
    if len(miss) == 0:
        return None
    idx = {Path(p).stem: i for i, p in enumerate(photos)}
    fig, axes = plt.subplots(1, len(miss), figsize=(3.5 * len(miss), 3.5), squeeze=False)
    for ax, stem in zip(axes[0], miss):
        i, r = idx[stem], at.loc[stem]
        overlay(ax, load_photo(photos[i])[0], truths[i], title=f"{stem}: keeps {100 * r.gt_kept:.1f}%")
        ax.add_patch(plt.Rectangle((r.x0, r.y0), r.x1 - r.x0, r.y1 - r.y0, fill=False, ec="red"))
    return fig


def savings_curves(curve, formats, lossless_kb, rule):
    """Left: photos whose whole region is kept against bytes saved, one curve per box probability, the
    margins as points and the rule marked. Right: crop bytes by format and quality."""
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.5))
    for p, d in curve.groupby("probability"):
        ax[0].plot(d["saving_pct"], d["photos_fully_kept_pct"], marker="o", label=f"box of p >= {p:g}, margins "
                   + ", ".join(f"{m:g}" for m in d["margin"]))
    at = curve[(curve["probability"] == rule.probability) & (curve["margin"] == rule.margin)]
    ax[0].plot(at["saving_pct"], at["photos_fully_kept_pct"], "r*", ms=14, label=f"the rule: p {rule.probability:g}, margin {rule.margin:g}")
    ax[0].set(xlabel="bytes saved %", ylabel="photos with the whole region kept %", ylim=(90, 100.5),
              title="the trade-off (margin 0 falls below the axis)")
    ax[0].legend(fontsize=7)
    for f, d in formats.groupby("format"):
        ax[1].plot(d["quality"], d["bytes_out"] / 1e3, marker="o", label=f)
    ax[1].axhline(lossless_kb, color="k", ls="--", label="crop as compress stores it")
    ax[1].set(xlabel="quality", ylabel="mean KB per crop", title="the rule's crop: format and quality")
    ax[1].legend()
    fig.tight_layout()
    return fig


def paired_histogram(diff):
    """Histogram of per-photo Dice differences (a Series from study.per_image_dice_diff)."""
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(diff, bins=30)
    ax.axvline(0, color="k", lw=0.8)
    ax.set(xlabel="Dice(AttU) - Dice(U-Net), per test photo, mean over seeds", ylabel="photos")
    return fig


def photo_sizes(card):
    """Photo sizes (W x H) as bars, and file sizes as a histogram, of the usable photos of a data card."""
    ok = card[card["error"] == ""]
    sizes = ok.groupby(["width", "height"]).size().sort_values(ascending=False)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
    ax[0].bar([f"{w}x{h}" for w, h in sizes.index], sizes.values)
    ax[0].tick_params(axis="x", rotation=70, labelsize=7)
    ax[0].set(title="photo sizes (W x H)", ylabel="photos")
    ax[1].hist(ok["bytes"] / 1e3, bins=40)
    ax[1].set(title=f"file size: mean {ok['bytes'].mean() / 1e3:.0f} KB", xlabel="KB", ylabel="photos")
    fig.tight_layout()
    return fig


def region_share(card):
    """Histograms of the quad's and its bounding box's share of the photo area."""
    ok = card[card["error"] == ""]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(100 * ok["mask_share"], bins=40, alpha=0.7, label=f"quad: mean {100 * ok['mask_share'].mean():.2f}%")
    ax.hist(100 * ok["bbox_share"], bins=40, alpha=0.7, label=f"its bounding box: mean {100 * ok['bbox_share'].mean():.2f}%")
    ax.set(xlabel="% of photo area", ylabel="photos", title="reading-region share of the photo")
    ax.legend()
    return fig


def examples(card, pairs):
    """Six photos from the smallest to the largest region share, truth tinted. pairs: {stem: (photo, label)}."""
    ok = card[card["error"] == ""].sort_values("mask_share")
    n = len(ok)
    picks = ok.iloc[sorted({0, n // 4, n // 2, 3 * n // 4, max(n - 2, 0), n - 1})]
    fig, axes = plt.subplots(2, 3, figsize=(11, 7))
    for ax in axes.flat:
        ax.axis("off")
    for ax, (_, r) in zip(axes.flat, picks.iterrows()):
        photo, label = pairs[r["stem"]]
        overlay(ax, load_photo(photo)[0], truth_mask(photo, label), title=f"{r['stem']}: region {100 * r['mask_share']:.1f}%")
    fig.tight_layout()
    return fig


def reading_examples(study, photos, labels, predictor, n=6):
    """The tool's wrong readings (billing, ambiguity accepted): its rectified strip beside the labelled quad's, with both readings and its status."""
    from .tool.photos import read_label
    from .tool.geometry import rectify
    from .reading_eval import WAYS, photo_quad
    wrong = study[(study["way"] == WAYS[3]) & ~study["exact_billing"]].head(n)
    if len(wrong) == 0:
        return None
    by_stem = {Path(p).stem: (p, l) for p, l in zip(photos, labels)}
    fig, axes = plt.subplots(len(wrong), 2, figsize=(8, 1.1 * len(wrong) + 0.4), squeeze=False)
    for row, r in zip(axes, wrong.to_dict("records")):
        photo, label = by_stem[r["image"]]
        quad, image = photo_quad(predictor, photo)
        orig = (image.shape[1], image.shape[0])
        truth_row = study[(study["image"] == r["image"]) & (study["way"] == WAYS[2])].iloc[0]
        for ax, q, title in ((row[0], quad, f"{r['image']} tool: '{r['reading']}' ({r['status']}; billing {r['billing']}, {r['state']})"),
                             (row[1], np.array(read_label(label, orig)), f"labelled quad: '{truth_row['reading']}'")):
            ax.axis("off")
            ax.set_title(title, fontsize=7)
            if q is not None:
                ax.imshow(rectify(image, q))
    fig.tight_layout()
    return fig


def risk_coverage(curves, rule_points):
    """Accuracy of accepted readings against the share accepted, one curve per split (reading_eval.risk_coverage),
    a cross where a gross error (more than one unit off) is first accepted, and each split's point at the shipped
    accept rule ({split: (coverage %, accuracy %)})."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, c in curves.items():
        line, = ax.plot(c["coverage_pct"], c["accuracy_pct"], label=name)
        first = c[c["gross"] > 0].head(1)
        if len(first):
            ax.plot(first["coverage_pct"], first["accuracy_pct"], "x", color=line.get_color(), ms=9,
                    label=f"{name}: first gross error accepted ({first['coverage_pct'].iloc[0]:.1f} % ok)")
    for name, (cov, acc) in rule_points.items():
        ax.plot([cov], [acc], "*", ms=12, label=f"{name}: the accept rule ({cov:.1f} % ok, {acc:.1f} % right)")
    ax.axhline(99, color="k", ls=":", lw=0.8)
    ax.set(xlabel="readings accepted (ok) %", ylabel="accepted readings right (billing) %", ylim=(85, 100.5),
           title="risk and coverage: accepting by the lowest digit confidence")
    ax.legend(fontsize=7)
    return fig


def tuning_months(table):
    """Share of test and validation readings `ok` against the photos a person corrected so far, one line per arm
    of the simulation (simulation.simulate), each point marked with its `ok` readings that are wrong."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, split in zip(axes, ("test", "val")):
        for arm, t in table.groupby("arm", sort=False):
            line, = ax.plot(t["corrections"], t[f"{split}_ok_pct"], "o-", label=arm)
            for _, r in t.iterrows():
                ax.annotate(f"{int(r[f'{split}_ok_wrong'])}", (r["corrections"], r[f"{split}_ok_pct"]), fontsize=7,
                            xytext=(3, -9), textcoords="offset points", color=line.get_color())
        ax.set(xlabel="photos corrected by a person so far", title={"test": "test split", "val": "validation split"}[split])
    axes[0].set_ylabel("readings ok %  (number: ok readings wrong)")
    axes[0].legend(fontsize=7)
    return fig
