# The copy the GPU machine gets (64 MiB upload): test photos at original size, train/val downscaled to 400 px on the
# longer side (labels scaled alike). Run from the repository root; photos from $METERSEG_DATA or ../shared.
import csv, os, shutil
from pathlib import Path
from PIL import Image
src = Path(os.environ.get("METERSEG_DATA", "../shared/datasets/water-meters")); dst = Path(".devdata/water-meters")
split = {r["stem"]: r["split"] for r in csv.DictReader(open("data/splits/water-meters.csv"))}
(dst / "train_imgs").mkdir(parents=True, exist_ok=True); (dst / "train_labels/labels").mkdir(parents=True, exist_ok=True)
for p in sorted((src / "train_imgs").glob("*.jpg")):
    lab = src / "train_labels/labels" / (p.stem + ".txt")
    if split.get(p.stem) == "test":
        shutil.copy(p, dst / "train_imgs" / p.name); shutil.copy(lab, dst / "train_labels/labels" / lab.name); continue
    im = Image.open(p); im.load(); s = 400 / max(im.size)
    if s < 1:
        im = im.convert("RGB").resize((round(im.width * s), round(im.height * s)), Image.LANCZOS)
    else:
        s = 1.0
    im.save(dst / "train_imgs" / p.name, quality=90)
    f = lab.read_text().split()
    xy = [str(round(float(v) * s, 1)) for v in f[:8]]
    (dst / "train_labels/labels" / lab.name).write_text(" ".join(xy + f[8:]) + "\n")
