import json
import os

from meterseg import study


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
    assert [s["run"] for s in first] == ["attunet-g12-combo-s0", "unet-nogate-combo-s0"]
    threads = max(1, os.cpu_count() // 2)
    assert all(f"{threads} threads" in s["device"] for s in first)
    prov = json.loads((tmp_path / "provenance.json").read_text())["train_all"]
    assert prov["jobs"] == 2 and prov["runs"] == 2 and prov["profile"] == "smoke"
    again = study.train_all(tmp_path, "smoke", [0], data=str(synthetic), jobs=1)  # reused, not retrained
    assert again == first


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


def test_executed_notebooks_carry_no_absolute_path(tmp_path, monkeypatch, synthetic):
    """A study run leaves no path of the machine in its notebooks (results outside the repo here)."""
    from meterseg.config import REPO
    monkeypatch.setenv("METERSEG_DATA", str(synthetic))
    study.run_notebooks(["01_data_exploration"], "smoke", str(tmp_path / "res"), seeds=1, jobs=1)
    text = (tmp_path / "res" / "notebooks" / "01_data_exploration.ipynb").read_text()
    for leak in (str(REPO), str(tmp_path), os.environ["METERSEG_CACHE"], "/tmp/", "/work/", "/home/"):
        assert leak not in text, leak
    assert "synthetic" in text and "<outside the repo>" in text


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
