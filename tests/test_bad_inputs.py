"""Bad and odd inputs across data loading, predict, evaluate and compress.

For each kind: a clear message naming the file, the batch goes on, and the user's
files are unchanged (hashed before and after). Odd-but-valid photos (grey, RGBA, CMYK,
16-bit, EXIF-rotated, unicode names) must simply work.
"""
import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import meterseg
from conftest import tree_hashes as hashes
from meterseg import config, dataset
from meterseg.tool.runner import compress


def _bomb(path):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


TEMPLATE = (config.REPO / "data" / "sample" / "train_imgs" / "train_47.jpg").read_bytes()


BAD_PHOTOS = {  # name: (file name, writer) -> must fail with the file named
    "zero-byte file": ("zero.jpg", lambda p: p.write_bytes(b"")),
    "truncated JPEG": ("cut.jpg", lambda p: p.write_bytes(TEMPLATE[:5000])),
    "non-image with a .jpg name": ("text.jpg", lambda p: p.write_text("hello, not a photo")),
    "decompression bomb": ("bomb.png", _bomb),
    "JPEG header then garbage": ("garbage.jpg", lambda p: p.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 20)),
}


def _mode(mode):
    def write(p):
        im = Image.open(io.BytesIO(TEMPLATE))
        if mode == "I;16":
            Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257).save(p)
        else:
            im.convert(mode).save(p)
    return write


def _exif_rotated(p):
    im = Image.open(io.BytesIO(TEMPLATE))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(p, exif=exif.tobytes(), quality=90)


ODD_PHOTOS = {  # must work
    "grayscale photo": ("grey.jpg", _mode("L")),
    "RGBA photo": ("alpha.png", _mode("RGBA")),
    "CMYK photo": ("cmyk.jpg", _mode("CMYK")),
    "16-bit photo": ("deep.png", _mode("I;16")),
    "EXIF-rotated photo": ("rotated.jpg", _exif_rotated),
    "unicode and spaces in the name": ("zähler Nr 7 ✓.jpg", lambda p: p.write_bytes(TEMPLATE)),
}


