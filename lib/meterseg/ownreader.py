"""Our own digit reader: a small CRNN with CTC (Shi et al. 2015), trained on the train split's
rectified labelled quads, to compare with the off-the-shelf recogniser. Training and the torch
reader; recognisers.py runs the exported one without torch."""
import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .tool.card import accept_rule
from .tool.geometry import rectify
from .labels import truth_of, turning_wheels
from .tool.photos import open_photo, read_label, to_rgb
from .tool.recognisers import BETWEEN, BLANK, DIGITS, billed, greedy_decode, strip_input


class CRNN(nn.Module):
    """Convolutions down to a 1-pixel-high feature row, a bidirectional GRU along it, per-column digit logits."""

    def __init__(self, width=32):
        super().__init__()
        def block(cin, cout, pool):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True), nn.MaxPool2d(pool))
        self.conv = nn.Sequential(block(1, width, 2), block(width, 2 * width, 2), block(2 * width, 4 * width, (2, 1)),
                                  block(4 * width, 4 * width, (4, 1)))  # (N, 4w, 1, WIDTH / 4)
        self.rnn = nn.GRU(4 * width, 2 * width, bidirectional=True, batch_first=True)
        self.head = nn.Linear(4 * width, BLANK + 1)

    def forward(self, x):
        """(N, 1, HEIGHT, WIDTH) -> (N, WIDTH / 4, 21) log-probabilities: digits, half-turned digits, blank."""
        f = self.conv(x).squeeze(2).transpose(1, 2)
        return F.log_softmax(self.head(self.rnn(f)[0]), dim=-1)


def to_strip(image):
    """An RGB strip as the CRNN's normalised grey (1, HEIGHT, WIDTH) tensor."""
    return torch.from_numpy(strip_input(image))


def labelled_strips(photos, labels, quads=None, jitter=0.0, copies=0, seed=0, truths=None):
    """(strips (N,1,H,W), targets) of the photos: per wheel its billing digit d (labels.truth_of: the billing
    labels, else upstream's lower candidate), or BETWEEN + d where the wheel is caught leaving d (turning_wheels; greedy_decode's carry rule turns
    a wheel caught leaving d before a 0 back into d + 1).

    quads: the corners to rectify (default: the labelled ones). truths: the Truth of each photo (default: its
    label's). jitter, copies: also add `copies` strips per photo from corners moved by Gaussian noise of `jitter`
    pixels, so the reader learns the imprecise corners a predicted region gives.
    """
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k, (photo, label) in enumerate(zip(photos, labels)):
        truth = truth_of(label) if truths is None else truths[k]
        target, tops = truth.billing, turning_wheels(truth)
        if len(target) != DIGITS or (quads is not None and quads[k] is None):
            continue  # a label without a 5-digit reading, or no region found
        tokens = [BETWEEN + tops[i + 1] if i + 1 in tops else int(d) for i, d in enumerate(target)]
        image = np.asarray(to_rgb(open_photo(photo), photo))
        quad = np.array(read_label(label, (image.shape[1], image.shape[0])) if quads is None else quads[k])
        for c in range(1 + copies):
            q = quad + (rng.normal(0, jitter, quad.shape) if c else 0)
            xs.append(to_strip(rectify(image, q)))
            ys.append(tokens)
    return torch.stack(xs), ys


def train_reader(x, ys, x_val, ys_val, epochs=40, seed=0, lr=2e-3, batch=32, clip=5.0, start=None, progress=False):
    """Train a CRNN with CTC on class sequences (labelled_strips' targets); keeps the epoch with the best
    validation exact-reading accuracy (billing digits). clip: each step's gradient norm is cut to it (without,
    some seeds stall on CTC's all-blank plateau; docs/protocol.md). start: a CRNN to go on from (tuning; it is
    not changed), else a new one. progress: a bar per epoch on the console. Returns (model in eval mode,
    history of (epoch, loss, val exact))."""
    from tqdm import tqdm
    torch.manual_seed(seed)
    model = CRNN() if start is None else copy.deepcopy(start)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * ((len(x) + batch - 1) // batch))
    targets = [torch.tensor(y) for y in ys]
    ys_val = [billed([c % BETWEEN for c in y], [c >= BETWEEN for c in y]) for y in ys_val]  # the reading a read gives
    g = torch.Generator().manual_seed(seed)
    best, best_state, history = -1.0, None, []
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for idx in tqdm(torch.randperm(len(x), generator=g).split(batch), desc=f"reader epoch {epoch + 1}/{epochs}",
                        disable=not progress, leave=False):
            xb = x[idx] * (1 + 0.2 * (torch.rand(len(idx), 1, 1, 1, generator=g) - 0.5))  # contrast jitter
            xb = torch.roll(xb, int(torch.randint(-4, 5, (1,), generator=g)), dims=3)  # a few pixels of shift
            logp = model(xb).transpose(0, 1)  # (T, N, C) for ctc_loss
            tgt = [targets[i] for i in idx.tolist()]
            loss = F.ctc_loss(logp, torch.cat(tgt), torch.full((len(idx),), logp.shape[0]),
                              torch.tensor([len(t) for t in tgt]), blank=BLANK, zero_infinity=True)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        exact = np.mean([r == y for r, y in zip(read_strips(model, x_val), ys_val)])
        history.append((epoch + 1, total / len(x), float(exact)))
        if progress:
            tqdm.write(f"reader epoch {epoch + 1}: ctc loss {total / len(x):.4f} val exact {exact:.3f}")
        if exact > best:
            best, best_state = exact, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval(), history


@torch.no_grad()
def read_strips(model, x):
    """Digits of each strip in x (N,1,H,W)."""
    model.eval()
    return [greedy_decode(lp.numpy()).digits for lp in model(x)]


class OwnReader:
    """The trained CRNN under torch, behind the recognisers' interface (read(strip) -> (digits, confidence))."""

    def __init__(self, model, accept=None):
        self.model, self.accept = model.eval(), accept

    def state(self, **meta):
        """What the shipped checkpoint keeps of this reader under "reader": weights and plain facts."""
        return {"state_dict": {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
                "width": self.model.rnn.hidden_size // 2, **meta}

    @classmethod
    def from_state(cls, state):
        model = CRNN(state["width"])
        model.load_state_dict(state["state_dict"])
        return cls(model, accept_rule(state.get("accept")))

    name = "own"

    @torch.no_grad()
    def read(self, image):
        return greedy_decode(self.model(to_strip(image)[None])[0].numpy())
