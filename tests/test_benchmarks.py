"""The benchmark scripts keep working (on tiny sizes and the committed sample; no figures checked)."""
import importlib.util
import shutil

import pytest
import torch

from conftest import REPO, SAMPLE
from meterseg.models import UNet


def script(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("channels_last", [False, True])
def test_bench_measure_counts_flops_and_times(channels_last):
    r = script("bench").measure({"a": UNet(4, gates=(1, 2)), "b": UNet(4)}, 32, channels_last, batch=2)
    assert set(r) == {"a", "b"} and all(set(v) == {"train", "gflops", "infer"} for v in r.values())
    assert all(x > 0 for v in r.values() for x in v.values())


@pytest.mark.skipif(not (REPO / "results" / "models" / "attunet.pt").exists(), reason="no shipped model")
def test_compress_benchmark_and_breakdown_run_on_the_sample(tmp_path, monkeypatch, capsys):
    data = tmp_path / "sample"
    shutil.copytree(SAMPLE, data)
    monkeypatch.setenv("METERSEG_DATA", str(data))
    threads = torch.get_num_threads()
    monkeypatch.setattr("sys.argv", ["compress_speed.py", "--photos", "1", "--reps", "1", "--export"])
    script("compress_speed").main()
    script("breakdown").profile_compress(n=1)
    torch.set_num_threads(threads)  # profile_compress pins one thread
    out = capsys.readouterr().out
    assert "| onnxruntime fp32 | 1 |" in out and "| onnxruntime fp32 | 2 |" in out
    from meterseg.predictor import cpu_has_bf16
    torch_backend = f"torch {'bf16' if cpu_has_bf16() else 'fp32'} cpu"  # bf16 where the CPU has the units (Predictor)
    assert "| model, batch 8 (onnxruntime fp32) |" in out and f"| model, batch 8 ({torch_backend}) |" in out
    assert "| lossless crop in process (pipeline.crop, turbojpeg) |" in out


@pytest.mark.skipif(not (REPO / "results" / "models" / "attunet.pt").exists(), reason="no shipped model")
def test_archive_benchmark_runs_every_engine_on_a_few_photos():
    """benchmarks/archive.py end to end on 8 photos: moto in its own process, a local Ray cluster (2 actors only:
    each actor count starts its actors twice, and test_archive covers one), all rows."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "archive.py"), "--photos", "8", "--reps", "1", "--actors", "2"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    for row in ("| local engine, local folders |", "| local engine, s3:// -> s3:// (moto) |",
                "| Ray engine, 2 actor(s), s3:// -> s3:// |",
                "S3 (moto) against local files", "Ray, 2 actor(s): "):
        assert row in r.stdout, row
