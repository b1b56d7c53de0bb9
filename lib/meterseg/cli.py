"""Command line: meterseg {train, predict, evaluate, compress, read, review, tune, export, study, fetch, sheets, labels}; it parses arguments and calls the library."""
import argparse
import dataclasses
import sys
from pathlib import Path

from .tool.card import CheckpointError
from .config import CROP_MARGIN, DEFAULT_PROFILE, PROFILES, REPO, Config
from .tool.photos import DataError
from .tool.pipeline import READ_FIELDS
from .tool.model import READERS


def choices():
    """Each registry's names, for the flags that take one; without torch (the tool alone) only the profiles."""
    try:
        from .losses import LOSSES
        from .models import MODELS
        from .train import SCHEDULES
    except ImportError:  # train, predict, evaluate and study need the study's extras (make setup)
        return {"profile": sorted(PROFILES)}
    return {"profile": sorted(PROFILES), "model": MODELS, "loss": LOSSES, "schedule": SCHEDULES}


HELP = {"gates": "gate positions from the deepest skip, e.g. 1,2", "data": "dataset folder, or 'synthetic'",
        "max_photos": "cap on training photos (0 = all)", "device": "auto, cpu, cuda, cuda:1 ..."}


def _gates(text):
    return tuple(int(g) for g in text.replace("+", ",").split(",") if g.strip())


PARSE = {"tuple": _gates, "int": int, "float": float, "str": str}


def config_value(name, text):
    """A Config field's value from text, as its flag would parse it (bool: true or false)."""
    kind = getattr(Config.__dataclass_fields__[name].type, "__name__", Config.__dataclass_fields__[name].type)
    if kind == "bool":
        if text.lower() not in ("true", "false"):
            raise ValueError(f"{name}={text}: expected true or false")
        return text.lower() == "true"
    return PARSE[kind](text)


def add_config_flags(parser):
    """One flag per Config field (the profile's value when left out), so every field can be overridden."""
    CHOICES = choices()
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "profile":
            parser.add_argument(flag, default=DEFAULT_PROFILE, choices=CHOICES["profile"])
        elif f.type in (bool, "bool"):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            typ = PARSE[getattr(f.type, "__name__", f.type)]
            parser.add_argument(flag, dest=f.name, type=typ, choices=CHOICES.get(f.name), help=HELP.get(f.name))


def cmd_train(a):
    from .config import make_config
    from .train import train
    cfg = make_config(a.profile, **{f.name: getattr(a, f.name) for f in dataclasses.fields(Config) if f.name != "profile"})
    s = train(cfg, a.out)
    t = s["test"]
    print(f"{a.out}: test dice {t['dice']:.4f} ± {t['dice_sd']:.4f} (n={t['n']}, pooled {t['pooled_dice']:.4f}), "
          f"best epoch {s['best_epoch']}, {s['train_seconds']:.0f}s training on {s['device']}")
    return 0


def cmd_predict(a):
    from .predictor import Predictor, write_masks
    return 1 if write_masks(Predictor.load(a.checkpoint, a.device), a.photos, a.out) else 0


def cmd_evaluate(a):
    from .metrics import evaluate_folders
    return evaluate_folders(a.pred, a.truth, a.out)


def tool_for(a, reading):
    """The model for compress/read: loaded here for the local engine (where --device applies), else its path
    for the Ray actors to load (where --workers and --device would be ignored, so they are refused)."""
    from .tool.model import load_tool
    if a.engine == "ray":
        given = [f"--{k}" for k, default in (("workers", None), ("device", "auto")) if getattr(a, k) != default]
        if given:
            raise ValueError(f"{' and '.join(given)}: only with --engine local; on Ray each actor loads the model on the "
                             "device 'auto' picks (a GPU when there is one), and --actors sets the workers")
        return a.checkpoint
    return load_tool(a.checkpoint, a.reader if reading else None, a.device)


def cmd_compress(a):
    from .tool.runner import compress
    rows = compress(tool_for(a, a.read), a.in_dir, a.out_dir, a.margin, a.format, a.quality, a.read, a.reader,
                    engine=a.engine, workers=a.workers, ray_address=a.ray_address, actors=a.actors)
    ok = [r for r in rows if r["status"] == "ok"]
    errors = [r for r in rows if r["status"].startswith("error")]
    bi, bo = sum(int(r["bytes_in"]) for r in ok), sum(int(r["bytes_out"]) for r in ok)
    whole = {s: sum(r["status"] == s for r in rows) for s in ("no_region", "uncertain")}
    print(f"{len(rows)} photos: {len(ok)} cropped, {whole['no_region']} stored whole (no region), {whole['uncertain']} "
          f"stored whole (uncertain region), {len(errors)} errors; cropped bytes {bi} -> {bo}" + (f" ({100 * (1 - bo / bi):.1f}% saved)" if bi else ""))
    for r in errors:
        print(f"{r['source']}: {r['status']}", file=sys.stderr)
    return 1 if errors else 0


