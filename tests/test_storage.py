import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from meterseg import storage as S
from meterseg.data import DataError
from meterseg.infer import load_model, margin_to_mask


def tree_hashes(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


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


def test_compress_guarantees(smoke_run, photos, tmp_path):
    model, cfg = load_model(smoke_run[0] / "best.pt")
    before = tree_hashes(photos)
    out = tmp_path / "out"
    rows = S.compress(model, cfg, photos, out, progress=False)
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
    assert by["site A/2024/zähler 1.jpg"]["method"] == "lossless-jpegtran" or not S.JPEGTRAN
    assert not list(out.rglob(".part-*"))
    # second run: skips the done ones, retries the errors, every photo once in the manifest
    again = S.compress(model, cfg, photos, out, progress=False)
    manifest = S.read_manifest(out / "manifest.csv")
    assert sorted(r["source"] for r in manifest) == sorted(by)
    assert len(again) == 10


def test_refuses_output_inside_input(smoke_run, photos):
    model, cfg = load_model(smoke_run[0] / "best.pt")
    for bad in (photos, photos / "crops"):
        with pytest.raises(DataError, match="must not be the input folder or inside it"):
            S.compress(model, cfg, photos, bad, progress=False)


def test_no_region_is_copied_whole(smoke_run, photos, tmp_path, monkeypatch):
    model, cfg = load_model(smoke_run[0] / "best.pt")
    import torch
    monkeypatch.setattr(S, "foreground_margin", lambda m, x, device="cpu", batch=16: -torch.ones(len(x), cfg["size"], cfg["size"]))
    rows = S.compress(model, cfg, photos, tmp_path / "out", progress=False)
    copied = [r for r in rows if r["status"] == "no_region"]
    assert len(copied) == 7
    for r in copied:
        assert (tmp_path / "out" / r["output"]).read_bytes() == (photos / r["source"]).read_bytes()


@pytest.mark.skipif(not S.JPEGTRAN, reason="jpegtran (libjpeg-turbo-progs) is not installed")
def test_lossless_crop_keeps_original_pixels(sample):
    photo = sorted((sample / "train_imgs").glob("*.jpg"))[0]
    full = np.asarray(Image.open(photo).convert("RGB"))
    data, box = S.jpeg_lossless_crop(photo, (101, 53, 301, 170))
    x0, y0, x1, y1 = box
    assert x0 <= 101 and y0 <= 53 and (x1, y1) == (301, 170) and x0 % 8 == 0 and y0 % 8 == 0
    crop = np.asarray(Image.open(__import__("io").BytesIO(data)).convert("RGB"))
    assert crop.shape == (y1 - y0, x1 - x0, 3)
    inner = (slice(16, -16), slice(16, -16))  # away from the crop's edge, where chroma upsampling sees new neighbours
    np.testing.assert_array_equal(crop[inner], full[y0:y1, x0:x1][inner])


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
        m = out / "manifest.csv"
        if m.exists() and len(m.read_text().splitlines()) >= 20:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "compress finished before it could be killed"
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = S.read_manifest(out / "manifest.csv")
    assert sorted(x["source"] for x in rows) == sorted(p.name for p in src.iterdir())  # each exactly once
    assert not [p for p in out.rglob("*") if p.name.startswith(".part-") or p.suffix == ".tmp"]
    assert {p.name for p in out.iterdir()} - {"manifest.csv"} == {x["output"] for x in rows}


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(4, 48), st.floats(0, 1))
def test_model_grid_box_maps_onto_photo_pixels(data, size, margin):
    """A region on the model grid, upsampled as predict/compress do, lands where it should in the photo."""
    w, h = data.draw(st.integers(size, 900)), data.draw(st.integers(size, 900))
    x0, y0 = data.draw(st.integers(0, size - 1)), data.draw(st.integers(0, size - 1))
    x1, y1 = data.draw(st.integers(x0 + 1, size)), data.draw(st.integers(y0 + 1, size))
    m = -10 * torch.ones(size, size)
    m[y0:y1, x0:x1] = 10
    mask, conf = margin_to_mask(m, (w, h))
    up = torch.nn.functional.interpolate(m[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    assert mask.shape == (h, w) and (mask == (up > 0).numpy()).all()
    assert 0.5 < conf <= 1 and abs(conf - float(torch.sigmoid(up[up > 0]).mean())) < 1e-6
    box = S.region_box(mask)
    assert box is not None  # never lost when the photo is at least model-sized
    sx, sy = w / size, h / size  # the region stays within half a model pixel of its scaled box
    assert box[0] >= (x0 - 0.5) * sx - 1 and box[2] <= (x1 + 0.5) * sx + 1
    assert box[1] >= (y0 - 0.5) * sy - 1 and box[3] <= (y1 + 0.5) * sy + 1
    assert box[0] <= (x0 + 0.5) * sx + 1 and box[2] >= (x1 - 0.5) * sx - 1
    grown = S.grow_box(box, margin, (w, h))
    assert grown[0] <= box[0] and grown[1] <= box[1] and grown[2] >= box[2] and grown[3] >= box[3]
    assert 0 <= grown[0] and grown[2] <= w and 0 <= grown[1] and grown[3] <= h


def test_region_box_and_gt_kept_by_hand():
    m = np.zeros((10, 20), bool)
    m[2:5, 3:9] = True
    assert S.region_box(m) == (3, 2, 9, 5)
    assert S.region_box(np.zeros((4, 4), bool)) is None
    assert S.gt_kept((3, 2, 9, 5), m) == 1.0
    assert S.gt_kept((3, 2, 6, 5), m) == pytest.approx(0.5)


def test_ssim_and_psnr_reference_values():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32)).astype(np.uint8)
    assert S.ssim(a, a) == pytest.approx(1.0)
    assert S.psnr(a, a) == float("inf")
    b = np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8)
    mse = np.mean((a.astype(float) - b) ** 2)
    assert S.psnr(a, b) == pytest.approx(10 * np.log10(255**2 / mse))
    flat = np.full((16, 16), 100, np.uint8)
    # constant images: SSIM reduces to the luminance term (2*m1*m2 + C1) / (m1^2 + m2^2 + C1)
    c1 = (0.01 * 255) ** 2
    assert S.ssim(flat, flat + 20) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1))
