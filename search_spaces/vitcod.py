"""ViTCoD's algorithm: fixed sparse attention masks, polarization, Q/K auto-encoder, fine-tuning.

Pipeline (You et al., "ViTCoD", HPCA 2023; conventions from its public code):

1. :func:`collect_attention_maps` runs a trained :class:`~search_spaces.vit.MaskedViT` over training
   data and averages each block's post-softmax attention over the images -> ``(depth, H, N, N)``.
2. A mask per block and head (``True`` = keep) from the averaged map:

   * :func:`info_cut_mask` -- ViTCoD's ``info_cutoff``: each row keeps its largest entries until
     their cumulative probability reaches ``info_cut``, **plus one** more (ViTCoD's code keeps
     ``idx + 1`` entries where ``idx`` is the smallest count whose sum reaches ``info_cut``); the CLS
     row and column (token 0) are always kept;
   * :func:`sparsity_mask` -- a target sparsity: per head, the ``round((1 - s) N^2)`` largest
     averaged probabilities, after the forced entries (CLS row/column, and each row's largest entry
     so that no row is empty -- ``min_per_row``). Where the forced entries alone exceed the budget
     the mask is the forced entries (e.g. 65 tokens with the CLS row/column kept cannot go beyond
     1 - 129/65^2 = 96.9 % sparsity); :func:`mask_sparsity` reports what was reached.

3. :func:`polarize` -- per head, columns kept by more than ``threshold x rows`` queries are "global
   tokens"; ONE symmetric permutation of rows and columns (Q and K are the same token sequence)
   moves them to the front, in their original order, followed by the other tokens in their original
   order. The first ``num_global`` columns form the denser workload (computed as a dense
   ``N x G`` block on a MAC array); the rest is the sparser workload (a CSR matrix on the sparse
   engine). Attention is permutation-equivariant, so the permutation changes only the hardware's
   data layout, not the network's output.
4. The Q/K auto-encoder across heads is :class:`~search_spaces.vit.QKAutoEncoder` (enable it with
   ``qk_compressed_heads``; :func:`add_autoencoders` adds it to a trained model, initialised from the
   principal components of the heads by :func:`init_autoencoders_pca`).
5. :func:`finetune` trains with the masks fixed (cross-entropy + ``recon_weight`` x reconstruction
   loss, ViTCoD's default weight 1e-4); :func:`train_epoch` and :func:`evaluate` are the pieces a CLI
   uses. They take any iterable of ``(images, labels)`` batches, so this module depends on torch only.

Everything works for any token count and any sparsity from 0 to 99 % (within the forced-entry limit
above).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from search_spaces.vit import MaskedViT, QKAutoEncoder, default_compressed_heads

__all__ = ["DEFAULT_RECON_WEIGHT", "DEFAULT_GLOBAL_THRESHOLD",
           "collect_attention_maps", "recording_attention", "info_cut_mask", "sparsity_mask",
           "generate_masks", "mask_sparsity", "Polarized", "polarize", "unpermute",
           "add_autoencoders", "init_autoencoders_pca", "train_epoch", "evaluate", "finetune",
           "FinetuneHistory"]

#: ViTCoD's weight of the Q/K reconstruction loss in the training loss.
DEFAULT_RECON_WEIGHT = 1e-4
#: Relative threshold of a global-token column: kept by more than this fraction of the queries
#: (ViTCoD's reorder.py uses ``out_degree > 50`` with 197 tokens, i.e. 0.254).
DEFAULT_GLOBAL_THRESHOLD = 0.25


# ---------------------------------------------------------------------------------------------
# 1. attention maps averaged over data


@contextlib.contextmanager
def recording_attention(model: MaskedViT) -> Iterator[None]:
    """Within the block, every attention module sums its (masked) probabilities over the batch."""
    mods = model.attention_modules()
    for m in mods:
        m.recording, m.attn_sum, m.attn_count = True, None, 0
    try:
        yield
    finally:
        for m in mods:
            m.recording = False


@torch.no_grad()
def collect_attention_maps(model: MaskedViT, batches: Iterable, max_images: int | None = None,
                           device: torch.device | str | None = None) -> torch.Tensor:
    """Average post-softmax attention over the images of ``batches`` -> float (depth, H, N, N).

    ``batches`` yields ``images`` or ``(images, labels)``; stops after ``max_images`` images.
    """
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    seen = 0
    with recording_attention(model):
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if max_images is not None:
                x = x[: max_images - seen]
            if len(x) == 0:
                break
            model(x.to(device))
            seen += len(x)
            if max_images is not None and seen >= max_images:
                break
        if seen == 0:
            raise ValueError("collect_attention_maps: no images in batches")
        maps = torch.stack([m.attn_sum / m.attn_count for m in model.attention_modules()]).cpu()
    model.train(was_training)
    return maps


# ---------------------------------------------------------------------------------------------
# 2. masks


def _ranks_desc(x: torch.Tensor) -> torch.Tensor:
    """Rank of every entry along the last axis in descending order (0 = largest; ties: lower index first)."""
    order = torch.argsort(-x, dim=-1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(x.shape[-1], device=x.device).expand_as(order))
    return ranks


def _force_cls(mask: torch.Tensor, keep_cls: bool) -> torch.Tensor:
    if keep_cls:
        mask = mask.clone()
        mask[..., 0, :] = True
        mask[..., :, 0] = True
    return mask


def _check_attn(attn: torch.Tensor, square: bool = True) -> torch.Tensor:
    attn = torch.as_tensor(attn, dtype=torch.float64)
    if attn.dim() < 2 or (square and attn.shape[-1] != attn.shape[-2]):
        raise ValueError(f"attention maps must be (..., N, N), got {tuple(attn.shape)}")
    if not torch.isfinite(attn).all():
        raise ValueError("attention maps contain NaN or inf")
    return attn


def info_cut_mask(attn: torch.Tensor, info_cut: float, keep_cls: bool = True) -> torch.Tensor:
    """ViTCoD's info_cut rule on (..., rows, N) averaged attention rows -> bool mask (True = keep).

    Per row: sort descending; ``idx`` = the smallest count of largest entries whose sum reaches
    ``info_cut`` (N if the row never reaches it); keep the ``min(N, idx + 1)`` largest entries.
    ``info_cut = 0`` keeps one entry per row (plus the CLS row/column), ``info_cut > 1`` keeps all.
    """
    if not 0.0 <= info_cut:
        raise ValueError(f"info_cut must be >= 0, got {info_cut}")
    attn = _check_attn(attn, square=False)
    n = attn.shape[-1]
    sorted_desc = torch.sort(attn, dim=-1, descending=True).values
    csum = torch.cumsum(sorted_desc, dim=-1)
    # idx = #{m >= 0 : S_m < info_cut} with S_0 = 0 (the loop ``while sum < info: sum += next``)
    idx = (csum < info_cut).sum(dim=-1) + (1 if info_cut > 0 else 0)
    keep = torch.clamp(idx + 1, max=n)
    mask = _ranks_desc(attn) < keep.unsqueeze(-1)
    return _force_cls(mask, keep_cls)


def sparsity_mask(attn: torch.Tensor, sparsity: float, keep_cls: bool = True,
                  min_per_row: int = 1) -> torch.Tensor:
    """Per (N, N) map: keep the ``round((1 - sparsity) N^2)`` largest entries, after forced ones.

    Forced: the CLS row and column (``keep_cls``) and each row's ``min_per_row`` largest entries.
    The result has exactly ``max(budget, forced)`` kept entries per map.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    attn = _check_attn(attn)
    n = attn.shape[-1]
    if not 0 <= min_per_row <= n:
        raise ValueError(f"min_per_row must be in 0..{n}, got {min_per_row}")
    forced = _force_cls(torch.zeros(attn.shape, dtype=torch.bool), keep_cls)
    if min_per_row:
        forced |= _ranks_desc(attn) < min_per_row
    budget = int(round((1.0 - sparsity) * n * n))
    flat_forced = forced.flatten(-2)
    keep = torch.clamp(flat_forced.sum(-1), min=budget)                     # per map
    score = attn.flatten(-2).masked_fill(flat_forced, float("inf"))
    mask = _ranks_desc(score) < keep.unsqueeze(-1)
    return mask.reshape(attn.shape)


