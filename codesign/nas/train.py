"""Training and evaluation of candidate networks: short, seeded schedules; CUDA with mixed precision
when present (``--device auto``), else the CPU.

Determinism on the CPU: a network's initial weights, the batch order and the augmentation all come
from generators seeded by (search seed, architecture), so the same architecture trained twice with
the same settings gives the same weights and accuracy on the same machine and thread count.
"""
from __future__ import annotations

import contextlib
import math
import time
import zlib
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from codesign.data import DataBundle, Split, batches
from hw_models.errors import CodesignError

__all__ = ["TrainConfig", "resolve_device", "autocast", "make_scaler", "train_model", "evaluate",
           "arch_seed", "count_parameters"]


@dataclass(frozen=True)
class TrainConfig:
    """A per-step learning rate: linear warm-up, then cosine down to ``min_lr_ratio`` x ``lr``;
    ``epochs`` may be 0. ``optimizer``: "sgd" (Nesterov momentum; the CNNs) or "adamw" (weight
    decay on matrices only, not on biases, norms, CLS token or positional embedding; the ViTs).
    ``clip_grad`` > 0 clips the global gradient norm."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-5
    label_smoothing: float = 0.0
    warmup_steps: int = 0
    optimizer: str = "sgd"
    min_lr_ratio: float = 0.0
    clip_grad: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' -> the first CUDA device if torch sees one, else the CPU; 'cpu'; 'cuda' / 'cuda:N'."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CodesignError(f"--device {spec}: this torch build sees no CUDA device (use --device auto or cpu)")
        try:
            dev = torch.device(spec)
        except RuntimeError:
            raise CodesignError(f"--device {spec!r}: expected cuda or cuda:N") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CodesignError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    raise CodesignError(f"unknown --device {spec!r} (use auto, cpu, cuda or cuda:N)")


def autocast(device: torch.device):
    """Mixed precision on CUDA (bfloat16 where supported, else float16); nothing on the CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def make_scaler(device: torch.device):
    """A gradient scaler for float16 autocast (bfloat16 and the CPU need none)."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.amp.GradScaler("cuda")
    return None


def arch_seed(seed: int, key: str) -> int:
    """A 31-bit seed that is a pure function of the search seed and an architecture string."""
    return (zlib.crc32(key.encode()) ^ (seed * 2_654_435_761)) & 0x7FFF_FFFF


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _cosine(step: int, total: int, base: float, warmup: int, min_ratio: float = 0.0) -> float:
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if p.dim() < 2 or name.endswith(("cls_token", "pos_embed")) else decay).append(p)
        return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    if cfg.optimizer != "sgd":
        raise ValueError(f"unknown optimizer {cfg.optimizer!r} (sgd or adamw)")
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)


def train_model(model: nn.Module, bundle: DataBundle, cfg: TrainConfig, device: torch.device, seed: int,
                split: Split | None = None, on_epoch: Callable[[int, float], None] | None = None,
                progress: bool = False, desc: str = "train",
                extra_loss: Callable[[nn.Module], torch.Tensor | float] | None = None) -> dict:
    """Train ``model`` in place on ``split`` (default: the training split); returns a small history.

    ``extra_loss(model)`` is added to the cross-entropy of every step (e.g. ViTCoD's weighted Q/K
    reconstruction loss). A non-finite loss stops training before it touches the weights.
    """
    split = split if split is not None else bundle.train
    model.to(device).train()
    opt = _optimizer(model, cfg)
    scaler = make_scaler(device)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = max(1, math.ceil(len(split) / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    step, t0, losses, diverged = 0, time.perf_counter(), [], False
    bar = None
    if progress and cfg.epochs:
        from tqdm import tqdm
        bar = tqdm(total=total, desc=desc, unit="step", leave=False)
    for epoch in range(cfg.epochs):
        run_loss, n = 0.0, 0
        for x, y in batches(bundle, split, cfg.batch_size, shuffle=True, generator=gen,
                            augment=bundle.augment, device=device):
            for g in opt.param_groups:
                g["lr"] = _cosine(step, total, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
            with autocast(device):
                loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
                if extra_loss is not None:
                    loss = loss + extra_loss(model)
            if not torch.isfinite(loss):          # diverged: stop; the accuracy will say so
                diverged = True
                break
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                if cfg.clip_grad > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                if cfg.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                opt.step()
            run_loss += float(loss.detach()) * len(y)
            n += len(y)
            step += 1
            if bar is not None:
                bar.update(1)
        losses.append(run_loss / max(1, n) if not diverged else float("nan"))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
        if diverged:
            break
    if bar is not None:
        bar.close()
    return {"epochs": cfg.epochs, "train_loss": losses, "diverged": diverged,
            "seconds": time.perf_counter() - t0}


@torch.no_grad()
def evaluate(model: nn.Module, bundle: DataBundle, split: Split, device: torch.device,
             batch_size: int = 256) -> float:
    """Top-1 accuracy (0..1) on ``split``."""
    model.to(device).eval()
    correct = 0
    for x, y in batches(bundle, split, batch_size, device=device):
        with autocast(device):
            correct += int((model(x).argmax(1) == y).sum())
    return correct / max(1, len(split))


def iterate_forever(bundle: DataBundle, split: Split, batch_size: int, generator: torch.Generator,
                    device: torch.device, augment: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from batches(bundle, split, batch_size, shuffle=True, generator=generator, augment=augment,
                           device=device)
