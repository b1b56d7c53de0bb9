"""compress and read over object storage through the one runner: a local S3 server (moto, 127.0.0.1) and a local Ray cluster."""
import hashlib
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import SAMPLE
from meterseg.tool import runner as archive
from meterseg.tool.photos import DataError
from meterseg.tool.pipeline import READ_FIELDS
from meterseg.tool.stores import PARTS, parse_rows as parse_manifest, rows_csv

pytest.importorskip("s3fs")
PHOTOS = sorted(SAMPLE.rglob("*.jpg"))


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 at a free port, with the AWS variables pointing at it."""
    from moto.server import ThreadedMotoServer
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import logging
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec
    fsspec.filesystem("s3").clear_instance_cache()
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    try:
        yield fs
    finally:
        server.stop()
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


_buckets = iter(range(1000))


@pytest.fixture()
def bucket(s3):
    """A fresh bucket holding the sample photos under in/ (twice, in two 'sites') and one bad object."""
    name = f"photos-{next(_buckets)}"
    s3.mkdir(name)
    for site in ("site-a", "site-b"):
        for p in PHOTOS:
            s3.pipe_file(f"{name}/in/{site}/{p.name}", p.read_bytes())
    s3.pipe_file(f"{name}/in/site-a/bad.jpg", b"not a jpeg")
    return name


def object_hashes(fs, prefix):
    """SHA-256 and ETag of every object under prefix: to show that nothing was changed."""
    return {k: (hashlib.sha256(fs.cat_file(k)).hexdigest(), v["ETag"]) for k, v in fs.find(prefix, detail=True).items()}


def manifest(fs, bucket):
    return parse_manifest(fs.cat_file(f"{bucket}/out/manifest.csv").decode())


def check_run(fs, bucket, rows):
    """One row per source, crops present and smaller, the bad object an error row naming it, no parts left."""
    fs.invalidate_cache()
    sources = sorted(k.split("/in/", 1)[1] for k in fs.find(f"{bucket}/in"))
    got = manifest(fs, bucket)
    assert sorted(r["source"] for r in got) == sources == sorted(r["source"] for r in rows)
    for r in got:
        if r["source"].endswith("bad.jpg"):
            assert r["status"].startswith("error: ") and "bad.jpg" in r["status"]
            continue
        crop = fs.cat_file(f"{bucket}/out/{r['output']}")
        assert r["status"] in ("ok", "no_region") and crop[:2] == b"\xff\xd8" and r["etag"], r
        if r["status"] == "ok":  # the smoke model (synthetic photos) finds a region on most sample photos
            assert len(crop) == int(r["bytes_out"]) < int(r["bytes_in"])
        else:
            assert hashlib.sha256(crop).hexdigest() == r["sha256"]  # copied whole
    assert not fs.find(f"{bucket}/out/{PARTS}")


def test_s3_to_s3_in_process(s3, bucket, smoke_run, capsys):
    before = object_hashes(s3, f"{bucket}/in")
    rows = archive.compress(smoke_run[0] / "best.pt", f"s3://{bucket}/in", f"s3://{bucket}/out", progress=False)
    check_run(s3, bucket, rows)
    assert object_hashes(s3, f"{bucket}/in") == before
    # a rerun redoes only the bad object (error rows are retried) and the source that changed
    s3.pipe_file(f"{bucket}/in/site-b/{PHOTOS[0].name}", PHOTOS[1].read_bytes())
    capsys.readouterr()
    again = archive.compress(smoke_run[0] / "best.pt", f"s3://{bucket}/in", f"s3://{bucket}/out")
    assert f"{len(rows) - 2} photos already done, 2 to do" in capsys.readouterr().out
    check_run(s3, bucket, again)
    changed = {r["source"]: r for r in again}[f"site-b/{PHOTOS[0].name}"]
    assert changed["sha256"] == hashlib.sha256(PHOTOS[1].read_bytes()).hexdigest()


def test_s3_to_s3_on_ray(s3, bucket, smoke_run):
    ray = pytest.importorskip("ray")
    before = object_hashes(s3, f"{bucket}/in")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # after s3: the workers inherit its AWS_*
    try:
        rows = archive.compress(smoke_run[0] / "best.pt", f"s3://{bucket}/in", f"s3://{bucket}/out",
                                        engine="ray", actors=2, shard=4, progress=False)
        readings = archive.read(smoke_run[0] / "best.pt", f"s3://{bucket}/in", f"s3://{bucket}/readings.csv",
                                reader="rapidocr", engine="ray", actors=2, shard=4, progress=False)
    finally:
        ray.shutdown()
    check_run(s3, bucket, rows)
    check_readings(s3, bucket, readings)
    assert object_hashes(s3, f"{bucket}/in") == before


def check_readings(fs, bucket, rows):
    """One READ_FIELDS row per photo, in the CSV object too; the bad object an error row naming it."""
    fs.invalidate_cache()
    stored = parse_manifest(fs.cat_file(f"{bucket}/readings.csv").decode())
    assert stored == [{k: str(r.get(k, "")) for k in stored[0]} for r in rows]
    assert list(stored[0]) == READ_FIELDS and len(stored) == len(fs.find(f"{bucket}/in"))
    for r in stored:  # a good photo may be ok, review, unreadable or no_region; only the bad object is an error
        assert r["status"].startswith("error") == r["source"].endswith("bad.jpg"), r
    assert [r["status"] for r in stored if r["source"].endswith("bad.jpg")][0].startswith("error: site-a/bad.jpg: ")
    assert not fs.find(f"{bucket}/readings.csv.parts")


def test_read_over_s3_in_process_never_overwrites(s3, bucket, smoke_run):
    rows = archive.read(smoke_run[0] / "best.pt", f"s3://{bucket}/in", f"s3://{bucket}/readings.csv",
                                reader="rapidocr", progress=False)
    check_readings(s3, bucket, rows)
    with pytest.raises(DataError, match="already exists"):
        archive.read(smoke_run[0] / "best.pt", f"s3://{bucket}/in", f"s3://{bucket}/readings.csv", progress=False)
    with pytest.raises(DataError, match="must not be the input or inside it"):
        archive.read(smoke_run[0] / "best.pt", f"s3://{bucket}/in", f"s3://{bucket}/in/r.csv", progress=False)


def test_out_inside_in_is_refused_and_a_sibling_prefix_is_not(s3, bucket, smoke_run):
    ck = smoke_run[0] / "best.pt"
    for out in (f"s3://{bucket}/in", f"s3://{bucket}/in/crops"):
        with pytest.raises(DataError, match="must not be the input or inside it"):
            archive.compress(ck, f"s3://{bucket}/in", out, progress=False)
    assert not s3.find(f"{bucket}/in/crops")
    rows = archive.compress(ck, f"s3://{bucket}/in/site-a", f"s3://{bucket}/in-crops", progress=False)
    assert len(rows) == len(PHOTOS) + 1
    with pytest.raises(DataError, match="input folder or prefix not found"):
        archive.compress(ck, f"s3://{bucket}/nothing", f"s3://{bucket}/out", progress=False)


def test_a_retried_shard_gives_one_row_per_source(s3, bucket, smoke_run):
    """Ray may run a shard twice: its two part-manifests merge into one row per source."""
    ck = smoke_run[0] / "best.pt"
    rows = archive.compress(ck, f"s3://{bucket}/in", f"s3://{bucket}/out", progress=False)
    fields = archive.JOBS["compress"][1]
    s3.pipe_file(f"{bucket}/out/{PARTS}/old-1.csv", rows_csv(rows[:3], fields))
    s3.pipe_file(f"{bucket}/out/{PARTS}/old-2.csv", rows_csv(rows[:3], fields))
    again = archive.compress(ck, f"s3://{bucket}/in", f"s3://{bucket}/out", progress=False)
    check_run(s3, bucket, again)


def test_a_killed_run_reruns_without_redoing_what_was_done(s3, bucket, smoke_run):
    """kill -9 after some shards; the rerun keeps their rows, does the rest, one row per source."""
    for k in range(8):  # more photos, one per shard, so the kill lands mid-run
        for p in PHOTOS:
            s3.pipe_file(f"{bucket}/in/more-{k}/{p.name}", p.read_bytes())
    code = ("import sys; from meterseg.tool.runner import compress; "
            "compress(sys.argv[1], sys.argv[2], sys.argv[3], shard=1, workers=1, progress=False)")
    args = [sys.executable, "-c", code, str(smoke_run[0] / "best.pt"), f"s3://{bucket}/in", f"s3://{bucket}/out"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    parts = []
    for _ in range(600):  # at most 60 s
        s3.invalidate_cache()
        parts = s3.find(f"{bucket}/out/{PARTS}")
        if len(parts) >= 3 or proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    proc.wait(timeout=30)
    assert proc.returncode == -9, "the run ended before it could be killed"
    s3.invalidate_cache()
    parts = s3.find(f"{bucket}/out/{PARTS}")
    done = {r["source"] for p in parts for r in parse_manifest(s3.cat_file(p).decode())
            if r["status"] in ("ok", "no_region")}
    assert done and not s3.exists(f"{bucket}/out/manifest.csv")
    total = len(s3.find(f"{bucket}/in"))
    r = subprocess.run([sys.executable, "-m", "meterseg", "compress", "--checkpoint", smoke_run[0] / "best.pt",
                        f"s3://{bucket}/in", f"s3://{bucket}/out"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "bad.jpg" in r.stderr  # the bad object's error row, as always
    assert f"{len(done)} photos already done, {total - len(done)} to do" in r.stdout
    check_run(s3, bucket, manifest(s3, bucket))


def test_local_folders_as_file_urls(tmp_path, smoke_run):
    """file:// URLs and plain paths work too, outputs written whole (temp file, rename)."""
    src = tmp_path / "in" / "site"
    src.mkdir(parents=True)
    for p in PHOTOS:
        (src / p.name).write_bytes(p.read_bytes())
    rows = archive.compress(smoke_run[0] / "best.pt", f"file://{tmp_path / 'in'}", str(tmp_path / "out"),
                                    progress=False)
    assert len(rows) == len(PHOTOS) and all(r["status"] in ("ok", "no_region") for r in rows)
    assert sorted(p.name for p in (tmp_path / "out" / "site").iterdir()) == sorted(p.name for p in PHOTOS)
    assert not list((tmp_path / "out").rglob(".part-*"))


@pytest.mark.parametrize("cpus,actors", [(2, 1), (2, 2), (2, 3), (2, 8), (16, 4), (16, 40)])
def test_actors_always_leave_a_read_task_room(cpus, actors):
    """Actors holding every CPU starve the read tasks (0.25 CPU each) and the pipeline hangs."""
    per = archive.actor_cpus(cpus, actors)
    assert 0 < per <= 1 and actors * per + 0.25 <= cpus
