"""`meterseg compress`: crop every photo under a folder to its predicted reading region, for storage.

Guarantees:
- IN_DIR is only read; an OUT_DIR inside it is refused.
- Every output is written to a temp file and renamed, with the permissions the user's umask
  gives a new file.
- Naming: an output keeps its source's relative path and whole file name; when its format
  differs from the source's, the new extension is appended (`site/m.tiff` -> `site/m.tiff.png`).
  Two sources never share an output: a clash is an error row, never an overwrite.
- A photo with no region found is copied whole and flagged `no_region`; a bad file, or a
  failed write (a full disk), gets an `error: ...` row and the batch goes on.
- Resume: a row is kept on a rerun only while its output exists and its source's size,
  mtime_ns and sha256 (all in the manifest) are unchanged; everything else is redone.
- One run at a time per OUT_DIR (a lock the kernel drops when its process dies, kill -9 included).
"""
import csv
import fcntl
import hashlib
import io
import os
import socket
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch

from .config import CROP_MARGIN
from .jpegcrop import lossless_crop, lossless_method
from .photos import PHOTO_EXT, DataError, error_status, open_photo, to_rgb
from .predictor import gap_box, grow_box

MANIFEST_FIELDS = ["source", "status", "method", "bytes_in", "mtime_ns", "etag", "sha256", "bytes_out",
                   "x0", "y0", "x1", "y1", "output", "confidence", "reading", "reading_confidence", "reading_status"]
FORMATS = ("lossless", "jpeg", "webp", "png")
EXTENSIONS = {"jpeg": (".jpg", ".jpeg"), "webp": (".webp",), "png": (".png",)}  # first: the one appended
LOCK_NAME = ".meterseg-compress.lock"


def new_file_mode():
    """The mode a plain new file gets from the user's umask (read, then put back at once)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def output_name(source, method):
    """The output's relative path for a source's relative path and the method that made it."""
    if method == "copy" or method.startswith("lossless"):
        return source
    exts = EXTENSIONS[method.removeprefix("reencode-")]
    return source if Path(source).suffix.lower() in exts else source + exts[0]


def encode(im, fmt, quality, exif=None):
    """Encode a PIL image as jpeg, webp or png bytes (keeping EXIF where the format can)."""
    buf = io.BytesIO()
    kw = {"exif": exif} if exif else {}
    if fmt == "jpeg":
        im.save(buf, "JPEG", quality=quality, **kw)
    elif fmt == "webp":
        im.save(buf, "WEBP", quality=quality, method=4, **kw)
    elif fmt == "png":
        im.save(buf, "PNG", optimize=False)
    else:
        raise ValueError(f"unknown format {fmt!r}: expected one of {FORMATS}")
    return buf.getvalue()


def crop_photo(data, name, gap, orig, margin=CROP_MARGIN, fmt="lossless", quality=90):
    """The per-photo work: (output bytes, manifest fields) from a photo's bytes and its logit gap.

    orig = the photo's (W, H). Raises DataError naming `name` on a bad photo.
    """
    box, conf = gap_box(gap, orig)
    if box is None:
        return data, {"status": "no_region", "method": "copy", "confidence": 0.0,
                      "x0": 0, "y0": 0, "x1": orig[0], "y1": orig[1]}
    box = grow_box(box, margin, orig)
    im = open_photo(name, data)
    lossless = lossless_method()
    if fmt == "lossless" and im.format == "JPEG" and lossless:
        out, box, method = lossless_crop(data, box, name, lossless)
    else:
        out_fmt = "png" if fmt == "lossless" else fmt  # lossless for a non-JPEG: PNG
        out = encode(to_rgb(im, name).crop(box), out_fmt, quality, im.info.get("exif"))
        method = f"reencode-{out_fmt}"
    return out, {"status": "ok", "method": method, "confidence": round(conf, 4),
                 "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3]}


def atomic_write(path, data, mode=0o644):
    """Write bytes to path whole or not at all, with the given mode (see new_file_mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-", suffix=path.suffix)
    try:
        os.fchmod(fd, mode)  # mkstemp makes 0600: others could not read the archive
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def output_lock(out_dir):
    """Hold OUT_DIR for this run; a second live run is refused. The kernel drops the lock when
    its process dies, so a killed run's lock file never blocks a rerun."""
    path = Path(out_dir) / LOCK_NAME
    for _ in range(3):  # a run ending between our open and flock removes the file: lock the new one
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "pid unknown"
            os.close(fd)
            raise DataError(f"{out_dir}: another compress run ({holder}) is writing here; "
                            "wait for it to end or choose another output folder") from None
        if path.exists() and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)
    else:
        raise DataError(f"{path}: could not take the lock")
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def read_manifest(path):
    """Rows of a manifest file ([] if there is none)."""
    path = Path(path)
    return parse_manifest(path.read_text(encoding="utf-8", errors="replace")) if path.exists() else []


