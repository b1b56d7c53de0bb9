"""`meterseg review`: the page (self-contained, escaped, doubtful rows first), --apply, and a real browser."""
import csv
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request

import pytest

from conftest import SAMPLE, meterseg, tree_hashes
from meterseg.tool.pipeline import READ_FIELDS
from meterseg.tool.photos import DataError
from meterseg.tool.review import apply_corrections, write_page

EVIL = '"><img src=x onerror=alert(1)>.jpg'


def readings_csv(folder, rows):
    """A readings CSV as `meterseg read` writes it, of (source, status, reading) with corners on the labelled quad."""
    from meterseg.tool.photos import read_label
    path = folder / "readings.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=READ_FIELDS)
        w.writeheader()
        for source, status, reading in rows:
            stem = source.split("/")[-1].removesuffix(".jpg")
            label = SAMPLE / "train_labels" / "labels" / f"{stem}.txt"
            xy = {}
            if label.is_file():
                from PIL import Image
                corners = read_label(label, Image.open(folder / source).size)
                xy = {f"{a}{i}": v for i, c in enumerate(corners) for a, v in zip("xy", c)}
            w.writerow(dict.fromkeys(READ_FIELDS, "") | {"source": source, "status": status, "reading": reading,
                                                         "digit_confidence": "0.990;0.980;0.970;0.500;0.400" if reading else "",
                                                         "half_turned": "5" if status == "review" else ""} | xy)
    return path


@pytest.fixture()
def table(tmp_path):
    photos = sorted((SAMPLE / "train_imgs").glob("*.jpg"))
    (tmp_path / "p").mkdir()
    for p in photos:
        shutil.copyfile(p, tmp_path / "p" / p.name)
    shutil.copyfile(photos[0], tmp_path / "p" / EVIL)
    rows = [(f"p/{photos[0].name}", "ok", "00123"), (f"p/{photos[1].name}", "review", "00456"),
            (f"p/{EVIL}", "unreadable: 4 digits", "0045"), (f"p/{photos[2].name}", "no_region", ""),
            ("p/gone.jpg", "error: p/gone.jpg: missing", "")]
    return readings_csv(tmp_path, rows), rows


def test_the_page_is_self_contained_escaped_and_puts_doubtful_rows_first(table, tmp_path):
    path, rows = table
    person, total = write_page(path, tmp_path / "review.html", photos=tmp_path)
    assert (person, total) == (4, 5)
    page = (tmp_path / "review.html").read_text(encoding="utf-8")
    assert "<img src=x" not in page and "onerror=alert(1)&gt;.jpg" in page  # the name stays text
    assert not re.search(r"""(src|href)=["'](https?:|//)""", page)  # nothing fetched: images are data: URIs
    assert page.count('src="data:image/jpeg;base64,') >= 6  # strips and crops of the 3 readable photos
    import html
    shown = [html.unescape(s) for s in re.findall(r'data-source="([^"]*)"', page)]
    assert shown == [rows[i][0] for i in (1, 2, 3, 4, 0)]  # review, unreadable, no_region, error; then ok
    assert page.index("data-source=\"" + rows[0][0]) > page.index("The rest")
    from meterseg.tool.review import short_name  # a long path shows folder and name, the whole of it on hover
    assert short_name("/srv/archive/site-a/2026/m.jpg") == "2026/m.jpg" and short_name("s3://b/p/m.jpg") == "p/m.jpg"
    with pytest.raises(DataError, match="already exists"):
        write_page(path, tmp_path / "review.html", photos=tmp_path)


def test_apply_merges_into_a_new_file_and_says_who_read_each(table, tmp_path):
    path, rows = table
    fixes = tmp_path / "corrections.csv"
    fixes.write_text(f'source,reading\r\n{rows[1][0]},00457\r\n"{rows[2][0].replace(chr(34), chr(34) * 2)}",00045\r\n',
                     encoding="utf-8")
    before = tree_hashes(tmp_path)
    assert apply_corrections(fixes, path, tmp_path / "final.csv") == 2
    assert tree_hashes(tmp_path) == before | {"final.csv": tree_hashes(tmp_path)["final.csv"]}  # only the new file
    out = {r["source"]: r for r in csv.DictReader(open(tmp_path / "final.csv", encoding="utf-8"))}
    assert out[rows[1][0]]["reading"] == "00457" and out[rows[1][0]]["reading_by"] == "person"
    assert out[rows[1][0]]["model_reading"] == "00456"
    assert out[rows[2][0]]["reading"] == "00045" and out[rows[0][0]]["reading_by"] == "model"
    with pytest.raises(DataError, match="already exists"):
        apply_corrections(fixes, path, tmp_path / "final.csv")


