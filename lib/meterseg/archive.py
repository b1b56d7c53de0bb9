"""`meterseg compress` and `meterseg read` over object storage (fsspec URLs: s3://, file://), in process or on Ray Data.

The per-photo work is compress.photo_result, the same function the local-folder engine calls.
What this adds is the run around it, with the local tool's guarantees restated for objects:
- IN is only listed and read; an OUT prefix equal to IN or inside it is refused.
- An output object appears whole or not at all: one PUT on an object store (a temp file and
  a rename on a local file system).
- Photos go out in shards. A shard's worker writes its crops, then one part-manifest
  OUT/_parts/<run>-<random>.csv listing exactly those photos. The run ends by merging the
  parts into OUT/manifest.csv, one row per source (a shard retried by Ray appears twice in
  the parts and once in the manifest), then deletes the parts.
- A killed run leaves its parts; the rerun merges them first, so what was done is not redone.
  A row is kept while its output exists and its source's size, mtime and ETag are unchanged
  (objects are not downloaded again to hash them).
- A bad object gets its error row (retried by the next run) and the run goes on.
No lock guards an OUT prefix (object stores have no flock): run one compress per prefix. Two at
once still leave whole objects and one manifest row per source, but do the work twice.
"""
import os
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .compress import (EXTENSIONS, FORMATS, MANIFEST_FIELDS, atomic_write, error_row, new_file_mode, parse_manifest,
                       photo_result, rows_csv)
from .photos import PHOTO_EXT, DataError, error_status
from .reading import READ_FIELDS

PARTS = "_parts"  # under OUT: the part-manifests of unfinished runs
ENGINES = ("local", "ray")  # cli.py offers these
SHARD = 32  # photos per shard: the unit of work, of a part-manifest and of what a kill can lose


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


def put_whole(fs, path, data, mode=None):
    """Write bytes to path on fs whole or not at all."""
    if is_local(fs):
        atomic_write(Path(path), data, new_file_mode() if mode is None else mode)
    else:
        fs.pipe_file(path, data)  # one PUT: the object store shows it whole or not at all


def _version(info):
    """(mtime in ns, etag) of a listing entry: local files have mtime, objects LastModified and ETag."""
    if "mtime" in info:
        return int(info["mtime"] * 1e9), ""
    t = info.get("LastModified")
    return (int(t.timestamp() * 1e9) if t is not None else 0), str(info.get("ETag", "")).strip('"')


def list_photos(fs, root):
    """{relative key: {size, mtime_ns, etag}} of every photo under root."""
    found = fs.find(root, detail=True)
    out = {}
    for path, info in sorted(found.items()):
        rel = path[len(root) + 1:]
        if Path(rel).suffix.lower() in PHOTO_EXT and info.get("type", "file") == "file" and not rel.startswith(PARTS + "/"):
            mtime_ns, etag = _version(info)
            out[rel] = {"size": int(info["size"]), "mtime_ns": mtime_ns, "etag": etag}
    return out


def refuse_out_in_in(fs_in, in_root, fs_out, out_root, in_url, out_url):
    if type(fs_in) is type(fs_out) and (out_root == in_root or out_root.startswith(in_root + "/")):
        raise DataError(f"{out_url}: the output prefix must not be the input prefix or inside it ({in_url})")


def clash_names(sources):
    """Sources whose name is another source's name plus a re-encoding extension (m.tiff.png beside
    m.tiff): the one output name both could claim. Small, so every worker gets it."""
    exts = {e for es in EXTENSIONS.values() for e in es}
    return {s for s in sources if any(s.lower().endswith(e) and s[:-len(e)] in sources for e in exts)}


def _read_rows(fs, path):
    try:
        return parse_manifest(fs.cat_file(path).decode("utf-8", errors="replace"))
    except FileNotFoundError:
        return []


def _parts(fs, prefix):
    return sorted(fs.glob(f"{prefix}/*.csv")) if fs.isdir(prefix) else []


