"""One runner for `meterseg compress` and `meterseg read` over every store: a local folder is file:// to it,
s3:// (and any fsspec URL) works alike. Each photo goes through pipeline.compress_row or read_row.

Guarantees, the same for every store and engine:
- IN is only listed and read; an output equal to IN or inside it is refused.
- Every output appears whole or not at all (a temp file and a rename; one PUT on an object store),
  local files with the permissions the user's umask gives a new file.
- Photos go out in shards. A shard's worker writes its outputs, then one part (a CSV of exactly those
  rows) under PARTS; the run ends by merging the parts into the table (OUT/manifest.csv, or read's
  CSV), one row per source, and deletes them. A kill loses at most the shards in flight.
- Resume (one rule): a row is kept while its status is final (compress: ok, no_region or uncertain, its output
  present; read: anything but an error), and its source is unchanged: same size and mtime, and the
  same ETag where the store gives one (objects), else the same sha256 (local files, hashed again).
- Clash (one rule): an output keeps its source's name, or appends the new extension when re-encoded
  (m.tiff -> m.tiff.png); if that name is another source's, the photo gets an error row, never an overwrite.
- Lock (one rule): on a local file system `<table>.lock` is held with flock for the run (the kernel drops
  it when the process dies, kill -9 included). Object stores have no lock: run one job per prefix.
- A bad photo or a failed write gets an `error: ...` row naming it and the batch goes on; read's
  table is never overwritten.
Engines: "local" runs shards on threads of this process; "ray" on Ray Data actors, one model each.
"""
import os
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .photos import DataError
from .pipeline import EXTENSIONS, FORMATS, JOBS, STORED, error_row, load, segment, sha256_bytes
from .stores import (PARTS, fetch, file_sources, held, is_local, list_sources, new_file_mode, open_store, put_whole,
                     read_rows, rows_csv)

ENGINES = ("local", "ray")
SHARD = 32  # photos per shard: the unit of work, of a part and of what a kill can lose


def clash_names(sources):
    """Sources whose name is another source's plus a re-encoding extension (m.tiff.png beside m.tiff):
    the one output name two photos could claim. Small, so every worker gets it."""
    exts = {e for es in EXTENSIONS.values() for e in es}
    return {s for s in sources if any(s.lower().endswith(e) and s[:-len(e)] in sources for e in exts)}


class ShardWorker:
    """Loads the model once; each call does one shard: load, segment, the per-photo function, write
    the outputs, write the part. The local engine shares one between its threads; Ray runs one per actor.
    model: a checkpoint file or exported folder, a loaded tool.Tool (local engine), or its files as {name: bytes} (Ray)."""

    def __init__(self, model, job, out_url, parts_url, options, threads=1):
        from .model import Tool, load_tool
        self.job, self.clashes = job, options.get("clashes", set())
        self.options = {k: v for k, v in options.items() if k not in ("reader", "clashes")}  # the row function's
        self.row, self.fields = JOBS[job]
        reader = options.get("reader", "auto") if job == "read" or options.get("read") else None
        if isinstance(model, Tool):
            self.tool = model
        elif isinstance(model, dict):
            with tempfile.TemporaryDirectory() as tmp:  # the model travels as bytes to a remote actor
                for name, data in model.items():
                    (Path(tmp) / name).write_bytes(data)
                self.tool = load_tool(Path(tmp) / "model.pt" if "model.pt" in model else Path(tmp), reader, threads=threads)
        else:
            self.tool = load_tool(model, reader, threads=threads)
        self.fs, self.root = open_store(out_url)
        self.parts_fs, self.parts_root = open_store(parts_url)
        self.mode = new_file_mode()
        self.run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"

    def work(self, items):
        """items: dicts with source, bytes (or read_error), size, mtime_ns, etag. Returns the rows,
        after writing them as one part: a kill before that redoes the shard, never loses a row."""
        photos, failed = [], {}
        for it in items:
            try:
                if it["read_error"]:
                    raise DataError(it["read_error"])
                photos.append(load(it["source"], it["bytes"], self.tool.segmenter.size))
            except (DataError, OSError) as e:
                failed[it["source"]] = e
        segment(self.tool.segmenter, photos)
        by_source = {p.source: p for p in photos}
        rows = []
        for it in items:
            try:
                if it["source"] in failed:
                    raise failed[it["source"]]
                out, row = self.row(self.tool, by_source[it["source"]], it, **self.options)
                if out is not None:
                    row = self.write(row, out)
            except Exception as e:  # noqa: BLE001 - any failure of one photo is its error row; the batch goes on
                row = error_row(self.fields, it["source"], e if isinstance(e, (DataError, OSError, ValueError))
                                else f"{type(e).__name__}: {e}", it)
            rows.append(row)
        part = f"{self.parts_root}/{self.run_id}-{uuid.uuid4().hex[:12]}.csv"
        put_whole(self.parts_fs, part, rows_csv(rows, self.fields), self.mode)
        return rows

    def write(self, row, out):
        """Write one output whole, unless its name is another source's (the clash rule)."""
        if row["output"] != row["source"] and row["output"] in self.clashes:
            raise DataError(f"{row['source']}: its output name {row['output']} is already taken by that source")
        try:
            put_whole(self.fs, f"{self.root}/{row['output']}", out, self.mode)
        except OSError as e:
            raise DataError(f"{self.root}/{row['output']}: cannot write the output of {row['source']} "
                            f"({getattr(e, 'strerror', None) or e})") from None
        return row

    def __call__(self, batch):
        """Ray Data's map_batches: a pandas batch in, its rows' status out (the rows themselves are in the part)."""
        import pandas as pd
        rows = self.work(batch.to_dict("records"))
        return pd.DataFrame({"status": [r["status"] for r in rows]})


