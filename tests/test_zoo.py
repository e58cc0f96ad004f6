"""Built-in workloads: structure, JSON round trip, and MAC totals against analytical formulas.

The expected MAC counts are computed here from the layer formula (out_h * out_w * m * c/groups * k^2)
and the papers' architecture tables, independently of hw_models.zoo's builder.
"""
from __future__ import annotations

import json

import networkx as nx
import pytest

from hw_models.errors import WorkloadError
from hw_models.workload import MatmulShape, Workload
from hw_models.zoo import BUILTIN, NetBuilder, builtin_names, cifar_resnet, get_builtin, vit

EXPECTED_NAMES = ["resnet20-conv", "resnet20-shift", "resnet20-adder", "resnet20-hybrid",
                  "mobilenetv2-cifar", "resnet18", "deit-tiny", "deit-small",
                  "deit-small-sparse50", "deit-small-sparse70", "deit-small-sparse90"]


@pytest.fixture(scope="module")
def zoo() -> dict[str, Workload]:
    return {name: get_builtin(name) for name in builtin_names()}


# -- analytical references --------------------------------------------------------------------


def conv_macs(cin: int, cout: int, k: int, out_hw: int, groups: int = 1) -> int:
    return out_hw * out_hw * cout * (cin // groups) * k * k


def out_size(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def resnet_basic_macs(stem: int, h: int, cin: int, widths: list[int], blocks: int) -> tuple[int, int]:
    """MACs of BasicBlock stages (3x3 convs + 1x1 projection where the shape changes)."""
    total = 0
    for s, w in enumerate(widths):
        for i in range(blocks):
            stride = 2 if s > 0 and i == 0 else 1
            h_out = out_size(h, 3, stride, 1)
            total += conv_macs(cin, w, 3, h_out) + conv_macs(w, w, 3, h_out)
            if stride != 1 or cin != w:
                total += conv_macs(cin, w, 1, h_out)
            cin, h = w, h_out
    return stem + total, cin


def resnet20_expected() -> int:
    body, c = resnet_basic_macs(conv_macs(3, 16, 3, 32), 32, 16, [16, 32, 64], 3)
    return body + c * 10


def resnet18_expected() -> int:
    h = out_size(224, 7, 2, 3)                 # 112
    stem = conv_macs(3, 64, 7, h)
    h = out_size(h, 3, 2, 1)                   # maxpool -> 56
    body, c = resnet_basic_macs(stem, h, 64, [64, 128, 256, 512], 2)
    return body + c * 1000


def mobilenetv2_cifar_expected() -> int:
    settings = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    h, cin = 32, 32
    total = conv_macs(3, 32, 3, 32)
    for t, c, n, s in settings:
        for i in range(n):
            stride = s if i == 0 else 1
            hid = cin * t
            if t != 1:
                total += conv_macs(cin, hid, 1, h)
            h = out_size(h, 3, stride, 1)
            total += conv_macs(hid, hid, 3, h, groups=hid) + conv_macs(hid, c, 1, h)
            cin = c
    return total + conv_macs(320, 1280, 1, h) + 1280 * 10


def vit_expected(dim: int, heads: int, depth: int = 12, image: int = 224, patch: int = 16,
                 classes: int = 1000, ratio: int = 4) -> int:
    patches = (image // patch) ** 2
    t, hd = patches + 1, dim // heads
    per_block = t * dim * (3 * dim + dim + 2 * ratio * dim) + 2 * heads * t * t * hd
    return patches * dim * 3 * patch * patch + depth * per_block + dim * classes


# -- registry ---------------------------------------------------------------------------------


def test_registry_names_and_descriptions(zoo: dict[str, Workload]) -> None:
    assert builtin_names() == EXPECTED_NAMES
    for name, wl in zoo.items():
        factory, desc = BUILTIN[name]
        assert wl.name == name
        assert desc and wl.description == desc
        assert factory() is not factory()


def test_get_builtin_returns_fresh_copies() -> None:
    a, b = get_builtin("resnet20-conv"), get_builtin("resnet20-conv")
    a.graph.remove_node("fc")
    assert "fc" in b.graph and len(b) == len(a) + 1


def test_unknown_name_raises() -> None:
    with pytest.raises(WorkloadError, match="'resnet99'") as info:
        get_builtin("resnet99")
    assert "deit-tiny" in str(info.value)


# -- structure --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_dag_roundtrip_and_conventions(zoo: dict[str, Workload], name: str) -> None:
    wl = zoo[name]
    assert nx.is_directed_acyclic_graph(wl.graph)
    assert nx.is_weakly_connected(wl.graph)
    for back in (Workload.from_dict(wl.to_dict()), Workload.from_dict(json.loads(wl.to_json()))):
        assert back.ops() == wl.ops()
        assert set(back.graph.edges) == set(wl.graph.edges)
        assert back.name == wl.name and back.description == wl.description
    for op in wl:
        assert not (op.kind == "eltwise" and op.shape.op == "batchnorm"), "BN must be folded"
        expected_wbits = 5 if op.kind in ("shift_conv", "shift_linear") else 8
        assert (op.act_bits, op.weight_bits, op.out_bits) == (8, expected_wbits, 8), op.name
        if op.kind == "eltwise" and op.shape.op == "add":
            preds = wl.predecessors(op.name)
            assert op.shape.inputs == 2 and len(set(preds)) == 2, op.name
    # exactly one source (the stem / patch embedding) and one sink (the classifier)
    assert [n for n, d in wl.graph.in_degree if d == 0] == [wl.ops()[0].name]
    assert [n for n, d in wl.graph.out_degree if d == 0] == [wl.ops()[-1].name]


@pytest.mark.parametrize("name, adds", [("resnet20-conv", 9), ("resnet18", 8),
                                        ("mobilenetv2-cifar", 10), ("deit-tiny", 24)])
def test_residual_add_count(zoo: dict[str, Workload], name: str, adds: int) -> None:
    assert sum(op.kind == "eltwise" and op.shape.op == "add" for op in zoo[name]) == adds


# -- MAC totals -------------------------------------------------------------------------------


def test_resnet20_macs(zoo: dict[str, Workload]) -> None:
    expected = resnet20_expected()
    # closed form: stem + 18 full 3x3 convs (2,359,296 each at every stage) - the two stride-2
    # first convs' halves + two 1x1 projections + fc
    full = 32 * 32 * 16 * 16 * 9
    assert expected == 3 * 9 * 16 * 1024 + 18 * full - 2 * full // 2 + 2 * (16 * 16 * 32 * 16) + 640
    assert 40.5e6 <= expected <= 41.5e6
    for variant in ("conv", "shift", "adder", "hybrid"):
        assert zoo[f"resnet20-{variant}"].macs == expected


def test_resnet18_macs(zoo: dict[str, Workload]) -> None:
    expected = resnet18_expected()
    assert zoo["resnet18"].macs == expected
    assert abs(expected - 1.8186e9) / 1.8186e9 < 0.005
    assert zoo["resnet18"].op("fc").macs == 512 * 1000


def test_mobilenetv2_macs_and_depthwise(zoo: dict[str, Workload]) -> None:
    wl = zoo["mobilenetv2-cifar"]
    assert wl.macs == mobilenetv2_cifar_expected()
    dws = [op for op in wl if op.name.endswith(".dw")]
    assert len(dws) == 17
    assert all(op.shape.groups == op.shape.c == op.shape.m for op in dws)
    assert wl.op("avgpool").shape.h == 4


@pytest.mark.parametrize("name, dim, heads, published", [("deit-tiny", 192, 3, 1.26e9),
                                                         ("deit-small", 384, 6, 4.6e9)])
def test_deit_macs_and_shapes(zoo: dict[str, Workload], name: str, dim: int, heads: int,
                              published: float) -> None:
    wl = zoo[name]
    assert wl.macs == vit_expected(dim, heads)
    assert abs(wl.macs - published) / published < 0.02
    for i in range(12):
        p = f"block{i}.attn"
        assert wl.op(f"{p}.qk").shape == MatmulShape(batch=heads, rows=197, inner=64, cols=197)
        assert wl.op(f"{p}.av").shape == MatmulShape(batch=heads, rows=197, inner=197, cols=64)
        sm = wl.op(f"{p}.softmax").shape
        assert (sm.elements, sm.row_len) == (heads * 197 * 197, 197)
        assert set(wl.predecessors(f"{p}.av")) == {f"{p}.softmax", f"{p}.qkv"}
        assert wl.op(f"block{i}.mlp.fc1").shape.out_features == 4 * dim
        assert wl.op(f"block{i}.mlp.gelu").shape.op == "gelu"
    head = wl.op("head").shape
    assert (head.tokens, head.in_features, head.out_features) == (1, dim, 1000)
    assert wl.op("patch_embed").kind == "conv" and wl.op("patch_embed").shape.kh == 16


def test_small_vit() -> None:
    wl = vit("vit-cifar", embed_dim=96, depth=2, heads=2, image_size=32, patch=4, num_classes=10)
    assert wl.op("block1.attn.qk").shape == MatmulShape(batch=2, rows=65, inner=48, cols=65)
    assert wl.op("block0.attn.qkv").shape.tokens == 65
    assert wl.macs == vit_expected(96, 2, depth=2, image=32, patch=4, classes=10)


# -- operator kinds of the multiplication-free variants ----------------------------------------


def test_resnet20_variants_differ_only_in_kind(zoo: dict[str, Workload]) -> None:
    base = [(op.name, op.shape) for op in zoo["resnet20-conv"]]
    for variant in ("shift", "adder", "hybrid"):
        assert [(op.name, op.shape) for op in zoo[f"resnet20-{variant}"]] == base
    assert zoo["resnet20-conv"].kinds() == {"conv", "linear", "eltwise", "pool"}
    assert {"conv", "shift_conv", "adder_conv"} <= zoo["resnet20-hybrid"].kinds()


def test_resnet20_shift_counts(zoo: dict[str, Workload]) -> None:
    wl = zoo["resnet20-shift"]
    first_and_fc = wl.op("conv1").macs + wl.op("fc").macs
    assert {op.kind for op in wl if op.is_gemm} == {"conv", "linear", "shift_conv"}
    assert [op.name for op in wl if op.kind in ("conv", "linear")] == ["conv1", "fc"]
    assert sum(op.counts().mults for op in wl if op.is_gemm) == first_and_fc
    counts = wl.counts()
    assert counts.shifts == wl.macs - first_and_fc > 0
    assert counts.mults == first_and_fc + wl.op("avgpool").counts().mults   # avg pool's 1/N scale


def test_resnet20_adder_counts(zoo: dict[str, Workload]) -> None:
    wl = zoo["resnet20-adder"]
    first_and_fc = wl.op("conv1").macs + wl.op("fc").macs
    counts = wl.counts()
    assert counts.subs == counts.abs == wl.macs - first_and_fc > 0
    assert counts.shifts == 0


def test_resnet20_hybrid_block_order(zoo: dict[str, Workload]) -> None:
    wl = zoo["resnet20-hybrid"]
    for stage in (1, 2, 3):
        for block, kind in enumerate(("conv", "shift_conv", "adder_conv")):
            assert wl.op(f"layer{stage}.{block}.conv1").kind == kind
            assert wl.op(f"layer{stage}.{block}.conv2").kind == kind
        if stage > 1:
            assert wl.op(f"layer{stage}.0.downsample").kind == "conv"


# -- builder guards ---------------------------------------------------------------------------


def test_builder_rejects_bad_input() -> None:
    b = NetBuilder("t", (1, 3, 8, 8))
    x = b.conv("c1", 4, 3)
    y = b.conv("c2", 8, 3)
    with pytest.raises(WorkloadError, match="shapes differ"):
        b.add("bad", x, y)
    with pytest.raises(WorkloadError, match="conv kind"):
        b.conv("c3", 8, 3, kind="linear")
    with pytest.raises(WorkloadError, match="pooled"):
        b.linear("fc", 10)
    with pytest.raises(WorkloadError, match="6n\\+2"):
        cifar_resnet("r", depth=21)
    with pytest.raises(WorkloadError, match="block_types"):
        cifar_resnet("r", block_types=["conv"] * 8)
    assert len(cifar_resnet("r32", depth=32)) == 2 + 15 * 5 + 2 + 2
