import errno
import io
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import SAMPLE, meterseg, tree_hashes
from meterseg import analysis
from meterseg.tool import jpegcrop, pipeline, runner as C, stores
from meterseg.config import CROP_MARGIN
from meterseg.tool.card import CropRule
from meterseg.tool.geometry import gap_box, gap_to_mask, grow_box, region_box
from meterseg.tool.photos import DataError
from meterseg.predictor import Predictor
from meterseg.tool.model import Tool

LOCK = "manifest.csv.lock"


@pytest.fixture()
def predictor(smoke_run):
    return Tool(Predictor.load(smoke_run[0] / "best.pt", "cpu"))


def logit_gap_to_mask(gap, size):
    """torch's own bilinear upsampling and threshold: the reference geometry.py must equal."""
    import torch.nn.functional as F
    w, h = size
    m = F.interpolate(gap[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    inside = m[m > 0]
    return (m > 0).numpy(), float(torch.sigmoid(inside).mean()) if len(inside) else 0.0


def read_manifest(path):
    return stores.read_rows(stores.open_store(path)[0], str(path))


@pytest.fixture()
def photos(tmp_path, synthetic):
    """An input folder of synthetic photos in subfolders, plus bad files, with odd names."""
    src = tmp_path / "in"
    (src / "site A" / "2024").mkdir(parents=True)
    imgs = sorted((synthetic / "train_imgs").glob("*.jpg"))[:6]
    for i, p in enumerate(imgs):
        dest = src / ("site A/2024" if i % 2 else "") / f"zähler {i}.jpg"
        dest.write_bytes(p.read_bytes())
    (src / "empty.jpg").write_bytes(b"")
    (src / "notes.jpg").write_text("not a photo")
    (src / "cut.jpg").write_bytes(imgs[0].read_bytes()[:2000])
    Image.new("RGBA", (300, 200), (90, 90, 90, 128)).save(src / "alpha.png")
    (src / "readme.txt").write_text("ignored: not a photo")
    return src


def test_compress_guarantees(predictor, photos, tmp_path):
    before = tree_hashes(photos)
    out = tmp_path / "out"
    rows = C.compress(predictor, photos, out, progress=False)
    assert tree_hashes(photos) == before  # the input is never touched
    by = {r["source"]: r for r in rows}
    assert len(by) == len(rows) == 10
    for bad in ("empty.jpg", "notes.jpg", "cut.jpg"):
        assert by[bad]["status"].startswith("error: ") and bad in by[bad]["status"]
    good = [r for r in rows if r["status"] == "ok"]
    assert len(good) + sum(r["status"] == "no_region" for r in rows) == 7 and len(good) >= 5
    for r in good:
        assert (out / r["output"]).is_file() and int(r["bytes_out"]) == (out / r["output"]).stat().st_size
        assert int(r["x1"]) > int(r["x0"]) and int(r["y1"]) > int(r["y0"])
    assert by["site A/2024/zähler 1.jpg"]["method"] == "lossless-turbojpeg"  # in process, no system binary
    assert by["alpha.png"]["output"] == "alpha.png"  # a PNG crop (or copy) keeps its name
    assert not list(out.rglob(".part-*")) and not (out / LOCK).exists() and not (out / stores.PARTS).exists()
    # second run: skips the done ones, retries the errors, every photo once in the manifest
    again = C.compress(predictor, photos, out, progress=False)
    manifest = read_manifest(out / "manifest.csv")
    assert sorted(r["source"] for r in manifest) == sorted(by)
    assert len(again) == 10


def test_refuses_output_inside_input(predictor, photos):
    for bad in (photos, photos / "crops"):
        with pytest.raises(DataError, match="must not be the input or inside it"):
            C.compress(predictor, photos, bad, progress=False)


def test_no_region_is_copied_whole(predictor, photos, tmp_path, monkeypatch):
    s = predictor.segmenter
    monkeypatch.setattr(s, "gaps", lambda x: -np.ones((len(x), s.size, s.size), np.float32))
    rows = C.compress(predictor, photos, tmp_path / "out", progress=False)
    copied = [r for r in rows if r["status"] == "no_region"]
    assert len(copied) == 7
    for r in copied:
        assert (tmp_path / "out" / r["output"]).read_bytes() == (photos / r["source"]).read_bytes()


def test_kill_9_during_compress_then_rerun(smoke_run, synthetic, tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    for i in range(40):
        for p in sorted((synthetic / "train_imgs").glob("*.jpg"))[:3]:
            (src / f"{i}_{p.name}").write_bytes(p.read_bytes())
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "meterseg", "compress", "--checkpoint", str(smoke_run[0] / "best.pt"),
           "--workers", "1", str(src), str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if list((out / stores.PARTS).glob("*.csv")):  # one shard of 32 done, the other three not
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "compress finished before it could be killed"
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "photos already done" in r.stdout and not r.stdout.startswith("[compress] 0 photos")
    rows = read_manifest(out / "manifest.csv")
    assert sorted(x["source"] for x in rows) == sorted(p.name for p in src.iterdir())  # each exactly once
    assert not [p for p in out.rglob("*") if p.name.startswith(".part-") or p.suffix == ".tmp"]
    assert {p.name for p in out.iterdir()} - {"manifest.csv"} == {x["output"] for x in rows}
    assert not (out / LOCK).exists()  # the killed run's lock did not block the rerun


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(4, 48), st.floats(0, 1))
def test_model_grid_box_maps_onto_photo_pixels(data, size, margin):
    """A region on the model grid, upsampled as predict/compress do, lands where it should in the photo."""
    w, h = data.draw(st.integers(size, 900)), data.draw(st.integers(size, 900))
    x0, y0 = data.draw(st.integers(0, size - 1)), data.draw(st.integers(0, size - 1))
    x1, y1 = data.draw(st.integers(x0 + 1, size)), data.draw(st.integers(y0 + 1, size))
    m = -10 * torch.ones(size, size)
    m[y0:y1, x0:x1] = 10
    mask, conf = gap_to_mask(m.numpy(), (w, h))
    ref, _ = logit_gap_to_mask(m, (w, h))  # torch's: ours may differ only where the value is 0 up to rounding
    up = torch.nn.functional.interpolate(m[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    assert mask.shape == (h, w) and (np.abs(up.numpy()[mask != ref]) < 1e-4).all()
    assert 0.5 < conf <= 1 and conf == pytest.approx(float(torch.sigmoid(up[torch.from_numpy(mask)]).mean()), abs=1e-4)
    box = region_box(mask)
    assert box is not None  # never lost when the photo is at least model-sized
    sx, sy = w / size, h / size  # the region stays within half a model pixel of its scaled box
    assert box[0] >= (x0 - 0.5) * sx - 1 and box[2] <= (x1 + 0.5) * sx + 1
    assert box[1] >= (y0 - 0.5) * sy - 1 and box[3] <= (y1 + 0.5) * sy + 1
    assert box[0] <= (x0 + 0.5) * sx + 1 and box[2] >= (x1 - 0.5) * sx - 1
    grown = grow_box(box, margin, (w, h))
    assert grown[0] <= box[0] and grown[1] <= box[1] and grown[2] >= box[2] and grown[3] >= box[3]
    assert 0 <= grown[0] and grown[2] <= w and 0 <= grown[1] and grown[3] <= h


def test_region_box_and_gt_kept_by_hand():
    m = np.zeros((10, 20), bool)
    m[2:5, 3:9] = True
    assert region_box(m) == (3, 2, 9, 5)
    assert region_box(np.zeros((4, 4), bool)) is None
    assert analysis.gt_kept((3, 2, 9, 5), m) == 1.0
    assert analysis.gt_kept((3, 2, 6, 5), m) == pytest.approx(0.5)


def test_ssim_and_psnr_reference_values():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32)).astype(np.uint8)
    assert analysis.ssim(a, a) == pytest.approx(1.0)
    assert analysis.psnr(a, a) == float("inf")
    b = np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8)
    mse = np.mean((a.astype(float) - b) ** 2)
    assert analysis.psnr(a, b) == pytest.approx(10 * np.log10(255**2 / mse))
    flat = np.full((16, 16), 100, np.uint8)
    # constant images: SSIM reduces to the luminance term (2*m1*m2 + C1) / (m1^2 + m2^2 + C1)
    c1 = (0.01 * 255) ** 2
    assert analysis.ssim(flat, flat + 20) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1))