def parse_manifest(text):
    """Rows of a manifest's text, dropping a torn last line left by a kill or a full disk."""
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = csv.DictReader(io.StringIO(text, newline=""))
    return [r for r in rows if None not in r.values() and None not in r]


def rows_csv(rows, fields=MANIFEST_FIELDS):
    """Rows as CSV bytes with a header, missing fields empty: a manifest or a part of one."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows({k: r.get(k, "") for k in fields} for r in rows)
    return buf.getvalue().encode()


def write_manifest(path, rows):
    """Replace the manifest with rows, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(rows_csv(rows))
    os.replace(tmp, path)


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def _unchanged(row, src):
    """Whether a source still has the size, mtime and content its manifest row recorded."""
    try:
        st = src.stat()
        if str(st.st_size) != row["bytes_in"] or str(st.st_mtime_ns) != row["mtime_ns"]:
            return False
        return sha256_bytes(src.read_bytes()) == row["sha256"]
    except OSError:
        return False


def compress(predictor, in_dir, out_dir, margin=None, fmt="lossless", quality=90, workers=None,
             progress=True, batch=8, reader=None):
    """Crop every photo under in_dir into out_dir and write out_dir/manifest.csv; returns its rows.

    margin: None for the predictor's (its checkpoint's validated margin, else CROP_MARGIN).
    reader (a reading.Reader): also read each meter into reading, reading_confidence and
    reading_status (the crop stays the lossless box crop); rows done without a reading are redone.

    Worker threads read and decode the next batch and crop the last one while the model runs on
    this one (a batch of 8 costs the model half as much per photo as one at a time).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: expected one of {FORMATS}")
    in_dir, out_dir = Path(in_dir).resolve(), Path(out_dir).resolve()
    if not in_dir.is_dir():
        raise DataError(f"{in_dir}: input folder not found")
    if out_dir == in_dir or in_dir in out_dir.parents:
        raise DataError(f"{out_dir}: the output folder must not be the input folder or inside it ({in_dir})")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out_dir}: cannot create the output folder ({e.strerror})") from None
    with output_lock(out_dir), ThreadPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        return _compress(predictor, in_dir, out_dir, margin, fmt, quality, pool, progress, batch, reader)


def read_fields(predictor, reader, data, name, gap, orig, lock):
    """The manifest's reading columns of one photo (the tool's way: quad, upright strip, digits)."""
    from .reading import read_region
    image = to_rgb(open_photo(name, data), name)
    with lock:  # one recogniser (and the model's second pass) shared by the worker threads
        _, reading, conf, status = read_region(predictor, reader, image, gap, orig)
    return {"reading": reading, "reading_confidence": conf, "reading_status": status}


def photo_result(predictor, rel, name, data, gap, orig, margin=None, fmt="lossless", quality=90,
                 reader=None, reader_lock=None):
    """The per-photo work every engine shares: (crop bytes, manifest row) from a photo's bytes and its
    logit gap (margin None: the predictor's). The row names the output the crop is to be written to;
    the caller writes it."""
    margin = predictor.crop_margin if margin is None else margin
    out, fields = crop_photo(data, name, gap, orig, margin, fmt, quality)
    row = {k: "" for k in MANIFEST_FIELDS} | {"source": rel, "bytes_in": len(data), "sha256": sha256_bytes(data)}
    row |= fields | {"bytes_out": len(out), "output": output_name(rel, fields["method"])}
    if reader is not None:
        row |= read_fields(predictor, reader, data, name, gap, orig, reader_lock or threading.Lock())
    return out, row


def error_row(rel, name, e):
    """The manifest row of a photo that failed: its message names the photo."""
    msg = str(e)
    named = msg if rel in msg or str(name) in msg else f"{rel}: {msg}"
    return {k: "" for k in MANIFEST_FIELDS} | {"source": rel, "status": error_status(named)}


def _compress(predictor, in_dir, out_dir, margin, fmt, quality, pool, progress, batch, reader):
    manifest = out_dir / "manifest.csv"
    photos = sorted(p for p in in_dir.rglob("*") if p.suffix.lower() in PHOTO_EXT and p.is_file())
    by_rel = {p.relative_to(in_dir).as_posix(): p for p in photos}
    old = [r for r in read_manifest(manifest)
           if r["status"] in ("ok", "no_region") and (out_dir / r["output"]).is_file()
           and (reader is None or r.get("reading_status"))]
    fresh = list(pool.map(lambda r: r["source"] not in by_rel or _unchanged(r, by_rel[r["source"]]), old))
    done = [r for r, ok in zip(old, fresh) if ok]
    claims = {r["output"]: r["source"] for r in done}
    for r, ok in zip(old, fresh):
        if not ok and r["output"] not in claims:
            (out_dir / r["output"]).unlink(missing_ok=True)  # our stale crop of a changed photo
    for part in out_dir.rglob(".part-*"):
        part.unlink(missing_ok=True)  # a half-written crop of a killed run (we hold the lock: no live writer)
    write_manifest(manifest, done)  # drops error rows (retried now), stale rows and a torn line
    skip = {r["source"] for r in done}
    todo = [(rel, p) for rel, p in by_rel.items() if rel not in skip]
    batches = [todo[i:i + batch] for i in range(0, len(todo), batch)]
    claims_lock, reader_lock = threading.Lock(), threading.Lock()
    mode = new_file_mode()

    def load(item):
        rel, src = item
        try:
            st = src.stat()
            data = src.read_bytes()
            x, orig = predictor.inputs(src, data)
            return x, orig, data, st.st_mtime_ns
        except (DataError, OSError) as e:
            return e

    def finish(item, loaded, gap):
        rel, src = item
        try:
            if isinstance(loaded, Exception):
                raise loaded
            _, orig, data, mtime_ns = loaded
            out, row = photo_result(predictor, rel, src, data, gap, orig, margin, fmt, quality, reader, reader_lock)
            row["mtime_ns"] = mtime_ns
            out_rel = row["output"]
            with claims_lock:
                if claims.setdefault(out_rel, rel) != rel:
                    raise DataError(f"{src}: its output name {out_rel} is already taken by {claims[out_rel]}")
            try:
                atomic_write(out_dir / out_rel, out, mode)
            except OSError as e:
                with claims_lock:
                    claims.pop(out_rel, None)
                raise DataError(f"{out_dir / out_rel}: cannot write the crop of {rel} ({e.strerror or e})") from None
            return row
        except (DataError, OSError, ValueError) as e:
            return error_row(rel, src, e)

    from tqdm import tqdm
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the model thread and the workers share the cores
    rows, pending = list(done), []
    try:
        with open(manifest, "a", newline="", encoding="utf-8") as f, \
                tqdm(total=len(todo), desc="compress", disable=not progress) as bar:
            w = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
            loading = [pool.submit(load, it) for it in batches[0]] if batches else []
            for k, chunk in enumerate(batches):
                loaded = [j.result() for j in loading]
                if k + 1 < len(batches):
                    loading = [pool.submit(load, it) for it in batches[k + 1]]
                good = [ld[0] for ld in loaded if not isinstance(ld, Exception)]
                gaps = iter(predictor.logit_gaps(torch.cat(good), batch) if good else [])
                pending += [pool.submit(finish, it, ld, None if isinstance(ld, Exception) else next(gaps))
                            for it, ld in zip(chunk, loaded)]
                while pending and (pending[0].done() or k + 1 == len(batches)):
                    rows.append(pending.pop(0).result())  # in order, each flushed: a kill loses no finished row
                    try:
                        w.writerow(rows[-1])
                        f.flush()
                    except OSError as e:
                        raise DataError(f"{manifest}: cannot write the manifest ({e.strerror or e}); the crops "
                                        "written so far are kept, and a rerun finishes the rest") from None
                    bar.update()
    finally:
        torch.set_num_threads(threads)
    return rows