class ShardWorker:
    """Loads the model (and reader) once; each call does one shard and writes its part-manifest.
    job "compress": crop and write each photo (options: margin (None: the checkpoint's), fmt, quality, clashes, reader);
    job "read": read each meter (options: reader, min_confidence). The Ray engine runs one
    worker per actor, the local engine one in process."""

    def __init__(self, checkpoint, job, out_url, parts_url, run_id, options, threads=None):
        import torch
        from .predictor import Predictor
        if threads:
            torch.set_num_threads(threads)
        self.job, self.run_id, self.options = job, run_id, options
        with tempfile.TemporaryDirectory() as tmp:  # the checkpoint travels as bytes to a remote actor
            path = Path(tmp) / "model.pt"
            path.write_bytes(checkpoint)
            self.predictor = Predictor.load(path, "auto")
            self.reader = None
            if options.get("reader"):
                from .reading import load_reader
                self.reader = load_reader(path, options["reader"])
        self.fs, self.root = open_store(out_url)
        self.fs_is_local = is_local(self.fs)
        self.pool = ThreadPoolExecutor(8)
        self.parts_fs, self.parts_root = open_store(parts_url)
        self.mode = new_file_mode()

    def work(self, items):
        """items: dicts with source, bytes (or read_error), size, mtime_ns, etag. Returns the rows,
        after writing them as one part: a kill before that redoes the shard, never loses a row."""
        if self.job == "compress":
            rows, fields = self.crop(items), MANIFEST_FIELDS
        else:
            rows, fields = self.read(items), READ_FIELDS
        part = f"{self.parts_root}/{self.run_id}-{uuid.uuid4().hex[:12]}.csv"
        put_whole(self.parts_fs, part, rows_csv(rows, fields), self.mode)
        return rows

    def crop(self, items):
        import torch
        o = self.options
        loaded, rows = [], []
        for it in items:
            try:
                if it.get("read_error"):
                    raise DataError(it["read_error"])
                loaded.append(self.predictor.inputs(it["source"], it["bytes"]))
            except (DataError, OSError) as e:
                loaded.append(e)
        good = [ld[0] for ld in loaded if not isinstance(ld, Exception)]
        gaps = iter(self.predictor.logit_gaps(torch.cat(good)) if good else [])
        crops = []
        for it, ld in zip(items, loaded):
            rel = it["source"]
            try:
                if isinstance(ld, Exception):
                    raise ld
                out, row = photo_result(self.predictor, rel, rel, it["bytes"], next(gaps), ld[1], o["margin"],
                                        o["fmt"], o["quality"], self.reader)
                if row["output"] != rel and row["output"] in o["clashes"]:
                    raise DataError(f"{rel}: its output name {row['output']} is already taken by that source")
                row |= {"mtime_ns": it["mtime_ns"], "etag": it["etag"]}
                crops.append(out)
            except (DataError, OSError, ValueError) as e:
                row = error_row(rel, rel, e) | {"bytes_in": it.get("size", "")}
                crops.append(None)
            rows.append(row)
        return [self.write(row, out) for row, out in zip(rows, crops)] if self.fs_is_local else \
            list(self.pool.map(self.write, rows, crops))  # PUTs at once: each waits on the network

    def write(self, row, out):
        """Write one crop whole; a failed write turns its row into an error row."""
        if out is None:
            return row
        try:
            put_whole(self.fs, f"{self.root}/{row['output']}", out, self.mode)
            return row
        except OSError as e:
            return error_row(row["source"], row["source"],
                             DataError(f"{self.root}/{row['output']}: cannot write the crop of {row['source']} ({e})"))

    def read(self, items):
        from .reading import read_photo
        rows = []
        for it in items:
            try:
                if it.get("read_error"):
                    raise DataError(it["read_error"])
                rows.append({"image": it["source"], **read_photo(self.predictor, self.reader, it["source"], it["bytes"],
                                                                 self.options["min_confidence"])})
            except (DataError, OSError, ValueError) as e:
                rows.append({"image": it["source"], "status": error_status(e)})
        return rows

    def __call__(self, batch):
        """Ray Data's map_batches: a pandas batch in, its rows' status out (the rows themselves are in the part)."""
        import pandas as pd
        rows = self.work(batch.to_dict("records"))
        return pd.DataFrame({"status": [r["status"] for r in rows]})


def fetch(fs, root, url, items):
    """Each item's bytes from IN, fetched concurrently (s3fs runs the GETs at once); a failed
    read becomes the item's read_error, so the photo gets its error row."""
    paths = [f"{root}/{it['source']}" for it in items]
    got = fs.cat(paths, on_error="return") if paths else {}
    for it, path in zip(items, paths):
        data = got.get(path, FileNotFoundError(path))
        if isinstance(data, Exception):
            it["bytes"], it["read_error"] = b"", f"{url.rstrip('/')}/{it['source']}: cannot read ({data!r})"
        else:
            it["bytes"], it["read_error"] = data, ""
    return items