def _resave(src, dest, **kw):
    Image.open(src).convert(kw.pop("mode", "RGB")).save(dest, "JPEG", quality=92, **kw)
    return dest


@pytest.mark.parametrize("kind", ["4:2:0", "4:4:4", "grey"])
def test_lossless_crop_keeps_the_original_pixels(kind, tmp_path):
    src = sorted((SAMPLE / "train_imgs").glob("*.jpg"))[0]
    photo = _resave(src, tmp_path / "p.jpg", **({"mode": "L"} if kind == "grey" else
                                               {"subsampling": 0 if kind == "4:4:4" else 2}))
    data = photo.read_bytes()
    grid = 16 if kind == "4:2:0" else 8
    assert jpegcrop.imcu_size(data) == (grid, grid)
    out, box = jpegcrop.lossless_crop(data, (101, 53, 301, 170), "p.jpg")
    x0, y0, x1, y1 = box
    assert (x1, y1) == (301, 170)
    assert x0 == 101 - 101 % grid and y0 == 53 - 53 % grid  # moved down to the iMCU grid, far corner kept
    def luma(im):  # decoded without colour conversion: the stored Y plane
        if im.mode != "L":
            im.draft("YCbCr", im.size)
        return np.asarray(im)[..., 0] if im.mode == "YCbCr" else np.asarray(im)
    crop = Image.open(io.BytesIO(out))
    assert crop.size == (x1 - x0, y1 - y0)
    # luma is block-exact everywhere; chroma upsampling sees new neighbours only at the crop's edge
    np.testing.assert_array_equal(luma(crop), luma(Image.open(photo))[y0:y1, x0:x1])
    inner = (slice(2, -2), slice(2, -2))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(out)).convert("RGB"))[inner],
                                  np.asarray(Image.open(photo).convert("RGB"))[y0:y1, x0:x1][inner])


