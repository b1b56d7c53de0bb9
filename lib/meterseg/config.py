"""Every setting of a run, the profiles, the paper's constants, and where results go: one place each."""
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The paper's constants (Sec. III-C, IV-B) and ours that more than one module reads.
PAPER_LOSS_WEIGHT = 0.36  # eq. (3): 0.36 * (CE + Dice)
CROP_MARGIN = 0.15  # compress grows the region's box by this share of its longer side, for a checkpoint that
# carries no margin of its own; notebook 05 stores in the shipped one the margin chosen on its validation photos
QUALITY_THRESHOLDS = (0.90, 0.93)  # validation Dice levels for time-to-quality
DEFAULT_PROFILE = "cpu"  # the profile whose results are committed under results/


@dataclass
class Config:
    """Everything that decides a run's result. Profiles set defaults; any field can be overridden."""
    profile: str = DEFAULT_PROFILE
    data: str = ""  # a dataset folder, "synthetic", or "" to find the real photos (see dataset.find_data)
    model: str = "attunet"  # a name of models.MODELS
    gates: tuple = (1, 2)  # counted from the deepest skip; ignored (empty) for unet
    loss: str = "combo"  # a name of losses.LOSSES
    loss_weight: float = PAPER_LOSS_WEIGHT
    size: int = 128
    base: int = 8
    epochs: int = 40  # the cpu recipe's length: the length check on validation (docs/protocol.md)
    batch_size: int = 8
    lr: float = 3e-3  # peak learning rate (the paper: 1e-3 with StepLR)
    weight_decay: float = 1e-9
    schedule: str = "cosine"  # a name of train.SCHEDULES: "step" (the paper's StepLR) or "cosine"
    step_size: int = 25  # step: lr *= gamma every step_size epochs
    gamma: float = 0.1
    warmup: float = 1.0  # cosine: epochs of linear warm-up before the cosine decay to 0
    augment: bool = True  # random horizontal flips
    prior_init: bool = True  # start the head at the train split's foreground share (models.UNet.start_at_prior)
    bf16: bool = True  # train under bf16 autocast (weights, optimizer and loss stay fp32) where the device computes
    # bf16 natively (a GPU; a CPU with AMX-BF16 or AVX512-BF16), else fp32: emulated bf16 is ~11x slower (train.native_bf16)
    max_photos: int = 0  # cap on training photos (0 = all), for quick runs
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        self.gates = () if self.model == "unet" else tuple(sorted(int(g) for g in self.gates))


PROFILES = {
    # seconds: synthetic photos, a tiny net
    "smoke": dict(data="synthetic", size=64, base=8, epochs=8),
    # the default: real photos, sized for a 2-core CPU (see README for how it differs from the paper)
    "cpu": dict(),
    # the paper's Sec. IV-B settings; GPU work
    "paper": dict(size=256, base=64, epochs=100, schedule="step", lr=1e-3, step_size=25, warmup=0.0),
}


def make_config(profile=DEFAULT_PROFILE, **overrides):
    """A Config from a profile plus overrides (None and "" mean: keep the profile's value)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: expected one of {sorted(PROFILES)}")
    known = {f.name for f in dataclasses.fields(Config)}
    bad = set(overrides) - known
    if bad:
        raise ValueError(f"unknown config fields {sorted(bad)}")
    values = {**PROFILES[profile], **{k: v for k, v in overrides.items() if v is not None and v != ""}}
    return Config(profile=profile, **values)


def results_dir(profile="", results=""):
    """(profile, results folder): the one rule for where a study writes.

    An explicit folder wins, then $METERSEG_RESULTS; otherwise the default profile writes the
    committed results/ and any other profile results/<profile>/ (smoke: ignored by git), so a smoke run
    opened in JupyterLab never overwrites the committed tables or model. A relative folder is
    taken relative to the repository, wherever the caller's working directory is.
    """
    profile = profile or os.environ.get("METERSEG_PROFILE") or DEFAULT_PROFILE
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: expected one of {sorted(PROFILES)}")
    chosen = results or os.environ.get("METERSEG_RESULTS")
    if chosen:
        path = Path(chosen).expanduser()
        path = path if path.is_absolute() else REPO / path
    else:
        path = REPO / "results" if profile == DEFAULT_PROFILE else REPO / "results" / profile
    return profile, path.resolve()


def shown(path):
    """A path as results and notebooks show it: relative to the repository, else '<outside>/name'.

    Committed outputs must not carry the absolute paths of the machine that made them.
    """
    path = Path(path).resolve()
    try:
        return path.relative_to(REPO).as_posix() or "."
    except ValueError:
        return f"<outside the repo>/{path.name}"