def add_engine_args(parser):
    """--engine, --workers, --device, --ray-address, --actors: the same for compress and read."""
    from .tool.runner import ENGINES
    parser.add_argument("--engine", default="local", choices=ENGINES,
                        help="local: threads of this process; ray: Ray Data, one model per actor (IN/OUT may be URLs with either)")
    parser.add_argument("--workers", type=int, help="local engine: threads, each running the model on one core (default: one per core)")
    parser.add_argument("--device", default="auto", help="local engine, torch checkpoint: auto, cpu, cuda ...")
    parser.add_argument("--ray-address", help="join this Ray cluster (default: start a local one)")
    parser.add_argument("--actors", type=int, help="Ray actors (default: one per cluster CPU)")


READER_HELP = ("auto: our CRNN when the model carries one (notebook 06 stores it), else rapidocr; "
               "own: the CRNN or an error; rapidocr: the off-the-shelf recogniser")
MODEL_HELP = "a checkpoint (.pt, needs torch) or a folder written by `meterseg export` (ONNX, no torch)"


def cmd_read(a):
    from .tool.runner import read
    from .tool.stores import is_url
    one = len(a.photos) == 1 and (is_url(a.photos[0]) or Path(a.photos[0]).is_dir())
    if not one and any(is_url(p) or Path(p).is_dir() for p in a.photos):
        raise DataError("read takes photo files, or one folder or URL prefix (s3://bucket/photos)")
    rows = read(tool_for(a, True), a.photos[0] if one else a.photos, a.out, a.reader, a.min_confidence,
                engine=a.engine, workers=a.workers, ray_address=a.ray_address, actors=a.actors)
    counts = {s: sum(r["status"].split(":")[0] == s for r in rows) for s in ("ok", "review", "unreadable", "no_region", "error")}
    where = f" --photos {a.photos[0]}" if one and not is_url(a.photos[0]) else ""  # sources are relative to the folder
    print(f"{len(rows)} photos: " + ", ".join(f"{n} {s}" for s, n in counts.items())
          + f"; `meterseg review {a.out}{where} --out review.html` shows the ones a person should check")
    for r in rows:
        if r["status"].startswith("error"):
            print(f"{r['source']}: {r['status']}", file=sys.stderr)
    return 1 if counts["error"] else 0


def cmd_review(a):
    from .tool.review import apply_corrections, write_page
    if a.apply:
        n = apply_corrections(a.apply, a.table, a.out)
        print(f"{a.out}: {n} readings corrected by a person, the rest as the model read them")
    else:
        person, total = write_page(a.table, a.out, a.photos)
        print(f"{a.out}: {total} rows, {person} for a person first")
    return 0


def cmd_export(a):
    from .export import export
    out = export(a.checkpoint, a.out)
    print(f"{out}: " + ", ".join(sorted(p.name for p in out.iterdir())))
    return 0


def cmd_tune(a):
    import os
    from .config import make_config
    from .tune import tune, tune_epochs
    cfg = make_config(a.profile, data=a.data)
    out, facts, history, _ = tune(a.checkpoint, a.corrections, a.photos, a.out, cfg, with_ok=a.with_ok,
                                  epochs=a.epochs or tune_epochs(a.profile), progress=not os.environ.get("CI"))
    best = history.loc[history["val_exact"].idxmax()]
    print(f"{out}: reader tuned on {facts['corrections']} corrections and {facts['model_ok_rows']} model ok rows with "
          f"{facts['train_photos']} training photos; epoch {int(best['epoch'])} kept (validation exact {best['val_exact']:.3f}); "
          f"accept rule chosen again on {facts['pool']} reads ({facts['pool_new']} new)"
          + (f"; {facts['no_quad']} corrected photos without a window found left out" if facts["no_quad"] else ""))
    return 0


def cmd_fetch(a):
    from .fetch import LOCAL_COPY, fetch_upstream
    dest = fetch_upstream(a.dest or LOCAL_COPY)
    print(f"{dest}: verified")
    return 0


