import json
import os

from meterseg import study


def test_study_runs_are_the_tables_runs_once_each():
    specs = study.study_runs("cpu", [0, 1, 2])
    names = [study.run_name(study.make_config("cpu", **{**study.PAPER_ATTU, **f}, seed=s)) for s, f in specs]
    assert len(names) == len(set(names))
    # by hand: paper AttU, Dice, CE, gate 1, gate 2, U-Net (x 3 seeds) + the 1.0 x (CE+Dice) check on seed 0
    assert len(specs) == 6 * 3 + 1
    assert "attunet-g12-combo1-s0" in names and "unet-nogate-combo-s2" in names and "attunet-g1-combo-s1" in names


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
