"""The NASA hybrid space as data: candidate decoding, per-block rules, the architecture record, the torch
model and supernet built from it, and (when the lowering is present) the workload IR built from it."""
import json
import random

import pytest
import torch

from search_spaces.nasa_space import (EXPANSIONS, KERNELS, OP_TYPES, Architecture, Candidate, build_block,
                                      build_model, build_space, parse_architecture, space_from_key)
from search_spaces.adder import AdderConv2d
from search_spaces.shift import ShiftConv2d
from search_spaces.supernet import Supernet

CIFAR = build_space("nasa", (3, 32, 32), 10)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and much faster beside other jobs (restored after)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


DIGITS = build_space("nasa", (1, 8, 8), 10)


# --------------------------------------------------------------------------------------------
# candidates


@pytest.mark.parametrize("name, expect", [
    ("conv_k3_e1", ("conv", 3, 1)), ("shift_k5_e6", ("shift", 5, 6)), ("adder_k3_e3", ("adder", 3, 3)),
    ("skip", ("skip", 0, 0)),
])
def test_candidate_parse_and_name_round_trip(name, expect):
    c = Candidate.parse(name)
    assert (c.op_type, c.kernel, c.expansion) == expect
    assert c.name == name and Candidate.parse(c.name) == c


@pytest.mark.parametrize("bad", ["conv_k4_e1", "mult_k3_e1", "conv_k3", "conv_k3_e0", "", "SKIP", "skip_k3_e1"])
def test_candidate_parse_rejects_bad_names(bad):
    with pytest.raises(ValueError):
        Candidate.parse(bad)


# --------------------------------------------------------------------------------------------
# the space


def test_cifar_space_is_nasas_22_blocks_with_adders_excluded_at_the_ends():
    assert CIFAR.tier == "cifar" and len(CIFAR) == 22
    # NASA: adders excluded from the first and last three blocks, allowed everywhere else
    for b in CIFAR.blocks:
        expect_adder = 3 <= b.index < 19
        assert ("adder" in b.allowed_types) == expect_adder, b.index
        assert set(b.allowed_types) >= {"conv", "shift"}
    # every type x kernel {3,5} x expansion {1,3,6}, plus skip where the block is shape-preserving
    b = CIFAR.blocks[10]
    assert len(b.candidates) == 3 * 2 * 3 + 1 and b.allow_skip
    assert {(c.kernel, c.expansion) for c in b.candidates if not c.is_skip} == {(k, e) for k in KERNELS for e in EXPANSIONS}
    # strides adapted to 32x32: 32 -> 4 at the head; FBNet widths
    assert CIFAR.stem_stride == 1 and CIFAR.feature_size == 4
    assert [b.out_channels for b in CIFAR.blocks][:2] == [16, 24] and CIFAR.blocks[-1].out_channels == 352


def test_skip_only_where_the_block_is_the_identity():
    for space in (CIFAR, DIGITS, build_space("nasa", (3, 224, 224), 1000)):
        for b in space.blocks:
            identity = b.stride == 1 and b.in_channels == b.out_channels
            assert b.allow_skip == identity
            assert ("skip" in b.candidate_names) == identity


def test_space_adapts_to_the_resolution():
    imagenet = build_space("nasa", (3, 224, 224), 1000)
    assert imagenet.tier == "imagenet" and imagenet.stem_stride == 2 and imagenet.feature_size == 7
    assert DIGITS.tier == "compact" and len(DIGITS) < len(CIFAR) and DIGITS.feature_size == 2
    assert max(b.out_channels for b in DIGITS.blocks) <= 32
    # adders still excluded at both ends of the short backbone, allowed in the middle
    assert "adder" not in DIGITS.blocks[0].allowed_types and "adder" not in DIGITS.blocks[-1].allowed_types
    assert any("adder" in b.allowed_types for b in DIGITS.blocks)
    narrow = build_space("nasa", (3, 32, 32), 10, width_mult=0.5, depth_mult=0.5)
    assert len(narrow) == 12 and narrow.blocks[-1].out_channels == 176
    assert all(b.out_channels % 4 == 0 for b in narrow.blocks)


