"""Notebook 07's simulation: months drawn from the train split without overlap, and the verdict judged by the
target and the --with-ok rule of docs/protocol.md (the whole loop runs in notebook 07 under nbval)."""
import pandas as pd

from meterseg.config import make_config
from meterseg.dataset import split_pairs
from meterseg.simulation import MONTHS, PER_MONTH, months, verdict


def test_the_months_and_the_base_split_the_train_photos():
    cfg = make_config("smoke")
    (base, _), parts = months(cfg)
    photos = [p for part, _ in parts for p in part]
    assert [len(p) for p, _ in parts] == [PER_MONTH["smoke"]] * MONTHS["smoke"]
    assert sorted(base + photos) == sorted(split_pairs(cfg, "train")[0]) and len(set(base + photos)) == len(base + photos)
    assert months(cfg)[0][0] == base and months(cfg, seed=1)[0][0] != base  # seeded


def _step(arm, k, corrections, test_ok_pct, test_ok=100, wrong=0, gross=0, val_right=90.0, val_ok=60):
    return {"arm": arm, "months": k, "corrections": corrections, "test_ok_pct": test_ok_pct, "test_ok": test_ok,
            "test_ok_wrong": wrong, "test_ok_gross": gross, "val_right_pct": val_right, "val_ok": val_ok}


def test_the_verdict_holds_the_target_and_the_with_ok_rule():
    table = pd.DataFrame([_step("corrections", 0, 0, 50.0), _step("corrections", 1, 80, 53.0),
                          _step("corrections", 2, 145, 55.5), _step("corrections", 3, 200, 60.0, val_right=91.0, val_ok=70),
                          _step("corrections + ok rows", 0, 0, 50.0), _step("corrections + ok rows", 2, 150, 58.0, gross=1),
                          _step("corrections + ok rows", 3, 190, 59.0, val_right=92.0, val_ok=69)])
    text = verdict(table).splitlines()
    assert "after 2 months (145 photos corrected)" in text[0] and "+5.5 points" in text[0] and "is met" in text[0]
    assert "(150 photos corrected)" in text[1] and "1 gross" in text[1] and "**not met**" in text[1]
    assert "it stays off" in text[2]  # more right, but one `ok` fewer
    table.loc[6, "val_ok"] = 70
    assert "it becomes the default" in verdict(table)
    table.loc[2, "test_ok_wrong"] = 2  # 2 of 100 ok wrong: over 1 %
    assert "**not met**" in verdict(table).splitlines()[0]
