"""`meterseg review`: one self-contained HTML page on which a person checks the readings the tool doubts
and types the right ones, and `--apply`, which merges those corrections into a new table.

The page needs no server and no network: each row's rectified strip and crop are inline JPEGs, the
script is inline, and its button downloads the corrections as CSV (source,reading). Every text
that comes from the table or a file name is escaped.
"""
import base64
import csv
import html
import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

from .geometry import grow_box, rectify
from .photos import DataError, open_photo, to_rgb
from .pipeline import CORNERS, NEEDS_A_PERSON
from .recognisers import DIGITS
from .stores import atomic_write

CORRECTION_FIELDS = ["source", "reading"]
CROP_PX = 360  # the longer side of a crop on the page


def read_table(path):
    """(rows, fields) of a readings CSV (`meterseg read`) or a manifest (`compress --read`)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows, fields = list(reader), reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read the table ({e})") from None
    missing = {"source", "status", "reading"} - set(fields)
    if missing:
        raise DataError(f"{path}: not a readings CSV or manifest: no column {', '.join(sorted(missing))}")
    return rows, fields


def needs_a_person(row):
    status = row.get("reading_status") or row["status"]
    return status.split(":")[0] in NEEDS_A_PERSON or status.startswith("error")


def _jpeg(image, longer=None):
    im = Image.fromarray(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
    if longer and max(im.size) > longer:
        im = im.copy()
        im.thumbnail((longer, longer))
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def row_images(row, root, manifest):
    """(strip, crop) as data URIs, or None where there is nothing to show. A readings row is cut from its
    photo (root / source); a manifest row from its stored crop (root / output)."""
    corners = np.array([float(row[k]) for k in CORNERS]).reshape(4, 2) if all(row.get(k) for k in CORNERS) else None
    if manifest:
        name, offset = row.get("output"), np.array([float(row.get("x0") or 0), float(row.get("y0") or 0)])
    else:
        name, offset = row["source"], np.zeros(2)
    path = Path(root) / (name or "")
    try:
        image = to_rgb(open_photo(path), path)
    except (DataError, OSError):
        return None, None
    pixels = np.asarray(image)
    strip = None if corners is None else _jpeg(rectify(pixels, corners - offset))
    if corners is not None and not manifest:
        q = corners.round().astype(int)
        box = (q[:, 0].min(), q[:, 1].min(), q[:, 0].max(), q[:, 1].max())
        image = image.crop(grow_box(box, 0.3, image.size))
    return strip, _jpeg(image, CROP_PX)


def digits_html(row):
    """The reading's digits, each over its confidence; a half-turned wheel is marked."""
    reading = row.get("reading") or ""
    confs = [c for c in (row.get("digit_confidence") or "").split(";") if c]
    half = {int(w) for w in (row.get("half_turned") or "").split(";") if w.isdigit()}
    if not reading:
        return '<span class="none">no reading</span>'
    cells = []
    for i, d in enumerate(reading):
        c = float(confs[i]) if i < len(confs) else None
        cls = "low" if c is not None and c < 0.9 else ""
        cls += " half" if i + 1 in half else ""
        title = f"wheel {i + 1}" + (" (half-turned)" if i + 1 in half else "")
        cells.append(f'<span class="d {cls.strip()}" title="{title}">{html.escape(d)}'
                     f'<small>{"" if c is None else f"{c:.2f}"}</small></span>')
    return "".join(cells)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>meterseg review: {title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 14px system-ui, sans-serif; margin: 0 1em 4em; color: #222; }}
header {{ position: sticky; top: 0; background: #fff; padding: .6em 0; border-bottom: 1px solid #ccc; z-index: 1; }}
button {{ font-size: 15px; padding: .3em 1em; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ border-bottom: 1px solid #ddd; padding: .4em; vertical-align: middle; text-align: left; }}
tr.person {{ background: #fff8e6; }}
tr.done {{ background: #eaf7ea; }}
.name {{ min-width: 11em; max-width: 16em; overflow-wrap: anywhere; font-family: monospace; }}
td.digits {{ white-space: nowrap; }}
.d {{ display: inline-block; width: 1.5em; text-align: center; font: bold 22px monospace; }}
.d small {{ display: block; font: 10px sans-serif; color: #666; }}
.d.low {{ color: #c00; }} .d.half {{ background: #ffd9a0; border-radius: 3px; }}
.strip {{ height: 64px; }} .crop {{ max-height: 140px; max-width: 260px; }}
input {{ font: 20px monospace; width: 6em; }} input:invalid {{ background: #fdd; }}
.status {{ font-weight: bold; }} .none {{ color: #999; }}
th.part {{ font-size: 16px; padding-top: 1.2em; background: #fff; }}
</style></head><body>
<header><b>{title}</b>: {n_person} of {n_rows} rows need a person (first), then the rest.
Type the right 5 digits where a reading is wrong (the same digits confirm a doubtful one), then
<button id="download">download corrections (<span id="count">0</span>)</button>
and run <code>meterseg review --apply corrections.csv {table_name} --out final.csv</code>.</header>
<table><tr><th>#</th><th>photo</th><th>status</th><th>reading (digit confidence)</th><th>half-turned wheels</th>
<th>strip</th><th>crop</th><th>right reading</th></tr>
<tr><th class="part" colspan="8">Need a person ({n_person})</th></tr>
{person_rows}
<tr><th class="part" colspan="8">The rest ({n_rest})</th></tr>
{other_rows}</table>
<script>
const inputs = Array.from(document.querySelectorAll("input.fix"));
function corrections() {{
  return inputs.filter(i => i.value.trim() !== "").map(i => [i.dataset.source, i.value.trim()]);
}}
function quote(v) {{ return /[",\\r\\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }}
inputs.forEach((inp, k) => {{
  inp.addEventListener("input", () => {{
    inp.closest("tr").classList.toggle("done", inp.value.trim() !== "" && inp.checkValidity());
    document.getElementById("count").textContent = corrections().length;
  }});
  inp.addEventListener("keydown", e => {{ if (e.key === "Enter" && inputs[k + 1]) inputs[k + 1].focus(); }});
}});
document.getElementById("download").addEventListener("click", () => {{
  const bad = inputs.filter(i => i.value.trim() !== "" && !i.checkValidity());
  if (bad.length) {{ bad[0].focus(); alert("A correction must be exactly 5 digits."); return; }}
  const csv = "source,reading\\r\\n" + corrections().map(r => r.map(quote).join(",")).join("\\r\\n") + "\\r\\n";
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([csv], {{type: "text/csv"}}));
  a.download = "corrections.csv";
  document.body.appendChild(a); a.click(); a.remove();
}});
</script></body></html>
"""


def row_html(k, row, root, manifest):
    strip, crop = row_images(row, root, manifest)
    status = row.get("reading_status") or row["status"] if manifest else row["status"]
    esc = html.escape
    img = lambda uri, cls: f'<img class="{cls}" src="{uri}" alt="">' if uri else '<span class="none">none</span>'  # noqa: E731
    return (f'<tr class="{"person" if needs_a_person(row) else ""}"><td>{k}</td><td class="name" title="{esc(row["source"], quote=True)}">{esc(short_name(row["source"]))}</td>'
            f'<td class="status">{esc(status)}</td><td class="digits">{digits_html(row)}</td><td>{esc(row.get("half_turned") or "")}</td>'
            f'<td>{img(strip, "strip")}</td><td>{img(crop, "crop")}</td>'
            f'<td><input class="fix" data-source="{esc(row["source"], quote=True)}" pattern="[0-9]{{{DIGITS}}}" '
            f'maxlength="{DIGITS}" inputmode="numeric" placeholder="{esc(row.get("reading") or "", quote=True)}"></td></tr>')


def write_page(table, out, photos=None):
    """Write the review page of a readings CSV or manifest to out (refused if it exists). photos: the folder
    the sources are in (a readings CSV; default: the current folder) or the compress output (a manifest;
    default: the manifest's folder). Returns (rows needing a person, rows)."""
    rows, fields = read_table(table)
    manifest = "output" in fields
    root = Path(photos) if photos else (Path(table).parent if manifest else Path("."))
    person = [r for r in rows if needs_a_person(r)]
    other = [r for r in rows if not needs_a_person(r)]
    text = PAGE.format(title=html.escape(Path(table).name), table_name=html.escape(Path(table).name),
                       n_person=len(person), n_rows=len(rows), n_rest=len(other),
                       person_rows="\n".join(row_html(k + 1, r, root, manifest) for k, r in enumerate(person)),
                       other_rows="\n".join(row_html(len(person) + k + 1, r, root, manifest) for k, r in enumerate(other)))
    _write_new(out, text.encode("utf-8"))
    return len(person), len(rows)


def _write_new(out, data):
    try:
        atomic_write(out, data, new=True)
    except FileExistsError:
        raise DataError(f"{out}: already exists; choose another --out (nothing is overwritten)") from None


def short_name(source):
    """A source as the page shows it: its folder and file name (the whole path is the cell's tooltip)."""
    return "/".join(source.rstrip("/").split("/")[-2:])


def read_corrections(path, sources):
    """{source: reading} from a corrections CSV; every bad line is an error naming its line."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read the corrections ({e})") from None
    if not lines or [c.strip() for c in lines[0]] != CORRECTION_FIELDS:
        raise DataError(f"{path}: line 1: expected the header {','.join(CORRECTION_FIELDS)}")
    fixes, errors = {}, []
    for n, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        if len(line) != 2:
            errors.append(f"{path}: line {n}: expected 2 fields (source,reading), found {len(line)}")
        elif line[0] not in sources:
            errors.append(f"{path}: line {n}: {line[0]!r} is not a photo of the table")
        elif not re.fullmatch(rf"\d{{{DIGITS}}}", line[1].strip()):
            errors.append(f"{path}: line {n}: {line[1]!r} is not {DIGITS} digits")
        elif line[0] in fixes and fixes[line[0]] != line[1].strip():
            errors.append(f"{path}: line {n}: a second, different correction of {line[0]!r}")
        else:
            fixes[line[0]] = line[1].strip()
    if errors:
        raise DataError("\n".join(errors))
    return fixes


def apply_corrections(corrections, table, out):
    """Write the table with the corrections merged to out (refused if it exists): each row's reading, and
    reading_by (model or person), model_reading (what the tool read). Returns the number corrected."""
    rows, fields = read_table(table)
    fixes = read_corrections(corrections, {r["source"] for r in rows})
    fields = fields + [f for f in ("reading_by", "model_reading") if f not in fields]
    for r in rows:
        r["model_reading"] = r.get("model_reading") or r["reading"]
        if r["source"] in fixes:
            r["reading"], r["reading_by"] = fixes[r["source"]], "person"
        else:
            r["reading_by"] = r.get("reading_by") or "model"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    _write_new(out, buf.getvalue().encode("utf-8"))
    return len(fixes)

