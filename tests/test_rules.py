"""The rules chosen on validation: the crop rule (notebook 05) and the accept rule (notebook 06), by hand."""
import math

import numpy as np
import pandas as pd
import pytest

from conftest import SAMPLE
from meterseg import analysis, reading_eval
from meterseg.tool import pipeline
from meterseg.tool.card import CropRule


def test_upper_error_matches_the_binomial_tail():
    """The one-sided Clopper-Pearson bound u solves P(X <= k | n, u) = 5 %: checked against a binomial sum."""
    for k, n in ((0, 106), (1, 106), (2, 700), (5, 60)):
        u = reading_eval.upper_error(k, n)
        tail = sum(math.comb(n, i) * u**i * (1 - u) ** (n - i) for i in range(k + 1))
        assert tail == pytest.approx(0.05, abs=1e-6)
    assert reading_eval.upper_error(0, 106) == pytest.approx(1 - 0.05 ** (1 / 106))  # 2.8 %: 106 photos cannot show 1 %
    assert reading_eval.upper_error(0, 0) == 1.0


def reads_frame(rows, gross=()):
    """Scored reads from (reading, confidence, agreement, half_turn, right); the rows numbered in `gross` are more
    than one unit off."""
    return pd.DataFrame([{"reading": r, "confidence": c, "min_digit_confidence": c, "agreement": a, "half_turn": nd,
                          "exact_billing": ok, "exact_any": ok, "gross": i in gross, "half_turned_truth": ""}
                         for i, (r, c, a, nd, ok) in enumerate(rows)])


def test_choose_accept_rule_keeps_the_most_readings_its_bound_allows():
    """600 right readings at confidence >= 0.9 and 10 wrong ones at 0.5-0.6. The bound allows one wrong in 601
    (0.79 %) but not two in 602 (1.04 %), so the floor lets in the most confident wrong one and no other."""
    rng = np.random.default_rng(0)
    rows = [("12345", float(c), 1.0, "0;0;0;0;0", True) for c in rng.uniform(0.9, 1.0, 600)]
    rows += [("12345", float(c), 1.0, "0;0;0;0;0", False) for c in rng.uniform(0.5, 0.6, 10)]
    rows += [("1234", 0.99, 1.0, "0;0;0;0", False)]  # a 4-digit read is never ok
    reads = reads_frame(rows)
    rule, table = reading_eval.choose_accept_rule(reads)
    got = reading_eval.accepted(reads, rule)
    assert reading_eval.upper_error(1, 601) <= 0.01 < reading_eval.upper_error(2, 602)
    assert got["ok"] == 601 and got["ok_wrong"] == 1 and table["chosen"].sum() == 1
    assert rule.min_digit_confidence == reads.loc[~reads["exact_billing"] & (reads["reading"].str.len() == 5), "confidence"].max()


def test_choose_accept_rule_never_accepts_a_gross_error():
    """The bound alone would let in one wrong reading among 601; that one is 100 units off, so the floor must
    rise above its confidence."""
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.9, 1.0, 600)
    rows = [("12345", float(c), 1.0, "0;0;0;0;0", True) for c in conf] + [("12445", 0.92, 1.0, "0;0;0;0;0", False)]
    reads = reads_frame(rows, gross={600})
    rule, table = reading_eval.choose_accept_rule(reads)
    got = reading_eval.accepted(reads, rule)
    assert got["ok_gross"] == 0 and got["ok"] == int((conf > 0.92).sum())
    assert reading_eval.accepted(reads_frame(rows), reading_eval.choose_accept_rule(reads_frame(rows))[0])["ok"] == 601


def test_choose_accept_rule_says_when_nothing_meets_the_target():
    reads = reads_frame([("12345", 0.99, 1.0, "0;0;0;0;0", i % 5 != 0) for i in range(100)])  # 20 % wrong at any floor
    rule, table = reading_eval.choose_accept_rule(reads)
    assert (table["upper_error"] > 0.01).all() and table["chosen"].sum() == 1  # the safest tried, never a pass


def test_needed_margin_and_crop_rule_by_hand(tmp_path):
    """A 100 x 40 box that misses the truth by 6 px on one side needs 0.06; the rule doubles the largest need."""
    needs = pd.DataFrame([
        {"image": "a", "probability": 0.5, "confidence": 0.97, "needed_margin": 0.06, "box_w": 100, "box_h": 40, "width": 1000, "height": 1000},
        {"image": "b", "probability": 0.5, "confidence": 0.99, "needed_margin": 0.01, "box_w": 100, "box_h": 40, "width": 1000, "height": 1000},
        {"image": "a", "probability": 0.1, "confidence": 0.97, "needed_margin": 0.02, "box_w": 110, "box_h": 50, "width": 1000, "height": 1000},
        {"image": "b", "probability": 0.1, "confidence": 0.99, "needed_margin": 0.0, "box_w": 110, "box_h": 50, "width": 1000, "height": 1000},
    ])
    rule, table = analysis.choose_crop_rule(needs)
    # p 0.5: margin 0.12, boxes (100 + 24) x (40 + 24); p 0.1: margin 0.04, (110 + 8.8) x (50 + 8.8): smaller, chosen
    assert rule == CropRule(margin=0.04, probability=0.1, min_confidence=0.97)
    assert table.set_index("probability")["mean_area_share"][0.5] == pytest.approx(124 * 64 / 1e6)


