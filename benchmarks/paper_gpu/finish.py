# For a run the time limit stopped: score its best.pt (chosen on validation) on the test split, as train() would.
import json, sys
from pathlib import Path
from meterseg.checkpoint import load_model
from meterseg.config import make_config
from meterseg.dataset import prepare_data
from meterseg.metrics import summarize
from meterseg.predictor import Predictor, pick_device
from meterseg.train import _write_csv, test_metrics
for out in map(Path, sys.argv[1:]):
    if (out / "summary.json").exists() or not (out / "best.pt").exists():
        continue
    stored = json.loads((out / "config.json").read_text())
    cfg = make_config(stored.pop("profile"), **stored)
    ds, idx = prepare_data(cfg)
    model, cfgd = load_model(out / "best.pt", device=pick_device())
    rows = test_metrics(Predictor(model, cfgd, pick_device()), ds, idx["test"])
    _write_csv(out / "test_metrics.csv", rows)
    (out / "stopped.json").write_text(json.dumps({"stopped_by_time_limit": True, "test": summarize(rows)}, indent=2))
    print(out, "stopped; best.pt test dice", summarize(rows)["dice"])
