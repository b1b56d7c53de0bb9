"""The model behind every entry point of the tool: a torch checkpoint (what the study trains) or a
folder written by `meterseg export` (ONNX files and a model card, model.json; no torch needed).

A Tool is a segmenter (`size`, `crop_rule`, `gaps(uint8 (N,3,S,S)) -> float32 (N,S,S)` logit
gaps), the recogniser when the job reads, and `backend`, which says what runs the model.
"""
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .config import CROP_MARGIN

CARD = "model.json"
SEGMENTER_ONNX, READER_ONNX = "segmenter.onnx", "reader.onnx"
READERS = ("auto", "own", "rapidocr")


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


@dataclass
class Tool:
    segmenter: object
    reader: object = None

    @property
    def backend(self):
        return self.segmenter.backend


class OnnxSegmenter:
    """The exported segmenter run by ONNX Runtime: uint8 photos in, logit gaps out (the graph normalises)."""

    backend = "onnxruntime fp32"

    def __init__(self, path, size, crop_rule, threads=1):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own NoSuchFile/Fail/InvalidGraph types
            raise CheckpointError(f"{path}: missing or not a loadable ONNX model ({str(e)[:200]})") from None
        shape = self.session.get_inputs()[0].shape
        if list(shape[1:]) != [3, size, size]:
            raise CheckpointError(f"{path}: takes input {shape}, but {Path(path).parent / CARD} says {size} px")
        self.size, self.crop_rule = size, crop_rule

    def gaps(self, images):
        return self.session.run(None, {"image": np.ascontiguousarray(images, dtype=np.uint8)})[0]


def read_card(folder):
    """(input size, CropRule) from an exported folder's card, checked: an error naming the file, never a traceback."""
    path = Path(folder) / CARD
    if not path.is_file():
        raise CheckpointError(f"{path}: missing: {folder} is not a folder written by `meterseg export`")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
        crop = card["crop"]
        float(crop["margin"])  # required; an export from before issue 20 has no probability or min_confidence
        return int(card["input"]["size"]), CropRule(**{k: float(crop[k]) for k in asdict(CropRule()) if k in crop})
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a valid model card ({type(e).__name__}: {e})") from None


def load_reader(path, name="auto", threads=1):
    """The recogniser of a checkpoint or an exported folder: "own" is our CRNN (notebook 06 stores it
    in the shipped model), "rapidocr" the off-the-shelf one, "auto" ours when the model carries it."""
    from .recognisers import OnnxCRNN, RapidReader
    if name not in READERS:
        raise ValueError(f"unknown reader {name!r}: expected one of {READERS}")
    path = Path(path)
    if name == "rapidocr":
        return RapidReader(threads)
    if path.is_dir():
        if (path / READER_ONNX).is_file():
            reader = OnnxCRNN(path / READER_ONNX, threads)
            reader.accept = accept_rule(json.loads((path / CARD).read_text(encoding="utf-8")).get("reading", {}).get("accept"))
            return reader
    elif path.is_file():
        from .ownreader import OwnReader
        state = _torch_load(path).get("reader")
        if state is not None:
            return OwnReader.from_state(state)
    else:
        raise CheckpointError(f"{path}: no such checkpoint or exported folder")
    if name == "own":
        raise CheckpointError(f"{path}: carries no reader of ours (notebook 06 adds it); use --reader rapidocr")
    return RapidReader(threads)


def accept_rule(stored):
    """The AcceptRule stored with a reader (a dict), or None where none was chosen: then no reading is 'ok'."""
    return None if not stored else AcceptRule(**stored)


def _torch_load(path):
    import torch
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for code, RuntimeError/EOFError for junk
        raise CheckpointError(f"{path}: refused: not a plain weights checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(ck, dict) or "state_dict" not in ck or "config" not in ck:
        raise CheckpointError(f"{path}: not a meterseg checkpoint (needs state_dict and config)")
    return ck


def load_tool(path, reader=None, device="auto", threads=1):
    """The Tool of a checkpoint file or an exported folder; reader: a READERS name, or None not to read."""
    path = Path(path)
    if path.is_dir():
        segmenter = OnnxSegmenter(path / SEGMENTER_ONNX, *read_card(path), threads)
    elif path.is_file():
        from .predictor import Predictor
        segmenter = Predictor.load(path, device)
    else:
        raise CheckpointError(f"{path}: no such checkpoint or exported folder")
    return Tool(segmenter, None if reader is None else load_reader(path, reader, threads))
