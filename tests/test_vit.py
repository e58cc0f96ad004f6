"""The masked ViT family: shapes, mask semantics (before softmax, -inf, empty rows), the Q/K
auto-encoder across heads, and the sparse-matmul modules the lowering sees."""
import math

import pytest
import torch

from search_spaces.registry import ir_kind_of
from search_spaces.vit import (SDDMM, VIT_CONFIGS, MaskedAttention, MaskedViT, QKAutoEncoder, SpMM, build_vit,
                               default_compressed_heads, vit_config)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and much faster when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def reference_attention(attn: MaskedAttention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row by row: softmax over the kept keys only; an empty row gives 0."""
    b, n, c = x.shape
    h, hd = attn.heads, attn.head_dim
    qkv = attn.qkv(x).reshape(b, n, 3, h, hd)
    out = torch.zeros(b, n, h, hd, dtype=x.dtype)
    for bi in range(b):
        for hi in range(h):
            m = mask[hi if mask.shape[0] > 1 else 0]
            for i in range(n):
                keys = torch.nonzero(m[i]).flatten()
                if len(keys) == 0:
                    continue
                s = (qkv[bi, i, 0, hi] @ qkv[bi, keys, 1, hi].T) * hd ** -0.5
                out[bi, i, hi] = torch.softmax(s, -1) @ qkv[bi, keys, 2, hi]
    return attn.proj(out.reshape(b, n, c))


def test_configs_tokens_and_shapes():
    assert VIT_CONFIGS["deit-tiny"].tokens == VIT_CONFIGS["deit-small"].tokens == 197
    assert VIT_CONFIGS["deit-small"].head_dim == 64 and VIT_CONFIGS["deit-small"].heads == 6
    assert VIT_CONFIGS["vit-c32-mini"].tokens == VIT_CONFIGS["vit-c32-tiny"].tokens == 65
    assert vit_config("deit-small", image_size=384).tokens == 577
    assert vit_config("deit-small", qk_compressed_heads="auto").qk_compressed_heads == 3
    assert [default_compressed_heads(h) for h in (3, 6, 12)] == [2, 3, 6]
    with pytest.raises(ValueError, match="patch"):
        vit_config("vit-c32-mini", patch=5)
    with pytest.raises(ValueError, match="unknown ViT"):
        vit_config("deit-huge")


def test_deit_parameter_counts_match_the_published_models():
    # timm deit_tiny_patch16_224: 5,717,416 parameters; deit_small_patch16_224: 22,050,664
    with torch.device("meta"):                      # shapes only: no memory, no initialisation cost
        tiny, small = MaskedViT(vit_config("deit-tiny")), MaskedViT(vit_config("deit-small"))
    assert sum(p.numel() for p in tiny.parameters()) == 5_717_416
    assert sum(p.numel() for p in small.parameters()) == 22_050_664


def test_small_vit_forward_and_masks_per_block():
    model = build_vit("vit-c32-mini", depth=2)
    x = torch.randn(3, 3, 32, 32)
    assert model(x).shape == (3, 10)
    masks = torch.rand(2, 3, 65, 65) < 0.3
    model.set_attention_masks(masks)
    assert all(torch.equal(m, masks[i]) for i, m in enumerate(model.attention_masks()))
    assert model.attention_modules()[0].qk.density == pytest.approx(float(masks[0].float().mean()))
    with pytest.raises(ValueError, match="need 2 masks"):
        model.set_attention_masks(masks[:1])
    with pytest.raises(ValueError, match=r"block 1 mask: expected shape \(3, 65, 65\)"):
        model.set_attention_masks([None, torch.ones(64, 64, dtype=torch.bool)])


def test_mask_is_applied_before_softmax_per_head_and_shared():
    torch.manual_seed(0)
    attn = MaskedAttention(dim=24, heads=3, tokens=9).double()
    x = torch.randn(2, 9, 24, dtype=torch.float64)
    mask = torch.rand(3, 9, 9) < 0.4
    mask[:, :, 0] = True
    attn.set_mask(mask)
    torch.testing.assert_close(attn(x), reference_attention(attn, x, mask))
    shared = torch.rand(9, 9) < 0.5
    shared[:, 2] = True
    attn.set_mask(shared)
    torch.testing.assert_close(attn(x), reference_attention(attn, x, shared.unsqueeze(0)))
    attn.set_mask(shared.expand(3, 9, 9))
    torch.testing.assert_close(attn(x), reference_attention(attn, x, shared.unsqueeze(0)))
    # a fully dense mask is the unmasked attention
    attn.set_mask(torch.ones(9, 9, dtype=torch.bool))
    dense = attn(x)
    attn.set_mask(None)
    torch.testing.assert_close(dense, attn(x))


def test_fully_masked_rows_give_zero_and_no_nan():
    torch.manual_seed(1)
    attn = MaskedAttention(dim=16, heads=2, tokens=6)
    mask = torch.rand(2, 6, 6) < 0.5
    mask[0, 3] = False                     # head 0, query 3 sees nothing
    mask[1] = False                        # head 1 sees nothing at all
    attn.set_mask(mask)
    x = torch.randn(4, 6, 16, requires_grad=True)
    out = attn(x)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in attn.parameters())
    torch.testing.assert_close(out, reference_attention(attn, x.detach(), mask), rtol=1e-5, atol=1e-6)
    # head 1 contributes nothing: zero its V weights and the output does not change
    with torch.no_grad():
        ctx = {}
        attn.av.register_forward_hook(lambda m, i, o: ctx.setdefault("o", o))
        attn(x)
    assert torch.count_nonzero(ctx["o"][:, 1]) == 0 and torch.count_nonzero(ctx["o"][:, 0, 3]) == 0


def test_one_token_per_row_picks_that_value():
    attn = MaskedAttention(dim=8, heads=1, tokens=5)
    perm = torch.tensor([2, 0, 4, 1, 3])
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[torch.arange(5), perm] = True
    attn.set_mask(mask)
    x = torch.randn(1, 5, 8)
    v = attn.qkv(x)[..., 16:]
    torch.testing.assert_close(attn(x), attn.proj(v[:, perm]))


def test_577_tokens_sparse_mask():
    torch.manual_seed(2)
    attn = MaskedAttention(dim=32, heads=2, tokens=577)
    mask = torch.rand(2, 577, 577) < 0.01
    mask[:, :, 0] = True
    attn.set_mask(mask)
    out = attn(torch.randn(1, 577, 32))
    assert out.shape == (1, 577, 32) and torch.isfinite(out).all()


def test_autoencoder_across_heads():
    ae = QKAutoEncoder(6)
    assert (ae.compressed, ae.enc_q.in_features, ae.enc_q.out_features) == (3, 6, 3)
    q, k = torch.randn(2, 6, 5, 4), torch.randn(2, 6, 5, 4)
    qc, kc = ae.encode(q, k)
    assert qc.shape == kc.shape == (2, 3, 5, 4)
    with torch.no_grad():
        q2, k2, loss = ae(q, k)
    assert q2.shape == q.shape and float(loss) == pytest.approx(float(torch.dist(q2, q) + torch.dist(k2, k)))
    # each (token, channel) position is encoded independently across heads
    torch.testing.assert_close(qc[1, :, 3, 2], ae.enc_q(q[1, :, 3, 2]))


def test_autoencoder_identity_when_uncompressed_and_v_untouched():
    torch.manual_seed(3)
    plain = build_vit("vit-c32-mini", depth=2)
    same = build_vit("vit-c32-mini", depth=2, qk_compressed_heads=3)        # 3 -> 3, identity init
    missing, unexpected = same.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and all("autoencoder" in k for k in missing)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(same(x), plain(x))
    assert float(same.recon_loss().detach()) == 0.0
    lossy = build_vit("vit-c32-mini", depth=2, qk_compressed_heads=2)
    lossy.load_state_dict(plain.state_dict(), strict=False)
    out = lossy(x)
    recon = lossy.recon_loss()
    assert float(recon.detach()) > 0
    (out.sum() + recon).backward()
    assert lossy.blocks[0].attn.autoencoder.enc_k.weight.grad.abs().sum() > 0
    # V is never encoded: with the decoders zeroed, Q = K = 0, so every query averages V uniformly
    attn = MaskedAttention(dim=12, heads=3, tokens=4, qk_compressed_heads=2)
    with torch.no_grad():
        for lin in (attn.autoencoder.dec_q, attn.autoencoder.dec_k):
            lin.weight.zero_()
            lin.bias.zero_()
    xa = torch.randn(2, 4, 12)
    v = attn.qkv(xa)[..., 24:]
    torch.testing.assert_close(attn(xa), attn.proj(v.mean(1, keepdim=True).expand(2, 4, 12)))


def test_sparse_matmul_modules_lower_as_sparse_matmul():
    assert ir_kind_of(SDDMM) == ir_kind_of(SpMM) == "sparse_matmul"
    mm = SDDMM()
    assert mm.density == 1.0
    mm.set_mask(torch.tensor([[[True, False], [False, False]]]))
    assert mm.density == 0.25
    scores = mm(torch.ones(1, 1, 2, 3), torch.ones(1, 1, 3, 2))
    assert scores[0, 0, 0, 0] == 3 and math.isinf(scores[0, 0, 0, 1]) and (scores[0, 0, 1] == 0).all()
