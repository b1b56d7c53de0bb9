"""Where the tool reads and writes: a local folder or any fsspec URL (s3://...), opened the same way.
Whole-or-nothing writes (every writer's one helper), the output lock, CSV rows, listings, fetches."""
import csv
import fcntl
import io
import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .photos import PHOTO_EXT, DataError

PARTS = "_parts"  # compress: OUT/_parts; read: <table>.parts; never listed as photos


def is_url(s):
    return "://" in str(s)


def open_store(url):
    """(fsspec file system, root path without a trailing slash) of a URL or local path.
    S3 credentials and endpoint come from the standard AWS variables, as botocore reads them."""
    import fsspec
    fs, root = fsspec.core.url_to_fs(str(url))
    fs.invalidate_cache()  # fsspec shares one instance per process: its cached listings may be old
    return fs, root.rstrip("/")


def is_local(fs):
    from fsspec.implementations.local import LocalFileSystem
    return isinstance(fs, LocalFileSystem)


def new_file_mode():
    """The mode a plain new file gets from the user's umask (read, then put back at once)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path, data, mode=None, new=False):
    """Write bytes to a local path whole or not at all (temp file `.part-<name>-*` beside it, then rename);
    new: never replace a file (FileExistsError if path exists, even one made meanwhile)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".part-{path.name}-")
    try:
        os.fchmod(fd, new_file_mode() if mode is None else mode)  # mkstemp makes 0600: others could not read it
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if new:
            os.link(tmp, path)  # fails if path exists; a rename would replace it
        else:
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def put_whole(fs, path, data, mode=None):
    """Write bytes to path on fs whole or not at all."""
    if is_local(fs):
        atomic_write(path, data, mode)
    else:
        fs.pipe_file(path, data)  # one PUT: the object store shows it whole or not at all


@contextmanager
def held(fs, path):
    """Hold `path` (a lock file) for this run on a local file system; a second live run is refused."""
    if not is_local(fs):
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # a run ending between our open and flock removes the file: lock the new one
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "pid unknown"
            os.close(fd)
            raise DataError(f"{path.parent}: another meterseg run ({holder}) is writing here; "
                            "wait for it to end or choose another output") from None
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


def parse_rows(text):
    """Rows of a table's or part's text, dropping a torn last line left by a kill or a full disk."""
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = csv.DictReader(io.StringIO(text, newline=""))
    return [r for r in rows if None not in r.values() and None not in r]


def read_rows(fs, path):
    """Rows of a table or part on fs ([] if there is none)."""
    try:
        return parse_rows(fs.cat_file(path).decode("utf-8", errors="replace"))
    except FileNotFoundError:
        return []


def rows_csv(rows, fields):
    """Rows as CSV bytes with a header, missing fields empty: a table or a part of one."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows({k: r.get(k, "") for k in fields} for r in rows)
    return buf.getvalue().encode()


def _version(info):
    """(mtime in ns, etag) of a listing entry: local files have mtime, objects LastModified and ETag."""
    if "mtime" in info:
        return int(info["mtime"] * 1e9), ""
    t = info.get("LastModified")
    return (int(t.timestamp() * 1e9) if t is not None else 0), str(info.get("ETag", "")).strip('"')


def list_sources(fs, root, url):
    """{source: {path, size, mtime_ns, etag}} of every photo under a folder or prefix."""
    if not fs.isdir(root):
        raise DataError(f"{url}: input folder or prefix not found (nothing under it)")
    out = {}
    for path, info in sorted(fs.find(root, detail=True).items()):
        rel = path[len(root) + 1:]
        if Path(rel).suffix.lower() in PHOTO_EXT and info.get("type", "file") == "file" and not rel.startswith(PARTS + "/"):
            mtime_ns, etag = _version(info)
            out[rel] = {"path": path, "size": int(info["size"]), "mtime_ns": mtime_ns, "etag": etag}
    return out


def file_sources(paths):
    """{source: {...}} of photo files named one by one (read's arguments); a missing one fails as its row."""
    out = {}
    for p in dict.fromkeys(map(str, paths)):
        try:
            st = os.stat(p)
            out[p] = {"path": os.path.abspath(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "etag": ""}
        except OSError:
            out[p] = {"path": os.path.abspath(p), "size": "", "mtime_ns": "", "etag": ""}
    return out


def fetch(fs, items):
    """Each item's bytes, fetched at once (s3fs runs the GETs concurrently); a failed read becomes
    the item's read_error, so the photo gets its error row."""
    paths = [it["path"] for it in items]
    got = fs.cat(paths, on_error="return") if paths else {}
    for it, path in zip(items, paths):
        data = got.get(path, FileNotFoundError(path))
        if isinstance(data, Exception):
            reason = "no such file" if isinstance(data, FileNotFoundError) else repr(data)
            it["bytes"], it["read_error"] = b"", f"{it['source']}: cannot read ({reason})"
        else:
            it["bytes"], it["read_error"] = data, ""
    return items
