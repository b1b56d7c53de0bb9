"""The model behind every entry point of the tool: a torch checkpoint (what the study trains) or a
folder written by `meterseg export` (ONNX files and a model card, model.json; no torch needed).

A Tool is a segmenter (`size`, `crop_rule`, `gaps(uint8 (N,3,S,S)) -> float32 (N,S,S)` logit
gaps), the recogniser when the job reads, and `backend`, which says what runs the model.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .card import CARD, READER_ONNX, SEGMENTER_ONNX, CheckpointError, accept_rule, read_card

READERS = ("auto", "own", "rapidocr")


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
        from ..checkpoint import torch_load
        from ..ownreader import OwnReader
        state = torch_load(path).get("reader")
        if state is not None:
            return OwnReader.from_state(state)
    else:
        raise CheckpointError(f"{path}: no such checkpoint or exported folder")
    if name == "own":
        raise CheckpointError(f"{path}: carries no reader of ours (notebook 06 adds it); use --reader rapidocr")
    return RapidReader(threads)


def load_tool(path, reader=None, device="auto", threads=1):
    """The Tool of a checkpoint file or an exported folder; reader: a READERS name, or None not to read."""
    path = Path(path)
    if path.is_dir():
        segmenter = OnnxSegmenter(path / SEGMENTER_ONNX, *read_card(path), threads)
    elif path.is_file():
        from ..predictor import Predictor
        segmenter = Predictor.load(path, device)
    else:
        raise CheckpointError(f"{path}: no such checkpoint or exported folder")
    return Tool(segmenter, None if reader is None else load_reader(path, reader, threads))
