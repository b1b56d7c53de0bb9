"""The billing truth: our labels file, the rule that fills in for photos it does not cover, the wheels a CRNN is
taught as turning, the carry rule that decodes them, and the sheets the labels are annotated on."""
import csv

import numpy as np
import pytest
from PIL import Image

from meterseg.labels import BILLING_LABELS, FIELDS, Truth, read_billing_labels, truth_of, turning_wheels, units_off
from meterseg.tool.photos import DataError
from meterseg.tool.recognisers import BETWEEN, BLANK, billed, greedy_decode

from conftest import SAMPLE


def write_labels(path, rows, fields=FIELDS):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        w.writerows(rows)
    read_billing_labels.cache_clear()
    return path


def label_file(tmp_path, stem, *candidates):
    path = tmp_path / f"{stem}.txt"
    path.write_text("10 10 90 10 90 30 10 30 " + " ".join(candidates))
    return path


def test_our_label_wins_only_where_upstream_matches(tmp_path):
    labels = write_labels(tmp_path / "b.csv", [["train_9", "00478", "", "arriving", "00479"],
                                               ["train_8", "00420", "00419", "ambiguous", "00420"]])
    ours = truth_of(label_file(tmp_path, "train_9", "00479"), labels)
    assert ours == Truth("00478", "", "arriving", ("00479",)) and ours.accepted == {"00478"}
    assert truth_of(label_file(tmp_path, "train_8", "00420"), labels).accepted == {"00420", "00419"}
    # a same-named photo whose upstream label differs is another photo: the lower-candidate rule, state `upstream`
    other = truth_of(label_file(tmp_path, "train_9", "00123", "00124"), labels)
    assert other == Truth("00123", "", "upstream", ("00123", "00124"))
    assert truth_of(label_file(tmp_path, "train_7", "00999", "00990"), labels).billing == "00999"


@pytest.mark.parametrize("rows, fields, message", [
    ([["train_1", "0047", "", "at_rest", "0047"]], FIELDS, "line 2: '0047' is not a 5-digit reading"),
    ([["train_1", "00478", "", "sideways", "00479"]], FIELDS, "unknown state 'sideways'"),
    ([["train_1", "00478", "00477", "at_rest"]], FIELDS[:4], "expected the columns"),
])
def test_bad_labels_file_names_file_and_problem(tmp_path, rows, fields, message):
    path = write_labels(tmp_path / "bad.csv", rows, fields)
    with pytest.raises(DataError, match="bad.csv") as e:
        read_billing_labels(path)
    assert message in str(e.value)


@pytest.mark.parametrize("truth, tops", [
    (Truth("00478", "", "arriving", ("00479",)), {5: 8}),  # 8 going out at the top, 9 mostly shown
    (Truth("00402", "", "leaving", ("00402", "00403")), {5: 2}),
    (Truth("00420", "00419", "ambiguous", ("00420",)), {}),  # near rest: taught as shown
    (Truth("00459", "", "leaving", ("00459", "00460", "00469", "00450")), {4: 5, 5: 9}),  # a carry on its way
    (Truth("00020", "", "carry", ("00010", "00020")), {4: 1}),  # last wheel past 0: the wheel above counts 2
    (Truth("00200", "", "carry", ("00200",)), {3: 1, 4: 9}),  # two wheels rolled over
    (Truth("00124", "", "upstream", ("00124", "00123")), {5: 4}),
])
def test_turning_wheels_and_the_carry_rule_give_back_the_billing(truth, tops):
    assert turning_wheels(truth) == tops
    # the CRNN's classes for this truth, decoded by the carry rule, are the billing reading again
    digits = [tops.get(i + 1, int(d)) for i, d in enumerate(truth.billing)]
    assert billed(digits, [i + 1 in tops for i in range(5)]) == truth.billing


def test_greedy_decode_counts_a_carry():
    """A wheel caught leaving 1 before a wheel at 0 has passed: 00?1-turning,0 reads 00020; before a 9 it has not."""
    for last, want in ((0, "00020"), (9, "00019")):
        steps = [0, BLANK, 0, BLANK, 0, BLANK, BETWEEN + 1, BLANK, last]
        logp = np.log(np.full((len(steps), BLANK + 1), 1e-9))
        logp[np.arange(len(steps)), steps] = 0.0
        assert greedy_decode(logp).digits == want


