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


def test_attention_gate_matches_eq_1_2_by_hand():
    torch.manual_seed(0)
    g = AttentionGate(skip_ch=3, gate_ch=5, inter_ch=4)
    xb, xt = torch.randn(1, 3, 8, 8), torch.randn(1, 5, 4, 4)
    out, alpha = g(xb, xt)
    # eq. (1): q = psi^T relu(W_t^T x_t + W_b^T x_b + b) + b_psi, with x_b taken on x_t's grid (stride 2)
    wb, wt, wp = g.w_b.weight[:, :, 0, 0], g.w_t.weight[:, :, 0, 0], g.psi.weight[:, :, 0, 0]
    xb2 = xb[:, :, ::2, ::2]
    q = torch.einsum("oc,nchw->nohw", wp, torch.relu(
        torch.einsum("oc,nchw->nohw", wb, xb2) + torch.einsum("oc,nchw->nohw", wt, xt) + g.w_t.bias[None, :, None, None]
    )) + g.psi.bias[None, :, None, None]
    ref = F.interpolate(torch.sigmoid(q), size=(8, 8), mode="bilinear", align_corners=False)  # eq. (2), resampled
    torch.testing.assert_close(alpha, ref)
    torch.testing.assert_close(out, xb * ref)


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