@pytest.mark.parametrize("body, message", [
    ("source,reading\nnobody.jpg,00001\n", "line 2: 'nobody.jpg' is not a photo of the table"),
    ("source,reading\np/x,1234\n", "line 2"),
    ("source,reading\n{first},12a45\n", "line 2: '12a45' is not 5 digits"),
    ("source,reading\n{first},00001\n{first},00002\n", "line 3: a second, different correction"),
    ("photo,value\n", "line 1: expected the header source,reading"),
])
def test_bad_corrections_are_errors_naming_their_line(table, tmp_path, body, message):
    path, rows = table
    fixes = tmp_path / "c.csv"
    fixes.write_text(body.format(first=rows[0][0]), encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(message)):
        apply_corrections(fixes, path, tmp_path / "final.csv")
    assert not (tmp_path / "final.csv").exists()


def test_review_command_line(table, tmp_path):
    path, rows = table
    r = meterseg("review", path, "--out", tmp_path / "page.html", "--photos", tmp_path)
    assert r.returncode == 0 and "4 for a person first" in r.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("source,reading\nnobody.jpg,00001\n")
    r = meterseg("review", "--apply", bad, path, "--out", tmp_path / "final.csv")
    assert r.returncode == 2 and "bad.csv: line 2" in r.stderr and "Traceback" not in r.stderr


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(not chromium(), reason="no Chromium here (CI has none)")
def test_a_person_corrects_a_reading_in_a_real_browser(table, tmp_path):
    """Headless Chromium loads the page from a file, a correction is typed into the doubtful row, the
    button downloads corrections.csv, and --apply merges it."""
    websocket = pytest.importorskip("websocket")
    path, rows = table
    page = tmp_path / "review.html"
    write_page(path, page, photos=tmp_path)
    downloads, profile = tmp_path / "downloads", tmp_path / "profile"
    downloads.mkdir()
    proc = subprocess.Popen([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
                             "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.is_file() and port_file.read_text().strip():
                break
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        ws = websocket.create_connection(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"], timeout=30)
        calls = iter(range(1, 10**6))

        def cdp(method, **params):
            n = next(calls)
            ws.send(json.dumps({"id": n, "method": method, "params": params}))
            while True:
                msg = json.loads(ws.recv())
                if msg.get("id") == n:
                    assert "error" not in msg, msg
                    return msg.get("result")

        def js(expr):
            return cdp("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)["result"].get("value")

        cdp("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
        cdp("Page.navigate", url=page.as_uri())
        for _ in range(100):
            if js("location.protocol + document.readyState") == "file:complete":
                break
            time.sleep(0.1)
        assert js("document.querySelectorAll('img').length") >= 6
        assert js("document.querySelectorAll('img[src^=x]').length") == 0  # the evil name did not become an image
        first = js("document.querySelector('input.fix').dataset.source")
        assert first == rows[1][0]  # the first field is the first doubtful row's
        cdp("Runtime.evaluate", expression="document.querySelector('input.fix').focus()")
        cdp("Input.insertText", text="00457")  # typed, as a person would
        assert js("document.getElementById('count').textContent") == "1"
        js("document.getElementById('download').click()")
        got = downloads / "corrections.csv"
        for _ in range(100):
            if got.is_file():
                break
            time.sleep(0.1)
        assert got.read_bytes() == f"source,reading\r\n{rows[1][0]},00457\r\n".encode()
        cdp("Page.captureScreenshot")  # the page renders (a screenshot of it is looked at by hand; see the issue note)
        ws.close()
    finally:
        proc.terminate()
        proc.wait(10)
    assert apply_corrections(got, path, tmp_path / "final.csv") == 1
    out = {r["source"]: r for r in csv.DictReader(open(tmp_path / "final.csv", encoding="utf-8"))}
    assert out[rows[1][0]]["reading"] == "00457" and out[rows[1][0]]["reading_by"] == "person"
    assert os.path.getsize(tmp_path / "final.csv") > 0
