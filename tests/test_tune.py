"""`meterseg tune`: the loop read -> review --apply -> tune on synthetic photos end to end, the tuned model
read from its export without torch, and every bad input named with nothing written."""
import csv
import hashlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import asdict

import pandas as pd
import pytest
import torch

from conftest import tree_hashes
from meterseg.cli import main
from meterseg.config import make_config
from meterseg.dataset import split_pairs
from meterseg.labels import truth_of
from meterseg.ownreader import CRNN, OwnReader
from meterseg.predictor import Predictor
from meterseg.reading_eval import tool_reads
from meterseg.tool.card import AcceptRule
from meterseg.tool.photos import DataError
from meterseg.tool.pipeline import CORNERS
from meterseg.tune import pool_of, read_finals

def cli(args):
    return main([str(a) for a in args])


BLOCK_TORCH = "import sys; sys.modules['torch'] = None; from meterseg.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def loop(smoke_run, tmp_path_factory):
    """A model as notebook 06 ships one (the smoke segmenter, a CRNN, its pool), a month of photos read by it,
    every doubtful row corrected from the labels, and the FINAL.csv `review --apply` writes."""
    tmp = tmp_path_factory.mktemp("tune")
    cfg = make_config("smoke")
    ck = torch.load(smoke_run[0] / "best.pt", weights_only=True)
    torch.manual_seed(0)
    reader = OwnReader(CRNN(), AcceptRule(0.0, 0.0, 0.5, False))
    pool = tool_reads(Predictor.load(smoke_run[0] / "best.pt"), reader, *split_pairs(cfg, "val"))
    ck["reader"] = reader.state(epoch=1, val_exact=0.0, accept=asdict(reader.accept), pool=pool_of(pool))
    torch.save(ck, tmp / "model.pt")
    month = tmp / "month"
    month.mkdir()
    photos, labels = split_pairs(cfg, "test")
    for p in photos[:6]:
        shutil.copyfile(p, month / p.name)
    assert cli(["read", "--checkpoint", tmp / "model.pt", "--out", tmp / "read.csv", month]) == 0
    truth = {p.name: truth_of(lab).billing for p, lab in zip(photos, labels)}
    rows = list(csv.DictReader(open(tmp / "read.csv")))
    doubtful = [r for r in rows if r["status"] != "ok" and r["x0"]]
    assert doubtful, "the untrained CRNN should leave readings to a person"
    (tmp / "corrections.csv").write_text("source,reading\n" + "".join(f"{r['source']},{truth[r['source']]}\n" for r in doubtful))
    assert cli(["review", tmp / "read.csv", "--apply", tmp / "corrections.csv", "--out", tmp / "FINAL.csv"]) == 0
    return tmp, month, len(doubtful), len(pool)


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tune_writes_a_new_model_that_learned_the_corrections(loop, tmp_path):
    tmp, month, corrected, pooled = loop
    before = tree_hashes(tmp)
    out = tmp_path / "tuned.pt"
    assert cli(["tune", "--checkpoint", tmp / "model.pt", "--corrections", tmp / "FINAL.csv", "--photos", month,
                 "--out", out, "--profile", "smoke"]) == 0
    assert tree_hashes(tmp) == before  # MODEL, FINAL.csv and the photos untouched
    old, new = torch.load(tmp / "model.pt", weights_only=True), torch.load(out, weights_only=True)
    facts = new["reader"]["tuned"]
    assert facts["corrections"] == corrected and facts["model_ok_rows"] == 0
    assert facts["finals"] == [{"name": "FINAL.csv", "sha256": sha(tmp / "FINAL.csv")}]
    assert facts["from_sha256"] == sha(tmp / "model.pt")
    assert facts["train_photos"] == len(split_pairs(make_config("smoke"), "train")[0])
    assert len(new["reader"]["pool"]["image"]) == pooled + corrected == facts["pool"]
    assert set(new["reader"]["accept"]) == set(old["reader"]["accept"])
    assert any(not torch.equal(new["reader"]["state_dict"][k], v) for k, v in old["reader"]["state_dict"].items())
    assert torch.equal(new["state_dict"][next(iter(new["state_dict"]))], old["state_dict"][next(iter(old["state_dict"]))])
    # never over a file: a second run to the same --out is refused and leaves it as it was
    written = sha(out)
    assert cli(["tune", "--checkpoint", tmp / "model.pt", "--corrections", tmp / "FINAL.csv", "--photos", month,
                 "--out", out, "--profile", "smoke"]) == 2
    assert sha(out) == written

    # the tuned model runs as the shipped one does: from a checkpoint and from its export without torch
    assert cli(["read", "--checkpoint", out, "--out", tmp_path / "again.csv", month]) == 0
    assert cli(["export", "--checkpoint", out, "--out", tmp_path / "exported"]) == 0
    card = json.loads((tmp_path / "exported" / "model.json").read_text())
    assert card["reading"]["tuned"]["corrections"] == corrected and card["reading"]["accept"] == new["reader"]["accept"]
    run = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "read", "--checkpoint", tmp_path / "exported",
                          "--out", tmp_path / "onnx.csv", month], capture_output=True, text=True)  # no torch here
    assert run.returncode == 0, run.stderr
    assert len(pd.read_csv(tmp_path / "onnx.csv")) == len(pd.read_csv(tmp_path / "again.csv")) == 6


