"""Differentiable (NASA-style) architecture search on the supernet.

1. **Progressive pretraining** (:func:`pretrain`): a schedule of phases, each ``EPOCHS:ACTIVE[/TRAINABLE]``
   with ``+``-joined op types, e.g. NASA's ``40:conv+shift;40:conv+shift+adder/adder`` (epochs 0-39
   conv and shift only; 40-79 adders join while conv and shift stay frozen). Weights only, on the
   weight split; the architecture logits stay at 0, so each step samples uniformly among the active
   candidates.
2. **Search** (:func:`search`): all types active and trainable; every step does a weight update on a
   weight-split batch (SGD) and an architecture update on an architecture-split batch (Adam) with

       loss = cross_entropy + hw_weight * (lat_share * E[latency] + (1 - lat_share) * E[energy])

   where E[.] is the expectation of the per-block candidate costs from the hardware model under the
   Gumbel-softmax weights of the step (:meth:`Supernet.expected_cost`), each normalised so that the
   uniform architecture costs 1.
3. The Gumbel temperature is ``tau0 * tau_decay ** epoch`` over all supernet epochs (NASA: 5 and
   0.975). :func:`derive` takes the argmax candidate of every block.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from codesign.data import DataBundle
from codesign.nas.train import autocast, iterate_forever, make_scaler
from hw_models.errors import CodesignError
from search_spaces.nasa_space import OP_TYPES, Architecture, SearchSpace
from search_spaces.supernet import MODES, Supernet

__all__ = ["Phase", "NASA_PRETRAIN", "parse_schedule", "format_schedule", "scale_schedule", "DnasConfig",
           "DnasResult", "normalized_cost_table", "pretrain", "search", "run_dnas"]

#: NASA's progressive pretraining (epochs 0-39 conv+shift, 40-79 adders with conv/shift frozen); the
#: search phase that follows trains everything.
NASA_PRETRAIN = "40:conv+shift;40:conv+shift+adder/adder"

_PHASE_RE = re.compile(r"^\s*(\d+)\s*:\s*([a-z+]+)\s*(?:/\s*([a-z+]+))?\s*$")


@dataclass(frozen=True)
class Phase:
    epochs: int
    active: tuple[str, ...]
    trainable: tuple[str, ...]

    def __str__(self) -> str:
        s = f"{self.epochs}:{'+'.join(self.active)}"
        return s if self.trainable == self.active else f"{s}/{'+'.join(self.trainable)}"


def _types(text: str, where: str) -> tuple[str, ...]:
    if text == "all":
        return OP_TYPES
    names = tuple(t for t in text.split("+") if t)
    bad = [t for t in names if t not in OP_TYPES]
    if bad or not names:
        raise CodesignError(f"pretraining schedule {where}: unknown op type {bad[0] if bad else text!r} "
                            f"(use {', '.join(OP_TYPES)} or all, joined with +)")
    return names


def parse_schedule(text: str) -> tuple[Phase, ...]:
    """``"40:conv+shift;40:all/adder"`` -> phases. An empty string means no pretraining."""
    phases = []
    for part in (p for p in str(text).split(";") if p.strip()):
        m = _PHASE_RE.match(part)
        if not m:
            raise CodesignError(f"bad pretraining phase {part.strip()!r} (expected EPOCHS:TYPES[/TRAINABLE], "
                                f"e.g. 40:conv+shift;40:all/adder)")
        active = _types(m.group(2), part.strip())
        trainable = _types(m.group(3), part.strip()) if m.group(3) else active
        if not set(trainable) <= set(active):
            raise CodesignError(f"pretraining phase {part.strip()!r}: trainable types must be active")
        phases.append(Phase(int(m.group(1)), active, trainable))
    return tuple(phases)


def format_schedule(phases: Sequence[Phase]) -> str:
    return ";".join(str(p) for p in phases)


def scale_schedule(phases: Sequence[Phase], factor: float) -> tuple[Phase, ...]:
    """Every phase's epochs x ``factor`` (at least 1 epoch per phase that had any)."""
    return tuple(replace(p, epochs=max(1 if p.epochs else 0, int(round(p.epochs * factor)))) for p in phases)


