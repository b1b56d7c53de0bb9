"""The billing truth of a labelled photo: what a utility bills, from the repository's own labels
(data/labels/water-meters-billing.csv, annotated by eye by docs/labelling.md), or, for a photo they do
not cover, from upstream's candidates by the lower-candidate rule (state `upstream`)."""
import csv
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from .config import REPO
from .tool.photos import DataError, billing_reading, half_turned_wheels, label_readings

BILLING_LABELS = REPO / "data" / "labels" / "water-meters-billing.csv"
FIELDS = ("stem", "billing", "also_ok", "state", "upstream")
STATES = ("at_rest", "leaving", "arriving", "carry", "ambiguous", "unreadable")
TURNING = ("leaving", "arriving")  # the last wheel caught between two digits (the billing digit is the one at the top)


class Truth(NamedTuple):
    """A photo's billing reading, the reading also accepted where its phase cannot be told by eye, its state
    (STATES, or `upstream` where only upstream's label is known) and upstream's candidates."""
    billing: str
    also_ok: str
    state: str
    candidates: tuple

    @property
    def accepted(self):
        """The readings scored right with ambiguity accepted."""
        return {self.billing, self.also_ok} - {""}


def _five(text, where):
    if not (len(text) == 5 and text.isdigit()):
        raise DataError(f"{where}: {text!r} is not a 5-digit reading")
    return text


def _checked(row, where):
    """(billing, also_ok, state) of a labels or annotations row, checked: an error naming `where`."""
    if row.get("state") not in STATES:
        raise DataError(f"{where}: unknown state {row.get('state')!r}; expected one of {STATES}")
    return _five(row["billing"], where), row["also_ok"] and _five(row["also_ok"], where), row["state"]


@lru_cache(maxsize=4)
def read_billing_labels(path=BILLING_LABELS):
    """{stem: Truth} of a billing-labels CSV, checked: an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.DictReader(f)
        if tuple(rows.fieldnames or ()) != FIELDS:
            raise DataError(f"{path}: expected the columns {','.join(FIELDS)}, found {rows.fieldnames}")
        return {r["stem"]: Truth(*_checked(r, f"{path}, line {line}"), tuple(r["upstream"].split()))
                for line, r in enumerate(rows, start=2)}


def truth_of(label, labels=BILLING_LABELS):
    """The Truth of an upstream label file: our billing label where one names this photo and upstream's
    candidates match it (a same-named photo of another dataset does not), else the lower-candidate rule."""
    candidates = tuple(label_readings(label))
    ours = read_billing_labels(labels).get(Path(label).stem)
    if ours is not None and ours.candidates == candidates:
        return ours
    return Truth(billing_reading(list(candidates)), "", "upstream", candidates)


def turning_wheels(truth):
    """{wheel (1 = leftmost): the digit it is leaving} of the wheels caught between two digits: the last one by
    the state; a wheel above it that upstream lists as turning while every wheel to its right bills 9 (a carry on
    its way, each at its billing digit); and in a carry, the wheels that have just rolled over, each leaving the
    digit below its billing digit (the wheel to the right has reached 0, so it counts the higher one)."""
    digits = truth.billing
    listed = half_turned_wheels(list(truth.candidates))
    if truth.state == "upstream":
        return {w: int(digits[w - 1]) for w in listed}
    tops = {w: int(digits[w - 1]) for w in listed if w < len(digits) and set(digits[w:]) == {"9"}}
    if truth.state in TURNING:
        tops[len(digits)] = int(digits[-1])
    if truth.state == "carry":
        for w in range(len(digits) - 1, 0, -1):  # from the 4th wheel leftwards, while the wheels rolled over to 0
            tops[w] = (int(digits[w - 1]) - 1) % 10
            if digits[w - 1] != "0":
                break
    return dict(sorted(tops.items()))


def units_off(reading, truth):
    """How many units of the last wheel a 5-digit reading is from the nearest accepted reading; None for a
    reading that is not 5 digits (no reading to bill)."""
    if not (len(reading) == 5 and reading.isdigit()):
        return None
    return min(abs(int(reading) - int(r)) for r in truth.accepted)


def read_annotations(paths):
    """{stem: (billing, also_ok, state)} of annotators' CSVs (stem, billing, also_ok, state[, note]), checked;
    a stem annotated twice is an error."""
    table = {}
    for path in map(Path, paths):
        with open(path, newline="", encoding="utf-8") as f:
            for line, r in enumerate(csv.DictReader(f), start=2):
                where = f"{path}, line {line}"
                if r["stem"] in table:
                    raise DataError(f"{where}: {r['stem']} is annotated twice")
                table[r["stem"]] = _checked(r, where)
    return table


def write_billing_labels(annotations, root, out):
    """Write the billing-labels CSV `out` (FIELDS) from read_annotations' table and the upstream label of each
    photo in the dataset folder `root`; an existing file is never replaced. Returns the rows' count."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: exists; billing labels are written to a new file")
    rows = [{"stem": stem, "billing": b, "also_ok": a, "state": s,
             "upstream": " ".join(label_readings(Path(root) / "train_labels" / "labels" / f"{stem}.txt"))}
            for stem, (b, a, s) in sorted(annotations.items(), key=lambda kv: (len(kv[0]), kv[0]))]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        w.writerows(rows)
    return len(rows)


def agreement(first, second):
    """Of the photos in both annotation tables: how many, and on how many the two give the same billing reading,
    the same accepted readings (billing and also_ok) and the same state; the photos whose billing differs."""
    both = sorted(set(first) & set(second), key=lambda s: (len(s), s))
    accepted = {s: ({first[s][0], first[s][1]} - {""}, {second[s][0], second[s][1]} - {""}) for s in both}
    return {"photos": len(both), "same_billing": sum(first[s][0] == second[s][0] for s in both),
            "same_accepted": sum(a == b for a, b in accepted.values()),
            "same_state": sum(first[s][2] == second[s][2] for s in both),
            "billing_differs": [s for s in both if first[s][0] != second[s][0]]}


def changes(labels):
    """{state: (photos, billed unlike upstream's lower-candidate rule, of those not accepted either)} of a
    billing-labels table: how many photos our labels move, and how many the old truth scored wrong outright."""
    out = {}
    for t in labels.values():
        old = billing_reading(list(t.candidates))
        n, changed, rejected = out.get(t.state, (0, 0, 0))
        out[t.state] = (n + 1, changed + (old != t.billing), rejected + (old not in t.accepted))
    return {s: out[s] for s in STATES if s in out}