def test_the_model_ok_rows_are_learned_only_when_asked(loop):
    tmp, month, corrected, _ = loop
    rows = list(csv.DictReader(open(tmp / "FINAL.csv")))
    ok = sum(r["status"] == "ok" and r["reading_by"] == "model" for r in rows)
    assert len(read_finals_targets([tmp / "FINAL.csv"], month)) == corrected
    assert len(read_finals_targets([tmp / "FINAL.csv"], month, with_ok=True)) == corrected + ok
    assert len(read_finals_targets([tmp / "FINAL.csv", tmp / "FINAL.csv"], month)) == corrected  # a photo counts once


def test_a_corrected_photo_with_no_quad_is_left_out_and_counted(loop, tmp_path):
    """A person may bill a photo the tool found no window in; it has no strip to teach, and tune goes on."""
    tmp, month, corrected, _ = loop
    def no_window(rows, fields):
        rows[_first_person(rows)] |= {k: "" for k in CORNERS}
        return rows, fields
    targets, no_quad = read_finals([_edited(tmp, tmp_path / "FINAL.csv", no_window)], month)
    assert (len(targets), no_quad) == (corrected - 1, 1)


def test_each_final_may_have_its_own_photo_folder(loop, tmp_path):
    """A utility reads a folder a month: each month's FINAL.csv names its sources under its own folder."""
    tmp, month, corrected, _ = loop
    other = tmp_path / "next-month"
    shutil.copytree(month, other)
    for p in other.iterdir():  # other photos, so that they are not the same photo (SHA-256) again
        p.write_bytes(p.read_bytes() + b"\0")
    rows = list(csv.DictReader(open(tmp / "FINAL.csv")))
    digest = {p.name: sha(p) for p in other.iterdir()}
    again = _edited(tmp, tmp_path / "FINAL2.csv", lambda rs, fs: ([r | {"sha256": digest[r["source"]]} for r in rs], fs))
    assert len(read_finals_targets([tmp / "FINAL.csv", again], [month, other])) == 2 * corrected
    assert {t["path"].parent for t in read_finals_targets([tmp / "FINAL.csv", again], [month, other])} == {month, other}
    with pytest.raises(DataError, match="2 photo folders for 3 FINAL.csv files"):
        read_finals([tmp / "FINAL.csv", again, again], [month, other])


def read_finals_targets(*args, **kw):
    return read_finals(*args, **kw)[0]


def _edited(tmp, path, edit):
    rows = list(csv.DictReader(open(tmp / "FINAL.csv")))
    fields = list(rows[0])
    rows, fields = edit(rows, fields)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


def _first_person(rows):
    return next(i for i, r in enumerate(rows) if r["reading_by"] == "person")


def _bad_reading(rows, fields):
    rows[_first_person(rows)]["reading"] = "12a4"
    return rows, fields


def _gone_photo(rows, fields):
    rows[_first_person(rows)]["source"] = "nowhere.jpg"
    return rows, fields


def _no_person(rows, fields):
    return [r | {"reading_by": "model"} for r in rows], fields


def _no_column(rows, fields):
    return [{k: v for k, v in r.items() if k != "model_reading"} for r in rows], [f for f in fields if f != "model_reading"]


@pytest.mark.parametrize("edit, message", [
    (_bad_reading, r"FINAL.csv: line \d+: reading '12a4' is not 5 digits"),
    (_gone_photo, r"FINAL.csv: line \d+: photo 'nowhere.jpg' not found under"),
    (_no_person, r"FINAL.csv: no row with reading_by = person"),
    (_no_column, r"FINAL.csv: not a FINAL.csv of `review --apply` over `meterseg read`: no column model_reading"),
])
def test_a_bad_final_is_named_and_nothing_is_written(loop, tmp_path, capsys, edit, message):
    tmp, month, _, _ = loop
    bad = _edited(tmp, tmp_path / "FINAL.csv", edit)
    assert cli(["tune", "--checkpoint", tmp / "model.pt", "--corrections", bad, "--photos", month,
                 "--out", tmp_path / "tuned.pt", "--profile", "smoke"]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "tuned.pt").exists()


def test_an_exported_folder_or_a_model_without_reader_is_refused(loop, smoke_run, tmp_path, capsys):
    tmp, month, _, _ = loop
    assert cli(["export", "--checkpoint", tmp / "model.pt", "--out", tmp_path / "exported"]) == 0
    for model, message in ((tmp_path / "exported", "an exported folder; tuning needs the torch checkpoint"),
                           (smoke_run[0] / "best.pt", "carries no reader of ours to tune")):
        assert cli(["tune", "--checkpoint", model, "--corrections", tmp / "FINAL.csv", "--photos", month,
                     "--out", tmp_path / "tuned.pt", "--profile", "smoke"]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "tuned.pt").exists()
