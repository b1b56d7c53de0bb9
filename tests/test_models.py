import numpy as np
import pytest
import torch
import torch.nn.functional as F

from meterseg.models import AttentionGate, UNet, build_model


@pytest.mark.parametrize("gates", [(), (1,), (2,), (1, 2), (1, 2, 3, 4)])
def test_shapes_and_gate_positions(gates):
    m = UNet(base=4, gates=gates).eval()
    logits, att = m(torch.randn(2, 3, 64, 64), return_attention=True)
    assert logits.shape == (2, 2, 64, 64)
    assert sorted(att) == sorted(gates)
    for pos, a in att.items():
        side = 64 // 2 ** (4 - pos)  # gate 1 is on the deepest skip (1/8 resolution), gate 4 at full size
        assert a.shape == (2, 1, side, side)
        assert 0 <= a.min() and a.max() <= 1
    assert sum(isinstance(mod, AttentionGate) for mod in m.modules()) == len(gates)


def test_unet_is_attunet_without_gates():
    att, plain = build_model("attunet", 8, (1, 2)), build_model("unet", 8)
    plain_keys, att_keys = set(plain.state_dict()), set(att.state_dict())
    assert plain_keys < att_keys
    assert all(".gate." in k for k in att_keys - plain_keys)
    for k in plain_keys:
        assert plain.state_dict()[k].shape == att.state_dict()[k].shape


def test_paper_widths():
    m = UNet(base=64, gates=(1, 2))
    assert [b[0].out_channels for b in m.down] == [64, 128, 256, 512, 1024]


def _bilinear_x2_numpy(a):
    """Bilinear upsampling by 2 of (H, W), half-pixel centres, edges clamped: written out by hand."""
    def axis(n):  # output i samples input (i + 0.5) / 2 - 0.5: weights 3/4 and 1/4 of two neighbours
        i = np.arange(2 * n)
        near = i // 2
        far = np.clip(np.where(i % 2 == 0, near - 1, near + 1), 0, n - 1)
        return near, far
    rn, rf = axis(a.shape[0])
    cn, cf = axis(a.shape[1])
    rows = 0.75 * a[rn] + 0.25 * a[rf]
    return 0.75 * rows[:, cn] + 0.25 * rows[:, cf]


def test_attention_gate_matches_eq_1_2_written_in_numpy():
    """A second implementation of eq. (1)-(2) with 2x2 stride-2 W_b, in loops and numpy, not torch ops."""
    torch.manual_seed(0)
    g = AttentionGate(skip_ch=3, gate_ch=5, inter_ch=4)
    xb, xt = torch.randn(1, 3, 8, 8), torch.randn(1, 5, 4, 4)
    out, alpha = g(xb, xt)
    wb = g.w_b.weight.detach().numpy()  # (inter, skip, 2, 2)
    wt, bt = g.w_t.weight.detach().numpy()[:, :, 0, 0], g.w_t.bias.detach().numpy()
    wp, bp = g.psi.weight.detach().numpy()[0, :, 0, 0], g.psi.bias.detach().numpy()[0]
    b, t = xb.numpy()[0], xt.numpy()[0]
    q = np.zeros((4, 4))
    for y in range(4):
        for x in range(4):
            patch = b[:, 2 * y:2 * y + 2, 2 * x:2 * x + 2]  # the 2x2 skip pixels under this gating pixel
            hidden = np.maximum(0, (wb * patch[None]).sum(axis=(1, 2, 3)) + wt @ t[:, y, x] + bt)
            q[y, x] = wp @ hidden + bp
    ref = _bilinear_x2_numpy(1 / (1 + np.exp(-q)))
    np.testing.assert_allclose(alpha.detach().numpy()[0, 0], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.detach().numpy(), xb.numpy() * ref, rtol=1e-5, atol=1e-6)


def test_every_skip_pixel_feeds_the_gate():
    torch.manual_seed(0)
    g = AttentionGate(skip_ch=2, gate_ch=3, inter_ch=4)
    xb = torch.randn(1, 2, 8, 8, requires_grad=True)
    _, alpha = g(xb, torch.randn(1, 3, 4, 4))
    alpha.sum().backward()
    assert (xb.grad.abs().sum(dim=1) > 0).all()  # a stride-2 1x1 W_b would leave 3 pixels in 4 at zero


def test_bad_model_settings():
    with pytest.raises(ValueError, match="gate positions"):
        UNet(4, gates=(5,))
    with pytest.raises(ValueError, match="at least one gate"):
        build_model("attunet", 4, ())
    with pytest.raises(ValueError, match="unknown model"):
        build_model("segformer", 4)


def test_pointwise_conv_matches_conv2d():
    from meterseg.models import PointwiseConv
    torch.manual_seed(0)
    pw = PointwiseConv(5, 2)
    x = torch.randn(3, 5, 7, 9)
    torch.testing.assert_close(pw(x), F.conv2d(x, pw.weight, pw.bias))
    xc = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(pw(xc), F.conv2d(x, pw.weight, pw.bias))


def test_inference_model_matches_the_trained_one():
    """BatchNorm folded into the convs and channels_last change nothing but rounding."""
    import copy
    from meterseg.checkpoint import for_inference
    torch.manual_seed(0)
    m = UNet(base=4, gates=(1, 2))
    m.train()
    for _ in range(3):  # give BatchNorm non-trivial running statistics
        m(torch.randn(4, 3, 32, 32) * 2 + 1)
    m.eval()
    fast = for_inference(copy.deepcopy(m))
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in fast.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref, (out, att) = m(x, return_attention=True), fast(x.contiguous(memory_format=torch.channels_last), return_attention=True)
    torch.testing.assert_close(out, ref[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(att[1], ref[1][1], rtol=1e-4, atol=1e-4)


def test_start_at_prior_makes_the_first_prediction_the_foreground_share():
    m = build_model("attunet", 4, (1, 2)).eval()
    m.start_at_prior(0.03)
    with torch.no_grad():
        m.head.weight.zero_()  # leave only the bias: p(foreground) must be the share exactly
        p = torch.softmax(m(torch.randn(2, 3, 32, 32)), dim=1)[:, 1]
    assert torch.allclose(p, torch.full_like(p, 0.03), atol=1e-6)