def generate_masks(attn: torch.Tensor, *, info_cut: float | None = None, sparsity: float | None = None,
                   keep_cls: bool = True, min_per_row: int = 1) -> torch.Tensor:
    """Masks for averaged maps (depth, H, N, N) by exactly one of ``info_cut`` or ``sparsity``."""
    if (info_cut is None) == (sparsity is None):
        raise ValueError("give exactly one of info_cut and sparsity")
    if info_cut is not None:
        return info_cut_mask(attn, info_cut, keep_cls)
    return sparsity_mask(attn, sparsity, keep_cls, min_per_row)


def mask_sparsity(mask: torch.Tensor) -> float:
    """Fraction of masked-out (False) entries."""
    mask = torch.as_tensor(mask)
    return 1.0 - float(mask.float().mean())


# ---------------------------------------------------------------------------------------------
# 3. polarization


@dataclass
class Polarized:
    """Per-head polarized masks. Index [h] of every field is head h (a 2-D input gives H = 1).

    ``perm[h]`` lists original token indices in their new order (new position p holds token
    ``perm[h, p]``); ``mask[h] = original[h][perm[h]][:, perm[h]]``; its first ``num_global[h]``
    columns are the dense block, the rest is the sparse part.
    """

    perm: torch.Tensor            # (H, N) long
    mask: torch.Tensor            # (H, N, N) bool, permuted
    num_global: torch.Tensor      # (H,) long
    threshold: float

    @property
    def heads(self) -> int:
        return int(self.mask.shape[0])

    @property
    def tokens(self) -> int:
        return int(self.mask.shape[-1])

    def dense_block(self, h: int) -> torch.Tensor:
        """(N, G) pattern of the global-token columns (all computed by the denser engine)."""
        return self.mask[h, :, : int(self.num_global[h])]

    def sparse_part(self, h: int) -> torch.Tensor:
        """(N, N - G) pattern of the remaining columns (the sparser engine's work)."""
        return self.mask[h, :, int(self.num_global[h]):]

    def stats(self) -> dict:
        """Kept entries in the dense columns and in the sparse part, and the dense block's size."""
        g = self.num_global
        n = self.tokens
        dense_nnz = sum(int(self.dense_block(h).sum()) for h in range(self.heads))
        sparse_nnz = sum(int(self.sparse_part(h).sum()) for h in range(self.heads))
        return {"heads": self.heads, "tokens": n, "num_global": g.tolist(),
                "dense_block_entries": int(g.sum()) * n, "dense_nnz": dense_nnz, "sparse_nnz": sparse_nnz,
                "sparse_density": sparse_nnz / max(1, sum(n * (n - int(x)) for x in g))}