@dataclass(frozen=True)
class DnasConfig:
    pretrain: tuple[Phase, ...] = field(default_factory=lambda: parse_schedule(NASA_PRETRAIN))
    search_epochs: int = 90
    tau0: float = 5.0
    tau_decay: float = 0.975
    mode: str = "hard"
    batch_size: int = 64
    w_lr: float = 0.05
    w_momentum: float = 0.9
    w_weight_decay: float = 5e-5
    a_lr: float = 0.01
    a_weight_decay: float = 1e-3
    hw_weight: float = 0.1
    lat_share: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise CodesignError(f"supernet mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.search_epochs < 0 or any(p.epochs < 0 for p in self.pretrain):
            raise CodesignError("supernet epochs must be >= 0")
        if not 0.0 <= self.lat_share <= 1.0:
            raise CodesignError(f"lat_share must be in [0, 1], got {self.lat_share}")
        if self.hw_weight < 0:
            raise CodesignError(f"hw_weight must be >= 0, got {self.hw_weight}")

    @property
    def pretrain_epochs(self) -> int:
        return sum(p.epochs for p in self.pretrain)

    def tau(self, epoch: int) -> float:
        return self.tau0 * self.tau_decay ** epoch

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pretrain"] = format_schedule(self.pretrain)
        return d


@dataclass
class DnasResult:
    arch: Architecture
    probabilities: list[list[float]]
    history: list[dict[str, Any]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.to_string(), "probabilities": self.probabilities, "history": self.history,
                "seconds": self.seconds}


def normalized_cost_table(raw: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """Per-block [latency, energy] tables scaled so that the uniform architecture costs 1 per column."""
    ref = np.zeros(2)
    for t in raw:
        ref += np.asarray(t, dtype=np.float64).mean(axis=0)
    ref[ref <= 0] = 1.0
    return [torch.tensor(np.asarray(t, dtype=np.float64) / ref, dtype=torch.float32) for t in raw]


def _weight_optimizer(net: Supernet, cfg: DnasConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(net.weight_parameters(), lr=cfg.w_lr, momentum=cfg.w_momentum,
                           nesterov=cfg.w_momentum > 0, weight_decay=cfg.w_weight_decay)


def _cos(step: int, total: int, base: float) -> float:
    return 0.5 * base * (1.0 + math.cos(math.pi * min(1.0, step / max(1, total))))


def _steps(n: int, batch: int) -> int:
    return max(1, math.ceil(n / batch))


def pretrain(net: Supernet, bundle: DataBundle, cfg: DnasConfig, device: torch.device, seed: int,
             progress: bool = False, on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Progressive pretraining of the supernet's weights (see the module docstring)."""
    w_split, _ = bundle.weight_arch_split(seed)
    net.to(device)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)                       # Gumbel noise when no generator reaches the sampler
    data = iterate_forever(bundle, w_split, cfg.batch_size, gen, device, bundle.augment)
    steps = _steps(len(w_split), cfg.batch_size)
    history: list[dict] = []
    scaler = make_scaler(device)
    epoch = 0
    for phase in cfg.pretrain:
        if phase.epochs == 0:
            continue
        net.set_phase(phase.active, phase.trainable)
        opt = _weight_optimizer(net, cfg)
        total = steps * phase.epochs
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=total, desc=f"supernet pretrain {phase}", unit="step", leave=False)
        step = 0
        for _ in range(phase.epochs):
            net.tau = cfg.tau(epoch)
            net.train()
            t0, run, n = time.perf_counter(), 0.0, 0
            for _ in range(steps):
                x, y = next(data)
                for g in opt.param_groups:
                    g["lr"] = _cos(step, total, cfg.w_lr)
                with autocast(device):
                    loss = F.cross_entropy(net(x, generator=gen), y)
                opt.zero_grad(set_to_none=True)
                _backward_step(loss, opt, scaler)
                net.zero_grad(set_to_none=True)
                run += float(loss.detach()) * len(y)
                n += len(y)
                step += 1
                if bar is not None:
                    bar.update(1)
            rec = {"epoch": epoch, "phase": str(phase), "tau": net.tau, "loss": run / max(1, n),
                   "seconds": time.perf_counter() - t0}
            history.append(rec)
            if on_epoch:
                on_epoch(rec)
            epoch += 1
        if bar is not None:
            bar.close()
    net.set_phase(OP_TYPES, OP_TYPES)
    return history


def _backward_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler) -> None:
    if not torch.isfinite(loss):
        return                                    # skip a diverged step rather than poison the weights
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()


def search(net: Supernet, bundle: DataBundle, table: Sequence[torch.Tensor], cfg: DnasConfig,
           device: torch.device, seed: int, start_epoch: int | None = None, progress: bool = False,
           on_epoch: Callable[[dict], None] | None = None) -> DnasResult:
    """Alternate weight and architecture updates for ``cfg.search_epochs`` epochs; derive the result."""
    t_start = time.perf_counter()
    w_split, a_split = bundle.weight_arch_split(seed)
    net.to(device)
    net.set_phase(OP_TYPES, OP_TYPES)
    gen = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed + 1)
    w_data = iterate_forever(bundle, w_split, cfg.batch_size, gen, device, bundle.augment)
    a_data = iterate_forever(bundle, a_split, cfg.batch_size, gen, device, bundle.augment)
    table = [t.to(device) for t in table]
    share = torch.tensor([cfg.lat_share, 1.0 - cfg.lat_share], device=device)
    w_opt = _weight_optimizer(net, cfg)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=cfg.a_lr, betas=(0.5, 0.999), weight_decay=cfg.a_weight_decay)
    scaler = make_scaler(device)
    steps = _steps(len(w_split), cfg.batch_size)
    total = steps * cfg.search_epochs
    epoch0 = cfg.pretrain_epochs if start_epoch is None else start_epoch
    history: list[dict] = []
    bar = None
    if progress and total:
        from tqdm import tqdm
        bar = tqdm(total=total, desc="supernet search", unit="step", leave=False)
    step = 0
    for e in range(cfg.search_epochs):
        net.tau = cfg.tau(epoch0 + e)
        net.train()
        t0 = time.perf_counter()
        sums = {"loss": 0.0, "a_ce": 0.0, "a_hw": 0.0}
        for _ in range(steps):
            # weights
            x, y = next(w_data)
            for g in w_opt.param_groups:
                g["lr"] = _cos(step, total, cfg.w_lr)
            with autocast(device):
                loss = F.cross_entropy(net(x, generator=gen), y)
            w_opt.zero_grad(set_to_none=True)
            _backward_step(loss, w_opt, scaler)
            # architecture
            x, y = next(a_data)
            with autocast(device):
                ce = F.cross_entropy(net(x, generator=gen), y)
            hw = (net.expected_cost(table).float() * share).sum()
            a_loss = ce.float() + cfg.hw_weight * hw
            a_opt.zero_grad(set_to_none=True)
            if torch.isfinite(a_loss):
                a_loss.backward()
                a_opt.step()
            net.zero_grad(set_to_none=True)
            sums["loss"] += float(loss.detach())
            sums["a_ce"] += float(ce.detach())
            sums["a_hw"] += float(hw.detach())
            step += 1
            if bar is not None:
                bar.update(1)
        rec = {"epoch": epoch0 + e, "phase": "search", "tau": net.tau,
               **{k: v / steps for k, v in sums.items()}, "derived": net.derive().to_string(),
               "seconds": time.perf_counter() - t0}
        history.append(rec)
        if on_epoch:
            on_epoch(rec)
    if bar is not None:
        bar.close()
    probs = [[round(float(p), 6) for p in row.detach().cpu()] for row in net.probabilities()]
    return DnasResult(net.derive(), probs, history, time.perf_counter() - t_start)


def run_dnas(space: SearchSpace, bundle: DataBundle, cost_table_raw: Sequence[np.ndarray], cfg: DnasConfig,
             device: torch.device, seed: int, supernet_state: dict | None = None,
             progress: bool = False) -> tuple[DnasResult, Supernet]:
    """Pretrain (unless ``supernet_state`` is given: then load it) and search; returns the result."""
    torch.manual_seed(seed)
    net = Supernet(space, mode=cfg.mode)
    history: list[dict] = []
    if supernet_state is not None:
        net.load_state_dict(supernet_state)
    else:
        history = pretrain(net, bundle, cfg, device, seed, progress)
    result = search(net, bundle, normalized_cost_table(cost_table_raw), cfg, device, seed, progress=progress)
    result.history = history + result.history
    return result, net