def test_greedy_decode_turns_a_wheel_beside_a_turning_9():
    """A wheel read at rest on 3 beside a last wheel caught leaving 9 must be turning too: it bills 2 where
    'leaving 2' is likelier than 'leaving 3', else 3; beside a 9 at rest, or read at rest on 0, it is left."""
    def logp(tens, last, leaving_2, leaving_3):
        steps = [0, BLANK, 0, BLANK, 1, BLANK, tens, BLANK, last]
        out = np.log(np.full((len(steps), BLANK + 1), 1e-6))
        out[np.arange(len(steps)), steps] = 0.0
        out[6, BETWEEN + 2], out[6, BETWEEN + 3] = np.log([leaving_2, leaving_3])
        return out
    lowered = greedy_decode(logp(3, BETWEEN + 9, 0.2, 0.05))
    assert lowered.digits == "00129"
    assert lowered.digit_confidence[3] == pytest.approx(0.2, abs=1e-4)  # the CRNN hardly believed a 2: review
    assert greedy_decode(logp(3, BETWEEN + 9, 0.05, 0.2)).digits == "00139"
    assert greedy_decode(logp(3, 9, 0.2, 0.05)).digits == "00139"
    assert greedy_decode(logp(0, BETWEEN + 9, 0.2, 0.05)).digits == "00109"


def test_units_off():
    t = Truth("00420", "00419", "ambiguous", ("00420",))
    assert units_off("00420", t) == 0 and units_off("00418", t) == 1 and units_off("00520", t) == 100
    assert units_off("0042", t) is None and units_off("", t) is None


def test_committed_labels_are_sane():
    """Every committed billing label parses, and is within one unit of one of upstream's candidates (an annotation
    that is further off is a typo or a misread digit, not a phase), but for the photos named here, each looked at."""
    upstream_wrong = {"train_676": "upstream 50212 for a meter showing 00212: a typo in the first wheel",
                      "train_924": "upstream 00519: the 4th wheel counted up while the last still leaves 9"}
    labels = read_billing_labels(BILLING_LABELS)
    assert len(labels) >= 850
    far = {stem for stem, t in labels.items() if min(abs(int(t.billing) - int(c)) for c in t.candidates) > 1}
    assert far == set(upstream_wrong)
    for stem, t in labels.items():
        assert t.state in ("ambiguous", "unreadable") or t.also_ok == "", stem
        assert t.state != "ambiguous" or int(t.also_ok) == (int(t.billing) - 1) % 100000, stem


def test_sheets_of_the_sample(tmp_path):
    from meterseg.sheets import draw_sheets
    stems = sorted(p.stem for p in (SAMPLE / "train_labels" / "labels").glob("*.txt")) + ["train_missing"]
    paths = draw_sheets(SAMPLE, stems, tmp_path / "s", rows=3, seed=1)
    assert [p.name for p in paths] == ["sheet_001.png", "sheet_002.png"][: (len(stems) - 1 + 2) // 3]
    assert Image.open(paths[0]).size == (1000, 3 * 208)
    index = list(csv.DictReader(open(tmp_path / "s" / "index.csv")))
    assert sorted(r["stem"] for r in index) == sorted(stems)
    missing = [r for r in index if r["stem"] == "train_missing"]
    assert missing[0]["sheet"] == "" and "no such file" in missing[0]["error"]
    with pytest.raises(FileExistsError, match="not empty"):
        draw_sheets(SAMPLE, stems, tmp_path / "s")


def test_the_data_readme_counts_what_the_labels_hold():
    """data/README.md's table of states is the committed labels' count, not typed from memory."""
    from meterseg.labels import changes
    got = changes(read_billing_labels(BILLING_LABELS))
    text = (BILLING_LABELS.parents[1] / "README.md").read_text(encoding="utf-8")
    for state, (photos, changed, _) in got.items():
        assert f"| {state} | {photos} | {changed} |" in text, state
    assert f"| all | {sum(v[0] for v in got.values())} | {sum(v[1] for v in got.values())} |" in text
