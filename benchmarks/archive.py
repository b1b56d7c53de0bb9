"""compress over object storage: photos/s of each engine on the same photos, in one run.

    METERSEG_DATA=../shared/datasets/water-meters .venv/bin/python benchmarks/archive.py [--photos 192]

Prints, best of --reps runs each (the output is removed between runs):
- the local-folder engine (compress.compress, threads) on local folders: the reference;
- the object-storage path on the in-process engine, local files (file://) and S3 (moto on
  127.0.0.1, in its own process): the cost of S3 requests, as a ratio;
- the Ray engine with 1 and 2 actors (--actors), S3 to S3, the local Ray cluster started once beforehand
  (its start-up is printed apart: a real cluster is up before the job).
"""
import argparse
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))


def photos(n):
    """n real photos: the dataset's if METERSEG_DATA is set, else the committed sample, repeated."""
    from meterseg.dataset import find_data, find_pairs
    try:
        found = [p for _, p, _ in find_pairs(find_data(""))]
    except Exception:
        found = sorted((REPO / "data" / "sample").rglob("*.jpg"))
    return [found[i % len(found)] for i in range(n)]


def s3_server():
    """moto's S3 server in its own process on 127.0.0.1 (in a thread of ours it would share our GIL)."""
    import subprocess
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):  # at most 30 s
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    return server


def best(fn, clean, reps):
    times = []
    for _ in range(reps):
        clean()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=640)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="the Ray engine's actor counts to time")
    ap.add_argument("--checkpoint", default=str(REPO / "results" / "models" / "attunet.pt"))
    a = ap.parse_args()
    import fsspec
    import torch
    from meterseg.tool.runner import compress

    tmp = Path(tempfile.mkdtemp(prefix="meterseg-bench-"))
    server = s3_server()
    try:
        src = tmp / "in"
        ps = photos(a.photos)
        for i, p in enumerate(ps):
            (src / f"site-{i % 4}").mkdir(parents=True, exist_ok=True)
            (src / f"site-{i % 4}" / f"{i:05d}{p.suffix}").write_bytes(p.read_bytes())
        mb = sum(p.stat().st_size for p in src.rglob("*")) / 1e6
        s3 = fsspec.filesystem("s3")
        s3.mkdir("bench")
        s3.put(str(src) + "/", "bench/in/", recursive=True)
        print(f"{a.photos} photos, {mb:.1f} MB; {os.cpu_count()} CPUs; torch {torch.__version__}; "
              f"best of {a.reps}", flush=True)

        def rm_local():
            shutil.rmtree(tmp / "out", ignore_errors=True)

        def rm_s3():
            if s3.exists("bench/out"):
                s3.rm("bench/out", recursive=True)
            s3.invalidate_cache()

        rows = {}
        rows["local engine, local folders"] = best(
            lambda: compress(a.checkpoint, src, tmp / "out", progress=False), rm_local, a.reps)
        rows["local engine, s3:// -> s3:// (moto)"] = best(
            lambda: compress(a.checkpoint, "s3://bench/in", "s3://bench/out", progress=False), rm_s3, a.reps)
        import ray
        t = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        print(f"local Ray cluster start: {time.perf_counter() - t:.1f} s (not counted below)", flush=True)
        fixed = {}
        for n in a.actors:
            rows[f"Ray engine, {n} actor(s), s3:// -> s3://"] = best(
                lambda: compress(a.checkpoint, "s3://bench/in", "s3://bench/out", engine="ray", actors=n,
                                         progress=False), rm_s3, a.reps)
            # a quarter of the photos (one site): fixed cost (actors start, model loads) and marginal rate
            quarter = best(lambda: compress(a.checkpoint, "s3://bench/in/site-0", "s3://bench/out",
                                                    engine="ray", actors=n, progress=False), rm_s3, a.reps)
            full = rows[f"Ray engine, {n} actor(s), s3:// -> s3://"]
            if full > quarter:  # on a few photos the noise can exceed the work: nothing to split then
                rate = (a.photos - a.photos / 4) / (full - quarter)
                fixed[n] = (quarter - a.photos / 4 / rate, rate)
        ray.shutdown()
        ref = rows["local engine, local folders"]
        print("\n| engine | seconds | photos/s | vs local folders |\n|---|---|---|---|")
        for name, sec in rows.items():
            print(f"| {name} | {sec:.2f} | {a.photos / sec:.1f} | {ref / sec:.2f}x |")
        s3_cost = rows["local engine, s3:// -> s3:// (moto)"] / rows["local engine, local folders"]
        print(f"\nS3 (moto) against local files, same engine: {s3_cost:.2f}x the time")
        for n in a.actors:
            print(f"Ray, {n} actor(s): " + (f"fixed cost per run {fixed[n][0]:.1f} s, marginal rate {fixed[n][1]:.1f} "
                  "photos/s (from the whole set and its first quarter)" if n in fixed else
                  "the whole set took no longer than its first quarter: too few photos to split fixed and marginal cost"))
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
