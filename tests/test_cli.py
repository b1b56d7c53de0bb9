import csv
import dataclasses

import numpy as np
import pytest
from PIL import Image

from conftest import meterseg
from meterseg.tool import photos
from meterseg.cli import build_parser
from meterseg.config import Config, make_config


def test_round_trip_train_predict_evaluate(tmp_path, synthetic):
    run = tmp_path / "run"
    r = meterseg("train", "--profile", "smoke", "--epochs", "4", "--data", synthetic, "--out", run)
    assert r.returncode == 0, r.stderr
    assert "test dice" in r.stdout
    shots = sorted((synthetic / "train_imgs").glob("*.jpg"))[:4]
    r = meterseg("predict", "--checkpoint", run / "best.pt", "--out", tmp_path / "pred", *shots)
    assert r.returncode == 0, r.stderr
    truth = tmp_path / "truth"
    truth.mkdir()
    for p in shots:
        m = np.asarray(Image.open(tmp_path / "pred" / f"{p.name}.png"))  # x.jpg -> x.jpg.png
        assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}
        assert m.shape[::-1] == Image.open(p).size  # at the photo's own size
        label = synthetic / "train_labels" / "labels" / f"{p.stem}.txt"
        Image.fromarray(photos.truth_mask(p, label).astype(np.uint8) * 255).save(truth / f"{p.stem}.png")
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


def test_every_config_field_is_a_train_flag():
    """Each Config field can be set from the command line, to a value unlike the profile's."""
    values = {"data": "/some/folder", "model": "unet", "gates": "2", "loss": "dice", "loss_weight": "0.5", "size": "48",
              "base": "4", "epochs": "2", "batch_size": "4", "lr": "0.01", "weight_decay": "0.1", "step_size": "1",
              "gamma": "0.5", "schedule": "step", "warmup": "0.5", "max_photos": "3", "seed": "7", "device": "cpu"}
    flags = {"augment", "prior_init", "bf16"}  # booleans: --no-augment, --no-prior-init, --no-bf16
    fields = {f.name for f in dataclasses.fields(Config)} - {"profile"} - flags
    assert fields == set(values)  # a new field must be added here, and so to the CLI check
    argv = ["train", "--profile", "smoke", "--out", "x", "--no-augment", "--no-prior-init", "--no-bf16"]
    for k, v in values.items():
        argv += ["--" + k.replace("_", "-"), v]
    a = build_parser().parse_args(argv)
    cfg = make_config(a.profile, **{f: getattr(a, f) for f in fields | flags})
    default = make_config("smoke")
    for f in fields | flags:
        assert getattr(cfg, f) != getattr(default, f) or f == "gates", f  # unet drops gates
    assert cfg.augment is False and cfg.prior_init is False and cfg.bf16 is False and cfg.model == "unet" and cfg.lr == 0.01


def test_try_recipe_parses_each_field_as_its_flag_does(monkeypatch, capsys):
    """`study --try-recipe` values: a bool from true/false (bool("False") would be True), gates as a tuple."""
    from meterseg import cli, study
    asked = []
    monkeypatch.setattr(study, "write_check", lambda *a: asked.append(a[-1]) or (True, None))
    assert cli.main(["study", "--try-recipe", "augment=False,lr=6e-3,gates=1+2,epochs=20"]) == 0
    assert asked == [{"augment": False, "lr": 0.006, "gates": (1, 2), "epochs": 20}]
    assert cli.main(["study", "--try-recipe", "augment=no"]) == 2 and len(asked) == 1
    assert "augment=no: expected true or false" in capsys.readouterr().err


@pytest.mark.parametrize("cmd,flag,bad", [("train", "--loss", "focal"), ("train", "--model", "vit"),
                                          ("train", "--profile", "huge"), ("compress", "--format", "gif")])
def test_choices_come_from_the_registries(cmd, flag, bad, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([cmd, flag, bad, "--out", "x"] if cmd == "train" else [cmd, flag, bad, "a", "b"])
    assert "invalid choice" in capsys.readouterr().err


def test_predict_gives_two_photos_of_one_name_two_masks(tmp_path, smoke_run, synthetic):
    src = sorted((synthetic / "train_imgs").glob("*.jpg"))
    for d, p in (("a", src[0]), ("b", src[1])):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.jpg").write_bytes(p.read_bytes())
    Image.open(src[2]).save(tmp_path / "a" / "x.png")
    r = meterseg("predict", "--checkpoint", smoke_run[0] / "best.pt", "--out", tmp_path / "pred",
                 tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg", tmp_path / "a" / "x.png")
    assert r.returncode == 0, r.stderr
    got = sorted(p.relative_to(tmp_path / "pred").as_posix() for p in (tmp_path / "pred").rglob("*.png"))
    assert got == ["a/x.jpg.png", "a/x.png.png", "b/x.jpg.png"]


@pytest.mark.parametrize("flag,argv", [("--workers", ["compress", "--engine", "ray", "--workers", "2", "IN", "OUT"]),
                                       ("--device", ["compress", "--engine", "ray", "--device", "cpu", "IN", "s3://bucket/out"]),
                                       ("--device", ["read", "--engine", "ray", "--out", "r.csv", "--device", "cpu", "file:///photos"])])
def test_the_ray_engine_refuses_the_flags_it_would_ignore(flag, argv, tmp_path, capsys):
    from meterseg.cli import main
    argv = [str(tmp_path / x) if x in ("IN", "OUT", "r.csv") else x for x in argv]
    assert main([argv[0], "--checkpoint", str(tmp_path / "none.pt"), *argv[1:]]) == 2
    assert f"{flag}: only with --engine local" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything was started or written
