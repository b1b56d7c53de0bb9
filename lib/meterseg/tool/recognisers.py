"""Digit recognisers behind one interface, `read(strip) -> Read`, without torch:
rapidocr's PP-OCR recognition model (shipped inside its wheel; nothing is downloaded at run time),
and our CRNN exported to ONNX. ownreader.py trains the CRNN and runs it under torch."""
import re
import threading
from typing import NamedTuple

import numpy as np

DIGITS = 5  # a water-meter counter shows 5 wheels
HEIGHT, WIDTH = 32, 128  # the CRNN's input strip: a 5-digit window is about 4:1
BETWEEN = 10  # class BETWEEN + d: a wheel caught between d and the next digit (its billing digit is d)
BLANK = 20  # the CRNN's CTC blank; classes 0-9 are the digits, 10-19 the half-turned wheels


class Read(NamedTuple):
    """A reading: its digits, confidence (mean of the digits'), each digit's confidence, and each wheel's
    probability of being caught between its digit and the next (half_turn; () where the reader cannot say).
    agreement: the share of a vote's reads that gave these digits (1.0 for a single read)."""
    digits: str
    confidence: float
    digit_confidence: tuple = ()
    half_turn: tuple = ()
    agreement: float = 1.0


def strip_input(image):
    """An RGB strip (H, W, 3) uint8 as the CRNN's normalised grey float32 (1, HEIGHT, WIDTH) input."""
    from PIL import Image
    grey = Image.fromarray(np.ascontiguousarray(image)).convert("L").resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
    return ((np.asarray(grey, dtype=np.float32) / 255 - 0.5) / 0.25)[None]


def greedy_decode(logp):
    """Best path of (T, 21) log-probabilities as a Read. A wheel's digit is its class mod 10 (a half-turned
    wheel is read as the digit it is leaving). A counter turns a wheel only while the wheel to its right passes
    from 9 to 0, so a wheel read at rest on d >= 1 beside a wheel turning at 9 that bills 9 is taken as turning:
    leaving d - 1 or leaving d, whichever is likelier. Then `billed` counts a carry. A digit's confidence is the
    highest probability of that digit, shown or half-turned, over the steps that emit it; its half_turn the
    highest probability of it half-turned."""
    probs = np.exp(np.asarray(logp, dtype=np.float64))
    out, turning, steps, prev = [], [], [], BLANK  # steps: per wheel, the steps that emit it
    for t, k in enumerate(probs.argmax(-1).tolist()):
        if k != BLANK and k == prev:  # the same class held over another step
            steps[-1].append(t)
        elif k != BLANK:
            out.append(k % BETWEEN)
            turning.append(k >= BETWEEN)
            steps.append([t])
        prev = k
    for i in range(len(out) - 2, -1, -1):  # right to left, so that a wheel turned here is seen by the one above
        if turning[i + 1] and billed(out, turning)[i + 1] == "9" and not turning[i] and out[i] >= 1:
            top = probs[steps[i]].max(0)
            out[i] -= int(top[BETWEEN + out[i] - 1] > top[BETWEEN + out[i]])
            turning[i] = True
    conf = tuple(round(float((probs[s, d] + probs[s, BETWEEN + d]).max()), 4) for s, d in zip(steps, out))
    half = tuple(round(float(probs[s, BETWEEN + d].max()), 4) for s, d in zip(steps, out))
    return Read(billed(out, turning), float(np.mean(conf)) if conf else 0.0, conf, half)


def billed(digits, turning):
    """The billing reading of wheels, each its digit (the one it is leaving where turning), except that a turning
    wheel whose right-hand neighbour bills 0 has passed and counts its next digit: a carry."""
    out = list(digits)
    for i in range(len(out) - 2, -1, -1):  # right to left, so that a carry runs on through wheels at 9
        if turning[i] and out[i + 1] == 0:
            out[i] = (out[i] + 1) % 10
    return "".join(map(str, out))


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
