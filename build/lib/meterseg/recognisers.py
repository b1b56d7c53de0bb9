"""Digit recognisers behind one interface, `read(strip) -> (digits, confidence)`, without torch:
rapidocr's PP-OCR recognition model (shipped inside its wheel; nothing is downloaded at run time),
and our CRNN exported to ONNX. ownreader.py trains the CRNN and runs it under torch."""
import re
import threading

import numpy as np

DIGITS = 5  # a water-meter counter shows 5 wheels
HEIGHT, WIDTH = 32, 128  # the CRNN's input strip: a 5-digit window is about 4:1
BLANK = 10  # the CRNN's CTC blank; classes 0-9 are the digits


def strip_input(image):
    """An RGB strip (H, W, 3) uint8 as the CRNN's normalised grey float32 (1, HEIGHT, WIDTH) input."""
    from PIL import Image
    grey = Image.fromarray(np.ascontiguousarray(image)).convert("L").resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
    return ((np.asarray(grey, dtype=np.float32) / 255 - 0.5) / 0.25)[None]


def greedy_decode(logp):
    """Best path of (T, 11) log-probabilities: (digits, confidence = mean max probability of the kept steps)."""
    logp = np.asarray(logp, dtype=np.float32)
    best, prob = logp.argmax(-1).tolist(), np.exp(logp.max(-1)).tolist()
    out, conf, prev = [], [], BLANK
    for k, p in zip(best, prob):
        if k != prev and k != BLANK:
            out.append(str(k))
            conf.append(p)
        prev = k
    return "".join(out), float(np.mean(conf)) if conf else 0.0


class RapidReader:
    """rapidocr's recogniser: recognition only (no text detection), one thread."""

    name = "rapidocr"

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
        """(digits only, confidence) of an RGB uint8 image holding one line of text."""
        with self.lock:
            out = self.engine(np.ascontiguousarray(image[..., ::-1]))  # rapidocr takes OpenCV's BGR order
        text = "".join(out.txts or ())
        scores = [float(s) for s in (out.scores or ())]
        return re.sub(r"\D", "", text), (float(np.mean(scores)) if scores else 0.0)


class OnnxCRNN:
    """Our CRNN as exported by `meterseg export` (reader.onnx), run by ONNX Runtime."""

    name = "own"

    def __init__(self, path, threads=1):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def read(self, image):
        logp = self.session.run(None, {"strip": strip_input(image)[None]})[0][0]
        return greedy_decode(logp)