def unchanged(row, listed, fs_in):
    """The resume rule's source check: same size and mtime, and the same ETag (objects) or sha256 (files)."""
    if row.get("bytes_in") != str(listed["size"]) or row.get("mtime_ns") != str(listed["mtime_ns"]):
        return False  # .get: a table of an older version may lack a column; its rows are then redone
    if listed["etag"]:
        return row.get("etag") == listed["etag"]
    try:
        return sha256_bytes(fs_in.cat_file(listed["path"])) == row.get("sha256")
    except OSError:
        return False


def plan(job, fs_in, sources, fs_out, out_root, table, parts, needs_reading=False):
    """Merge what earlier runs left (compress's table, and the parts of a killed run), keep the rows the
    resume rule allows, write them back as one part, and return the items still to do.
    needs_reading: compress --read, so a row done without a reading is redone."""
    part_files = sorted(fs_out.glob(f"{parts}/*.csv")) if fs_out.isdir(parts) else []
    merged = {r["source"]: r for r in (read_rows(fs_out, table) if job == "compress" else [])}
    merged |= {r["source"]: r for p in part_files for r in read_rows(fs_out, p)}
    existing = {p[len(out_root) + 1:] for p in fs_out.find(out_root)} if merged and job == "compress" else set()

    def final(r):
        if job == "read":
            return not r["status"].startswith("error")
        return r["status"] in STORED and r.get("output") in existing and bool(r.get("reading_status")) >= needs_reading
    candidates = [r for r in merged.values() if r["source"] in sources and final(r)]
    with ThreadPoolExecutor(8) as pool:
        fresh = list(pool.map(lambda r: unchanged(r, sources[r["source"]], fs_in), candidates))
    kept = [r for r, ok in zip(candidates, fresh) if ok]
    if merged:
        put_whole(fs_out, f"{parts}/kept-{uuid.uuid4().hex[:12]}.csv", rows_csv(kept, JOBS[job][1]))
        for p in part_files:
            fs_out.rm_file(p)  # merged into the part just written
    skip = {r["source"] for r in kept}
    return len(kept), [{"source": s, **v} for s, v in sources.items() if s not in skip]