def fetch_bytes(in_url):
    """fetch as a Ray Data map_batches function, on pandas batches (there bytes stay Python bytes:
    numpy's "S" type would drop a file's trailing NUL bytes)."""
    def read(batch):
        import pandas as pd
        fs, root = open_store(in_url)
        return pd.DataFrame(fetch(fs, root, in_url, batch.to_dict("records")))
    return read


def plan(in_url, out_url, reader=None):
    """Merge what earlier runs left (manifest and parts), decide what is done, and list the rest.
    Returns (fs_out, out_root, rows kept, items to do, clashes)."""
    fs_in, in_root = open_store(in_url)
    fs_out, out_root = open_store(out_url)
    refuse_out_in_in(fs_in, in_root, fs_out, out_root, in_url, out_url)
    sources = list_sources(fs_in, in_root, in_url)
    parts = _parts(fs_out, f"{out_root}/{PARTS}")
    merged = {r["source"]: r for r in _read_rows(fs_out, f"{out_root}/manifest.csv")}
    merged |= merge_parts(fs_out, f"{out_root}/{PARTS}", "source")  # a killed run's parts
    existing = {p[len(out_root) + 1:] for p in fs_out.find(out_root)} if merged else set()

    def done(r):
        s = sources.get(r["source"])
        return (s is not None and r["status"] in ("ok", "no_region") and r["output"] in existing
                and r["bytes_in"] == str(s["size"]) and r["mtime_ns"] == str(s["mtime_ns"])
                and r.get("etag", "") == s["etag"] and (reader is None or r.get("reading_status")))
    kept = [r for r in merged.values() if done(r)]
    if merged:
        put_whole(fs_out, f"{out_root}/manifest.csv", rows_csv(kept))
        for path in parts:
            fs_out.rm_file(path)  # merged into the manifest just written
    skip = {r["source"] for r in kept}
    todo = [{"source": rel, **v} for rel, v in sources.items() if rel not in skip]
    return fs_out, out_root, kept, todo, clash_names(sources)


def list_sources(fs_in, in_root, in_url):
    if not fs_in.isdir(in_root):
        raise DataError(f"{in_url}: input prefix not found (no objects under it)")
    return list_photos(fs_in, in_root)