def test_a_lower_box_probability_grows_the_box_and_an_unsure_region_is_stored_whole():
    """region(p) on a hand-made gap: the p >= 0.1 box holds the p >= 0.5 one; crop_box flags a region whose
    confidence is under the rule's, and compress_row then stores the photo whole."""
    gap = np.full((16, 16), -6.0, np.float32)
    gap[6:10, 4:12] = 4.0  # the window
    gap[5, 4:12] = -1.0  # a rim the model is unsure of: p = 0.27
    data = (SAMPLE / "train_imgs").glob("*.jpg").__next__().read_bytes()
    photo = pipeline.load("p.jpg", data, 16)
    photo.gap = gap
    (x0, y0, x1, y1), conf = pipeline.region(photo, 0.5)
    (a0, b0, a1, b1), conf_low = pipeline.region(photo, 0.1)
    assert a0 <= x0 and a1 >= x1 and b1 >= y1 and conf_low == conf  # it holds the 0.5 box
    assert y0 - b0 > (x0 - a0) + 5  # and reaches further up, where the unsure rim is
    assert pipeline.crop_box(photo, CropRule(0.1, 0.5, min_confidence=conf - 0.01))[2] == "ok"
    assert pipeline.crop_box(photo, CropRule(0.1, 0.5, min_confidence=conf + 0.01))[:3:2] == (None, "uncertain")

    class Segmenter:
        crop_rule = CropRule(0.1, 0.5, min_confidence=conf + 0.01)

    class ToolStub:
        segmenter = Segmenter

    out, row = pipeline.compress_row(ToolStub, photo, {})
    assert out == data and row["status"] == "uncertain" and row["method"] == "copy"


def test_a_stalled_fold_crnn_is_trained_again_with_the_next_seed(monkeypatch, synthetic):
    """out_of_fold_reads: a fold CRNN whose best validation exact is under FAILED_FOLD is replaced (next seed),
    the retry is listed, and every train photo is read once, by its own fold's CRNN."""
    from meterseg.config import make_config
    trained = []

    def fake_train(cfg, predictor, photos, labels, seed=0, **kw):
        trained.append(seed)
        return f"reader-{seed}", pd.DataFrame({"val_exact": [0.2 if seed == 1 else 0.9]})  # seed 1 stalls

    def fake_reads(predictor, reader, photos, labels):
        return pd.DataFrame({"image": [str(p) for p in photos], "reader": reader})

    monkeypatch.setattr(reading_eval, "train_own_reader", fake_train)
    monkeypatch.setattr(reading_eval, "tool_reads", fake_reads)
    cfg = make_config("smoke", data=str(synthetic))
    reading_eval.out_of_fold_reads(cfg, None, folds=3)
    assert trained == [0, 1, 2]  # smoke: no retries (FOLD_RETRIES), its CRNNs learn nothing from synthetic strips
    trained.clear()
    reads, crnns = reading_eval.out_of_fold_reads(cfg, None, folds=3, retries=2)  # as the cpu profile
    assert trained == [0, 1, 4, 2]  # fold 1 again with seed 1 + 3
    assert crnns[["fold", "seed", "used"]].values.tolist() == [[0, 0, True], [1, 1, False], [1, 4, True], [2, 2, True]]
    assert reads["image"].is_unique and set(reads.loc[reads["fold"] == 1, "reader"]) == {"reader-4"}


def test_a_stalled_crnn_is_trained_again_until_one_learns(monkeypatch, synthetic):
    """learned_reader: seeds step by `step` past each stalled CRNN; when none learns, the last is used (and listed)."""
    from meterseg.config import make_config
    seeds = []

    def fake_train(cfg, predictor, photos, labels, seed=0, **kw):
        seeds.append(seed)
        return f"reader-{seed}", pd.DataFrame({"val_exact": [0.9 if seed == 10 else 0.1]})  # only seed 10 learns

    monkeypatch.setattr(reading_eval, "train_own_reader", fake_train)
    cfg = make_config("smoke", data=str(synthetic))
    reader, _, tried = reading_eval.learned_reader(cfg, None, [], [], retries=4, step=5)
    assert reader == "reader-10" and seeds == [0, 5, 10] and [t["used"] for t in tried] == [False, False, True]
    reader, _, tried = reading_eval.learned_reader(cfg, None, [], [], seed=1, retries=1, step=5)
    assert reader == "reader-6" and [(t["seed"], t["used"]) for t in tried] == [(1, False), (6, True)]