@pytest.fixture()
def good_dir(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for p in sorted((config.REPO / "data" / "sample" / "train_imgs").glob("*.jpg"))[:2]:
        shutil.copy(p, d / p.name)
    return d


@pytest.mark.parametrize("kind", list(BAD_PHOTOS) + list(ODD_PHOTOS))
def test_photo_kinds_in_predict_and_compress(kind, good_dir, smoke_run, tmp_path):
    name, write = {**BAD_PHOTOS, **ODD_PHOTOS}[kind]
    write(good_dir / name)
    before = hashes(good_dir)
    bad = kind in BAD_PHOTOS
    ckpt = smoke_run[0] / "best.pt"

    r = meterseg("predict", "--checkpoint", ckpt, "--out", tmp_path / "pred", *sorted(good_dir.iterdir()))
    masks = {p.name for p in (tmp_path / "pred").glob("*.png")}
    assert {"train_179.jpg.png", "train_47.jpg.png"} <= masks  # the batch went on
    if bad:
        assert r.returncode == 1 and name in r.stderr, r.stderr
    else:
        assert r.returncode == 0, r.stderr
        m = Image.open(tmp_path / "pred" / f"{name}.png")
        assert m.size == Image.open(good_dir / name).size  # stored pixel grid, EXIF ignored

    rows = {r["source"]: r for r in compress(ckpt, good_dir, tmp_path / "out", progress=False)}
    assert rows["train_47.jpg"]["status"] in ("ok", "no_region")  # a synthetic-trained model may find nothing
    if bad:
        assert rows[name]["status"].startswith("error:") and name in rows[name]["status"]
    else:
        assert rows[name]["status"] in ("ok", "no_region")
        if kind == "EXIF-rotated photo" and rows[name]["method"].startswith("lossless"):
            assert Image.open(tmp_path / "out" / rows[name]["output"]).getexif().get(0x0112) == 6  # orientation kept
    assert hashes(good_dir) == before


@pytest.mark.parametrize("kind", list(BAD_PHOTOS))
def test_photo_kinds_in_data_loading(kind, sample):
    name, write = BAD_PHOTOS[kind]
    victim = sample / "train_imgs" / (Path(name).stem + ".jpg")
    write(victim)
    (sample / "train_labels" / "labels" / (victim.stem + ".txt")).write_text("1 1 9 1 9 9 1 9 00001\n")
    before = hashes(sample)
    with pytest.warns(UserWarning, match=victim.name):
        ds = dataset.load_dataset(sample, 32)
    assert len(ds["stems"]) == 4 and any(victim.name in e for e in ds["errors"])
    assert hashes(sample) == before


BAD_LABELS = {
    "label with 3 corners": "10 10 50 10 50 40 00123",
    "label with non-numbers": "10 10 50 x 50 40 10 40 00123",
    "label corners out of bounds": "-5 10 50 10 50 40 10 40 00123",
    "label that is not UTF-8": b"\xff\xfe\x00 10 10",
    "missing label": None,
}


@pytest.mark.parametrize("kind", BAD_LABELS)
def test_label_kinds(kind, sample):
    label = sorted((sample / "train_labels" / "labels").glob("*.txt"))[0]
    text = BAD_LABELS[kind]
    if text is None:
        label.unlink()
    elif isinstance(text, bytes):
        label.write_bytes(text)
    else:
        label.write_text(text)
    before = hashes(sample)
    with pytest.warns(UserWarning, match=label.name):
        ds = dataset.load_dataset(sample, 32)
    assert len(ds["stems"]) == 3 and label.stem not in ds["stems"]
    assert hashes(sample) == before


MASKS = {
    "mask of another size": lambda p: Image.fromarray(np.zeros((7, 9), np.uint8)).save(p),
    "mask with odd values": lambda p: Image.fromarray(np.array([[0, 3], [128, 255]], np.uint8)).save(p),
    "mask that is not an image": lambda p: p.write_text("nope"),
}


@pytest.mark.parametrize("kind", MASKS)
def test_mask_kinds_in_evaluate(kind, tmp_path):
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    for stem in ("a", "b"):
        Image.fromarray(np.eye(4, dtype=np.uint8) * 255).save(pred / f"{stem}.png")
        Image.fromarray(np.eye(4, dtype=np.uint8) * 255).save(truth / f"{stem}.png")
    MASKS[kind](pred / "b.png")
    before = hashes(tmp_path)
    r = meterseg("evaluate", "--pred", pred, "--truth", truth, "--out", tmp_path / "m" / "e.csv")
    assert r.returncode == 1 and "b.png" in r.stderr, r.stderr
    assert (tmp_path / "m" / "e.csv").read_text().splitlines()[1].startswith("a,1.0")  # a was still scored
    after = hashes(tmp_path)
    after.pop("m/e.csv")
    assert after == before


def test_unwritable_output(tmp_path, good_dir, smoke_run):
    # root ignores permission bits, so a regular file stands where the folder should go
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    before = hashes(good_dir)
    r = meterseg("compress", "--checkpoint", smoke_run[0] / "best.pt", good_dir, blocker / "out")
    assert r.returncode == 2 and "blocker/out: cannot create the output" in r.stderr
    r = meterseg("predict", "--checkpoint", smoke_run[0] / "best.pt", "--out", blocker / "p", *good_dir.iterdir())
    assert r.returncode == 2 and "blocker" in r.stderr
    assert hashes(good_dir) == before and blocker.read_text() == "a file, not a folder"


def test_an_error_status_is_one_line_and_bounded():
    """Every failed row (compress manifest, read CSV, both engines) states its error the same way."""
    from meterseg.tool.photos import error_status
    s = error_status(ValueError("a.jpg: bad\r\nsecond line " + "x" * 1000))
    assert s.startswith("error: a.jpg: bad second line x") and "\n" not in s and "\r" not in s and len(s) == 400