def polarize(mask: torch.Tensor, threshold: float = DEFAULT_GLOBAL_THRESHOLD) -> Polarized:
    """Split each head's mask (H, N, N) or (N, N) into global-token columns + a sparse remainder."""
    mask = torch.as_tensor(mask).bool()
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if mask.dim() != 3 or mask.shape[-1] != mask.shape[-2]:
        raise ValueError(f"polarize needs (H, N, N) or (N, N), got {tuple(mask.shape)}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    h, n, _ = mask.shape
    col_count = mask.sum(dim=1)                                  # (H, N): queries keeping column j
    is_global = col_count > threshold * n
    # stable partition: global tokens first (original order), then the others (original order)
    key = (~is_global).long() * n + torch.arange(n).expand(h, n)
    perm = torch.argsort(key, dim=-1)
    rows = torch.gather(mask, 1, perm.unsqueeze(-1).expand(h, n, n))
    permuted = torch.gather(rows, 2, perm.unsqueeze(1).expand(h, n, n))
    return Polarized(perm=perm, mask=permuted, num_global=is_global.sum(-1), threshold=threshold)


def unpermute(pol: Polarized) -> torch.Tensor:
    """The original (H, N, N) masks back from a :class:`Polarized`."""
    h, n = pol.perm.shape
    inv = torch.argsort(pol.perm, dim=-1)
    rows = torch.gather(pol.mask, 1, inv.unsqueeze(-1).expand(h, n, n))
    return torch.gather(rows, 2, inv.unsqueeze(1).expand(h, n, n))


# ---------------------------------------------------------------------------------------------
# 4. Q/K auto-encoder on a trained model


def add_autoencoders(model: MaskedViT, compressed: int | None = None) -> MaskedViT:
    """Give every block a Q/K auto-encoder (``compressed`` defaults to ceil(H/2)); in place."""
    compressed = compressed or default_compressed_heads(model.cfg.heads)
    device = next(model.parameters()).device
    for attn in model.attention_modules():
        attn.autoencoder = QKAutoEncoder(attn.heads, compressed).to(device)
    model.cfg = type(model.cfg)(**{**model.cfg.to_dict(), "qk_compressed_heads": compressed})
    return model


@torch.no_grad()
def init_autoencoders_pca(model: MaskedViT, batches: Iterable, max_images: int = 256) -> None:
    """Initialise each block's encoder/decoder to the top principal components across heads.

    For Q (and K) of a block, the (H,) vectors at every (image, token, channel) position are
    centred; the encoder projects onto the top ``compressed`` eigenvectors of their covariance and
    the decoder maps back (plus the mean): the least-squares optimal linear auto-encoder.
    """
    mods = model.attention_modules()
    if any(m.autoencoder is None for m in mods):
        raise ValueError("init_autoencoders_pca: call add_autoencoders first")
    stats = [[torch.zeros(m.heads, m.heads, dtype=torch.float64), torch.zeros(m.heads, dtype=torch.float64), 0]
             for m in mods for _ in (0, 1)]
    hooks = []

    def hook_for(i: int, mod):
        def hook(_module, inputs, output):
            b, n, _ = inputs[0].shape
            qkv = output.reshape(b, n, 3, mod.heads, mod.head_dim)
            for j in (0, 1):                          # Q, K
                x = qkv[:, :, j].permute(0, 1, 3, 2).reshape(-1, mod.heads).double()
                s = stats[2 * i + j]
                s[0] += x.T @ x
                s[1] += x.sum(0)
                s[2] += x.shape[0]
        return hook

    for i, m in enumerate(mods):
        hooks.append(m.qkv.register_forward_hook(hook_for(i, m)))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    seen = 0
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = x[: max_images - seen]
            model(x.to(device))
            seen += len(x)
            if seen >= max_images:
                break
    finally:
        for hk in hooks:
            hk.remove()
        model.train(was_training)
    for i, m in enumerate(mods):
        ae = m.autoencoder
        for j, (enc, dec) in enumerate(((ae.enc_q, ae.dec_q), (ae.enc_k, ae.dec_k))):
            xtx, xsum, count = stats[2 * i + j]
            mean = xsum / count
            cov = xtx / count - torch.outer(mean, mean)
            _, vecs = torch.linalg.eigh(cov)
            top = vecs[:, -ae.compressed:].flip(-1)          # (H, c), largest first
            enc.weight.copy_(top.T.float())
            enc.bias.copy_((-top.T @ mean).float())
            dec.weight.copy_(top.float())
            dec.bias.copy_(mean.float())


# ---------------------------------------------------------------------------------------------
# 5. training with fixed masks


def _loss(model: MaskedViT, x: torch.Tensor, y: torch.Tensor, recon_weight: float,
          label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    logits = model(x)
    ce = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    recon = model.recon_loss()
    loss = ce + recon_weight * recon if torch.is_tensor(recon) else ce
    return loss, logits, float(recon.detach()) if torch.is_tensor(recon) else float(recon)


def train_epoch(model: MaskedViT, batches: Iterable, optimizer: torch.optim.Optimizer, *,
                scheduler: object | None = None, recon_weight: float = DEFAULT_RECON_WEIGHT,
                label_smoothing: float = 0.0, grad_clip: float | None = 1.0,
                device: torch.device | str | None = None) -> dict:
    """One pass over ``batches`` of (images, labels); ``scheduler.step()`` after every batch.

    Returns mean loss, training top-1 and mean reconstruction loss.
    """
    model.train()
    device = device or next(model.parameters()).device
    total = correct = 0
    loss_sum = recon_sum = 0.0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        loss, logits, recon = _loss(model, x, y, recon_weight, label_smoothing)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {float(loss)}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n = len(y)
        total += n
        correct += int((logits.argmax(-1) == y).sum())
        loss_sum += float(loss.detach()) * n
        recon_sum += recon * n
    if total == 0:
        raise ValueError("train_epoch: no batches")
    return {"loss": loss_sum / total, "train_top1": correct / total, "recon": recon_sum / total}


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, device: torch.device | str | None = None) -> float:
    """Top-1 accuracy over ``batches`` of (images, labels)."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    total = correct = 0
    for x, y in batches:
        logits = model(x.to(device))
        correct += int((logits.argmax(-1).cpu() == y.cpu()).sum())
        total += len(y)
    model.train(was_training)
    if total == 0:
        raise ValueError("evaluate: no batches")
    return correct / total


@dataclass
class FinetuneHistory:
    epochs: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def last(self) -> dict:
        return self.epochs[-1] if self.epochs else {}


def finetune(model: MaskedViT, masks: torch.Tensor | list | None, train_batches: Callable[[int], Iterable],
             epochs: int, *, lr: float = 5e-4, weight_decay: float = 0.05, warmup_steps: int = 0,
             min_lr_ratio: float = 0.01, recon_weight: float = DEFAULT_RECON_WEIGHT,
             label_smoothing: float = 0.0, eval_batches: Callable[[], Iterable] | None = None,
             steps_per_epoch: int | None = None, log: Callable[[str], None] | None = None) -> FinetuneHistory:
    """Set ``masks`` (depth x (H, N, N), or None for dense) and train ``epochs`` epochs with AdamW.

    ``train_batches(epoch)`` returns that epoch's batches; the learning rate warms up linearly for
    ``warmup_steps`` and then follows a cosine to ``min_lr_ratio * lr`` over ``epochs x
    steps_per_epoch`` steps (default: ``len(train_batches(0))``, else counted by iterating once).
    Also the pretraining loop (call it with ``masks=None``). ``eval_batches()``, if given, is scored
    after every epoch.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    model.set_attention_masks(masks)
    if steps_per_epoch is None:
        first = train_batches(0)
        steps_per_epoch = len(first) if hasattr(first, "__len__") else sum(1 for _ in first)
    total_steps = max(1, steps_per_epoch * epochs)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or name.endswith(("cls_token", "pos_embed")) else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    hist = FinetuneHistory()
    start = time.time()
    for epoch in range(epochs):
        rec = train_epoch(model, train_batches(epoch), opt, scheduler=sched, recon_weight=recon_weight,
                          label_smoothing=label_smoothing)
        rec["epoch"] = epoch
        if eval_batches is not None:
            rec["eval_top1"] = evaluate(model, eval_batches())
        rec["seconds"] = time.time() - start
        hist.epochs.append(rec)
        if log:
            log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
    hist.seconds = time.time() - start
    return hist
