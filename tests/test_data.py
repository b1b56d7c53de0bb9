import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meterseg import config, dataset, fetch
from meterseg.tool import photos


def shoelace(corners):
    x, y = np.array(corners).T
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def test_upstream_layout_reads_sample(sample):
    pairs = dataset.find_pairs(sample)
    assert len(pairs) == 4 and all(p.exists() and l.exists() for _, p, l in pairs)
    stem, photo, label = pairs[0]
    size = photos.open_photo(photo).size
    corners = photos.read_label(label, size)
    mask = photos.truth_mask(photo, label)
    assert mask.shape == (size[1], size[0])
    assert mask.sum() == pytest.approx(shoelace(corners), rel=0.05)  # rasterised area ~ polygon area
    assert dataset.unlabelled_photos(sample) == sorted((sample / "test_imgs" / "test_imgs").glob("*.jpg"))


def _write_generic(root, mask, how):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.full(mask.shape + (3,), 120, np.uint8)).save(root / "images" / "a b ü.jpg")
    if how == "01":
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / "a b ü.png")
    elif how == "0255":
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / "a b ü.png")
    elif how == "palette":
        im = Image.fromarray(mask.astype(np.uint8), mode="L").convert("P")
        im.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
        im.save(root / "masks" / "a b ü.png")
    elif how == "rgb":
        rgb = np.zeros(mask.shape + (3,), np.uint8)
        rgb[mask] = (255, 0, 0)
        Image.fromarray(rgb).save(root / "masks" / "a b ü.png")


@pytest.mark.parametrize("how", ["01", "0255", "palette", "rgb"])
def test_generic_layout_mask_encodings(tmp_path, how):
    mask = np.zeros((40, 60), bool)
    mask[10:20, 5:50] = True
    _write_generic(tmp_path, mask, how)
    [(stem, photo, label)] = dataset.find_pairs(tmp_path)
    assert stem == "a b ü"
    np.testing.assert_array_equal(photos.truth_mask(photo, label), mask)
    ds = dataset.load_dataset(tmp_path, 16)
    assert ds["images"].shape == (1, 3, 16, 16) and ds["masks"].shape == (1, 16, 16)


def test_mask_of_another_size_and_odd_values(tmp_path):
    mask = np.zeros((40, 60), bool)
    _write_generic(tmp_path, mask, "0255")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "masks" / "a b ü.png")
    [(stem, photo, label)] = dataset.find_pairs(tmp_path)
    with pytest.raises(photos.DataError, match="a b ü.png: mask is 10x10"):
        photos.truth_mask(photo, label)
    Image.fromarray(np.array([[0, 7], [128, 255]], np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(photos.DataError, match="odd.png: mask values"):
        photos.read_mask(tmp_path / "odd.png")


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


BAD_PHOTOS = {
    "zero-byte": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3]),
    "not-an-image": lambda p: p.write_text("this is not a JPEG"),
}


@pytest.mark.parametrize("kind", BAD_PHOTOS)
def test_bad_photo_is_named_and_skipped(sample, kind):
    victim = sorted((sample / "train_imgs").glob("*.jpg"))[0]
    BAD_PHOTOS[kind](victim)
    before = {p: sha(p) for p in sample.rglob("*") if p.is_file()}
    with pytest.raises(photos.DataError, match=victim.name):
        photos.load_photo(victim, 32)
    with pytest.warns(UserWarning, match=victim.name):
        ds = dataset.load_dataset(sample, 32)
    assert len(ds["stems"]) == 3 and victim.stem not in ds["stems"]
    assert len(ds["errors"]) == 1 and victim.name in ds["errors"][0]
    assert before == {p: sha(p) for p in sample.rglob("*") if p.is_file()}  # nothing of the user's changed


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "I;16", "P"])
def test_photo_modes_become_rgb(tmp_path, mode):
    a = (np.arange(48 * 64).reshape(48, 64) % 251).astype(np.uint8)
    if mode == "I;16":
        im = Image.fromarray(a.astype(np.uint16) * 257)
        path = tmp_path / "x.png"
    else:
        im = Image.fromarray(np.stack([a] * 3, -1)).convert(mode)
        path = tmp_path / ("x.png" if mode in ("RGBA", "P") else "x.jpg" if mode != "CMYK" else "x.tif")
    im.save(path)
    rgb, size = photos.load_photo(path, 16)
    assert rgb.mode == "RGB" and rgb.size == (16, 16) and size == (64, 48)
    assert np.asarray(rgb).std() > 10  # scaled, not clipped to one value


def test_decompression_bomb_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(photos, "MAX_PIXELS", 1000)
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(photos.DataError, match="big.png: .*decompression bomb"):
        photos.load_photo(tmp_path / "big.png")


