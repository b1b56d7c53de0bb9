"""Losses of the paper, Sec. III-C: cross-entropy (eq. 4), soft Dice (eq. 5), and w * (CE + Dice)."""
import torch
import torch.nn.functional as F

from .config import PAPER_LOSS_WEIGHT

SMOOTH = 1.0  # keeps soft Dice defined on an image with no foreground (it then rewards an empty prediction)


def cross_entropy_loss(logits, target):
    """Mean pixel cross-entropy of (N,2,H,W) logits against a (N,H,W) 0/1 target."""
    return F.cross_entropy(logits.float(), target.long())


def soft_dice_loss(logits, target):
    """1 - soft Dice of the foreground probability, per image, then averaged over the batch."""
    p = torch.softmax(logits.float(), dim=1)[:, 1]
    t = target.float()
    inter = (p * t).sum(dim=(1, 2))
    dice = (2 * inter + SMOOTH) / (p.sum(dim=(1, 2)) + t.sum(dim=(1, 2)) + SMOOTH)
    return 1 - dice.mean()


def combo_loss(logits, target, weight=PAPER_LOSS_WEIGHT):
    """The paper's eq. (3): weight * (CE + Dice)."""
    return weight * (cross_entropy_loss(logits, target) + soft_dice_loss(logits, target))


LOSSES = ("ce", "dice", "combo")


def get_loss(name, weight=PAPER_LOSS_WEIGHT):
    """A loss function by name, one of LOSSES."""
    if name == "ce":
        return cross_entropy_loss
    if name == "dice":
        return soft_dice_loss
    if name == "combo":
        return lambda logits, target: combo_loss(logits, target, weight)
    raise ValueError(f"unknown loss {name!r}: expected one of {LOSSES}")
