"""What a model carries besides its weights, read without torch: its crop rule, its accept rule, the
model card of an exported folder (model.json), and the error for a model that cannot be loaded."""
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config import CROP_MARGIN

CARD = "model.json"
SEGMENTER_ONNX, READER_ONNX = "segmenter.onnx", "reader.onnx"


class CheckpointError(ValueError):
    """A checkpoint or exported model that cannot be loaded; the message names the file."""


@dataclass(frozen=True)
class CropRule:
    """How compress crops (notebook 05 chooses it on validation): the box of the pixels where the model gives
    the window at least `probability`, grown by `margin` x its longer side; a photo whose region confidence
    (mean probability inside the 0.5 region) is under `min_confidence` is stored whole and flagged."""
    margin: float = CROP_MARGIN
    probability: float = 0.5
    min_confidence: float = 0.0

    @property
    def logit(self):
        """The gap threshold of `probability`."""
        return math.log(self.probability / (1 - self.probability))

    @classmethod
    def of(cls, cfg):
        """The rule stored with a model (checkpoint config or card, keys crop_*), CROP_MARGIN at 0.5 where none is."""
        return cls(**{k: float(cfg[f"crop_{k}"]) for k in asdict(cls()) if f"crop_{k}" in cfg})

    def stored(self):
        """The rule as the config keys `of` reads."""
        return {f"crop_{k}": v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class AcceptRule:
    """When the tool stands behind a 5-digit reading (status 'ok'; else 'review'), chosen on validation
    (notebook 06) and stored with the reader: every digit at least `min_digit_confidence`, at least
    `min_agreement` of the vote's reads agreeing, and, if `review_half_turned`, no wheel half-turned.
    A wheel is half-turned when its probability of being caught between two digits reaches `half_turned`."""
    min_digit_confidence: float = 0.0
    min_agreement: float = 0.0
    half_turned: float = 0.5
    review_half_turned: bool = False

    def half_turned_wheels(self, read):
        """The wheels (1 = leftmost) of a Read caught between two digits."""
        return [i + 1 for i, u in enumerate(read.half_turn) if u >= self.half_turned]

    def accepts(self, read):
        return (min(read.digit_confidence, default=0.0) >= self.min_digit_confidence and read.agreement >= self.min_agreement
                and not (self.review_half_turned and self.half_turned_wheels(read)))


def accept_rule(stored):
    """The AcceptRule stored with a reader (a dict), or None where none was chosen: then no reading is 'ok'."""
    return None if not stored else AcceptRule(**stored)


def read_card(folder):
    """(input size, CropRule) from an exported folder's card, checked: an error naming the file, never a traceback."""
    path = Path(folder) / CARD
    if not path.is_file():
        raise CheckpointError(f"{path}: missing: {folder} is not a folder written by `meterseg export`")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
        crop = card["crop"]
        float(crop["margin"])  # required; an older export has no probability or min_confidence
        return int(card["input"]["size"]), CropRule(**{k: float(crop[k]) for k in asdict(CropRule()) if k in crop})
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a valid model card ({type(e).__name__}: {e})") from None