def _png_header_only(path, w, h):
    """A PNG whose header claims w x h pixels, with almost no data behind it."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_real_decompression_bomb_refused(tmp_path):
    _png_header_only(tmp_path / "bomb.png", 40000, 40000)  # 1.6 G pixels claimed
    with pytest.raises(photos.DataError, match="bomb.png: .*bomb"):
        photos.load_photo(tmp_path / "bomb.png")


@pytest.mark.parametrize("text,problem", [
    ("10 10 50 10 50 40", "expected 8 corner coordinates"),
    ("10 10 50 ten 50 40 10 40 00123", "not numbers"),
    ("10 10 5000 10 5000 40 10 40 00123", "outside"),
    ("10 10 50 10 50 nan 10 40 00123", "not finite"),
])
def test_bad_labels(sample, text, problem):
    label = sorted((sample / "train_labels" / "labels").glob("*.txt"))[0]
    label.write_text(text)
    photo = sample / "train_imgs" / (label.stem + ".jpg")
    with pytest.raises(photos.DataError, match=f"{label.name}: .*{problem}"):
        photos.truth_mask(photo, label)


def test_missing_label_is_skipped(sample):
    label = sorted((sample / "train_labels" / "labels").glob("*.txt"))[0]
    label.unlink()
    with pytest.warns(UserWarning, match="missing label"):
        ds = dataset.load_dataset(sample, 32)
    assert label.stem not in ds["stems"]


def test_cache_is_reused_and_invalidated(sample):
    ds1 = dataset.load_dataset(sample, 24)
    caches = list(Path(os.environ["METERSEG_CACHE"]).glob("sample-24-*.pt"))
    assert len(caches) == 1
    ds2 = dataset.load_dataset(sample, 24)
    assert ds1["stems"] == ds2["stems"] and (ds1["images"] == ds2["images"]).all()
    label = sorted((sample / "train_labels" / "labels").glob("*.txt"))[0]
    os.utime(label, ns=(1, 1))  # a touched label changes the fingerprint
    dataset.load_dataset(sample, 24)
    assert len(list(Path(os.environ["METERSEG_CACHE"]).glob("sample-24-*.pt"))) == 2


def test_split_is_deterministic_proportional_and_stable(tmp_path):
    stems = [f"train_{i}" for i in range(800)]
    split = dataset.load_split(stems, tmp_path / "split.csv")
    counts = {p: sum(v == p for v in split.values()) for p in ("train", "val", "test")}
    assert counts == {"train": 600, "val": 100, "test": 100}
    assert dataset.load_split(list(reversed(stems)), tmp_path / "other.csv") == split  # order does not matter
    grown = dataset.load_split(stems + [f"new_{i}" for i in range(80)], tmp_path / "split.csv")
    assert all(grown[s] == split[s] for s in stems)  # no photo moves when the dataset grows
    assert (tmp_path / "split.csv").read_text().count("\n") == 881


def test_fetch_verifies_checksums(tmp_path):
    sums = config.REPO / "data" / "SAMPLE-SHA256SUMS"
    url = (config.REPO / "data" / "sample").as_uri()
    dest = fetch.fetch_upstream(tmp_path / "got", base_url=url, sums_file=sums, progress=False)
    assert (dest / ".verified").exists() and len(dataset.find_pairs(dest)) == 4
    bad = tmp_path / "bad-sums"
    bad.write_text(sums.read_text().replace(sums.read_text()[:8], "00000000", 1))
    with pytest.raises(photos.DataError, match="SHA-256 mismatch"):
        fetch.fetch_upstream(tmp_path / "got2", base_url=url, sums_file=bad, progress=False)
    assert not list((tmp_path / "got2").rglob("*.part"))


def test_shipped_upstream_sums_cover_the_layout():
    lines = (config.REPO / "data" / "UPSTREAM-SHA256SUMS").read_text().splitlines()
    paths = [l.split(None, 1)[1] for l in lines]
    assert any(p.startswith("train_imgs/") for p in paths) and any(p.startswith("train_labels/labels/") for p in paths)
    assert all(len(l.split()[0]) == 64 for l in lines)


@pytest.mark.skipif(not os.environ.get("METERSEG_DATA"), reason="METERSEG_DATA not set (CI sets it to the shared copy)")
def test_real_photos_where_available():
    root = Path(os.environ["METERSEG_DATA"])
    pairs = dataset.find_pairs(root)
    assert len(pairs) >= 100
    for stem, photo, label in pairs[:5]:
        m = photos.truth_mask(photo, label)
        assert 0.002 < m.mean() < 0.1  # the counter window is a small part of the photo


def test_fetch_without_network_stops_early(tmp_path):
    sums = config.REPO / "data" / "UPSTREAM-SHA256SUMS"  # 2,500 files: it must not try them all
    with pytest.raises(photos.DataError, match="first downloads all failed.*METERSEG_DATA"):
        fetch.fetch_upstream(tmp_path / "got", base_url=(tmp_path / "nowhere").as_uri(), sums_file=sums, progress=False)
    assert not list((tmp_path / "got").rglob("*.jpg"))