def cmd_study(a):
    from .notebook import run_notebooks
    from .study import write_check
    if a.length_check or a.try_recipe:
        pairs = [kv.split("=", 1) for kv in a.try_recipe.split(",")] if a.try_recipe else []
        bad = [kv[0] for kv in pairs if len(kv) != 2 or kv[0] not in Config.__dataclass_fields__]
        if bad:
            raise ValueError(f"--try-recipe: not FIELD=VALUE of a config field: {bad}")
        recipe = {k: config_value(k, v) for k, v in pairs} or None
        return 0 if write_check(a.profile, a.results, a.data, a.jobs, recipe)[0] else 1
    names = a.notebooks or sorted(p.stem for p in (REPO / "notebooks").glob("[0-9]*.ipynb"))
    run_notebooks(names, a.profile, a.results, a.data, a.seeds, a.jobs)
    return 0


def cmd_sheets(a):
    from .dataset import find_data
    from .sheets import draw_sheets
    root = find_data(a.data or None)
    stems = (Path(a.stems).read_text().split() if a.stems
             else sorted(p.stem for p in (root / "train_labels" / "labels").glob("*.txt")))
    paths = draw_sheets(root, stems, a.out, a.rows, a.shuffle)
    print(f"{a.out}: {len(paths)} sheets of {len(stems)} photos, index.csv")
    return 0


def cmd_labels(a):
    from .dataset import find_data
    from .labels import agreement, changes, read_annotations, read_billing_labels, write_billing_labels
    first = read_annotations(a.annotations)
    if a.second:
        got = agreement(first, read_annotations(a.second))
        print(f"second pass: {got['photos']} photos; same billing {got['same_billing']}, same accepted readings "
              f"{got['same_accepted']}, same state {got['same_state']}; billing differs: {' '.join(got['billing_differs']) or 'none'}")
    if a.out:
        n = write_billing_labels(first, find_data(a.data or None), a.out)
        print(f"{a.out}: {n} billing labels")
        for state, (photos, changed, rejected) in changes(read_billing_labels(a.out)).items():
            print(f"  {state}: {photos} photos, {changed} billed unlike upstream's lower candidate "
                  f"({rejected} where that candidate is not accepted)")
    return 0


