"""What notebook 06 reports: does cropping help a machine read the meter? Five ways of giving the
same recogniser the same test photo, scored against the labelled readings."""
import io
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .geometry import corner_error
from .photos import label_readings, read_label
from .recognisers import DIGITS
from .pipeline import VOTE_JITTER_PX, VOTES, crop, load, quad, read_quad, region, segment

WAYS = ("whole photo", "box crop (compress)", "rectified labelled quad (ceiling)",
        "rectified predicted quad (the tool)", "stored crop, rectified predicted quad")


def digit_accuracy(reading, candidates, digits=DIGITS):
    """Share of the `digits` wheel positions read right, against the best-matching candidate."""
    if not candidates:
        return float("nan")
    r = (reading or "").ljust(digits, "?")[:digits]
    return max(sum(a == b for a, b in zip(r, c.ljust(digits, "!")[:digits])) for c in candidates) / digits


def photo_quad(predictor, path):
    """(the tool's corners or None, the photo as RGB uint8) of one photo file."""
    photo = segment(predictor, [load(str(path), Path(path).read_bytes(), predictor.size)])[0]
    return quad(predictor, photo), np.asarray(photo.rgb)


def reading_study(predictor, reader, photos, labels, margin=None, votes=VOTES):
    """One row per photo and way (the stored crop at margin, None: the model's own, as compress): reading,
    confidence, exact, per-digit accuracy, seconds; and the
    predicted quad's corner error in photo pixels. Quads, labelled (the ceiling: the tool's reading
    given the right corners) and predicted, are read as the tool reads them: voted over `votes` reads."""
    rows = []
    for photo, label in zip(photos, labels):
        photo = Path(photo)
        t0 = time.perf_counter()
        loaded = segment(predictor, [load(str(photo), photo.read_bytes(), predictor.size)])[0]
        corners = quad(predictor, loaded)
        t_quad = time.perf_counter() - t0
        image = np.asarray(loaded.rgb)
        truth_quad = np.array(read_label(label, loaded.size))
        candidates = label_readings(label)
        crop_bytes, f = crop(loaded, region(loaded)[0], predictor.crop_margin if margin is None else margin)
        stored = np.asarray(Image.open(io.BytesIO(crop_bytes)).convert("RGB"))
        # way: (image, quad to rectify and read or None, reads voted over, seconds spent before reading)
        views = {WAYS[0]: (image, None, 1, 0.0), WAYS[1]: (stored, None, 1, 0.0), WAYS[2]: (image, truth_quad, votes, 0.0)}
        if corners is not None:
            views[WAYS[3]] = (image, corners, votes, t_quad)
            views[WAYS[4]] = (stored, corners - np.array([f["x0"], f["y0"]]), votes, 0.0)
        for way in WAYS:
            row = {"image": photo.stem, "way": way, "candidates": " ".join(candidates),
                   "corner_error_px": corner_error(corners, truth_quad) if corners is not None else np.nan}
            if way not in views:
                rows.append(row | {"reading": "", "confidence": 0.0, "exact": False, "digit_acc": 0.0, "seconds": np.nan})
                continue
            view, q, n, before = views[way]
            t = time.perf_counter()
            reading, conf = reader.read(view) if q is None else read_quad(reader, view, q, n)
            rows.append(row | {"reading": reading, "confidence": conf, "exact": reading in candidates,
                               "digit_acc": digit_accuracy(reading, candidates),
                               "seconds": before + time.perf_counter() - t})
    return pd.DataFrame(rows)


def accuracy_table(study):
    """Per way: photos, exact-reading accuracy and per-digit accuracy in %, mean seconds."""
    g = study.groupby("way", sort=False)
    return pd.DataFrame({"photos": g.size(), "exact_pct": 100 * g["exact"].mean(),
                         "digit_pct": 100 * g["digit_acc"].mean(), "mean_seconds": g["seconds"].mean()}).reindex(WAYS)


def failures(study, way=WAYS[3], n=8):
    """The tool's wrong readings, lowest confidence first."""
    wrong = study[(study["way"] == way) & ~study["exact"]]
    return wrong.sort_values("confidence")[["image", "reading", "candidates", "confidence", "corner_error_px"]].head(n)


def gap_sources(study):
    """Where the tool loses against the ceiling: photos the labelled quad reads right and the tool does not,
    split by whether the predicted corners were far off (more than 10 px mean error) or not."""
    wide = study.pivot(index="image", columns="way", values="exact")
    lost = wide[wide[WAYS[2]] & ~wide[WAYS[3]]].index
    err = study[study["way"] == WAYS[3]].set_index("image")["corner_error_px"]
    return {"ceiling_right_tool_wrong": len(lost), "of_which_corners_over_10px": int((err.reindex(lost) > 10).sum()),
            "tool_right_ceiling_wrong": int((~wide[WAYS[2]] & wide[WAYS[3]]).sum())}