@pytest.mark.skipif(not shutil.which("jpegtran"), reason="the jpegtran binary (an independent reference) is not installed")
def test_lossless_crop_bytes_equal_jpegtran_perfect(tmp_path):
    for photo in sorted((SAMPLE / "train_imgs").glob("*.jpg")):
        data = photo.read_bytes()
        ours, (x0, y0, x1, y1) = jpegcrop.lossless_crop(data, (37, 61, 250, 199), photo)
        theirs = subprocess.run(["jpegtran", "-copy", "all", "-perfect", "-crop", f"{x1 - x0}x{y1 - y0}+{x0}+{y0}"],
                                input=data, capture_output=True, check=True).stdout
        assert ours == theirs, photo.name


def test_lossless_crop_of_a_damaged_jpeg_names_the_file():
    with pytest.raises(DataError, match="broken.jpg"):
        jpegcrop.lossless_crop(b"\xff\xd8\xff\xe0 garbage", (0, 0, 10, 10), "broken.jpg")


@settings(max_examples=200, deadline=None)
@given(st.data(), st.integers(4, 40))
def test_gap_box_equals_the_box_of_the_full_size_mask(data, size):
    """compress finds the box on a window of the model grid; it must be predict's box exactly."""
    w, h = data.draw(st.integers(1, 700)), data.draw(st.integers(1, 700))
    seed = data.draw(st.integers(0, 2**31))
    g = torch.from_numpy(np.random.default_rng(seed).normal(-3, 2.5, (size, size)).astype(np.float32))
    mask, conf = logit_gap_to_mask(g, (w, h))
    box, conf2 = gap_box(g, (w, h))
    assert box == region_box(mask)
    assert conf2 == pytest.approx(conf, rel=1e-5, abs=1e-6)