def run(job, model, inputs, out, options, engine="local", workers=None, ray_address=None, actors=None, shard=SHARD,
        progress=True):
    """Every photo of inputs through the job ("compress" or "read"), resumed, into out; returns the table's rows.

    inputs: a folder or URL prefix, or (read) a list of photo files. out: compress's output folder or
    prefix (its table is OUT/manifest.csv), or read's CSV (never overwritten). model: a checkpoint
    file or exported folder (or, on the local engine, a loaded tool.Tool). options: the per-photo
    function's keyword arguments, and reader (a tool.READERS name) and clashes for the worker.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: expected one of {ENGINES}")
    if job == "compress" and options.get("fmt", "lossless") not in FORMATS:
        raise ValueError(f"unknown format {options['fmt']!r}: expected one of {FORMATS}")
    from .card import CheckpointError
    from .model import Tool
    if isinstance(model, Tool) and engine != "local":
        raise ValueError("a loaded Tool runs on the local engine only; give Ray the checkpoint or exported folder")
    if not isinstance(model, Tool) and not Path(model).exists():
        raise CheckpointError(f"{model}: no such checkpoint or exported folder")
    fs_out, out_root = open_store(out)
    if isinstance(inputs, (list, tuple)):
        fs_in, in_root, sources = open_store(".")[0], None, file_sources(inputs)
    else:
        fs_in, in_root = open_store(inputs)
        if type(fs_in) is type(fs_out) and (out_root == in_root or out_root.startswith(in_root + "/")):
            raise DataError(f"{out}: the output must not be the input or inside it ({inputs})")
        sources = list_sources(fs_in, in_root, inputs)
    if job == "compress":
        table, parts = f"{out_root}/manifest.csv", f"{out_root}/{PARTS}"
        options = options | {"clashes": clash_names(sources)}
    else:
        table, parts = out_root, f"{out_root}.parts"
        if fs_out.exists(table):
            raise DataError(f"{out}: already exists; choose another --out or remove it (readings are never overwritten)")
    try:
        fs_out.makedirs(out_root if job == "compress" else parts, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out}: cannot create the output ({getattr(e, 'strerror', None) or e})") from None
    t0 = time.perf_counter()
    with held(fs_out, f"{table}.lock"):
        if is_local(fs_out) and job == "compress":
            for tmp in Path(out_root).rglob(".part-*"):
                tmp.unlink(missing_ok=True)  # a killed run's half-written output (we hold the lock: no live writer)
        done, todo = plan(job, fs_in, sources, fs_out, out_root, table, parts, bool(options.get("read")))
        if progress:
            print(f"[{job}] {done} photos already done, {len(todo)} to do ({engine} engine)", flush=True)
        if todo:
            # the workers open the store again (Ray's in other processes, other working folders): a URL, or an absolute path
            out_url = out_root if is_local(fs_out) else str(out).rstrip("/")
            parts_url = f"{out_url}/{PARTS}" if job == "compress" else f"{out_url}.parts"
            worker_args = (job, out_url if job == "compress" else parts_url, parts_url, options)
            (run_on_ray if engine == "ray" else run_local)(model, worker_args, fs_in, todo, workers, ray_address, actors, shard)
        rows = {}
        fs_out.invalidate_cache()  # the workers wrote parts (Ray's through other instances): list afresh
        for p in sorted(fs_out.glob(f"{parts}/*.csv")):
            rows |= {r["source"]: r for r in read_rows(fs_out, p)}  # a shard retried by Ray appears twice: once here
        rows = [rows[s] for s in sources if s in rows]  # a folder's sorted listing, or read's files as given
        put_whole(fs_out, table, rows_csv(rows, JOBS[job][1]))
        fs_out.rm(parts, recursive=True) if fs_out.exists(parts) else None
    if progress:
        print(f"[{job}] {len(rows)} rows in {table} ({time.perf_counter() - t0:.1f} s, {engine} engine)", flush=True)
    return rows


def run_local(model, worker_args, fs_in, todo, workers, ray_address, actors, shard):
    """Shards on `workers` threads of this process, one model shared by them, one model thread each."""
    workers = workers or os.cpu_count()
    rounds = -(-len(todo) // (workers * shard))
    shard = -(-len(todo) // (workers * rounds))  # shards of equal size, so that no thread is left with the tail
    import sys
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch else None
    worker = ShardWorker(model, *worker_args)
    if torch:
        torch.set_num_threads(1)  # the workers share the cores
    try:
        shards = [todo[i:i + shard] for i in range(0, len(todo), shard)]
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda items: worker.work(fetch(fs_in, [dict(it) for it in items])), shards))
    finally:
        if torch and threads:
            torch.set_num_threads(threads)


def pack(model):
    """A checkpoint file or exported folder as {name: bytes}, to travel to Ray actors."""
    model = Path(model)
    if model.is_file():
        return {"model.pt": model.read_bytes()}
    return {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}


def actor_cpus(cluster_cpus, actors):
    """CPUs reserved per actor, leaving half a CPU to the read tasks: with every CPU held by an
    actor the reads could never be scheduled, and the pipeline would wait forever."""
    return max(0.01, min(1.0, (cluster_cpus - 0.5) / actors))


def run_on_ray(model, worker_args, fs_in, todo, workers, ray_address, actors, shard):
    """Read tasks fetch each shard's bytes; an actor pool (the model loaded once per actor) works them."""
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

        def read(batch):
            import pandas as pd  # bytes stay Python bytes in pandas (numpy's "S" would drop trailing NULs)
            return pd.DataFrame(fetch(fs_in, batch.to_dict("records")))
        ds = ray.data.from_items(todo, override_num_blocks=max(1, len(todo) // shard))
        ds = ds.map_batches(read, batch_size=shard, batch_format="pandas", num_cpus=0.25)
        ds = ds.map_batches(ShardWorker, batch_size=shard, batch_format="pandas", compute=ActorPoolStrategy(size=n),
                            num_cpus=per, fn_constructor_args=(pack(model), *worker_args, max(1, int(per))))
        for _ in ds.iter_batches(batch_size=None):
            pass  # the workers wrote outputs and parts; run merges the parts
    finally:
        if started:
            ray.shutdown()


def compress(model, in_dir, out_dir, margin=None, fmt="lossless", quality=90, read=False, reader="auto", **run_kw):
    """`meterseg compress`: crop every photo under in_dir into out_dir, with out_dir/manifest.csv (its rows
    returned). margin None: the model's own. read: also read each meter (reading columns)."""
    options = {"margin": margin, "fmt": fmt, "quality": quality, "read": read, "reader": reader}
    return run("compress", model, in_dir, out_dir, options, **run_kw)


def read(model, inputs, out, reader="auto", min_confidence=None, **run_kw):
    """`meterseg read`: one READ_FIELDS row per photo (inputs: a folder, a URL prefix or a list of files)
    into the CSV out, which is never overwritten."""
    from .pipeline import MIN_CONFIDENCE
    options = {"reader": reader, "min_confidence": MIN_CONFIDENCE if min_confidence is None else min_confidence}
    return run("read", model, inputs, out, options, **run_kw)
