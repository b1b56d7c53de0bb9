"""results/README.md is written from the tables, and the README quotes it, not memory."""
import json
import re
from pathlib import Path

import pandas as pd

from meterseg import summary
from meterseg.config import REPO


def test_the_results_readme_is_read_from_the_tables(tmp_path):
    (tmp_path / "tables").mkdir()
    pd.DataFrame([{"table": "table3", "a": "U-Net", "b": "AttU", "seeds": "5/5", "diff_of_seed_means": -0.067,
                   "welch_ci95_lo": -0.209, "welch_ci95_hi": 0.074, "verdict_seeds": "equivalent within +-0.5 points"}]
                 ).to_csv(tmp_path / "tables" / "comparisons.csv", index=False)
    (tmp_path / "provenance.json").write_text(json.dumps({"03_ablations": {"git_commit": "abcdef123", "profile": "cpu",
                                                                            "wall_seconds": 90.0, "finished": "2026-12-01T00:00:00"}}))
    pd.DataFrame([{"arm": arm, "months": k, "corrections": 41 * k, "test_ok_pct": 50 + 11.68 * k, "test_ok_wrong": k,
                   "test_ok": 53 + 13 * k, "test_ok_gross": 0, "val_ok_pct": 58.49, "val_ok_wrong": 2, "val_ok": 62,
                   "val_right_pct": 90.57} for arm in ("corrections", "corrections + ok rows") for k in (0, 1)]
                 ).to_csv(tmp_path / "tables" / "07_tuning_months.csv", index=False)
    text = summary.write(tmp_path).read_text()
    assert "| corrections | 1 | 41 | 61.7 | 1 of 66 | 0 | 58.5 | 2 of 62 | 90.6 |" in text
    assert "test `ok` 61.7 % against the base's 50.0 % (+11.7 points), 1 of 66 `ok` wrong (1.5 %)" in text  # the verdict
    assert "| Attention gates help (Table III) | +1.77 | -0.07 [-0.21, +0.07], 5/5 seeds | equivalent within +-0.5 points |" in text
    assert "| 03_ablations | `abcdef1` | cpu | 1.5 min | 2026-12-01 |" in text
    assert "Storage" not in text  # no table of notebook 05 yet: nothing said about it


def _claims(text):
    lines = text[text.index("| claim | paper | measured | verdict |"):].splitlines()
    end = next((k for k, line in enumerate(lines) if not line.startswith("|")), len(lines))
    return lines[2:end]


def test_the_readme_quotes_the_committed_results():
    """Each claim row of README.md is the row results/README.md has, as the study last wrote it."""
    ours = _claims((REPO / "README.md").read_text(encoding="utf-8"))
    theirs = _claims((REPO / "results" / "README.md").read_text(encoding="utf-8"))
    assert ours and ours == theirs[: len(ours)] and len(ours) == len(theirs)


def test_no_figure_of_the_readme_is_without_its_table():
    """The README's reading figures (xx.x %) each appear in results/README.md."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    results = (REPO / "results" / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## The answer"): readme.index("## Two commands")]
    for figure in re.findall(r"\d+\.\d %", section):
        assert figure in results, figure


def test_the_documents_say_what_holds_not_how_it_was_found():
    """The README stays a front door (at most 200 lines), and no document, module or notebook names a work
    session or an issue number: that history is in git log."""
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 200
    files = [REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("data/README.md"), *REPO.glob("results/**/README.md"),
             *REPO.glob("lib/meterseg/**/*.py"), *REPO.glob("notebooks/*.ipynb"), *REPO.glob("benchmarks/**/*.*")]
    for path in files:
        if path.is_file():
            found = re.findall(r"\b(?:issue|session)s? \d+", path.read_text(encoding="utf-8"), flags=re.I)
            assert not found, f"{path.relative_to(REPO)}: {found}"
