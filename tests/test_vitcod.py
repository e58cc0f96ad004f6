"""ViTCoD's algorithm: attention maps averaged over data, info_cut / target-sparsity masks, polarization
(one symmetric permutation), the Q/K auto-encoder on a trained model, fine-tuning with fixed masks.
Edge cases: fully dense mask, one token kept per row, no global tokens, 577 tokens, 0..99 % sparsity."""
import copy

import pytest
import torch

from search_spaces.vit import MaskedAttention, build_vit
from search_spaces.vitcod import (add_autoencoders, collect_attention_maps, evaluate, finetune, generate_masks,
                                  info_cut_mask, init_autoencoders_pca, mask_sparsity, polarize, sparsity_mask,
                                  unpermute)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and much faster when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_maps(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def vitcod_info_cutoff_count(row: torch.Tensor, info: float) -> int:
    """Kept entries of one row by ViTCoD's gen_mask.info_cutoff loop (its mask marks the pruned ones)."""
    sorted_row = sorted(row.tolist(), reverse=True)
    total, idx = 0.0, 0
    while total < info and idx < len(sorted_row):
        total += sorted_row[idx]
        idx += 1
    pruned = max(0, len(sorted_row) - idx - 1)          # rank <= n - idx - 2
    return len(sorted_row) - pruned


def test_info_cut_hand_example_and_vitcod_loop():
    row = torch.tensor([[0.1, 0.5, 0.1, 0.3]], dtype=torch.float64)
    # 0.5 < 0.6, 0.5 + 0.3 >= 0.6 -> idx = 2, plus one -> keep 0.5, 0.3 and the first 0.1
    assert info_cut_mask(row, 0.6, keep_cls=False).tolist() == [[True, True, False, True]]
    assert info_cut_mask(row, 0.0, keep_cls=False).sum() == 1                     # one per row
    assert info_cut_mask(row, 1.5, keep_cls=False).all()
    maps = random_maps(4, 30, 30)
    for info in (0.05, 0.3, 0.7, 0.9, 0.99):
        counts = info_cut_mask(maps, info, keep_cls=False).sum(-1)
        expected = torch.tensor([[vitcod_info_cutoff_count(maps[h, i], info) for i in range(30)] for h in range(4)])
        assert torch.equal(counts, expected), info
    m = info_cut_mask(maps, 0.3)
    assert m[:, 0, :].all() and m[:, :, 0].all()                                  # CLS row and column


@pytest.mark.parametrize("tokens", [65, 197, 577])
def test_target_sparsity_is_reached_exactly_and_keeps_the_largest(tokens):
    maps = random_maps(2, tokens, tokens, seed=tokens)
    for s in (0.0, 0.5, 0.7, 0.9, 0.99):
        m = sparsity_mask(maps, s)
        assert m.shape == maps.shape and m.any(-1).all() and m[:, 0].all() and m[:, :, 0].all()
        forced = 2 * tokens - 1 + int((maps[0].argmax(-1) != 0).sum().clamp(max=tokens))
        budget = round((1 - s) * tokens * tokens)
        if budget >= forced:                       # reachable: exactly the budget per head
            assert (m.flatten(1).sum(-1) == budget).all(), (tokens, s)
            # outside the forced entries, every kept value >= every dropped value
            free = m.clone()
            free[:, 0, :] = free[:, :, 0] = False
            dropped = ~m
            for h in range(2):
                if free[h].any() and dropped[h].any():
                    assert maps[h][free[h]].min() >= maps[h][dropped[h]].max() - 1e-12
        else:                                      # 65 tokens at 99 %: the forced entries alone
            assert mask_sparsity(m) < s
    assert mask_sparsity(sparsity_mask(maps, 0.0)) == 0.0
    assert abs(mask_sparsity(sparsity_mask(random_maps(1, 577, 577), 0.99)) - 0.99) < 1e-5


def test_one_token_per_row_and_fully_dense_masks():
    maps = random_maps(3, 40, 40, seed=4)
    one = sparsity_mask(maps, 1.0, keep_cls=False, min_per_row=1)
    assert (one.sum(-1) == 1).all() and torch.equal(one.float().argmax(-1), maps.argmax(-1))
    assert generate_masks(maps, info_cut=0.0, keep_cls=False).sum(-1).eq(1).all()
    full = generate_masks(maps, sparsity=0.0)
    assert full.all()
    pol = polarize(full[0])
    assert pol.num_global.tolist() == [40] and pol.sparse_part(0).numel() == 0
    assert torch.equal(pol.perm[0], torch.arange(40))
    with pytest.raises(ValueError, match="exactly one"):
        generate_masks(maps)


def test_polarization_hand_example():
    n = 8
    m = torch.eye(n, dtype=torch.bool)
    m[:, 5] = True                              # column 5 kept by every query
    m[:6, 3] = True                             # column 3 by 6 of 8
    m[0, 6] = True                              # column 6 by 2 of 8 (with the diagonal): 2 > 0.25 * 8 is false
    pol = polarize(m, threshold=0.25)
    assert pol.num_global.tolist() == [2]
    assert pol.perm[0].tolist() == [3, 5, 0, 1, 2, 4, 6, 7]       # one stable partition
    assert torch.equal(pol.mask[0], m[pol.perm[0]][:, pol.perm[0]])
    assert pol.dense_block(0).shape == (8, 2)
    assert pol.dense_block(0)[:, 1].all()                          # column 5 is now column 1
    assert torch.equal(unpermute(pol)[0], m)
    st = pol.stats()
    assert st["dense_nnz"] == 8 + 6 and st["sparse_nnz"] == int(m.sum()) - 14
    assert st["dense_block_entries"] == 16


def test_no_global_tokens():
    n = 50
    band = (torch.arange(n)[:, None] - torch.arange(n)[None]).abs() <= 2
    pol = polarize(band)
    assert pol.num_global.tolist() == [0] and torch.equal(pol.perm[0], torch.arange(n))
    assert pol.dense_block(0).shape == (n, 0) and torch.equal(pol.sparse_part(0), band)


def test_polarization_is_a_relabelling_of_tokens():
    """Attention with tokens and mask permuted by the polarization == permuted original output."""
    torch.manual_seed(5)
    n = 17
    attn = MaskedAttention(dim=12, heads=1, tokens=n)
    mask = sparsity_mask(random_maps(1, n, n, seed=7), 0.7)
    pol = polarize(mask)
    assert 0 < int(pol.num_global[0]) < n
    x = torch.randn(2, n, 12)
    attn.set_mask(mask)
    ref = attn(x)
    attn.set_mask(pol.mask)
    perm = pol.perm[0]
    torch.testing.assert_close(attn(x[:, perm]), ref[:, perm])


def test_577_token_polarization_and_sparsity_range():
    maps = random_maps(2, 577, 577, seed=8)
    for s in (0.0, 0.5, 0.9, 0.99):
        m = sparsity_mask(maps, s)
        pol = polarize(m)
        assert torch.equal(unpermute(pol), m)
        st = pol.stats()
        assert st["dense_nnz"] + st["sparse_nnz"] == int(m.sum())


def tiny_model_and_data(depth=2):
    torch.manual_seed(0)
    model = build_vit("vit-c32-mini", depth=depth, embed_dim=24, heads=3, num_classes=3)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 3, 32, 32, generator=g)
    y = torch.arange(48) % 3
    x[torch.arange(48), y, :8, :8] += 3.0                # a learnable class signal
    return model, x, y