def verdict(acc, own=None):
    """The paper's claim ("the crop improves machine reading") against the accuracy table, in words;
    own: our reader's accuracy table, if trained."""
    e = acc["exact_pct"]
    whole, box, ceiling, tool, stored = (e[w] for w in WAYS)
    return (f"Exact readings on {int(acc['photos'].iloc[0])} test photos: whole photo {whole:.1f} %, box crop {box:.1f} %, "
            f"rectified labelled quad {ceiling:.1f} % (ceiling), rectified predicted quad {tool:.1f} % (the tool), "
            f"stored crop {stored:.1f} %.\n"
            f"The crop helps a recogniser only when it is tight and straightened: the box crop adds {box - whole:+.1f} "
            f"points over the whole photo, the rectified predicted quad {tool - whole:+.1f}. The tool is "
            f"{abs(ceiling - tool):.1f} points {'below' if ceiling >= tool else 'above'} the ceiling; storing the crop "
            f"losslessly costs {tool - stored:.1f} points."
            + ("" if own is None else f"\nOur own CRNN: rectified labelled quad {own['exact_pct'][WAYS[2]]:.1f} %, "
               f"rectified predicted quad {own['exact_pct'][WAYS[3]]:.1f} %, stored crop {own['exact_pct'][WAYS[4]]:.1f} %."))


def train_own_reader(cfg, predictor, epochs=20, jitter=8.0, copies=3, seed=0):
    """Our CRNN trained on the train split's rectified labelled quads (each also with `copies` copies
    whose corners are jittered by `jitter` px, like predicted corners), its epoch picked on the
    validation split as the tool sees it (predicted quads): (OwnReader, history DataFrame)."""
    from .dataset import split_pairs
    from .ownreader import OwnReader, labelled_strips, train_reader
    x, ys = labelled_strips(*split_pairs(cfg, "train"), jitter=jitter, copies=copies, seed=seed)
    vp, vl = split_pairs(cfg, "val")
    xv, yv = labelled_strips(vp, vl, quads=[photo_quad(predictor, p)[0] for p in vp])
    model, history = train_reader(x, ys, xv, yv, epochs=epochs, seed=seed)
    return OwnReader(model), pd.DataFrame(history, columns=["epoch", "ctc_loss", "val_exact"])


def voting_on_validation(predictor, reader, photos, labels, settings=((1, 0.0), (5, 4.0), (9, 2.0), (9, 4.0), (9, 8.0))):
    """Exact readings (%) of the validation photos' predicted quads for each (votes, jitter px): the
    check behind pipeline.VOTES and VOTE_JITTER_PX. Quads are predicted once per photo."""
    rows, quads = [], [photo_quad(predictor, p) for p in photos]
    for votes, jitter in settings:
        exact = [qi[0] is not None and read_quad(reader, qi[1], qi[0], votes, jitter)[0] in label_readings(l)
                 for qi, l in zip(quads, labels)]
        rows.append({"votes": votes, "jitter_px": jitter, "photos": len(exact), "val_exact_pct": 100 * np.mean(exact),
                     "shipped": (votes, jitter) == (VOTES, VOTE_JITTER_PX)})
    return pd.DataFrame(rows)


def ship_reader(checkpoint, own, history, accuracy):
    """Store our CRNN inside the shipped checkpoint (one shipped file: region and reading), so that
    `meterseg read` and `compress --read` use it; its README gets the reader's figures."""
    from .checkpoint import amend_shipped
    best = history.loc[history["val_exact"].idxmax()]
    e = accuracy["exact_pct"]
    return amend_shipped(checkpoint, lambda ck: ck.update(reader=own.state(epoch=int(best["epoch"]), val_exact=float(best["val_exact"]))),
        "The reader",
        f"Key `reader`: our CRNN (notebook 06), trained on the train split's rectified labelled quads, epoch "
        f"{int(best['epoch'])} chosen by exact readings of the validation split's predicted quads ({100 * best['val_exact']:.1f} %). "
        f"Exact readings on the test split ({int(accuracy['photos'].iloc[0])} photos): rectified predicted quad "
        f"{e[WAYS[3]]:.1f} %, rectified labelled quad {e[WAYS[2]]:.1f} %.\n\n"
        "Use: `meterseg read --checkpoint results/models/attunet.pt --out readings.csv photo.jpg` "
        "(`--reader rapidocr` for the off-the-shelf recogniser)\n")


def compare_readers(off_the_shelf, own):
    """Exact-reading % of each way for both readers, side by side."""
    return pd.DataFrame({"rapidocr exact %": off_the_shelf["exact_pct"], "own CRNN exact %": own["exact_pct"],
                         "rapidocr digit %": off_the_shelf["digit_pct"], "own CRNN digit %": own["digit_pct"]})
