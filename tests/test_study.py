import ast
import json
import os
from pathlib import Path

import pytest
import torch

from meterseg import notebook, ship, study, tables
from meterseg.config import REPO


def test_study_runs_are_the_tables_runs_once_each():
    specs = study.study_runs("cpu", [0, 1, 2, 3, 4])
    names = [study.run_name(study.make_config("cpu", **{**study.PAPER_ATTU, **f}, seed=s)) for s, f in specs]
    assert len(names) == len(set(names))
    # by hand: paper AttU, Dice, CE, gate 1, gate 2, U-Net and the 1.0 x (CE+Dice) check, x 5 seeds
    assert len(specs) == 7 * 5
    assert "attunet-g12-combo1-s4" in names and "unet-nogate-combo-s2" in names and "attunet-g1-combo-s1" in names
    for _, a, b in study.COMPARISONS:
        assert a in study.ROWS and b in study.ROWS


def test_train_all_in_worker_processes_then_reused(tmp_path, monkeypatch, synthetic):
    specs = [(0, dict(epochs=2, max_photos=8)), (0, dict(model="unet", epochs=2, max_photos=8))]
    monkeypatch.setattr(study, "study_runs", lambda profile, seeds: specs)
    first = study.train_all(tmp_path, "smoke", [0], data=str(synthetic), jobs=2)
    assert [s["run"] for s in first] == ["attunet-g12-combo-s0-e2", "unet-nogate-combo-s0-e2"]  # not smoke's 8 epochs
    threads = max(1, os.cpu_count() // 2)
    assert all(f"{threads} threads" in s["device"] for s in first)
    prov = json.loads((tmp_path / "provenance.json").read_text())["train_all"]
    assert prov["jobs"] == 2 and prov["runs"] == 2 and prov["profile"] == "smoke"
    again = study.train_all(tmp_path, "smoke", [0], data=str(synthetic), jobs=1)  # reused, not retrained
    assert again == first


def test_length_check_trains_each_length_as_its_own_run_and_stops_at_the_first_converged(tmp_path, monkeypatch, synthetic):
    monkeypatch.setattr(study, "LENGTH_ROWS", {"AttU": dict(max_photos=8), "U-Net": dict(model="unet", max_photos=8)})
    length, table = study.length_check(tmp_path, "smoke", seeds=(0,), lengths=(1, 2, 3), gain=1.0, data=str(synthetic), jobs=1)
    assert length == 1  # any gain is under 1.0 Dice: the first length converges, and length 3 is never trained
    names = sorted(p.name for p in study.runs_dir(tmp_path, "smoke").iterdir())
    assert names == ["attunet-g12-combo-s0-e1", "attunet-g12-combo-s0-e2", "unet-nogate-combo-s0-e1", "unet-nogate-combo-s0-e2"]
    summaries = {n: json.loads((study.runs_dir(tmp_path, "smoke") / n / "summary.json").read_text()) for n in names}
    row = table[(table["model"] == "U-Net") & (table["epochs"] == 1)].iloc[0]
    by_hand = summaries["unet-nogate-combo-s0-e2"]["best_val_dice"] - summaries["unet-nogate-combo-s0-e1"]["best_val_dice"]
    assert abs(row["gain_to_next_length"] - by_hand) < 1e-12
    assert table[table["epochs"] == 2]["gain_to_next_length"].isna().all()
    length, table = study.length_check(tmp_path, "smoke", seeds=(0,), lengths=(1, 2), gain=-1.0, data=str(synthetic), jobs=1)
    assert length is None and len(table) == 4  # nothing gains less than -1: no length converged, and none retrained


def test_recipe_check_compares_a_cheaper_recipe_with_the_profiles_on_validation(tmp_path, monkeypatch, synthetic):
    monkeypatch.setattr(study, "LENGTH_ROWS", {"AttU": dict(max_photos=8), "U-Net": dict(model="unet", max_photos=8)})
    kw = dict(seeds=(0,), data=str(synthetic), jobs=1)
    adopt, table = study.recipe_check(tmp_path, "smoke", {"lr": 0.01, "epochs": 2}, margin=1.0, **kw)
    names = sorted(p.name for p in study.runs_dir(tmp_path, "smoke").iterdir())
    assert names == ["attunet-g12-combo-s0", "attunet-g12-combo-s0-e2-lr0.01", "unet-nogate-combo-s0", "unet-nogate-combo-s0-e2-lr0.01"]
    assert adopt and len(table) == 4  # within 1.0 Dice of anything
    tried = json.loads((study.runs_dir(tmp_path, "smoke") / "unet-nogate-combo-s0-e2-lr0.01" / "summary.json").read_text())
    assert table.set_index(["model", "recipe"]).loc[("U-Net", "tried"), "best_val_dice"] == tried["best_val_dice"]
    assert not study.recipe_check(tmp_path, "smoke", {"lr": 0.01, "epochs": 2}, margin=-1.0, **kw)[0]  # nothing is 1.0 better


def test_one_rule_for_the_results_folder(monkeypatch, tmp_path):
    from meterseg.config import REPO, results_dir
    monkeypatch.delenv("METERSEG_RESULTS", raising=False)
    monkeypatch.delenv("METERSEG_PROFILE", raising=False)
    assert results_dir() == ("cpu", REPO / "results")
    assert results_dir("smoke") == ("smoke", REPO / "results" / "smoke")  # never the committed results/
    assert results_dir("paper", "results/x") == ("paper", REPO / "results" / "x")  # relative to the repo
    monkeypatch.setenv("METERSEG_RESULTS", str(tmp_path))
    assert results_dir("smoke") == ("smoke", tmp_path)
    monkeypatch.setenv("METERSEG_PROFILE", "smoke")
    assert results_dir("", "") == ("smoke", tmp_path)


def test_notebook_seeds_come_from_the_parameter_then_the_environment(tmp_path, monkeypatch):
    """SEEDS = 0 in a notebook: $METERSEG_SEEDS (make test's nbval sets 2), else 5; a bad value is named."""
    monkeypatch.delenv("METERSEG_SEEDS", raising=False)
    assert notebook.setup("x", "smoke", str(tmp_path))[2] == [0, 1, 2, 3, 4]
    monkeypatch.setenv("METERSEG_SEEDS", "2")
    assert notebook.setup("x", "smoke", str(tmp_path))[2] == [0, 1]
    assert notebook.setup("x", "smoke", str(tmp_path), 3)[2] == [0, 1, 2]  # the parameter wins
    for bad in ("two", "0", "-1"):
        monkeypatch.setenv("METERSEG_SEEDS", bad)
        with pytest.raises(ValueError, match=f"METERSEG_SEEDS='{bad}'"):
            notebook.setup("x", "smoke", str(tmp_path))


def test_executed_notebooks_carry_no_absolute_path(tmp_path, monkeypatch, synthetic):
    """A study run leaves no path of the machine in its notebooks (results outside the repo here)."""
    from meterseg.config import REPO
    monkeypatch.setenv("METERSEG_DATA", str(synthetic))
    monkeypatch.setattr(notebook, "train_all", lambda *a, **k: None)  # notebook 01 reads no run (train_all: its own test)
    notebook.run_notebooks(["01_data_exploration"], "smoke", str(tmp_path / "res"), seeds=1)
    text = (tmp_path / "res" / "notebooks" / "01_data_exploration.ipynb").read_text()
    for leak in (str(REPO), str(tmp_path), os.environ["METERSEG_CACHE"], "/tmp/", "/work/", "/home/"):
        assert leak not in text, leak
    assert "synthetic" in text and "<outside the repo>" in text


def test_a_file_of_the_checkout_is_named_relative_to_it(tmp_path, monkeypatch):
    """A warning that names a file of the checkout (.venv's tqdm, say) reaches the executed notebook without the checkout's path."""
    import papermill
    from meterseg.config import REPO

    def execute(src, dst, **kw):
        nb = json.loads(Path(src).read_text())
        nb["metadata"]["papermill"] = {}
        nb["cells"][0]["outputs"] = [{"output_type": "stream", "name": "stderr", "text": f"{REPO}/.venv/lib/x.py:21: Warning\n"}]
        Path(dst).write_text(json.dumps(nb))
    monkeypatch.setattr(papermill, "execute_notebook", execute)
    monkeypatch.setattr(notebook, "train_all", lambda *a, **k: None)
    notebook.run_notebooks(["01_data_exploration"], "smoke", str(tmp_path / "res"), seeds=1)
    text = (tmp_path / "res" / "notebooks" / "01_data_exploration.ipynb").read_text()
    assert str(REPO) not in text and ".venv/lib/x.py:21: Warning" in text


def test_a_relative_data_folder_reaches_the_notebooks(tmp_path, monkeypatch, synthetic):
    """METERSEG_DATA=../x as the README shows it: the kernels run in notebooks/, the folder must not move."""
    import shutil
    data = tmp_path / "work" / "photos"
    shutil.copytree(synthetic, data)
    (tmp_path / "work" / "here").mkdir()
    monkeypatch.chdir(tmp_path / "work" / "here")
    monkeypatch.setenv("METERSEG_DATA", "../photos")
    from meterseg.dataset import find_data, load_dataset
    ds = load_dataset(find_data(), 16)
    assert all(os.path.isabs(p) for p in ds["photos"])  # the cache holds paths that work from any folder


def _fake_run(results, name, seed, val_dice, content):
    """A finished run as load_run and ship.segmenter read it, with a best.pt that says which run it is."""
    from meterseg.metrics import METRICS
    d = study.runs_dir(results, "smoke") / name
    d.mkdir(parents=True)
    test = {"n": 3, "pooled_dice": 0.5, **{m: 0.5 for m in METRICS}, **{m + "_sd": 0.1 for m in METRICS}}
    (d / "summary.json").write_text(json.dumps({"run": name, "seed": seed, "best_val_dice": val_dice, "best_epoch": 2,
                                                "test": test, "git_commit": "abc", "device": "cpu", "train_seconds": 1.0}))
    (d / "history.csv").write_text("epoch,train_loss,val_dice,lr,seconds\n1,0.5,0.4,0.001,1.0\n")
    (d / "test_metrics.csv").write_text("image,dice\na,0.5\n")
    torch.save({"config": "{}", "run": content}, d / "best.pt")
    return json.loads((d / "summary.json").read_text())


def test_ship_segmenter_trains_the_validation_best_seed_longer_and_ships_the_best_on_validation(tmp_path, monkeypatch):
    for long_val, shipped in ((0.95, "long"), (0.92, "s1")):
        res = tmp_path / str(long_val)
        _fake_run(res, "attunet-g12-combo-s0", 0, 0.90, "s0")
        _fake_run(res, "attunet-g12-combo-s1", 1, 0.93, "s1")
        _fake_run(res, "attunet-g12-combo-s2", 2, 0.91, "s2")
        asked = []

        def longer(results, profile, seed, data="", **fields):
            asked.append((seed, fields))
            return json.loads((study.runs_dir(results, profile) / f"attunet-g12-combo-s{seed}-e20" / "summary.json").read_text())
        _fake_run(res, "attunet-g12-combo-s1-e20", 1, long_val, "long")
        monkeypatch.setattr(study, "ensure_run", longer)
        monkeypatch.setitem(ship.SHIP_EPOCHS, "smoke", 20)
        path, best, candidates = ship.segmenter(res, "smoke", [0, 1, 2])
        assert asked == [(1, {"epochs": 20})]  # seed 1: the best table run on validation, never the test numbers
        assert torch.load(path, weights_only=True)["run"] == shipped
        assert candidates.shipped.sum() == 1 and candidates.loc[candidates.shipped, "val_dice"].item() == max(long_val, 0.93)
        assert list(candidates.epochs) == [8, 8, 8, 20]
        assert f"({max(long_val, 0.93):.4f}, epoch 2)" in (res / "models" / "README.md").read_text()


def test_committed_results_carry_no_absolute_path():
    """What a study committed under results/ names no folder of the machine that made it."""
    from meterseg.config import REPO
    texts = [p for ext in ("ipynb", "md", "json", "csv") for p in (REPO / "results").rglob(f"*.{ext}")]
    assert texts  # the committed study is there to check
    leaks = {p.relative_to(REPO).as_posix(): found for p in texts
             if (found := [x for x in (str(REPO), "/work/", "/home/", "/tmp/", "/Users/") if x in p.read_text(encoding="utf-8")])}
    assert leaks == {}


def test_seed_table_against_statistics_and_the_length_check_footnote(tmp_path):
    import statistics
    import pandas as pd
    dice = [0.941, 0.952, 0.948]
    runs = {"AttU": [{"best_epoch": e, "test": {m: d + 0.01 * i for i, m in enumerate(tables.METRICS)}}
                     for e, d in zip((40, 31, 38), dice)]}
    row = tables.seed_table(runs).iloc[0]
    assert abs(row["dice_mean"] - 100 * statistics.mean(dice)) < 1e-9
    assert abs(row["dice_sd"] - 100 * statistics.stdev(dice)) < 1e-9  # ddof=1
    assert row["best_epochs"] == "31-40" and abs(row["lowest_dice"] - 94.1) < 1e-9
    assert tables.length_note(tmp_path) == ""  # no check run: no footnote
    (tmp_path / "tables").mkdir()
    check = pd.DataFrame({"model": ["AttU"] * 3 + ["U-Net"] * 3, "epochs": [10, 20, 30] * 2,
                          "best_val_dice": [0.95, 0.955, 0.956, 0.94, 0.95, 0.9535],
                          "gain_to_next_length": [0.005, 0.001, None, 0.01, 0.0035, None]})
    check.assign(converged_length=None).to_csv(tmp_path / "tables" / "length_check.csv", index=False)
    note = tables.length_note(tmp_path)
    assert "U-Net 10->20 +0.0100, 20->30 +0.0035" in note and "longest length tried, 30 epochs" in note
    check.assign(converged_length=[20] + [None] * 5).to_csv(tmp_path / "tables" / "length_check.csv", index=False)
    assert "converged at 20 epochs" in tables.length_note(tmp_path)
    md = tables.write_table(tables.seed_table(runs), "t", tmp_path, title="T").read_text()
    assert "| AttU | 3 | 31-40 |" in md and md.rstrip().endswith("converged at 20 epochs.")


def one_call_cells(nb):
    """The code cells of a notebook that are not, past their imports, one library call (its value maybe
    bound to names) whose arguments are names, attributes or constants: the notebooks hold no logic."""
    bad = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code" or "parameters" in cell["metadata"].get("tags", []):
            continue
        body = [s for s in ast.parse("".join(cell["source"])).body if not isinstance(s, (ast.Import, ast.ImportFrom))]
        call = body[0].value if len(body) == 1 and isinstance(body[0], (ast.Expr, ast.Assign)) else None
        plain = (ast.Name, ast.Attribute, ast.Constant)
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and all(isinstance(a, plain) for a in call.args + [k.value for k in call.keywords])):
            bad.append("".join(cell["source"]))
    return bad