def test_collect_attention_maps_average_over_images():
    model, x, _ = tiny_model_and_data()
    maps = collect_attention_maps(model, [(x[:6], None), (x[6:12], None)])
    assert maps.shape == (2, 3, 65, 65)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 3, 65))
    one_batch = collect_attention_maps(model, [x[:12]])
    torch.testing.assert_close(maps, one_batch)
    capped = collect_attention_maps(model, [x[:12]], max_images=5)
    torch.testing.assert_close(capped, collect_attention_maps(model, [x[:5]]))
    masks = sparsity_mask(maps, 0.9)
    model.set_attention_masks(masks)
    masked_maps = collect_attention_maps(model, [x[:6]])
    assert (masked_maps[~masks] == 0).all()
    assert not model.attention_modules()[0].recording


def test_finetune_with_fixed_masks_learns_and_keeps_masks():
    model, x, y = tiny_model_and_data()
    maps = collect_attention_maps(model, [x])
    masks = sparsity_mask(maps, 0.9)

    def train_batches(epoch):
        g = torch.Generator().manual_seed(epoch)
        idx = torch.randperm(48, generator=g)
        return [(x[idx[i:i + 16]], y[idx[i:i + 16]]) for i in range(0, 48, 16)]

    before = evaluate(model, [(x, y)])
    hist = finetune(model, masks, train_batches, epochs=6, lr=3e-3, eval_batches=lambda: [(x, y)])
    assert len(hist.epochs) == 6 and hist.epochs[-1]["loss"] < hist.epochs[0]["loss"]
    assert hist.last["eval_top1"] > max(before, 0.5)
    assert all(torch.equal(m, masks[i]) for i, m in enumerate(model.attention_masks()))


def test_autoencoder_on_trained_model_pca_beats_identity_and_trains():
    model, x, y = tiny_model_and_data()
    ident = add_autoencoders(copy.deepcopy(model))           # 3 -> 2, random init
    assert ident.cfg.qk_compressed_heads == 2
    pca = copy.deepcopy(ident)
    init_autoencoders_pca(pca, [x], max_images=48)
    with torch.no_grad():
        ident(x)
        pca(x)
    assert float(pca.recon_loss()) < float(ident.recon_loss())
    hist = finetune(pca, None, lambda e: [(x, y)], epochs=2, lr=1e-3, recon_weight=1e-4)
    assert hist.last["recon"] > 0
    model_no_ae, *_ = tiny_model_and_data()
    with pytest.raises(ValueError, match="add_autoencoders"):
        init_autoencoders_pca(model_no_ae, [x])


def test_numpy_polarization_of_the_hardware_model_agrees():
    from hw_models.engines.sparse_attention import polarize_mask
    masks = sparsity_mask(random_maps(4, 60, 60, seed=12), 0.85)
    pol = polarize(masks)
    perm, permuted, g = polarize_mask(masks.numpy())
    assert (perm == pol.perm.numpy()).all() and (permuted == pol.mask.numpy()).all()
    assert g.tolist() == pol.num_global.tolist()