def test_space_key_round_trip_and_errors():
    for space in (CIFAR, DIGITS, build_space("nasa", (3, 32, 32), 100, 0.25, 0.5)):
        assert space_from_key(space.key) == space
    assert build_space("nasa", (3, 32, 32), 100, 0.25, 0.5).key == "nasa@3x32x32/100/w0.25/d0.5"
    for bad in ("nasa", "nasa@3x32/10", "nasa@3x32x32"):
        with pytest.raises(ValueError):
            space_from_key(bad)
    with pytest.raises(ValueError, match="unknown search space"):
        build_space("darts", (3, 32, 32), 10)
    with pytest.raises(ValueError, match="square"):
        build_space("nasa", (3, 32, 16), 10)


# --------------------------------------------------------------------------------------------
# decoding and the record


def test_decode_indices_names_and_encode_are_inverse():
    rng = random.Random(0)
    for _ in range(50):
        idx = [rng.randrange(len(b.candidates)) for b in CIFAR.blocks]
        arch = CIFAR.decode(idx)
        assert list(CIFAR.encode(arch)) == idx
        assert CIFAR.decode(list(arch.ops)) == arch
        assert [b.candidates[i].name for b, i in zip(CIFAR.blocks, idx)] == list(arch.ops)


def test_decode_rejects_out_of_range_and_disallowed_choices():
    with pytest.raises(ValueError, match="expected 22 choices"):
        CIFAR.decode([0] * 21)
    with pytest.raises(ValueError, match="out of range"):
        CIFAR.decode([0] * 21 + [99])
    ops = ["conv_k3_e1"] * 22
    ops[0] = "adder_k3_e1"                       # adders are not allowed in block 0
    with pytest.raises(ValueError, match="not allowed"):
        CIFAR.decode(ops)
    ops = ["conv_k3_e1"] * 22
    ops[1] = "skip"                              # block 1 changes width: no skip
    with pytest.raises(ValueError, match="not allowed"):
        CIFAR.decode(ops)


def test_architecture_record_round_trips_through_string_and_json():
    arch = CIFAR.sample(7)
    s = arch.to_string()
    assert s.startswith("nasa@3x32x32/10:") and s.count(",") == 21
    assert Architecture.from_string(s) == arch
    d = json.loads(arch.to_json())
    assert d["format"] == "codesign-arch/1" and d["ops"] == list(arch.ops)
    assert Architecture.from_dict(d) == arch and parse_architecture(arch.to_json()) == arch
    assert parse_architecture(s) == arch and parse_architecture(d) == arch
    assert sum(d["counts"].values()) == 22
    d["string"] = d["string"].replace("nasa@3x32x32/10", "nasa@3x32x32/100")
    with pytest.raises(ValueError, match="inconsistent"):
        Architecture.from_dict(d)


def test_counts_family_and_uniform():
    conv = CIFAR.uniform("conv_k3_e6")
    assert conv.family == "conv" and conv.is_all_conv and conv.counts()["conv"] == 22
    adder = CIFAR.uniform("adder_k3_e3", fallback="shift_k3_e3")
    assert adder.counts() == {"conv": 0, "shift": 6, "adder": 16, "skip": 0} and adder.family == "hybrid"
    with pytest.raises(ValueError):
        CIFAR.uniform("adder_k3_e3")             # block 0 cannot take it and there is no fallback


# --------------------------------------------------------------------------------------------
# torch model


def _convs(model):
    out = []
    for m in model.modules():
        if isinstance(m, (ShiftConv2d, AdderConv2d)):
            out.append("shift" if isinstance(m, ShiftConv2d) else "adder")
        elif type(m) is torch.nn.Conv2d:
            out.append("conv")
    return out


def test_model_matches_its_record():
    arch = DIGITS.decode(["shift_k3_e1", "adder_k5_e3", "skip", "conv_k3_e6", "adder_k3_e1", "shift_k5_e3"])
    model = build_model(arch, seed=0)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    # stem conv, then per block (expand if e != 1) + depthwise + project, then head conv
    expect = ["conv"]
    for c in arch.candidates:
        if not c.is_skip:
            expect += [c.op_type] * (3 if c.expansion != 1 else 2)
    expect += ["conv"]
    assert _convs(model) == expect
    dw = model.blocks[1].dw
    assert isinstance(dw, AdderConv2d) and dw.kernel_size == (5, 5) and dw.groups == dw.in_channels == 24
    assert isinstance(model.blocks[2], torch.nn.Identity)
    # adders and shifts run at the accelerator's 8-bit activation width
    assert dw.ir_bits() == (8, 8) and model.blocks[0].dw.ir_bits() == (8, 5)