def test_each_notebook_cell_is_one_library_call():
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert len(notebooks) == 7
    for path in notebooks:
        assert one_call_cells(json.loads(path.read_text())) == [], path.name
    # the check itself: a cell with logic in it is caught
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "source": ["card = dataset.data_card(root)\n", "card.describe()"]},
                    {"cell_type": "code", "metadata": {}, "source": ["figures.save(figures.examples(card), results, 'x')"]},
                    {"cell_type": "code", "metadata": {}, "source": ["reports.examples(profile, results, DATA)"]}]}
    assert len(one_call_cells(nb)) == 2


def test_only_the_notebooks_that_read_every_run_train_them(tmp_path, monkeypatch):
    """`meterseg study 06_reading` reruns one notebook on the shipped model; 02-04 need every run, so they train."""
    import papermill
    calls = []
    monkeypatch.setattr(papermill, "execute_notebook",
                        lambda src, dst, **kw: Path(dst).write_text(json.dumps({"metadata": {"papermill": {}}})))
    monkeypatch.setattr(notebook, "train_all", lambda *a, **k: calls.append(a))
    notebook.run_notebooks(["01_data_exploration", "06_reading"], "smoke", str(tmp_path / "res"), seeds=1)
    assert calls == []
    notebook.run_notebooks(["03_ablations"], "smoke", str(tmp_path / "res"), seeds=1)
    assert len(calls) == 1
