import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from conftest import tiny_config
from meterseg.checkpoint import CheckpointError, load_model
from meterseg.config import make_config
from meterseg.train import train


def test_smoke_run_writes_a_complete_run(smoke_run):
    out, s = smoke_run
    for f in ("config.json", "history.csv", "best.pt", "test_metrics.csv", "summary.json"):
        assert (out / f).exists(), f
    assert not (out / "last.pt").exists()
    assert s["test"]["dice"] > 0.7  # synthetic windows are easy; a broken model scores ~0.1
    assert len(pd.read_csv(out / "history.csv")) == make_config("smoke").epochs
    for k in ("git_commit", "seed", "device", "train_seconds"):
        assert k in s
    ck = torch.load(out / "best.pt", weights_only=True)
    assert json.loads(ck["config"])["model"] == "attunet"


def test_finished_run_is_reused_and_other_config_refused(smoke_run):
    out, s = smoke_run
    mtime = (out / "best.pt").stat().st_mtime_ns
    assert train(make_config("smoke"), out) == s
    assert (out / "best.pt").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="another config"):
        train(make_config("smoke", seed=5), out)


def test_same_seed_same_metrics(tmp_path):
    a = train(tiny_config(epochs=2), tmp_path / "a")
    b = train(tiny_config(epochs=2), tmp_path / "b")
    assert a["test"] == b["test"]
    c = train(tiny_config(epochs=2, seed=1, data="synthetic"), tmp_path / "c")
    assert c["test"] != a["test"]


def test_a_committed_run_without_its_network_is_trained_again(tmp_path):
    """results/runs/ commits each run's summary but not best.pt: a fresh clone's study trains such a run again
    (same config, same data, the same numbers), rather than reusing a record whose network is gone."""
    out = tmp_path / "run"
    first = train(tiny_config(epochs=2), out)
    (out / "best.pt").unlink()
    summary = (out / "summary.json").read_text()
    again = train(tiny_config(epochs=2), out)
    assert json.loads(summary) == first  # the committed record was what the first call returned
    assert (out / "best.pt").exists() and again["test"] == first["test"]


def test_bf16_training_changes_the_numbers_not_the_result(tmp_path, monkeypatch):
    """Where the CPU has bf16 units, training runs under bf16 autocast: other losses to the digit than
    --no-bf16 (fp32), about the same Dice. Where it has none, it falls back to fp32: the same numbers as
    --no-bf16, and the summary says which ran."""
    import meterseg.train as T
    monkeypatch.setattr(T, "cpu_has_bf16", lambda: True)
    bf = train(tiny_config(epochs=4), tmp_path / "bf16")
    fp = train(tiny_config(epochs=4, bf16=False), tmp_path / "fp32")
    assert bf["precision"] == "bf16 autocast" and fp["precision"] == "fp32" and bf["test"] != fp["test"]
    assert abs(bf["test"]["dice"] - fp["test"]["dice"]) < 0.1 and min(bf["test"]["dice"], fp["test"]["dice"]) > 0.5
    monkeypatch.setattr(T, "cpu_has_bf16", lambda: False)
    fallback = train(tiny_config(epochs=4), tmp_path / "fallback")
    assert fallback["precision"] == "fp32" and fallback["test"] == fp["test"]


def test_kill_9_then_resume_gives_the_same_result(tmp_path):
    args = dict(size=64, base=8, epochs=5, step_size=2)
    ref = train(tiny_config(**args), tmp_path / "ref")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "meterseg", "train", "--profile", "smoke", "--out", str(out)] + \
          [x for k, v in args.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        h = out / "history.csv"
        if h.exists() and len(h.read_text().splitlines()) >= 3:  # two epochs done
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert (out / "last.pt").exists() and not (out / "summary.json").exists()
    resumed = train(tiny_config(**args), out)
    cols = ["epoch", "train_loss", "val_dice", "lr"]
    pd.testing.assert_frame_equal(pd.read_csv(out / "history.csv")[cols], pd.read_csv(tmp_path / "ref" / "history.csv")[cols])
    assert resumed["test"] == ref["test"]


def test_checkpoint_loading_is_safe(smoke_run, tmp_path):
    out, _ = smoke_run
    model, cfg = load_model(out / "best.pt", expect={"model": "attunet"})
    assert cfg["base"] == 8
    with pytest.raises(CheckpointError, match="model='attunet' but 'unet' was asked for"):
        load_model(out / "best.pt", expect={"model": "unet"})

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))
    torch.save({"state_dict": {}, "config": "{}", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt: refused"):
        load_model(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_model(tmp_path / "junk.pt")
    ck = torch.load(out / "best.pt", weights_only=True)
    cfg = json.loads(ck["config"])
    ck["config"] = json.dumps({**cfg, "base": 16})  # config says one width, weights another
    torch.save(ck, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="mismatch.pt: weights do not fit"):
        load_model(tmp_path / "mismatch.pt")


def test_unknown_profile_and_field():
    with pytest.raises(ValueError, match="unknown profile"):
        make_config("huge")
    with pytest.raises(ValueError, match="unknown config fields"):
        make_config("cpu", widht=3)


def test_a_run_on_other_data_is_refused_not_reused(tmp_path, synthetic, monkeypatch):
    """Changing METERSEG_DATA must not silently reuse runs trained on other photos."""
    import shutil
    cfg = make_config("cpu", size=32, base=4, epochs=1, step_size=1)  # data "": found through METERSEG_DATA
    monkeypatch.setenv("METERSEG_DATA", str(synthetic))
    s = train(cfg, tmp_path / "run")
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert data["fingerprint"] == s["data_fingerprint"] and data["dataset"] == synthetic.name
    assert "/" not in s["data"]  # no absolute path of this machine in the summary
    moved = tmp_path / synthetic.name  # the same photos elsewhere: same fingerprint, reused
    shutil.copytree(synthetic, moved)
    monkeypatch.setenv("METERSEG_DATA", str(moved))
    assert train(cfg, tmp_path / "run") == s
    label = sorted((moved / "train_labels" / "labels").glob("*.txt"))[0]
    label.write_text("10 10 60 10 60 40 10 40 00001\n")  # one label changed
    with pytest.raises(ValueError, match="trained on other data"):
        train(cfg, tmp_path / "run")