def compress_archive(checkpoint, in_url, out_url, margin=None, fmt="lossless", quality=90, engine="local",
                     ray_address=None, actors=None, reader=None, shard=SHARD, progress=True):
    """Crop every photo under IN into OUT and write OUT/manifest.csv; returns the manifest's rows.

    engine "local": shards one after another in this process. "ray": read tasks, then an actor
    pool (the model loaded once per actor) on Ray Data; ray_address joins a cluster, else a
    local one is started. reader: a load_reader name to also read the meters, or None.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: expected one of {FORMATS}")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: expected one of {ENGINES}")
    checkpoint_bytes = Path(checkpoint).read_bytes()
    fs_out, out_root, kept, todo, clashes = plan(in_url, out_url, reader)
    fs_out.makedirs(out_root, exist_ok=True)
    t0 = time.perf_counter()
    if progress:
        print(f"[compress] {len(kept)} photos already done, {len(todo)} to do ({engine} engine)", flush=True)
    options = {"margin": margin, "fmt": fmt, "quality": quality, "clashes": clashes, "reader": reader}
    parts = f"{out_url.rstrip('/')}/{PARTS}"
    run(engine, (checkpoint_bytes, "compress", out_url, parts, run_id(), options), in_url, todo, ray_address, actors, shard)
    rows = {r["source"]: r for r in kept}
    rows |= merge_parts(fs_out, f"{out_root}/{PARTS}", "source")
    rows = sorted(rows.values(), key=lambda r: r["source"])
    put_whole(fs_out, f"{out_root}/manifest.csv", rows_csv(rows))
    remove_parts(fs_out, f"{out_root}/{PARTS}")
    if progress:
        print(f"[compress] {len(rows)} rows in {out_url.rstrip('/')}/manifest.csv ({time.perf_counter() - t0:.1f} s)")
    return rows


def read_archive(checkpoint, in_url, out, engine="local", ray_address=None, actors=None, reader="auto",
                 min_confidence=None, shard=SHARD, progress=True):
    """`meterseg read` over a prefix: one READ_FIELDS row per photo under IN into the CSV `out`
    (a path or URL, never overwritten), on either engine."""
    from .reading import MIN_CONFIDENCE
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: expected one of {ENGINES}")
    fs_out, out_path = open_store(out)
    if fs_out.exists(out_path):
        raise DataError(f"{out}: already exists; choose another --out or remove it (readings are never overwritten)")
    fs_in, in_root = open_store(in_url)
    refuse_out_in_in(fs_in, in_root, fs_out, out_path, in_url, out)
    todo = [{"source": rel, **v} for rel, v in list_sources(fs_in, in_root, in_url).items()]
    parts = f"{out_path}.parts"
    options = {"reader": reader, "min_confidence": MIN_CONFIDENCE if min_confidence is None else min_confidence}
    run(engine, (Path(checkpoint).read_bytes(), "read", out, f"{out}.parts", run_id(), options), in_url, todo,
        ray_address, actors, shard)
    rows = sorted(merge_parts(fs_out, parts, "image").values(), key=lambda r: r["image"])
    put_whole(fs_out, out_path, rows_csv(rows, READ_FIELDS))
    remove_parts(fs_out, parts)
    if progress:
        print(f"[read] {len(rows)} rows in {out}")
    return rows


def run_id():
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def merge_parts(fs, prefix, key):
    """{key: row} of every part under prefix (fetched at once); a source in two parts (a retried shard) once."""
    paths = _parts(fs, prefix)
    got = fs.cat(paths) if paths else {}
    return {r[key]: r for path in paths for r in parse_manifest(got[path].decode("utf-8", errors="replace"))}


def remove_parts(fs, prefix):
    for path in _parts(fs, prefix):
        fs.rm_file(path)  # merged into the output just written


def run(engine, worker_args, in_url, todo, ray_address, actors, shard):
    """Every item of todo through a ShardWorker(*worker_args), shard by shard, on the engine."""
    if not todo:
        return
    if engine == "ray":
        return run_on_ray(worker_args, in_url, todo, ray_address, actors, shard)
    fs_in, in_root = open_store(in_url)
    worker = ShardWorker(*worker_args)
    shards = [[dict(it) for it in todo[i:i + shard]] for i in range(0, len(todo), shard)]
    with ThreadPoolExecutor(1) as pool:  # the next shard downloads while this one is worked on
        nxt = pool.submit(fetch, fs_in, in_root, in_url, shards[0])
        for k in range(len(shards)):
            items = nxt.result()
            if k + 1 < len(shards):
                nxt = pool.submit(fetch, fs_in, in_root, in_url, shards[k + 1])
            worker.work(items)


def actor_cpus(cluster_cpus, actors):
    """CPUs reserved per actor, leaving half a CPU to the read tasks: with every CPU held by an
    actor the reads could never be scheduled, and the pipeline would wait forever."""
    return max(0.01, min(1.0, (cluster_cpus - 0.5) / actors))


def run_on_ray(worker_args, in_url, todo, ray_address, actors, shard):
    import ray
    from ray.data import ActorPoolStrategy
    ray.data.DataContext.get_current().enable_progress_bars = False
    started = not ray.is_initialized()
    if started:
        env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
        kw = {"address": ray_address} if ray_address else {"num_cpus": os.cpu_count(), "include_dashboard": False}
        ray.init(runtime_env={"env_vars": env} if env else None, log_to_driver=False, **kw)
    try:
        cpus = ray.cluster_resources().get("CPU", 1)
        n = actors or max(1, int(cpus))
        per = actor_cpus(cpus, n)
        ds = ray.data.from_items(todo, override_num_blocks=max(1, len(todo) // shard))
        ds = ds.map_batches(fetch_bytes(in_url), batch_size=shard, batch_format="pandas", num_cpus=0.25)
        ds = ds.map_batches(ShardWorker, batch_size=shard, batch_format="pandas", compute=ActorPoolStrategy(size=n),
                            num_cpus=per, fn_constructor_args=(*worker_args, max(1, int(per))))
        for _ in ds.iter_batches(batch_size=None):
            pass  # the workers wrote outputs and parts; the caller merges the parts
    finally:
        if started:
            ray.shutdown()
