"""Vision transformers whose attention takes a fixed sparse mask (ViTCoD, HPCA 2023).

A DeiT-style pre-norm ViT (conv patch embedding, CLS token, learned positional embedding, ``depth``
blocks of LayerNorm -> attention -> residual -> LayerNorm -> MLP(GELU) -> residual, final LayerNorm,
linear head on the CLS token). Every block's attention can be given a **fixed boolean mask**
(``True`` = the query attends to that key; note ViTCoD's own code uses the opposite convention):

* shape ``(heads, N, N)`` (one pattern per head) or ``(N, N)`` (shared by the heads), N = tokens;
* applied **before** the softmax: masked scores are ``-inf``, so the kept entries of a row are
  renormalised among themselves;
* a row with every entry masked produces a zero output row (no NaN, zero gradient): its scores are
  set to 0 instead of ``-inf`` and the probabilities are multiplied by the mask before ``A @ V``
  (the SpMM only reads entries of the mask, as the hardware does).

QK^T and A.V are the :class:`SDDMM` and :class:`SpMM` modules (IR kind ``sparse_matmul``, with the
mask and its ``density`` as attributes), so the lowering sees the two sparse GEMMs.

Optionally the Q/K **auto-encoder across heads** (ViTCoD's ``mix_head_fc_qk``) compresses Q and K
from ``heads`` to ``qk_compressed_heads`` per (token, channel) position with a Linear encoder and
decodes them back before QK^T; V is untouched. Its reconstruction loss (``torch.dist``, the L2
norm over the whole batch tensor, of Q and of K, as in ViTCoD's code) is exposed per block so the
training loss can add ``recon_weight * sum`` (:func:`search_spaces.vitcod.train_epoch`).

Configurations (:data:`VIT_CONFIGS`): ``deit-tiny`` / ``deit-small`` / ``deit-base`` (224x224,
patch 16, 197 tokens), ``vit-c32-tiny`` / ``vit-c32-small`` (the same bodies on 32x32 images with
patch 4, 65 tokens) and ``vit-c32-mini`` (a small 32x32 / patch-4 model that trains on a CPU).
Depends on torch only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from search_spaces.registry import register_ir_kind

__all__ = ["ViTConfig", "VIT_CONFIGS", "vit_config", "build_vit", "default_compressed_heads",
           "SDDMM", "SpMM", "QKAutoEncoder", "MaskedAttention", "ViTBlock", "MaskedViT",
           "check_mask"]


def default_compressed_heads(heads: int) -> int:
    """ViTCoD's encoder width: ceil(heads / 2) (DeiT-Tiny 3->2, Small 6->3, Base 12->6)."""
    return heads // 2 if heads % 2 == 0 else heads // 2 + 1


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 32
    patch: int = 4
    in_chans: int = 3
    num_classes: int = 10
    embed_dim: int = 192
    depth: int = 12
    heads: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    #: None: no Q/K auto-encoder; an int: encode Q and K from ``heads`` to this many "heads".
    qk_compressed_heads: int | None = None
    dropout: float = 0.0
    drop_path: float = 0.0

    def __post_init__(self) -> None:
        for key in ("image_size", "patch", "in_chans", "num_classes", "embed_dim", "depth", "heads"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ViTConfig.{key} must be a positive integer, got {value!r}")
        if self.image_size % self.patch:
            raise ValueError(f"ViTConfig: patch {self.patch} does not divide image size {self.image_size}")
        if self.embed_dim % self.heads:
            raise ValueError(f"ViTConfig: {self.heads} heads do not divide embed_dim {self.embed_dim}")
        c = self.qk_compressed_heads
        if c is not None and not (isinstance(c, int) and 1 <= c <= self.heads):
            raise ValueError(f"ViTConfig.qk_compressed_heads must be in 1..heads={self.heads}, got {c!r}")

    @property
    def tokens(self) -> int:
        """Sequence length: patches + the CLS token (224/16 -> 197, 32/4 -> 65, 384/16 -> 577)."""
        return (self.image_size // self.patch) ** 2 + 1

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.heads

    @property
    def hidden(self) -> int:
        return int(round(self.embed_dim * self.mlp_ratio))

    def to_dict(self) -> dict:
        return asdict(self)


VIT_CONFIGS: dict[str, ViTConfig] = {
    "deit-tiny": ViTConfig(224, 16, 3, 1000, 192, 12, 3),
    "deit-small": ViTConfig(224, 16, 3, 1000, 384, 12, 6),
    "deit-base": ViTConfig(224, 16, 3, 1000, 768, 12, 12),
    "vit-c32-tiny": ViTConfig(32, 4, 3, 10, 192, 12, 3),
    "vit-c32-small": ViTConfig(32, 4, 3, 10, 384, 12, 6),
    "vit-c32-mini": ViTConfig(32, 4, 3, 10, 96, 4, 3, mlp_ratio=2.0),
}


def vit_config(name: str | ViTConfig, **overrides) -> ViTConfig:
    """A named configuration (see :data:`VIT_CONFIGS`) with fields overridden.

    ``qk_compressed_heads="auto"`` selects :func:`default_compressed_heads`.
    """
    if isinstance(name, ViTConfig):
        cfg = name
    else:
        try:
            cfg = VIT_CONFIGS[name]
        except KeyError:
            raise ValueError(f"unknown ViT {name!r}; known: {', '.join(VIT_CONFIGS)}") from None
    if overrides.get("qk_compressed_heads") == "auto":
        overrides["qk_compressed_heads"] = default_compressed_heads(overrides.get("heads", cfg.heads))
    return replace(cfg, **overrides)


def check_mask(mask: torch.Tensor | None, heads: int, tokens: int, where: str = "mask") -> torch.Tensor | None:
    """Validate a mask (``(heads, N, N)`` or ``(N, N)``, any dtype convertible to bool) -> bool tensor."""
    if mask is None:
        return None
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        if mask.is_floating_point() and not torch.all((mask == 0) | (mask == 1)):
            raise ValueError(f"{where}: a float mask must hold only 0 and 1")
        mask = mask != 0
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if mask.dim() != 3 or mask.shape[-2:] != (tokens, tokens) or mask.shape[0] not in (1, heads):
        raise ValueError(f"{where}: expected shape ({heads}, {tokens}, {tokens}) or ({tokens}, {tokens}), "
                         f"got {tuple(mask.shape)}")
    return mask


class _MaskHolder(nn.Module):
    """Holds an optional (H or 1, N, N) bool mask as a non-persistent buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mask", None, persistent=False)
        self.register_buffer("empty_rows", None, persistent=False)

    def set_mask(self, mask: torch.Tensor | None) -> None:
        self.mask = mask
        self.empty_rows = None if mask is None else ~mask.any(dim=-1, keepdim=True)

    @property
    def density(self) -> float:
        """Fraction of the scores computed (1.0 without a mask); read by the lowering."""
        return 1.0 if self.mask is None else float(self.mask.float().mean())


class SDDMM(_MaskHolder):
    """Sampled dense-dense matmul: scores = Q @ K^T on the mask's entries, ``-inf`` elsewhere.

    Rows without any kept entry get 0 everywhere (so the following softmax is finite); :class:`SpMM`
    zeroes them. Inputs (B, H, N, d) and (B, H, d, N).
    """

    mask_on = "out"        # the IR mask covers the output (read by the lowering)

    def forward(self, q: torch.Tensor, k_t: torch.Tensor) -> torch.Tensor:
        scores = torch.matmul(q, k_t)
        if self.mask is not None:
            scores = scores.masked_fill(~self.mask, float("-inf")).masked_fill(self.empty_rows, 0.0)
        return scores


class SpMM(_MaskHolder):
    """Sparse-dense matmul: out = (A * mask) @ V; only the mask's entries of A contribute."""

    mask_on = "a"          # the IR mask covers operand A

    def forward(self, attn: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.mask is not None:
            attn = attn * self.mask
        return torch.matmul(attn, v)


register_ir_kind(SDDMM, "sparse_matmul")
register_ir_kind(SpMM, "sparse_matmul")


class QKAutoEncoder(nn.Module):
    """Linear auto-encoder of Q and K across heads (ViTCoD ``mix_head_fc_qk``); V is not touched.

    For every (batch, token, channel) position the ``heads`` values of Q are encoded to
    ``compressed`` values and decoded back: q_rec = dec_q(enc_q(q)) along the head axis (same for K,
    with its own weights). The hardware moves the compressed Q/K and decodes on chip.
    """

    def __init__(self, heads: int, compressed: int | None = None) -> None:
        super().__init__()
        compressed = default_compressed_heads(heads) if compressed is None else compressed
        if not 1 <= compressed <= heads:
            raise ValueError(f"compressed heads must be in 1..{heads}, got {compressed}")
        self.heads, self.compressed = heads, compressed
        self.enc_q, self.dec_q = nn.Linear(heads, compressed), nn.Linear(compressed, heads)
        self.enc_k, self.dec_k = nn.Linear(heads, compressed), nn.Linear(compressed, heads)

    @staticmethod
    def _heads_last(x: torch.Tensor) -> torch.Tensor:      # (B, H, N, d) -> (B, N, d, H)
        return x.permute(0, 2, 3, 1)

    @staticmethod
    def _heads_first(x: torch.Tensor) -> torch.Tensor:     # (B, N, d, H) -> (B, H, N, d)
        return x.permute(0, 3, 1, 2)

    def encode(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, N, d) Q and K -> (B, compressed, N, d) codes (what the hardware moves)."""
        return (self._heads_first(self.enc_q(self._heads_last(q))),
                self._heads_first(self.enc_k(self._heads_last(k))))

    def decode(self, qc: torch.Tensor, kc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (self._heads_first(self.dec_q(self._heads_last(qc))),
                self._heads_first(self.dec_k(self._heads_last(kc))))

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (reconstructed Q, reconstructed K, reconstruction loss = ||Q'-Q|| + ||K'-K||)."""
        q_rec, k_rec = self.decode(*self.encode(q, k))
        loss = torch.dist(q_rec, q) + torch.dist(k_rec, k)
        return q_rec, k_rec, loss


class MaskedAttention(nn.Module):
    """Multi-head self-attention with an optional fixed mask and optional Q/K auto-encoder."""

    def __init__(self, dim: int, heads: int, tokens: int, qkv_bias: bool = True,
                 qk_compressed_heads: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"{heads} heads do not divide dim {dim}")
        self.heads, self.head_dim, self.tokens = heads, dim // heads, tokens
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.autoencoder = QKAutoEncoder(heads, qk_compressed_heads) if qk_compressed_heads else None
        self.qk = SDDMM()
        self.av = SpMM()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)
        self.recon_loss: torch.Tensor | float = 0.0
        # attention-map recording (see search_spaces.vitcod.collect_attention_maps)
        self.recording = False
        self.attn_sum: torch.Tensor | None = None
        self.attn_count = 0

    @property
    def mask(self) -> torch.Tensor | None:
        return self.qk.mask

    def set_mask(self, mask: torch.Tensor | None) -> None:
        """Fix the attention mask (``(H, N, N)`` or ``(N, N)`` bool; None = dense)."""
        mask = check_mask(mask, self.heads, self.tokens)
        if mask is not None:
            mask = mask.to(self.qkv.weight.device)
        self.qk.set_mask(mask)
        self.av.set_mask(mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape                      # (a mask of the wrong size fails in SDDMM's masked_fill)
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.autoencoder is not None:
            q, k, self.recon_loss = self.autoencoder(q, k)
        scores = self.qk(q * self.scale, k.transpose(-2, -1))
        attn = F.softmax(scores, dim=-1)
        if self.recording:
            probs = (attn * self.av.mask if self.av.mask is not None else attn).detach().sum(0)
            self.attn_sum = probs if self.attn_sum is None else self.attn_sum + probs
            self.attn_count += b
        out = self.av(attn, v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


class DropPath(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) >= self.p
        return x * keep / (1.0 - self.p)


class ViTBlock(nn.Module):
    def __init__(self, cfg: ViTConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.attn = MaskedAttention(cfg.embed_dim, cfg.heads, cfg.tokens, cfg.qkv_bias,
                                    cfg.qk_compressed_heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(cfg.hidden, cfg.embed_dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.drop(self.fc2(self.drop(self.act(self.fc1(self.norm2(x)))))))


class MaskedViT(nn.Module):
    """DeiT-style ViT with fixed per-block attention masks (see the module docstring)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch, cfg.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.tokens, cfg.embed_dim))
        self.pos_drop = nn.Dropout(cfg.dropout)
        rates = [cfg.drop_path * i / max(1, cfg.depth - 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(ViTBlock(cfg, r) for r in rates)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        self._init()

    def _init(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for blk in self.blocks:          # an auto-encoder starts close to the identity across heads
            ae = blk.attn.autoencoder
            if ae is not None:
                _init_autoencoder_identity(ae)

    # -- masks --------------------------------------------------------------------------------
    def attention_modules(self) -> list[MaskedAttention]:
        return [blk.attn for blk in self.blocks]

    def set_attention_masks(self, masks: torch.Tensor | Sequence[torch.Tensor | None] | None) -> None:
        """One mask per block: a (depth, H, N, N) tensor, a list (entries may be None), or None."""
        if masks is None:
            masks = [None] * self.cfg.depth
        if len(masks) != self.cfg.depth:
            raise ValueError(f"need {self.cfg.depth} masks (one per block), got {len(masks)}")
        for i, (attn, mask) in enumerate(zip(self.attention_modules(), masks)):
            attn.set_mask(check_mask(mask, self.cfg.heads, self.cfg.tokens, f"block {i} mask"))

    def attention_masks(self) -> list[torch.Tensor | None]:
        return [attn.mask for attn in self.attention_modules()]

    def recon_loss(self) -> torch.Tensor | float:
        """Sum of the blocks' Q/K reconstruction losses of the last forward pass (0 without encoders)."""
        return sum((attn.recon_loss for attn in self.attention_modules() if attn.autoencoder is not None), 0.0)

    # -- forward ------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)[:, 0])


def _init_autoencoder_identity(ae: QKAutoEncoder) -> None:
    """Encoder keeps the first ``compressed`` heads, decoder copies them back (others start at 0)."""
    with torch.no_grad():
        for enc, dec in ((ae.enc_q, ae.dec_q), (ae.enc_k, ae.dec_k)):
            enc.weight.zero_()
            dec.weight.zero_()
            enc.bias.zero_()
            dec.bias.zero_()
            for h in range(ae.compressed):
                enc.weight[h, h] = 1.0
                dec.weight[h, h] = 1.0


def build_vit(name: str | ViTConfig = "vit-c32-mini", seed: int | None = 0, **overrides) -> MaskedViT:
    """Build a :class:`MaskedViT` from a named config (with overrides); ``seed`` fixes the init."""
    cfg = vit_config(name, **overrides)
    if seed is not None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return MaskedViT(cfg)
    return MaskedViT(cfg)
