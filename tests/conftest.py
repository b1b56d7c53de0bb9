import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests never touch the user's cache or results."""
    os.environ["METERSEG_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["CI"] = "1"  # no progress bars


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    from meterseg.synthetic import make_synthetic
    return make_synthetic(tmp_path_factory.mktemp("synth") / "synthetic-test", n=24, n_unlabelled=3, seed=1)


@pytest.fixture()
def sample(tmp_path):
    """A private copy of the committed sample (upstream layout), safe to damage."""
    dst = tmp_path / "sample"
    shutil.copytree(SAMPLE, dst)
    return dst


def tiny_config(**kw):
    from meterseg.config import make_config
    return make_config("smoke", **{"size": 32, "base": 4, "epochs": 3, "step_size": 2, **kw})


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One smoke-profile run (synthetic photos), trained once for the whole session."""
    from meterseg.config import make_config
    from meterseg.train import train
    out = tmp_path_factory.mktemp("runs") / "smoke"
    summary = train(make_config("smoke"), out)
    return out, summary


def tree_hashes(root):
    """SHA-256 of every file under root, by relative path: to show that nothing was changed."""
    import hashlib
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def meterseg(*args, **kw):
    """Run the command line in a fresh process."""
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "meterseg", *map(str, args)], capture_output=True, text=True, **kw)
