import csv
import subprocess
import sys

import numpy as np
from PIL import Image

from meterseg import data as D


def meterseg(*args):
    return subprocess.run([sys.executable, "-m", "meterseg", *map(str, args)], capture_output=True, text=True)


def test_round_trip_train_predict_evaluate(tmp_path, synthetic):
    run = tmp_path / "run"
    r = meterseg("train", "--profile", "smoke", "--epochs", "4", "--data", synthetic, "--out", run)
    assert r.returncode == 0, r.stderr
    assert "test dice" in r.stdout
    photos = sorted((synthetic / "train_imgs").glob("*.jpg"))[:4]
    r = meterseg("predict", "--checkpoint", run / "best.pt", "--out", tmp_path / "pred", *photos)
    assert r.returncode == 0, r.stderr
    truth = tmp_path / "truth"
    truth.mkdir()
    for p in photos:
        m = np.asarray(Image.open(tmp_path / "pred" / f"{p.stem}.png"))
        assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}
        assert m.shape[::-1] == Image.open(p).size  # at the photo's own size
        label = synthetic / "train_labels" / "labels" / f"{p.stem}.txt"
        Image.fromarray(D.truth_mask(p, label).astype(np.uint8) * 255).save(truth / f"{p.stem}.png")
    r = meterseg("evaluate", "--pred", tmp_path / "pred", "--truth", truth, "--out", tmp_path / "m.csv")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert list(rows[0]) == ["image", "dice", "jaccard", "precision", "recall", "accuracy"]
    assert len(rows) == 4 and all(0 <= float(x["dice"]) <= 1 for x in rows)
    assert "pooled dice" in r.stdout


def test_cli_errors_name_the_file(tmp_path, smoke_run):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    r = meterseg("predict", "--checkpoint", smoke_run[0] / "best.pt", "--out", tmp_path / "p", bad)
    assert r.returncode == 1 and "broken.jpg" in r.stderr
    r = meterseg("predict", "--checkpoint", tmp_path / "missing.pt", "--out", tmp_path / "p", bad)
    assert r.returncode == 2 and "missing.pt: no such checkpoint" in r.stderr
    (tmp_path / "t").mkdir()
    (tmp_path / "q").mkdir()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "t" / "a.png")
    Image.fromarray(np.zeros((6, 5), np.uint8)).save(tmp_path / "q" / "a.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "t" / "b.png")
    r = meterseg("evaluate", "--pred", tmp_path / "q", "--truth", tmp_path / "t", "--out", tmp_path / "e.csv")
    assert "a.png: size" in r.stderr and "no prediction for ground truth" in r.stderr and r.returncode == 2
    r = meterseg("train", "--profile", "smoke", "--data", tmp_path / "nowhere", "--out", tmp_path / "x")
    assert r.returncode == 2 and "nowhere: data folder not found" in r.stderr
