"""Lowering PyTorch models (written here in plain torch, no torchvision) to the workload IR.

Expected MAC counts come from the layer formulas (out_h * out_w * m * c/groups * k^2), computed in
this file independently of the lowering, and must also equal hw_models.zoo's hand-built networks.
"""
from __future__ import annotations

import json
import textwrap
from collections import Counter

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from codesign.lower import load_model_spec, lower_model  # noqa: E402
from hw_models.errors import CodesignError, WorkloadError  # noqa: E402
from hw_models.workload import ConvShape, LinearShape, MatmulShape, PoolShape, VectorShape, Workload  # noqa: E402
from hw_models.zoo import get_builtin  # noqa: E402


# ---------------------------------------------------------------------------------------------
# models


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)            # one module used twice, as in torchvision
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, width in enumerate((64, 128, 256, 512)):
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, width, 2 if i else 1),
                                                         BasicBlock(width, width, 1)))
            cin = width
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int):
        super().__init__()
        hidden = cin * t
        layers: list[nn.Module] = []
        if t != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(inplace=True), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


#: MobileNetV2 1.0 for 32x32 inputs (stem and second stage at stride 1, as hw_models.zoo's variant).
MBV2_CIFAR = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        feats: list[nn.Module] = [nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True)]
        cin = 32
        for t, c, n, s in MBV2_CIFAR:
            for i in range(n):
                feats.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        feats += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1)).flatten(1)
        return self.classifier(x)


