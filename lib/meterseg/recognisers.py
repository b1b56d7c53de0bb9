"""Digit recognisers behind one interface, `read(strip) -> Read`, without torch:
rapidocr's PP-OCR recognition model (shipped inside its wheel; nothing is downloaded at run time),
and our CRNN exported to ONNX. ownreader.py trains the CRNN and runs it under torch."""
import re
import threading
from typing import NamedTuple

import numpy as np

DIGITS = 5  # a water-meter counter shows 5 wheels
HEIGHT, WIDTH = 32, 128  # the CRNN's input strip: a 5-digit window is about 4:1
BLANK = 10  # the CRNN's CTC blank; classes 0-9 are the digits


class Read(NamedTuple):
    """A reading: its digits, confidence (mean of the digits'), each digit's confidence, and each digit's
    probability of the digit after it (a wheel caught turning; () where the reader cannot say).
    agreement: the share of a vote's reads that gave these digits (1.0 for a single read)."""
    digits: str
    confidence: float
    digit_confidence: tuple = ()
    next_digit: tuple = ()
    agreement: float = 1.0


def strip_input(image):
    """An RGB strip (H, W, 3) uint8 as the CRNN's normalised grey float32 (1, HEIGHT, WIDTH) input."""
    from PIL import Image
    grey = Image.fromarray(np.ascontiguousarray(image)).convert("L").resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
    return ((np.asarray(grey, dtype=np.float32) / 255 - 0.5) / 0.25)[None]


def greedy_decode(logp):
    """Best path of (T, 11) log-probabilities as a Read. A digit's confidence is its highest probability
    over the steps that emit it; its next_digit the highest probability of the digit after it there."""
    probs = np.exp(np.asarray(logp, dtype=np.float64))
    best = probs.argmax(-1).tolist()
    out, conf, upper, prev = [], [], [], BLANK
    for t, k in enumerate(best):
        if k != BLANK and k == prev:  # the same digit held over another step
            conf[-1], upper[-1] = max(conf[-1], probs[t, k]), max(upper[-1], probs[t, (k + 1) % 10])
        elif k != BLANK:
            out.append(str(k))
            conf.append(probs[t, k])
            upper.append(probs[t, (k + 1) % 10])
        prev = k
    conf, upper = tuple(round(float(c), 4) for c in conf), tuple(round(float(u), 4) for u in upper)
    return Read("".join(out), float(np.mean(conf)) if conf else 0.0, conf, upper)


class RapidReader:
    """rapidocr's recogniser: recognition only (no text detection), one thread. No accept rule was
    chosen for it, so none of its readings is 'ok'."""

    name, accept = "rapidocr", None

    def __init__(self, threads=1):
        from rapidocr import RapidOCR
        # Recognition-only is set when the engine is built: a per-call use_det=False was seen to
        # stick to later calls of a shared engine.
        self.engine = RapidOCR(params={"Global.use_det": False, "Global.use_cls": False, "Global.use_rec": True,
                                       "Global.log_level": "error",
                                       "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                                       "EngineConfig.onnxruntime.inter_op_num_threads": 1})
        self.lock = threading.Lock()  # the engine keeps per-call state: one read at a time

    def read(self, image):
        """The digits of an RGB uint8 image holding one line of text, each with the line's confidence
        (rapidocr scores a line, not its characters)."""
        with self.lock:
            out = self.engine(np.ascontiguousarray(image[..., ::-1]))  # rapidocr takes OpenCV's BGR order
        digits = re.sub(r"\D", "", "".join(out.txts or ()))
        scores = [float(s) for s in (out.scores or ())]
        conf = float(np.mean(scores)) if scores else 0.0
        return Read(digits, conf, (round(conf, 4),) * len(digits))


class OnnxCRNN:
    """Our CRNN as exported by `meterseg export` (reader.onnx), run by ONNX Runtime."""

    name, accept = "own", None  # tool.load_reader sets accept from the card

    def __init__(self, path, threads=1):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def read(self, image):
        logp = self.session.run(None, {"strip": strip_input(image)[None]})[0][0]
        return greedy_decode(logp)