def test_model_init_is_a_pure_function_of_record_and_seed():
    arch = DIGITS.sample(1)
    a, b, c = build_model(arch, seed=3), build_model(arch.to_string(), seed=3), build_model(arch, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


def test_build_block_skip_needs_identity_shape():
    assert isinstance(build_block("skip", 16, 16, 1), torch.nn.Identity)
    with pytest.raises(ValueError):
        build_block("skip", 16, 24, 1)


# --------------------------------------------------------------------------------------------
# supernet: channel-sliced shared weights compute exactly the standalone network


def test_supernet_shares_sliced_weights_and_exports_the_standalone_network():
    torch.manual_seed(0)
    net = Supernet(DIGITS, mode="hard")
    # one weight set per (type, kernel) per block, not per expansion
    assert len(net.blocks[2].paths) == len(DIGITS.blocks[2].allowed_types) * len(KERNELS)
    x = torch.randn(3, 1, 8, 8)
    for seed in range(4):
        arch = DIGITS.sample(seed)
        net.eval()
        net.fix(arch)
        y_super = net(x)
        net.fix(None)
        model = build_model(arch)
        model.load_state_dict(net.export_state(arch))
        model.eval()
        torch.testing.assert_close(model(x), y_super, rtol=1e-5, atol=1e-5)


def test_supernet_phase_masks_and_freezes_types():
    net = Supernet(DIGITS, mode="hard")
    net.set_phase(("conv", "shift"), ("conv", "shift"))
    for _ in range(20):
        for w, block in zip(net.sample_weights(), net.blocks):
            assert block.candidates[int(w.argmax())].op_type in ("conv", "shift", "skip")
    net.set_phase(OP_TYPES, ("adder",))
    for block in net.blocks:
        for key, path in block.paths.items():
            assert all(p.requires_grad == key.startswith("adder") for p in path.parameters())
    with pytest.raises(ValueError):
        net.set_phase(("mult",))


def test_expected_cost_is_differentiable_in_alpha():
    net = Supernet(DIGITS, mode="soft")
    table = [torch.tensor([[float(i), 2.0 * i] for i in range(len(b.candidates))]) for b in DIGITS.blocks]
    net.tau = 1.0
    net(torch.randn(2, 1, 8, 8))
    cost = net.expected_cost(table)
    assert cost.shape == (2,)
    cost.sum().backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in net.alphas)
    # with alphas favouring candidate 0 everywhere, the expectation approaches the table's row 0 (= 0)
    with torch.no_grad():
        for a in net.alphas:
            a.fill_(-30.0)
            a[0] = 30.0
    assert float(net.expected_cost(table, net.probabilities())[0].detach()) < 1e-6
    assert net.derive().ops == tuple(b.candidates[0].name for b in DIGITS.blocks)


# --------------------------------------------------------------------------------------------
# the IR from the same record (needs codesign.lower)


def test_workload_ir_is_built_from_the_record():
    lower = pytest.importorskip("codesign.lower", reason="codesign.lower (torch.fx lowering) not present yet")
    arch = DIGITS.decode(["shift_k3_e1", "adder_k5_e3", "skip", "conv_k3_e6", "adder_k3_e1", "shift_k5_e3"])
    wl = lower.lower_model(build_model(arch).eval(), (1, 1, 8, 8), name=arch.space.key)
    kinds = [op.kind for op in wl.ops() if op.is_gemm]
    expect = ["conv"]
    for c in arch.candidates:
        if not c.is_skip:
            kind = {"conv": "conv", "shift": "shift_conv", "adder": "adder_conv"}[c.op_type]
            expect += [kind] * (3 if c.expansion != 1 else 2)
    expect += ["conv", "linear"]
    assert kinds == expect
    # same record, same IR
    wl2 = lower.lower_model(build_model(arch.to_string()).eval(), (1, 1, 8, 8), name=arch.space.key)
    assert wl2.to_dict() == wl.to_dict()
