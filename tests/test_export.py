"""`meterseg export` and the tool without torch: the ONNX files agree with the torch model, compress and
read run from the exported folder in a process where importing torch fails, and a bad folder is named."""
import json
from dataclasses import asdict
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import SAMPLE
from meterseg.tool import runner, stores
from meterseg.export import export
from meterseg.ownreader import CRNN, OwnReader, to_strip
from meterseg.tool.pipeline import load, quad, segment
from meterseg.predictor import Predictor, cpu_has_bf16
from meterseg.tool.recognisers import OnnxCRNN
from meterseg.tool.card import AcceptRule, CheckpointError
from meterseg.tool.model import load_reader, load_tool

BLOCK_TORCH = "import sys; sys.modules['torch'] = None; from meterseg.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def shipped(smoke_run, tmp_path_factory):
    """The smoke checkpoint with a CRNN inside, as notebook 06 ships one, and its export."""
    tmp = tmp_path_factory.mktemp("export")
    ck = torch.load(smoke_run[0] / "best.pt", weights_only=True)
    torch.manual_seed(0)
    ck["reader"] = OwnReader(CRNN()).state(epoch=1, val_exact=0.5, accept=asdict(AcceptRule(0.0, 0.0, 0.05, False)))
    torch.save(ck, tmp / "model.pt")
    shutil.copyfile(smoke_run[0] / "summary.json", tmp / "summary.json")
    return tmp / "model.pt", export(tmp / "model.pt", tmp / "exported")


@pytest.fixture()
def photos(tmp_path, synthetic):
    src = tmp_path / "in"
    src.mkdir()
    for p in sorted((synthetic / "train_imgs").glob("*.jpg"))[:6] + sorted((SAMPLE / "train_imgs").glob("*.jpg"))[:2]:
        shutil.copyfile(p, src / p.name)
    (src / "bad.jpg").write_bytes(b"not a photo")
    return src


def test_the_export_holds_both_networks_and_a_model_card(shipped):
    ck, folder = shipped
    assert sorted(p.name for p in folder.iterdir()) == ["LICENSE", "model.json", "reader.onnx", "segmenter.onnx"]
    card = json.loads((folder / "model.json").read_text())
    assert card["input"]["size"] == 64 and card["crop"]["margin"] == Predictor.load(ck).crop_rule.margin
    assert card["output"]["classes"] == ["background", "counter window"]
    assert card["test_metrics"]["photos"] > 0 and card["trained_by"]["git_commit"]
    assert card["training_data"]["commit"].startswith("53bdd22") and card["training_data"]["licence"].startswith("MIT")
    assert "not tested on gas meters" in card["known_limits"]
    assert card["reading"]["accept"] == asdict(AcceptRule(0.0, 0.0, 0.05, False)) == asdict(load_reader(folder).accept)
    with pytest.raises(CheckpointError, match="exported: already exists"):
        export(ck, folder)


def test_onnx_agrees_with_torch(shipped, photos):
    """Segmenter: logit gaps within 1e-3 and the same boxes and corners (to 0.5 px) on every photo;
    reader: log-probabilities within 1e-4 on random strips. Both paths run fp32 here."""
    ck, folder = shipped
    theirs, ours = Predictor.load(ck, "cpu", cpu_bf16=False), load_tool(folder).segmenter  # the reference: fp32 on any CPU
    loaded = [load(p.name, p.read_bytes(), 64) for p in sorted(photos.glob("train*.jpg"))]
    a, b = theirs.gaps(np.stack([p.pixels for p in loaded])), ours.gaps(np.stack([p.pixels for p in loaded]))
    assert np.abs(a - b).max() < 1e-3
    found = 0
    for p in loaded:
        qa, qb = quad(theirs, segment(theirs, [p])[0]), quad(ours, segment(ours, [p])[0])
        assert (qa is None) == (qb is None)
        if qa is not None:
            found += 1
            assert np.abs(qa - qb).max() <= 0.5
    assert found >= 4
    strips = np.random.default_rng(0).integers(0, 255, (4, 40, 150, 3), dtype=np.uint8)
    onnx_reader, torch_reader = OnnxCRNN(folder / "reader.onnx"), OwnReader.from_state(torch.load(ck, weights_only=True)["reader"])
    for s in strips:
        ref = torch_reader.model(to_strip(s)[None]).detach().numpy()
        got = onnx_reader.session.run(None, {"strip": to_strip(s)[None].numpy()})[0]
        assert np.abs(ref - got).max() < 1e-4