class Attention(nn.Module):
    """timm-style: qkv linear -> reshape/permute -> q @ k^T * scale -> softmax -> @ v -> proj."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.fc1, self.act, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    def __init__(self, img: int = 32, patch: int = 4, dim: int = 64, depth: int = 2, heads: int = 4):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (img // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


# ---------------------------------------------------------------------------------------------
# analytical references


def conv_macs(cin: int, cout: int, k: int, out_hw: int, groups: int = 1) -> int:
    return out_hw * out_hw * cout * (cin // groups) * k * k


def out_size(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def resnet18_macs() -> int:
    h = out_size(224, 7, 2, 3)
    total = conv_macs(3, 64, 7, h)
    h = out_size(h, 3, 2, 1)
    cin = 64
    for s, w in enumerate((64, 128, 256, 512)):
        for i in range(2):
            stride = 2 if s and i == 0 else 1
            ho = out_size(h, 3, stride, 1)
            total += conv_macs(cin, w, 3, ho) + conv_macs(w, w, 3, ho)
            if stride != 1 or cin != w:
                total += conv_macs(cin, w, 1, ho)
            cin, h = w, ho
    return total + 512 * 1000


def mobilenetv2_macs() -> int:
    h, cin = 32, 32
    total = conv_macs(3, 32, 3, 32)
    for t, c, n, s in MBV2_CIFAR:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            if t != 1:
                total += conv_macs(cin, hidden, 1, h)
            ho = out_size(h, 3, stride, 1)
            total += conv_macs(hidden, hidden, 3, ho, groups=hidden) + conv_macs(hidden, c, 1, ho)
            cin, h = c, ho
    return total + conv_macs(cin, 1280, 1, h) + 1280 * 10


# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18() -> Workload:
    return lower_model(ResNet18(), (1, 3, 224, 224))


def test_resnet18_macs_and_structure_equal_the_zoo(resnet18):
    zoo = get_builtin("resnet18")
    assert resnet18.macs == resnet18_macs() == zoo.macs == 1_814_073_344
    assert Counter(o.kind for o in resnet18.ops()) == Counter(o.kind for o in zoo.ops())
    # same conv / pool / linear shapes (BN folded: no batchnorm op anywhere)
    shapes = lambda wl: Counter(o.shape for o in wl.ops() if not isinstance(o.shape, VectorShape))
    assert shapes(resnet18) == shapes(zoo)
    assert not any(isinstance(o.shape, VectorShape) and o.shape.op == "batchnorm" for o in resnet18.ops())
    assert len(resnet18) == len(zoo) == 48


def test_resnet18_edges_follow_the_data_flow(resnet18):
    preds = lambda name: set(resnet18.predecessors(name))
    # residual add with a projection shortcut: the main path and the downsample conv (not program order)
    assert preds("layer2.0.add") == {"layer2.0.conv2", "layer2.0.downsample.0"}
    assert preds("layer2.0.downsample.0") == {"layer1.1.relu_1"}
    # identity shortcut: the block input comes straight from the previous block's output relu
    assert preds("layer1.1.add") == {"layer1.1.conv2", "layer1.0.relu_1"}
    assert preds("layer1.0.add") == {"layer1.0.conv2", "maxpool"}
    assert preds("fc") == {"avgpool"}                       # flatten is free
    add = resnet18.op("layer3.0.add")
    assert add.kind == "eltwise" and add.shape.op == "add" and add.shape.inputs == 2
    pool = resnet18.op("avgpool")
    assert pool.shape == PoolShape(n=1, c=512, h=7, w=7, kernel=7, stride=1, padding=0, mode="avg")
    assert resnet18.op("conv1").shape == ConvShape(n=1, c=3, h=224, w=224, m=64, kh=7, kw=7, stride=2, padding=3)


def test_mobilenetv2_macs_grouped_and_depthwise():
    wl = lower_model(MobileNetV2(), (1, 3, 32, 32))
    assert wl.macs == mobilenetv2_macs() == get_builtin("mobilenetv2-cifar").macs
    dw = [o for o in wl.ops() if o.kind == "conv" and o.shape.groups > 1]
    assert len(dw) == 17 and all(o.shape.groups == o.shape.c == o.shape.m for o in dw)
    assert {o.shape.stride for o in dw} == {1, 2}
    relu6 = [o for o in wl.ops() if o.kind == "eltwise" and o.shape.op == "relu6"]
    assert len(relu6) == len([o for o in get_builtin("mobilenetv2-cifar").ops() if o.kind == "eltwise" and o.shape.op == "relu6"])
    adds = [o for o in wl.ops() if o.kind == "eltwise" and o.shape.op == "add"]
    assert len(adds) == 10 and all(len(wl.predecessors(a.name)) == 2 for a in adds)


def test_timm_style_vit_attention_matmuls():
    b, heads, dim, tokens = 2, 4, 64, 65
    wl = lower_model(TinyViT(), (b, 3, 32, 32))
    matmuls = [o for o in wl.ops() if o.kind == "matmul"]
    assert [o.shape for o in matmuls] == [MatmulShape(batch=b * heads, rows=tokens, inner=dim // heads, cols=tokens),
                                          MatmulShape(batch=b * heads, rows=tokens, inner=tokens, cols=dim // heads)] * 2
    qk, av = matmuls[0].name, matmuls[1].name
    assert set(wl.predecessors(qk)) == {"blocks.0.attn.qkv"}
    softmax = wl.op("blocks.0.attn.softmax")
    assert softmax.shape == VectorShape(elements=b * heads * tokens * tokens, row_len=tokens)
    assert set(wl.predecessors(av)) == {"blocks.0.attn.softmax", "blocks.0.attn.qkv"}
    assert wl.op("blocks.0.attn.qkv").shape == LinearShape(tokens=b * tokens, in_features=dim, out_features=3 * dim)
    assert wl.op("head").shape == LinearShape(tokens=b, in_features=dim, out_features=10)   # x[:, 0] is free
    norms = [o for o in wl.ops() if o.kind == "eltwise" and o.shape.op == "layernorm"]
    assert len(norms) == 5 and all(o.shape.row_len == dim for o in norms)


def test_nn_multihead_attention_and_sdpa():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(32, 4, batch_first=True)
            self.fc = nn.Linear(32, 5)

        def forward(self, x):
            y, _ = self.mha(x, x, x)
            return self.fc(y + x)

    wl = lower_model(M(), (2, 10, 32))
    assert wl.op("mha.in_proj").shape == LinearShape(tokens=20, in_features=32, out_features=96)
    assert wl.op("mha.qk").shape == MatmulShape(batch=8, rows=10, inner=8, cols=10)
    assert wl.op("mha.av").shape == MatmulShape(batch=8, rows=10, inner=10, cols=8)
    assert wl.op("mha.out_proj").shape == LinearShape(tokens=20, in_features=32, out_features=32)
    assert set(wl.predecessors("fc")) == {"add"} and set(wl.predecessors("add")) == {"mha.out_proj"}

    class S(nn.Module):
        def forward(self, x):
            q = x.view(1, 2, 10, 8)
            return F.scaled_dot_product_attention(q, q, q)

    wl = lower_model(S(), (1, 10, 16))
    assert [o.shape for o in wl.ops() if o.kind == "matmul"] == [MatmulShape(2, 10, 8, 10), MatmulShape(2, 10, 10, 8)]

    class X(nn.Module):                                     # cross-attention, sequence-first
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(16, 2)

        def forward(self, x):
            return self.mha(x[:3], x, x)[0]

    wl = lower_model(X(), (7, 2, 16))
    assert wl.op("mha.qk").shape == MatmulShape(batch=4, rows=3, inner=8, cols=7)
    assert wl.op("mha.q_proj").shape == LinearShape(tokens=6, in_features=16, out_features=16)


def test_linear_on_3d_input_and_standalone_batchnorm():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12, 6)
            self.bn = nn.BatchNorm1d(5)
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            z = self.bn2(y) + y                    # conv output read twice: BN cannot be folded
            return self.bn(self.fc(z.reshape(2, 5, 12)))

    wl = lower_model(M(), (2, 3, 3, 5))
    assert wl.op("fc").shape == LinearShape(tokens=10, in_features=12, out_features=6)   # tokens = 2 x 5
    assert wl.op("bn2").shape == VectorShape(elements=120, op="batchnorm") and wl.op("bn2").kind == "eltwise"
    assert "bn" not in wl.graph                            # folded into the linear that feeds only it
    assert set(wl.predecessors("add")) == {"bn2", "conv"}
    assert set(wl.predecessors("fc")) == {"add"}


def test_registered_custom_ops_lower_to_their_kind():
    from search_spaces import AdderConv2d, ShiftConv2d, ShiftLinear
    from search_spaces.registry import register_ir_kind

    class MyAdderConv(nn.Module):              # a new op, declared through the registry only
        def __init__(self):
            super().__init__()
            self.in_channels, self.out_channels, self.kernel_size = 8, 6, (1, 1)
            self.stride, self.padding, self.groups = (2, 2), (0, 0), 2
            self.weight = nn.Parameter(torch.zeros(6, 4, 1, 1))

        def forward(self, x):
            return F.conv2d(x, self.weight, None, 2, 0, 1, 2)

        def ir_bits(self):
            return {"act_bits": 6, "weight_bits": 4}

    register_ir_kind(MyAdderConv, "adder_conv")

    class AttrOnly(nn.Module):                 # declared with a class attribute
        ir_kind = "shift_linear"

        def __init__(self):
            super().__init__()
            self.in_features, self.out_features = 6, 3

        def forward(self, x):
            return x[..., :3] * 2

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = ShiftConv2d(3, 8, 3, padding=1)
            self.b = AdderConv2d(8, 8, 3, padding=1, act_bits=8, weight_bits=8)
            self.c = MyAdderConv()
            self.d = ShiftLinear(6, 4)
            self.e = AttrOnly()

        def forward(self, x):
            y = self.c(self.b(self.a(x))).mean((2, 3))
            return self.e(y), self.d(y)

    wl = lower_model(Net(), (1, 3, 8, 8))
    kinds = {o.name: o.kind for o in wl.ops()}
    assert kinds == {"a": "shift_conv", "b": "adder_conv", "c": "adder_conv", "mean": "pool", "d": "shift_linear",
                     "e": "shift_linear"}
    assert (wl.op("a").act_bits, wl.op("a").weight_bits) == ShiftConv2d(3, 8, 3).ir_bits() == (8, 5)
    assert (wl.op("c").act_bits, wl.op("c").weight_bits) == (6, 4)
    assert wl.op("c").shape == ConvShape(n=1, c=8, h=8, w=8, m=6, kh=1, kw=1, stride=2, padding=0, groups=2)
    assert wl.op("e").shape == LinearShape(tokens=1, in_features=6, out_features=3)
    assert set(wl.predecessors("d")) == set(wl.predecessors("e")) == {"mean"}


def test_unsupported_modules_and_functions_fail_in_one_line():
    class U(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)
            self.up = nn.Upsample(scale_factor=2)
            self.t = nn.Softplus()
            self.lstm = nn.LSTM(4, 4)

        def forward(self, x):
            y = self.t(self.up(self.c(x)))
            return torch.fft.fft(y).real + torch.erf(y).sum()

    with pytest.raises(WorkloadError) as err:
        lower_model(U(), (1, 3, 8, 8))
    msg = str(err.value)
    assert "\n" not in msg
    for name in ("Softplus", "Upsample", "torch.fft.fft", "torch.erf", "Tensor.sum"):
        assert name in msg
    assert "LSTM" not in msg                     # never called: not part of the model's graph
    assert msg.index("unsupported modules") < msg.index("unsupported functions")


def test_untraceable_model_and_bad_shapes_fail_cleanly():
    class C(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(WorkloadError, match="torch.fx cannot trace") as err:
        lower_model(C(), (1, 3))
    assert "\n" not in str(err.value)
    with pytest.raises(WorkloadError, match="forward pass with input shape"):
        lower_model(nn.Linear(4, 2), (1, 5))
    with pytest.raises(WorkloadError, match="input shape"):
        lower_model(nn.Linear(4, 2), (1, 0))
    wl = lower_model(nn.Linear(4, 2), "3,4")               # a root module is traced through: F.linear
    assert [o.shape for o in wl.ops()] == [LinearShape(3, 4, 2)]


def test_load_model_spec(tmp_path, monkeypatch):
    assert load_model_spec("resnet20-conv").macs == get_builtin("resnet20-conv").macs
    path = tmp_path / "w.json"
    get_builtin("deit-tiny").to_json(path)
    assert load_model_spec(str(path)).macs == get_builtin("deit-tiny").macs
    (tmp_path / "mymodels.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        def small():
            return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
        instance = nn.Linear(4, 3)
        not_a_model = 3
    """))
    monkeypatch.chdir(tmp_path)
    wl = load_model_spec("mymodels:small", (1, 3, 4, 4))
    assert wl.name == "small" and wl.macs == 4 * 4 * 8 * 27 + 128 * 10
    assert load_model_spec("mymodels:instance", (2, 4)).macs == 2 * 4 * 3
    for spec, shape, pattern in (("mymodels:small", None, "needs an input shape"),
                                 ("mymodels:nope", (1, 3), "no attribute"),
                                 ("mymodels:not_a_model", (1, 3), "neither an nn.Module"),
                                 ("nosuchmodule_xyz:f", (1, 3), "cannot import"),
                                 ("resnet99", None, "unknown model")):
        with pytest.raises(CodesignError, match=pattern) as err:
            load_model_spec(spec, shape)
        assert "\n" not in str(err.value)
    with pytest.raises(WorkloadError):
        load_model_spec(str(tmp_path / "missing.json"))
    json.loads(path.read_text())                 # the file we wrote is valid JSON (sanity)


def test_sigmoid_silu_tanh_have_their_own_counts():
    class Gates(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.sig, self.silu, self.tanh = nn.Sigmoid(), nn.SiLU(), nn.Tanh()

        def forward(self, x):
            y = self.fc(x)
            return self.sig(y) + self.silu(y) + self.tanh(y) + torch.tanh(y) + F.silu(y)

    wl = lower_model(Gates(), (2, 8))
    ops = {o.shape.op for o in wl.ops() if o.kind == "eltwise"}
    assert {"sigmoid", "silu", "tanh"} <= ops
    by_op = {o.shape.op: o.counts() for o in wl.ops() if o.kind == "eltwise"}
    assert by_op["sigmoid"].exps == 16 and by_op["silu"].mults == 16 and by_op["tanh"].divs == 16
    assert by_op["sigmoid"].mults == 0                 # not charged as GELU any more (it has 6)
