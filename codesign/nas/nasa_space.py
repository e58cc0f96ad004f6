"""The NASA hybrid space (conv / shift / adder blocks) as a :class:`~codesign.nas.spaces.SpaceDriver`.

``strategy="sample"``: NSGA-II chooses one candidate per block (categorical parameters ``b00``,
``b01``, ...); ``strategy="derive"``: NSGA-II chooses the hardware weight and the latency/energy mix
of the differentiable search, which derives the architecture from the progressively pretrained
supernet (trained once per search, cached in ``OUT/supernet.pt``). A trial trains the network from
scratch for ``epochs`` epochs (SGD, cosine), measures validation and test accuracy, then lowers, maps
and simulates the whole network on the accelerator. The baselines are uniform all-of-one networks
(default ``conv_k3_e6``); the summary's reference is the best all-conv network.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from hw_models.errors import CodesignError
from codesign.nas.spaces import SearchContext, SpaceDriver

__all__ = ["NasaDriver", "NasaContext", "best_all_conv"]


@dataclass
class NasaContext(SearchContext):
    space: Any = None
    supernet_state: dict | None = None
    cost_table: list | None = None


def _counts(p: dict[str, Any]) -> str:
    c = (p.get("arch") or {}).get("counts", {})
    return f"{c.get('conv', 0)}/{c.get('shift', 0)}/{c.get('adder', 0)}/{c.get('skip', 0)}"


def best_all_conv(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    conv = [p for p in points if p.get("family") == "conv"]
    return max(conv, key=lambda p: (p["accuracy"], -p["latency_s"], -p["trial"])) if conv else None


def _dnas_config(cfg, **kw: Any):
    from codesign.nas.differentiable import DnasConfig, parse_schedule
    return DnasConfig(pretrain=parse_schedule(cfg.supernet_pretrain), search_epochs=cfg.supernet_search_epochs,
                      tau0=cfg.tau0, tau_decay=cfg.tau_decay, mode=cfg.supernet_mode, batch_size=cfg.batch_size,
                      w_lr=cfg.lr, **kw)


class NasaDriver(SpaceDriver):
    name = "nasa"
    default_hw = "nasa-chunked"
    default_baselines = ("conv_k3_e6",)
    strategies = ("sample", "derive")
    reference_label = "best all-conv network"
    reference_family = "conv"
    reference_marker = "all-conv"
    private_attrs = ("dnas",)

    def default_lr(self, cfg) -> float:
        return 0.1

    def validate(self, cfg) -> None:
        from search_spaces.nasa_space import SPACE_NAMES, Candidate
        if cfg.space not in SPACE_NAMES:                  # the driver registry and the space list agree
            raise CodesignError(f"unknown search space {cfg.space!r} (known: {', '.join(SPACE_NAMES)})")
        for b in cfg.baselines:
            try:
                Candidate.parse(b)
            except ValueError as exc:
                raise CodesignError(f"--baseline: {exc}") from None

    def make_context(self, cfg) -> NasaContext:
        from codesign.data import load_dataset
        from codesign.nas.hardware import HardwareModel
        from codesign.nas.train import resolve_device
        from search_spaces.nasa_space import build_space
        device = resolve_device(cfg.device)
        bundle = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, split_seed=0,
                              val_fraction=cfg.val_fraction or (0.2 if cfg.dataset == "digits" else 0.1),
                              train_limit=cfg.train_limit)
        try:
            space = build_space(cfg.space, bundle.input_shape, bundle.num_classes, cfg.width_mult, cfg.depth_mult)
        except ValueError as exc:
            raise CodesignError(f"search space: {exc}") from None
        hw = HardwareModel(cfg.hw, objective=cfg.map_objective, map_budget_s=cfg.map_budget_s, seed=cfg.seed,
                           cache_path=cfg.out_dir / "hw_cache.json", effort=cfg.map_effort)
        return NasaContext(cfg, bundle, hw, device, space=space)

    def prepare(self, ctx: NasaContext, log=None) -> None:
        cfg = ctx.cfg
        if cfg.strategy == "derive" and ctx.supernet_state is None:
            ctx.cost_table = ctx.hw.cost_table(ctx.space, progress=cfg.progress)
            ctx.supernet_state = _supernet_state(cfg, ctx)

    def describe(self, ctx: NasaContext) -> str:
        return f"space {ctx.space.key} ({len(ctx.space)} blocks)"

    def enqueue_baselines(self, study, ctx: NasaContext) -> list[str]:
        cfg, added = ctx.cfg, []
        for cand in cfg.baselines:
            try:
                arch = ctx.space.uniform(cand, fallback="conv_k3_e1" if cand.startswith("conv") else None)
            except ValueError as exc:
                raise CodesignError(f"--baseline {cand}: {exc}") from None
            if cfg.strategy == "sample":
                study.enqueue_trial({f"b{i:02d}": op for i, op in enumerate(arch.ops)},
                                    user_attrs={"baseline": arch.to_string()})
            else:
                study.enqueue_trial({"hw_weight": 1e-3, "lat_share": 0.5},
                                    user_attrs={"baseline": arch.to_string(), "fixed_arch": arch.to_string()})
            added.append(arch.to_string())
        return added

    def suggest(self, trial, ctx: NasaContext):
        from search_spaces.nasa_space import parse_architecture
        cfg, space = ctx.cfg, ctx.space
        fixed = trial.user_attrs.get("fixed_arch")
        if cfg.strategy == "sample":
            choices = [trial.suggest_categorical(f"b{i:02d}", list(b.candidate_names))
                       for i, b in enumerate(space.blocks)]
            arch, dnas = space.decode(choices), None
        else:
            hw_weight = trial.suggest_float("hw_weight", 1e-3, 10.0, log=True)
            lat_share = trial.suggest_float("lat_share", 0.0, 1.0)
            if fixed:
                arch, dnas = parse_architecture(fixed), None
            else:
                arch, dnas = self._derive(trial, ctx, hw_weight, lat_share)
        return arch.to_string(), (arch, dnas)

    def _derive(self, trial, ctx: NasaContext, hw_weight: float, lat_share: float):
        import torch
        from codesign.nas.differentiable import normalized_cost_table, search
        from search_spaces.supernet import Supernet
        cfg = ctx.cfg
        dcfg = _dnas_config(cfg, hw_weight=hw_weight, lat_share=lat_share)
        torch.manual_seed(cfg.seed)
        net = Supernet(ctx.space, mode=dcfg.mode)
        net.load_state_dict(ctx.supernet_state)
        seed = cfg.seed * 1000 + trial.number
        result = search(net, ctx.bundle, normalized_cost_table(ctx.cost_table), dcfg, ctx.device, seed,
                        progress=cfg.progress and cfg.workers == 1)
        return result.arch, {"probabilities": result.probabilities, "seconds": result.seconds,
                             "final": result.history[-1] if result.history else {}}

    def evaluate(self, trial, study, candidate, ctx: NasaContext):
        from codesign.nas.train import TrainConfig, arch_seed, count_parameters, evaluate, train_model
        from search_spaces.nasa_space import build_model
        cfg = ctx.cfg
        arch, dnas = candidate
        t0 = time.perf_counter()
        seed = arch_seed(cfg.seed, arch.to_string())
        model = build_model(arch, seed=seed)
        hist = train_model(model, ctx.bundle, TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr),
                           ctx.device, seed, progress=cfg.progress and cfg.workers == 1, desc=f"trial {trial.number}")
        val_acc = evaluate(model, ctx.bundle, ctx.bundle.val, ctx.device)
        test_acc = evaluate(model, ctx.bundle, ctx.bundle.test, ctx.device)
        t1 = time.perf_counter()
        hw = ctx.hw.measure_architecture(arch)
        ctx.flush()
        t2 = time.perf_counter()
        attrs = {"arch": arch.to_dict(), "family": arch.family, "accuracy": val_acc, "test_accuracy": test_acc,
                 "latency_s": hw.latency_s, "energy_pj": hw.energy_pj, "cycles": hw.cycles,
                 "params": count_parameters(model), "train_loss": hist["train_loss"], "diverged": hist["diverged"],
                 "train_seconds": round(t1 - t0, 3), "hw_seconds": round(t2 - t1, 3),
                 "device": str(ctx.device)}
        if dnas is not None:
            attrs["dnas"] = dnas
        return (val_acc, hw.latency_s, hw.energy_pj), attrs

    def reference(self, points):
        return best_all_conv(points)

    def table_columns(self):
        return [("family", lambda p: str(p.get("family", "?"))), ("conv/shift/adder/skip", _counts)]

    def front_extras(self, front, reference):
        return {"best_all_conv": reference,
                "hybrids_on_front": [p["trial"] for p in front if p.get("family") not in ("conv", None)]}


def _supernet_state(cfg, ctx: NasaContext) -> dict:
    """The progressively pretrained supernet: loaded from OUT/supernet.pt, or trained and saved."""
    import torch
    from codesign.nas.differentiable import pretrain
    from search_spaces.supernet import Supernet
    path = cfg.out_dir / "supernet.pt"
    ident = json.dumps({**cfg.identity(), "space_key": ctx.space.key}, sort_keys=True)
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("identity") == ident:
                return blob["state"]
        except Exception:                                          # noqa: BLE001 - retrain on a bad file
            pass
    torch.manual_seed(cfg.seed)
    net = Supernet(ctx.space, mode=cfg.supernet_mode)
    history = pretrain(net, ctx.bundle, _dnas_config(cfg), ctx.device, cfg.seed, progress=cfg.progress)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"identity": ident, "state": state, "history": json.dumps(history)}, tmp)
    os.replace(tmp, path)
    return state