def test_compress_and_read_from_an_export_without_torch(shipped, photos, tmp_path, monkeypatch):
    """A process in which `import torch` fails runs the tool from the exported folder; the rows agree
    with the torch checkpoint's run in fp32 (same boxes, readings and statuses)."""
    ck, folder = shipped
    monkeypatch.setattr("meterseg.predictor.cpu_has_bf16", lambda: False)  # the reference: fp32 on any CPU
    run = lambda *args: subprocess.run([sys.executable, "-c", BLOCK_TORCH, *map(str, args)],  # noqa: E731
                                       capture_output=True, text=True, timeout=300)
    r = run("compress", "--read", "--checkpoint", folder, photos, tmp_path / "out")
    assert r.returncode == 1 and "bad.jpg" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run("read", "--checkpoint", folder, "--out", tmp_path / "readings.csv", photos)
    assert r.returncode == 1 and "bad.jpg" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert f"meterseg review {tmp_path / 'readings.csv'} --photos {photos} --out" in r.stdout  # sources are relative to it
    with_torch = runner.compress(ck, photos, tmp_path / "ref", read=True, progress=False)
    fs = stores.open_store(tmp_path)[0]
    without = {r["source"]: r for r in stores.read_rows(fs, str(tmp_path / "out" / "manifest.csv"))}
    keys = ("status", "x0", "y0", "x1", "y1", "output", "reading", "reading_status", "half_turned")
    assert len(without) == len(with_torch) == 9
    for row in with_torch:
        assert {k: str(row[k]) for k in keys} == {k: without[row["source"]][k] for k in keys}, row["source"]
    readings = stores.read_rows(fs, str(tmp_path / "readings.csv"))
    assert {r["source"]: r["reading"] for r in readings} == {r["source"]: r["reading"] for r in with_torch}
    photos_read = {r["source"]: r["reading_status"] for r in with_torch if not r["status"].startswith("error")}
    assert {r["source"]: r["status"] for r in readings if r["source"] in photos_read} == photos_read


def test_a_bad_export_folder_is_named_never_a_traceback(shipped, photos, tmp_path):
    _, folder = shipped
    cases = {}
    missing = tmp_path / "no-card"
    shutil.copytree(folder, missing)
    (missing / "model.json").unlink()
    cases[missing] = "no-card/model.json: missing"
    junk = tmp_path / "junk-card"
    shutil.copytree(folder, junk)
    (junk / "model.json").write_text("{not json")
    cases[junk] = "junk-card/model.json: not a valid model card"
    wrong = tmp_path / "wrong-size"
    shutil.copytree(folder, wrong)
    card = json.loads((wrong / "model.json").read_text())
    card["input"]["size"] = 128
    (wrong / "model.json").write_text(json.dumps(card))
    cases[wrong] = "wrong-size/segmenter.onnx: takes input"
    for bad, message in cases.items():
        r = subprocess.run([sys.executable, "-m", "meterseg", "compress", "--checkpoint", bad, photos, tmp_path / f"o-{bad.name}"],
                           capture_output=True, text=True)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "meterseg", "export", "--checkpoint", shipped[0], "--out", folder],
                       capture_output=True, text=True)
    assert r.returncode == 2 and f"{folder}: already exists" in r.stderr


@pytest.mark.parametrize("flags,native", [("fpu avx2 fma", False), ("avx512f avx512_bf16", True), ("amx_bf16 amx_tile", True)])
def test_bf16_only_where_the_cpu_has_bf16_units(tmp_path, smoke_run, monkeypatch, flags, native):
    """The torch path's fast path is detected from the CPU's flags; without bf16 units it falls back to fp32,
    which gives exactly the study's numbers; with them, bf16 keeps the region (gaps within 0.5)."""
    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert cpu_has_bf16(tmp_path / "cpuinfo") == native
    assert cpu_has_bf16(tmp_path / "none") is False
    import meterseg.predictor as P
    monkeypatch.setattr(P, "cpu_has_bf16", lambda: native)
    p = Predictor.load(smoke_run[0] / "best.pt", "cpu")
    assert p.bf16 == native and p.backend == f"torch {'bf16' if native else 'fp32'} cpu"
    x = np.random.default_rng(0).integers(0, 255, (2, 3, 64, 64), dtype=np.uint8)
    ref = p.logit_gaps(torch.from_numpy(x)).numpy()
    got = p.gaps(x)
    if native:
        assert np.abs(got - ref).max() < 0.5 and not np.array_equal(got, ref)
    else:
        assert np.array_equal(got, ref)
    study = Predictor.load(smoke_run[0] / "best.pt", "cpu", cpu_bf16=False)  # the notebooks' analyses: fp32 on every CPU
    assert study.bf16 is False and np.array_equal(study.gaps(x), ref)


def test_every_tool_module_imports_with_torch_blocked():
    """Each module of meterseg.tool imports in a process where `import torch` fails (what a `pip install .`
    machine has); the study's modules are outside the subpackage."""
    import pkgutil
    import subprocess
    import sys
    import meterseg.tool
    names = [m.name for m in pkgutil.iter_modules(meterseg.tool.__path__)]
    assert {"model", "pipeline", "runner", "review", "card", "photos"} <= set(names)
    code = ("import sys, importlib; sys.modules['torch'] = None; "
            f"[importlib.import_module('meterseg.tool.' + n) for n in {names!r}]; "
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
