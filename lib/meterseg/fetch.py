"""Fetching the upstream photos at the pinned commit, each file checked against its SHA-256."""
import hashlib
import os
import shutil
import urllib.request
from pathlib import Path

from .config import REPO
from .tool.photos import DataError

UPSTREAM_COMMIT = "53bdd22a3b91f18ed4f8140757368fe6ee44ecb7"
UPSTREAM_URL = f"https://raw.githubusercontent.com/iaoqian/water_meter_recognition/{UPSTREAM_COMMIT}/WaterMeterDataset"
UPSTREAM_SUMS = REPO / "data" / "UPSTREAM-SHA256SUMS"
LOCAL_COPY = REPO / "data" / "water-meters"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_upstream(dest, base_url=None, sums_file=UPSTREAM_SUMS, progress=True):
    """Download every file of sums_file from base_url into dest and verify its SHA-256.

    Files already present with the right sum are kept, so an interrupted fetch resumes.
    """
    base_url = base_url or os.environ.get("METERSEG_DATA_URL", UPSTREAM_URL)
    dest = Path(dest)
    entries = [line.split(None, 1) for line in Path(sums_file).read_text().splitlines() if line.strip()]
    from tqdm import tqdm  # not tqdm.auto: in a kernel without ipywidgets it warns, naming its own absolute path
    failed = []
    for i, (digest, rel) in enumerate(tqdm(entries, desc="fetch", disable=not progress)):
        rel = rel.strip().lstrip("*").removeprefix("./")
        target = dest / rel
        if target.exists() and sha256_file(target) == digest:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        try:
            url = f"{base_url}/{urllib.request.quote(rel)}"
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
            if sha256_file(tmp) != digest:
                raise DataError(f"{rel}: SHA-256 mismatch after download")
            os.replace(tmp, target)
        except (OSError, DataError) as e:
            tmp.unlink(missing_ok=True)
            failed.append(f"{rel}: {e}")
            if len(failed) == i + 1 == 3:  # nothing has worked: stop rather than try every file
                raise DataError(f"{base_url}: the first downloads all failed ({e}); no network? "
                                "Point METERSEG_DATA at a local copy of the photos.") from None
    if failed:
        raise DataError(f"{dest}: {len(failed)} of {len(entries)} files failed to fetch or verify, e.g. {failed[0]}")
    (dest / ".verified").write_text(f"{UPSTREAM_COMMIT}\n")
    return dest