def build_parser():
    from .tool.pipeline import FORMATS
    p = argparse.ArgumentParser(prog="meterseg", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train one run into a directory (reused if finished, resumed if killed)")
    add_config_flags(t)
    t.add_argument("--out", required=True, help="run directory")
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("predict", help="write a 0/255 mask PNG per photo, at the photo's size (x.jpg -> x.jpg.png)")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--out", required=True)
    pr.add_argument("--device", default="auto")
    pr.add_argument("photos", nargs="+")
    pr.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", help="per-image metrics of predicted masks against truth masks, by photo stem")
    e.add_argument("--pred", required=True)
    e.add_argument("--truth", required=True)
    e.add_argument("--out", required=True, help="CSV to write")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("compress", help="crop photos to the predicted reading region, with a manifest")
    c.add_argument("--checkpoint", required=True, help=MODEL_HELP)
    c.add_argument("--margin", type=float, help="growth of the box, as a share of its longer side (default: the crop "
                   f"rule notebook 05 chose on validation, stored with the model; {CROP_MARGIN} for a model without)")
    c.add_argument("--format", default="lossless", choices=FORMATS)
    c.add_argument("--quality", type=int, default=90)
    c.add_argument("--read", action="store_true", help="also read the meter: reading, reading_confidence, reading_status")
    c.add_argument("--reader", default="auto", choices=READERS, help=READER_HELP)
    add_engine_args(c)
    c.add_argument("in_dir", help="a folder, or a URL: s3://bucket/prefix, file:///path")
    c.add_argument("out_dir", help="a folder or a URL; AWS_* variables give S3 credentials and endpoint")
    c.set_defaults(func=cmd_compress)

    rd = sub.add_parser("read", help="read each photo's meter: region -> 4 corners -> upright strip -> digits")
    rd.add_argument("--checkpoint", required=True, help=MODEL_HELP)
    rd.add_argument("--out", required=True, help="CSV to write: " + ",".join(READ_FIELDS))
    rd.add_argument("--reader", default="auto", choices=READERS, help=READER_HELP)
    rd.add_argument("--min-confidence", type=float, default=None, help="below it a reading is flagged unreadable")
    add_engine_args(rd)
    rd.add_argument("photos", nargs="+", help="photos; or one folder or URL prefix, read on --engine")
    rd.set_defaults(func=cmd_read)

    rv = sub.add_parser("review", help="write one self-contained HTML page to check doubtful readings; "
                        "--apply merges the corrections it downloads into a new CSV")
    rv.add_argument("table", help="a readings CSV (meterseg read) or a manifest (compress --read)")
    rv.add_argument("--out", required=True, help="the page (review.html), or with --apply the merged CSV; never overwritten")
    rv.add_argument("--photos", help="the folder the photos are in (default: . for a readings CSV, the manifest's folder)")
    rv.add_argument("--apply", metavar="CORRECTIONS_CSV", help="merge these corrections (source,reading) into the table")
    rv.set_defaults(func=cmd_review)

    ex = sub.add_parser("export", help="write a checkpoint as ONNX files and a model card (model.json) for the tool without torch")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--out", required=True, help="a new folder (an existing one is refused)")
    ex.set_defaults(func=cmd_export)

    st = sub.add_parser("study", help="train every run, then execute the notebooks through papermill")
    st.add_argument("--profile", default="", choices=["", *sorted(PROFILES)],
                    help=f"default: $METERSEG_PROFILE, else {DEFAULT_PROFILE}")
    st.add_argument("--results", default="", help="output folder (default: results/ for the default profile, "
                    "results/<profile>/ for others; $METERSEG_RESULTS overrides)")
    st.add_argument("--data", default="")
    st.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 for every table row")
    st.add_argument("--jobs", type=int, help="runs trained at once (default: one per CPU core, or 1 on a GPU)")
    st.add_argument("--length-check", action="store_true", help="only train the runs that decide the converged "
                    "length (docs/protocol.md) and write tables/length_check.csv")
    st.add_argument("--try-recipe", metavar="FIELD=VALUE,...", help="instead of the length check, whether this cheaper "
                    "recipe (e.g. lr=6e-3,epochs=20) keeps the profile's quality (docs/protocol.md); tables/recipe_check.csv")
    st.add_argument("notebooks", nargs="*", help="notebook names (default: all, in order)")
    st.set_defaults(func=cmd_study)

    sh = sub.add_parser("sheets", help="draw label sheets for annotating billing readings by eye (docs/labelling.md)")
    sh.add_argument("--data", default="", help="dataset folder (default: $METERSEG_DATA)")
    sh.add_argument("--out", required=True, help="a new folder for the sheets and index.csv")
    sh.add_argument("--stems", help="a file of photo names (train_N) to draw, whitespace-separated (default: every labelled photo)")
    sh.add_argument("--rows", type=int, default=12, help="photos per sheet")
    sh.add_argument("--shuffle", type=int, metavar="SEED", help="shuffle the photos (a second pass)")
    sh.set_defaults(func=cmd_sheets)

    lb = sub.add_parser("labels", help="billing labels from annotators' CSVs (docs/labelling.md), and a second pass's agreement")
    lb.add_argument("annotations", nargs="+", help="first-pass CSVs: stem,billing,also_ok,state[,note]")
    lb.add_argument("--second", nargs="*", default=[], help="second-pass CSVs, compared with the first")
    lb.add_argument("--data", default="", help="dataset folder, for upstream's candidates (default: $METERSEG_DATA)")
    lb.add_argument("--out", help="a new billing-labels CSV to write (e.g. data/labels/water-meters-billing.csv)")
    lb.set_defaults(func=cmd_labels)

    tu = sub.add_parser("tune", help="teach the reader the readings people corrected (review --apply's FINAL.csv); "
                        "writes a new checkpoint (docs/tool.md)")
    tu.add_argument("--checkpoint", required=True, help="the torch checkpoint to start from (.pt; not an exported folder)")
    tu.add_argument("--corrections", required=True, nargs="+", metavar="FINAL_CSV",
                    help="every FINAL.csv so far (review --apply over meterseg read); a photo in two counts once, the last wins")
    tu.add_argument("--photos", required=True, nargs="+", metavar="DIR",
                    help="the folder the rows' sources are under (read's photo folder): one for all, or one per FINAL_CSV in order")
    tu.add_argument("--out", required=True, help="the new checkpoint; never overwritten")
    tu.add_argument("--with-ok", action="store_true", help="also learn the model's own `ok` rows (docs/protocol.md says what they did)")
    tu.add_argument("--data", default="", help="the study's dataset, whose train photos are learned too and whose "
                    "validation photos pick the epoch (default: $METERSEG_DATA, else the fetched upstream copy)")
    tu.add_argument("--profile", default=DEFAULT_PROFILE, choices=choices()["profile"])
    tu.add_argument("--epochs", type=int, help="default: 8 (docs/protocol.md)")
    tu.set_defaults(func=cmd_tune)

    f = sub.add_parser("fetch", help="download the upstream photos at the pinned commit and verify SHA-256")
    f.add_argument("--dest")
    f.set_defaults(func=cmd_fetch)
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    try:
        return a.func(a)
    except (DataError, CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
