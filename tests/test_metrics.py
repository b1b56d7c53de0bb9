import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from meterseg.metrics import confusion, image_scores, scores, summarize


def test_hand_computed_case():
    truth = np.zeros((4, 4), bool)
    truth[1:3, 1:3] = True  # 4 pixels
    pred = np.zeros((4, 4), bool)
    pred[1:3, 1:4] = True  # 6 pixels, 4 of them right
    tp, fp, fn, tn = confusion(pred, truth)
    assert (tp, fp, fn, tn) == (4, 2, 0, 10)
    s = scores(tp, fp, fn, tn)
    assert s["dice"] == pytest.approx(8 / 10)
    assert s["jaccard"] == pytest.approx(4 / 6)
    assert s["precision"] == pytest.approx(4 / 6)
    assert s["recall"] == 1.0
    assert s["accuracy"] == pytest.approx(14 / 16)


def test_empty_mask_rule():
    empty = np.zeros((3, 3), bool)
    assert all(v == 1.0 for v in scores(*confusion(empty, empty)).values())
    some = empty.copy()
    some[0, 0] = True
    s = scores(*confusion(empty, some))  # missed the only foreground pixel
    assert s["dice"] == 0 and s["recall"] == 0 and s["precision"] == 0
    s = scores(*confusion(some, empty))  # predicted foreground where there is none
    assert s["dice"] == 0 and s["precision"] == 0 and s["recall"] == 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differs"):
        confusion(np.zeros((2, 3), bool), np.zeros((3, 2), bool))


def _set_based(pred, truth):
    """A second implementation, from pixel-coordinate sets."""
    P = {tuple(i) for i in np.argwhere(pred)}
    T = {tuple(i) for i in np.argwhere(truth)}
    n = pred.size
    inter = len(P & T)
    return {"dice": 2 * inter / (len(P) + len(T)) if P | T else 1.0,
            "jaccard": inter / len(P | T) if P | T else 1.0,
            "accuracy": (n - len(P ^ T)) / n}


masks = arrays(bool, st.tuples(st.integers(1, 12), st.integers(1, 12)))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_metrics_match_set_implementation_and_identities(data):
    truth = data.draw(masks)
    pred = data.draw(arrays(bool, truth.shape))
    s = image_scores(pred, truth)
    ref = _set_based(pred, truth)
    for k in ref:
        assert s[k] == pytest.approx(ref[k])
    for k in ("dice", "jaccard", "precision", "recall", "accuracy"):
        assert 0.0 <= s[k] <= 1.0
    assert s["jaccard"] == pytest.approx(s["dice"] / (2 - s["dice"]))  # J = D / (2 - D)
    swapped = image_scores(truth, pred)
    assert swapped["dice"] == pytest.approx(s["dice"])
    assert swapped["precision"] == pytest.approx(s["recall"])


def test_summary_uses_sample_sd_and_pools_counts():
    rows = [{"tp": 4, "fp": 2, "fn": 0, "tn": 10, **scores(4, 2, 0, 10)},
            {"tp": 1, "fp": 0, "fn": 3, "tn": 12, **scores(1, 0, 3, 12)}]
    s = summarize(rows)
    assert s["dice"] == pytest.approx((0.8 + 0.4) / 2)
    assert s["dice_sd"] == pytest.approx(statistics.stdev([0.8, 0.4]))
    assert s["pooled_dice"] == pytest.approx(2 * 5 / (2 * 5 + 2 + 3))
