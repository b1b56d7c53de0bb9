"""The U-Net family of the paper: one encoder-decoder, attention gates at chosen skips.

Levels are counted from the deepest skip: gate 1 sits on the skip just above the
bottleneck, gate 4 on the full-resolution skip. `gates=()` is the plain U-Net, and it
is the attention U-Net with its gates removed and nothing else changed.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

DEPTH = 5  # encoder levels; there are DEPTH - 1 skips


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BatchNorm -> ReLU) twice."""

    def __init__(self, cin, cout):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )


class PointwiseConv(nn.Conv2d):
    """1x1 conv to a few channels, computed as a matmul over channels (same weights, same result).

    On a CPU, mkldnn's conv path is far slower at it: for the 8->2 head at 128 px a training
    step spent ~11 ms there (NCHW, two threads) for 4 MFLOP.
    """

    def __init__(self, cin, cout):
        super().__init__(cin, cout, 1, bias=True)

    def forward(self, x):
        return torch.einsum("nchw,kc->nkhw", x, self.weight.flatten(1)) + self.bias[:, None, None]


class AttentionGate(nn.Module):
    """Paper Fig. 2, eq. (1)-(2): alpha = sigmoid(psi(relu(W_b X_b + W_t X_t))), resampled, times X_b.

    X_t, the gating signal, is the decoder feature one level deeper than the skip X_b
    (the tensor that is about to be upsampled and joined to X_b), so it carries the
    coarser, more semantic context. W_b is a 2x2 conv at stride 2 that brings X_b down to
    X_t's grid with every skip pixel feeding it (Oktay et al. 2018's grid attention; a 1x1
    conv at stride 2 would read one skip pixel in four). The additive attention is computed
    there, and only the one-channel coefficient map is resampled (bilinear) back up to X_b's
    size, as the paper's "X4 obtains alpha through resampling" says.
    """

    def __init__(self, skip_ch, gate_ch, inter_ch):
        super().__init__()
        self.w_b = nn.Conv2d(skip_ch, inter_ch, 2, stride=2, bias=False)
        self.w_t = nn.Conv2d(gate_ch, inter_ch, 1, bias=True)  # its bias is h_Xb of eq. (1)
        self.psi = PointwiseConv(inter_ch, 1)  # bias h_psi

    def forward(self, x_b, x_t):
        """Return the gated skip and the coefficient map alpha (N,1,H,W) in [0, 1]."""
        q = self.psi(F.relu(self.w_b(x_b) + self.w_t(x_t)))
        alpha = F.interpolate(torch.sigmoid(q), size=x_b.shape[2:], mode="bilinear", align_corners=False)
        return x_b * alpha, alpha


class UpBlock(nn.Module):
    """2x2 transposed conv up, optional gate on the skip, concat, DoubleConv."""

    def __init__(self, cin, cout, gated):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.gate = AttentionGate(cout, cin, max(cout // 2, 1)) if gated else None
        self.conv = DoubleConv(2 * cout, cout)

    def forward(self, x, skip):
        alpha = None
        if self.gate is not None:
            skip, alpha = self.gate(skip, x)
        return self.conv(torch.cat([skip, self.up(x)], dim=1)), alpha


class UNet(nn.Module):
    """5-level U-Net with widths base*(1,2,4,8,16) and 2-class logits; `gates` picks gated skips."""

    def __init__(self, base=64, gates=(), in_ch=3, n_classes=2):
        super().__init__()
        gates = tuple(sorted(set(int(g) for g in gates)))
        if any(g < 1 or g > DEPTH - 1 for g in gates):
            raise ValueError(f"gate positions must lie in 1..{DEPTH - 1} (1 = deepest skip), got {gates}")
        self.base, self.gates = base, gates
        widths = [base * 2**i for i in range(DEPTH)]
        self.down = nn.ModuleList([DoubleConv(in_ch, widths[0])] + [DoubleConv(widths[i - 1], widths[i]) for i in range(1, DEPTH)])
        # up[0] joins the deepest skip (position 1), up[-1] the shallowest (position DEPTH-1)
        self.up = nn.ModuleList(
            UpBlock(widths[DEPTH - i], widths[DEPTH - 1 - i], gated=i in gates) for i in range(1, DEPTH)
        )
        self.head = PointwiseConv(widths[0], n_classes)

    @torch.no_grad()
    def start_at_prior(self, foreground):
        """Set the head's bias so the untrained net predicts the foreground share everywhere (Lin et al. 2017).

        From the default (p = 0.5 everywhere) the first steps of cross-entropy are all about the
        ~97 % background pixels; one CE-only seed ended with every region pixel on dead features
        and a logit gap stuck below 0 (docs/protocol.md).
        """
        self.head.bias.copy_(torch.tensor([0.0, math.log(foreground / (1 - foreground))]))

    def forward(self, x, return_attention=False):
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        attention = {}
        for pos, block in enumerate(self.up, start=1):
            x, alpha = block(x, skips.pop())
            if alpha is not None:
                attention[pos] = alpha
        logits = self.head(x)
        return (logits, attention) if return_attention else logits


MODELS = ("unet", "attunet")


def build_model(name, base, gates=(1, 2)):
    """`unet` is the AttU with no gates; `attunet` uses `gates` (default: the paper's 1+2)."""
    if name == "unet":
        return UNet(base, gates=())
    if name == "attunet":
        if not gates:
            raise ValueError("attunet needs at least one gate position; use model=unet for none")
        return UNet(base, gates=gates)
    raise ValueError(f"unknown model {name!r}: expected one of {MODELS}")
