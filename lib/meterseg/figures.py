"""Figures of the study: overlays, Fig. 3-style comparisons, attention maps, learning curves."""
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from .data import load_photo, truth_mask
from .infer import photo_input, predict_photo, to_input
from .storage import region_box


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


def comparison(models, photos, labels):
    """Fig. 3: photo, ground truth, then each model's mask. On the last model's panel, red marks
    pixels it gets right and the model before it gets wrong, yellow the reverse.
    models: {name: (model, cfg)}, the model of interest last."""
    fig, axes = plt.subplots(len(photos), 2 + len(models), figsize=(2.6 * (2 + len(models)), 2.4 * len(photos)),
                             squeeze=False)
    for row, (photo, label) in zip(axes, zip(photos, labels)):
        full, _ = load_photo(photo)
        truth = truth_mask(photo, label)
        preds = {name: predict_photo(m, c, photo)[0] for name, (m, c) in models.items()}
        overlay(row[0], full, None, title=Path(photo).stem)
        overlay(row[1], full, truth, title="ground truth")
        for ax, (name, pred) in zip(row[2:], preds.items()):
            d = 2 * (pred & truth).sum() / max(pred.sum() + truth.sum(), 1)
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
    fig.tight_layout()
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
def attention_maps(model, cfg, photos):
    """Each gate's attention coefficients over a few photos: one row per photo."""
    gates = model.gates
    fig, axes = plt.subplots(len(photos), 1 + len(gates), figsize=(2.8 * (1 + len(gates)), 2.6 * len(photos)),
                             squeeze=False)
    for row, photo in zip(axes, photos):
        x, _ = photo_input(photo, cfg["size"])
        _, att = model(to_input(x, "cpu"), return_attention=True)
        im, _ = load_photo(photo, cfg["size"])
        overlay(row[0], im, None, title=Path(photo).stem)
        for ax, g in zip(row[1:], gates):
            a = att[g][0, 0].numpy()
            ax.imshow(im)
            h = ax.imshow(a, cmap="magma", alpha=0.6, vmin=0, vmax=1, extent=(0, im.width, im.height, 0))
            ax.set_title(f"gate {g}: alpha ({a.shape[0]}x{a.shape[1]})", fontsize=8)
            ax.axis("off")
        fig.colorbar(h, ax=row[-1], fraction=0.046)
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


def dice_vs_time(histories, thresholds=(0.90, 0.93)):
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
