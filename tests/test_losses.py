import math

import pytest
import torch

from meterseg.losses import combo_loss, cross_entropy_loss, get_loss, soft_dice_loss


def test_cross_entropy_is_eq_4_by_hand():
    logits = torch.tensor([[[[2.0]], [[0.5]]], [[[-1.0]], [[1.0]]]])  # 2 images, 1 pixel, 2 classes
    target = torch.tensor([[[0]], [[1]]])
    # -x[class] + log(sum_j exp(x[j])), averaged
    hand = ((-2.0 + math.log(math.exp(2.0) + math.exp(0.5))) + (-1.0 + math.log(math.exp(-1.0) + math.exp(1.0)))) / 2
    assert cross_entropy_loss(logits, target).item() == pytest.approx(hand, rel=1e-6)


def test_soft_dice_by_hand():
    # one image, 2 pixels: foreground probabilities p = sigmoid(l1 - l0) = (0.5, 0.880797)
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, 2.0]]]])
    target = torch.tensor([[[0, 1]]])
    p = [0.5, 1 / (1 + math.exp(-2))]
    dice = (2 * p[1] + 1) / (p[0] + p[1] + 1 + 1)
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 - dice, rel=1e-6)


def test_confident_perfect_prediction_has_small_loss():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[:, 2:5, 3:7] = 1
    logits = torch.stack([(1 - target) * 20.0, target * 20.0], dim=1).float()
    assert soft_dice_loss(logits, target).item() < 1e-6
    assert cross_entropy_loss(logits, target).item() < 1e-6


def test_combo_is_weighted_sum():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 2, 6, 6), torch.randint(0, 2, (2, 6, 6))
    ce, dice = cross_entropy_loss(logits, target), soft_dice_loss(logits, target)
    assert combo_loss(logits, target).item() == pytest.approx(0.36 * (ce + dice).item(), rel=1e-6)
    assert get_loss("combo", 1.0)(logits, target).item() == pytest.approx((ce + dice).item(), rel=1e-6)
    with pytest.raises(ValueError):
        get_loss("focal")