def test_outputs_never_share_a_name(predictor, tmp_path, synthetic):
    src = tmp_path / "in"
    src.mkdir()
    im = Image.open(sorted((synthetic / "train_imgs").glob("*.jpg"))[0])
    im.save(src / "photo.tiff")
    im.save(src / "photo.webp", lossless=True)
    im.save(src / "x.tiff")
    im.save(src / "x.tiff.png")  # its crop keeps its name, which x.tiff's crop would also get
    rows = {r["source"]: r for r in C.compress(predictor, src, tmp_path / "out", progress=False)}
    assert rows["photo.tiff"]["output"] == "photo.tiff.png" and rows["photo.webp"]["output"] == "photo.webp.png"
    outputs = [r["output"] for r in rows.values() if r["output"]]
    assert len(outputs) == len(set(outputs))  # never two rows on one file
    clash = [r for r in rows.values() if r["status"].startswith("error")]
    assert len(clash) == 1 and "already taken by" in clash[0]["status"]


def test_rerun_redoes_a_photo_that_changed(predictor, photos, tmp_path):
    out = tmp_path / "out"
    first = {r["source"]: r for r in C.compress(predictor, photos, out, progress=False)}
    grown, same_size = photos / "zähler 0.jpg", photos / "zähler 2.jpg"
    grown.write_bytes(grown.read_bytes() + b"\0")  # size and mtime change
    st = same_size.stat()
    b = bytearray(same_size.read_bytes())
    b[15] ^= 1  # JFIF density: another file of the same size
    same_size.write_bytes(bytes(b))
    os.utime(same_size, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same mtime: only the hash tells
    C.compress(predictor, photos, out, progress=False)
    rows = {r["source"]: r for r in read_manifest(out / "manifest.csv")}
    assert len(rows) == len(first) == len(read_manifest(out / "manifest.csv"))
    for name in ("zähler 0.jpg", "zähler 2.jpg"):
        assert rows[name]["sha256"] != first[name]["sha256"]
        assert rows[name]["sha256"] == pipeline.sha256_bytes((photos / name).read_bytes())
    assert rows["zähler 4.jpg"] == {k: str(v) for k, v in first["zähler 4.jpg"].items()}  # untouched: kept


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_outputs_get_the_umask_permissions(predictor, photos, tmp_path, umask):
    old = os.umask(umask)
    try:
        rows = C.compress(predictor, photos, tmp_path / "out", progress=False)
    finally:
        os.umask(old)
    for r in rows:
        if r["output"]:
            assert (tmp_path / "out" / r["output"]).stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_second_live_run_is_refused_a_stale_lock_is_not(predictor, smoke_run, photos, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with stores.held(stores.open_store(out)[0], out / LOCK):
        r = meterseg("compress", "--checkpoint", smoke_run[0] / "best.pt", photos, out)
    assert r.returncode == 2 and "another meterseg run (pid" in r.stderr and "is writing here" in r.stderr
    (out / LOCK).write_text("pid 999999 on a host that died\n")  # left by a killed run: nobody holds it
    rows = C.compress(predictor, photos, out, progress=False)
    assert len(rows) == 10 and not (out / LOCK).exists()


def test_a_failed_write_is_an_error_row_and_the_rerun_finishes(predictor, photos, tmp_path, monkeypatch):
    real = stores.atomic_write

    def full_disk(path, data, mode=None):
        if "zähler 3" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, mode)
    monkeypatch.setattr(stores, "atomic_write", full_disk)
    out = tmp_path / "out"
    rows = {r["source"]: r for r in C.compress(predictor, photos, out, progress=False)}
    bad = rows["site A/2024/zähler 3.jpg"]
    assert bad["status"].startswith("error: ") and "No space left on device" in bad["status"] and "zähler 3" in bad["status"]
    assert not (out / "site A/2024/zähler 3.jpg").exists()
    assert len(read_manifest(out / "manifest.csv")) == 10  # parseable, every row there
    monkeypatch.setattr(stores, "atomic_write", real)
    C.compress(predictor, photos, out, progress=False)
    again = {r["source"]: r for r in read_manifest(out / "manifest.csv")}
    assert len(again) == 10 and again["site A/2024/zähler 3.jpg"]["status"] == "ok"
    assert (out / "site A/2024/zähler 3.jpg").is_file()


def test_a_torn_manifest_line_is_dropped(tmp_path):
    m = tmp_path / "manifest.csv"
    stores.atomic_write(m, stores.rows_csv([{"source": "a.jpg", "status": "ok", "output": "a.jpg"}], pipeline.MANIFEST_FIELDS))
    with open(m, "a") as f:
        f.write("b.jpg,ok,123,4")  # killed mid-line
    assert [r["source"] for r in read_manifest(m)] == ["a.jpg"]


def test_without_any_lossless_path_crops_are_reencoded_and_say_so(predictor, photos, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "lossless_method", lambda: None)
    rows = {r["source"]: r for r in C.compress(predictor, photos, tmp_path / "out", progress=False)}
    r = rows["zähler 0.jpg"]
    assert r["method"] in ("reencode-png", "copy")
    assert r["output"] == ("zähler 0.jpg.png" if r["method"] == "reencode-png" else "zähler 0.jpg")


def test_the_validated_crop_rule_ships_in_the_checkpoint_and_compress_uses_it(smoke_run, photos, tmp_path):
    """ship.crop_rule records notebook 05's choice and builds the shipped file; compress without --margin crops by it."""
    import shutil
    import pandas as pd
    from meterseg import ship
    (tmp_path / "runs" / "r").mkdir(parents=True)
    shutil.copyfile(smoke_run[0] / "best.pt", tmp_path / "runs" / "r" / "best.pt")
    ck = ship.decide(tmp_path, "segmenter", "# attunet.pt\n", run="r", checkpoint="runs/r/best.pt")
    assert Predictor.load(ck).crop_rule == CropRule(CROP_MARGIN, 0.5, 0.0)  # a checkpoint without one
    rule = CropRule(0.05, 0.1, 0.5)
    table = pd.DataFrame({"probability": [0.5, 0.1], "largest_needed": [0.04, 0.025], "margin": [0.08, 0.05],
                          "mean_area_share": [0.1, 0.09], "chosen": [False, True]})
    for _ in range(2):  # a rerun of notebook 05 replaces the rule, it does not pile up
        ship.crop_rule(tmp_path, rule, table)
    text = (ck.parent / "README.md").read_text()
    assert text.count("## The crop rule") == 1 and "0.0250" in text and text.startswith("# attunet.pt\n\n## The crop rule")
    shipped = Tool(Predictor.load(ck))
    assert shipped.segmenter.crop_rule == rule
    by_default = {r["source"]: r for r in C.compress(shipped, photos, tmp_path / "a", progress=False)}
    explicit = {r["source"]: r for r in C.compress(shipped, photos, tmp_path / "b", 0.05, progress=False)}
    wider = {r["source"]: r for r in C.compress(shipped, photos, tmp_path / "c", 0.5, progress=False)}
    box = lambda r: [r[k] for k in ("x0", "y0", "x1", "y1")]  # noqa: E731
    ok = [s for s, r in by_default.items() if r["status"] == "ok"]
    assert ok and all(box(by_default[s]) == box(explicit[s]) for s in ok)
    assert any(box(by_default[s]) != box(wider[s]) for s in ok)  # the margin does reach the crops
