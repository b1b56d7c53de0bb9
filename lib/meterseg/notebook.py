"""Running the notebooks: the setup and provenance calls every notebook makes, and `meterseg study`
(train every run, then execute the notebooks with papermill)."""
import json
import os
import time
from pathlib import Path

from . import summary
from .config import REPO, results_dir, shown
from .study import record, train_all

TRAINING = ("02_training", "03_ablations", "04_comparison")  # the notebooks that read every run; the others, the shipped model
_STARTED = {}  # notebook name -> when its setup ran, for its provenance record


def setup(name, profile="", results="", seeds=0):
    """A notebook's first call: (profile, results folder, seed list) from its parameters, printed.
    seeds 0: $METERSEG_SEEDS, else 5 (`make test` runs the notebooks with 2)."""
    profile, results = results_dir(profile, results)
    if not seeds:
        seeds = os.environ.get("METERSEG_SEEDS") or "5"
        if not seeds.isdigit() or int(seeds) < 1:
            raise ValueError(f"METERSEG_SEEDS={seeds!r}: expected a number of seeds, 1 or more")
        seeds = int(seeds)
    _STARTED[name] = time.time()
    print(f"{name}: profile {profile}, seeds {list(range(seeds))}, results in {shown(results)}")
    return profile, results, list(range(seeds))


def finish(name, profile, results):
    """A notebook's last call: its commit, profile and wall time since setup into results/provenance.json, and
    results/README.md written again from the tables as they now are."""
    done = record(results, name, profile, time.time() - _STARTED[name])
    summary.write(results)
    return done


def run_notebooks(names, profile, results="", data="", seeds=5, jobs=None):
    """Train every run (train_all) when a notebook of TRAINING is among names, then execute notebooks/<name>.ipynb with papermill into
    <results>/notebooks/, recording wall times.

    Paths reach the notebooks relative to the repository where they can (a folder outside it
    goes through the environment instead), so executed notebooks carry no absolute path.
    """
    import papermill as pm
    profile, results = results_dir(profile, results)
    (results / "notebooks").mkdir(parents=True, exist_ok=True)
    times, t0 = {}, time.time()
    if set(names) & set(TRAINING):
        train_all(results, profile, list(range(seeds)), data, jobs)
        times["train_all"] = round(time.time() - t0, 1)
    inside = not shown(results).startswith("<")
    env = {"METERSEG_RESULTS": str(results)} if not inside else {}
    if os.environ.get("METERSEG_DATA"):  # the kernels run in notebooks/: a relative folder must not move
        env["METERSEG_DATA"] = str(Path(os.environ["METERSEG_DATA"]).resolve())
    if data and Path(data).is_absolute():
        env["METERSEG_DATA"], data = str(data), ""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for name in names:
            t = time.time()
            print(f"[study] {name} (profile {profile}) ...", flush=True)
            src, dst = REPO / "notebooks" / f"{name}.ipynb", results / "notebooks" / f"{name}.ipynb"
            pm.execute_notebook(src, dst, parameters={"PROFILE": profile, "RESULTS": shown(results) if inside else "",
                                                      "DATA": data, "SEEDS": seeds},
                                cwd=REPO / "notebooks", progress_bar=False)
            nb = json.loads(dst.read_text())  # papermill records where it read and wrote: as the repo sees it
            nb["metadata"]["papermill"].update(input_path=shown(src), output_path=shown(dst))
            text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"  # a warning's file, say, as the repo sees it
            dst.write_text(text.replace(json.dumps(str(REPO) + "/")[1:-1], ""))
            times[name] = round(time.time() - t, 1)
            print(f"[study] {name}: {times[name]:.0f} s", flush=True)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    total = time.time() - t0
    every = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9]*.ipynb"))
    record(results, "study" if sorted(names) == every else "study: " + ", ".join(names), profile, total,
           notebook_seconds=times)
    summary.write(results)
    print(f"[study] total {total / 60:.1f} min; executed notebooks in {shown(results / 'notebooks')}")
    return times
