"""The ViTCoD sparse-attention space as a :class:`~codesign.nas.spaces.SpaceDriver` (``--space vitcod``).

Once per search (:meth:`VitcodDriver.prepare`): a dense :class:`~search_spaces.vit.MaskedViT` sized to
the data set (:func:`vit_for`; digits 8x8x1: image 8, patch 2 -> 17 tokens, width 32, 2 blocks, 4 heads;
32x32 images: ``vit-c32-mini``, patch 4 -> 65 tokens, width 96, 4 blocks, 3 heads; ``--width-mult`` /
``--depth-mult`` scale width and depth) is pretrained for ``pretrain_epochs`` epochs (AdamW,
``pretrain_lr``, warm-up + cosine), and its post-softmax attention maps are averaged over up to
:data:`MAP_IMAGES` training images. Both go to ``OUT/vitcod_pretrained.pt``, keyed by the settings
they depend on, so ``--resume`` and extra workers load them instead of training again.

A trial (NSGA-II chooses three categorical parameters, see :mod:`search_spaces.vitcod_space`):

* ``mask``: ``dense`` or a ViTCoD mask rule (target sparsity 0.5..0.95, info_cut 0.8..0.95) applied to
  the averaged maps;
* ``qk_heads``: 0 (no auto-encoder) or 1..heads-1 compressed heads of the Q/K auto-encoder
  (PCA-initialised from the pretrained model's Q and K);
* ``polarize``: the accelerator's dense/sparse split, ``polarize_threshold`` of its sparse_attention
  chunk(s) in {0.1, 0.25, 0.5}.

The pretrained model is copied, masked, given the auto-encoder, fine-tuned ``epochs`` epochs (AdamW,
``lr``, cross-entropy + ViTCoD's 1e-4 x reconstruction loss; CUDA mixed precision with ``--device
auto`` when present), scored on the validation split (objective) and the test split (reported).
Its workload IR is :func:`workload_from_record` (``hw_models.zoo.vit`` with the masks and the
auto-encoder), mapped and simulated on the accelerator with that threshold (a
``dataclasses.replace`` variant; the mapper and cache settings of the search). The fine-tuned weights
go to ``OUT/weights/trial-NNNN.pt`` (``weights`` in the front point, relative to OUT), so ``codesign
report --model OUT@K`` runs the trained network. Trials that differ only in the threshold share one
trained network (the threshold changes no number the network computes): the second one copies the
accuracy and the weights and only maps the workload again.

The first trial is the dense model (no mask, no auto-encoder), the reference of the summary
(``--baseline`` takes other mask rules too). ``--strategy derive`` does not apply; an accelerator
without a ``sparse_attention`` chunk is refused (its dense/sparse split is a searched dimension).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hw_models.errors import CodesignError
from codesign.nas.spaces import SearchContext, SpaceDriver

__all__ = ["VitcodDriver", "VitcodContext", "vit_for", "workload_from_record", "accelerator_with_threshold",
           "MAP_IMAGES", "PRETRAINED_FILE"]

#: Training images averaged for the attention maps.
MAP_IMAGES = 2000
#: Images used to fit the auto-encoder's PCA initialisation.
PCA_IMAGES = 256
PRETRAINED_FILE = "vitcod_pretrained.pt"
WEIGHTS_DIR = "weights"
#: AdamW weight decay, linear warm-up (pretraining) and the floor of the cosine schedule.
WEIGHT_DECAY = 0.05
WARMUP_EPOCHS = 1
MIN_LR_RATIO = 0.01


def vit_for(input_shape: tuple[int, int, int], num_classes: int, width_mult: float = 1.0,
            depth_mult: float = 1.0):
    """The dense ViT of the search, sized to the data set (see the module docstring)."""
    from search_spaces.vit import ViTConfig, vit_config
    c, h, w = input_shape
    if h != w:
        raise CodesignError(f"--space vitcod needs square images, got {h}x{w}")
    if h <= 8:
        base = ViTConfig(image_size=h, patch=max(1, h // 4), in_chans=c, num_classes=num_classes, embed_dim=32,
                         depth=2, heads=4, mlp_ratio=2.0)
    else:
        base = vit_config("vit-c32-mini", image_size=h, patch=max(1, h // 8), in_chans=c, num_classes=num_classes)
    if h % base.patch:
        raise CodesignError(f"--space vitcod: patch {base.patch} does not divide the image size {h}")
    dim = max(base.heads, int(round(base.embed_dim * width_mult / base.heads)) * base.heads)
    depth = max(1, int(round(base.depth * depth_mult)))
    return replace(base, embed_dim=dim, depth=depth)


def accelerator_with_threshold(accel, threshold: float | None):
    """``accel`` with every sparse_attention chunk's ``polarize_threshold`` set (None: unchanged)."""
    if threshold is None:
        return accel
    chunks = tuple(replace(c, polarize_threshold=float(threshold)) if c.pe_type == "sparse_attention" else c
                   for c in accel.chunks)
    return replace(accel, chunks=chunks)


def workload_from_record(arch, name: str | None = None):
    """The workload IR of a ViTCoD record: ``hw_models.zoo.vit`` with its masks (masked QK^T / A.V as
    ``sparse_matmul``) and its Q/K auto-encoder (fused codecs), batch 1."""
    from hw_models.zoo import vit
    from search_spaces.vitcod_space import ViTCoDArch
    if isinstance(arch, dict):
        arch = ViTCoDArch.from_dict(arch)
    c = arch.vit
    masks = None if arch.masks is None else [m.numpy() for m in arch.masks]
    return vit(name or f"vitcod-{arch.model_key}", embed_dim=c.embed_dim, depth=c.depth, heads=c.heads,
               image_size=c.image_size, patch=c.patch, mlp_ratio=c.mlp_ratio, num_classes=c.num_classes,
               in_chans=c.in_chans, masks=masks, qk_compressed_heads=c.qk_compressed_heads,
               description=f"ViTCoD record {arch.to_string()} (sparsity {arch.sparsity:.3f})")


@dataclass
class VitcodContext(SearchContext):
    vit: Any = None                                 # ViTConfig of the dense model
    state: dict | None = None                       # its pretrained weights (CPU)
    maps: Any = None                                # (depth, H, N, N) averaged attention
    pretrain_info: dict = field(default_factory=dict)
    hw_variants: dict = field(default_factory=dict)  # polarize threshold -> HardwareModel

    def hw_for(self, threshold: float | None):
        if threshold is None:
            return self.hw
        key = float(threshold)
        if key not in self.hw_variants:
            self.hw_variants[key] = self.hw.with_accelerator(accelerator_with_threshold(self.hw.accel, key))
        return self.hw_variants[key]

    def flush(self) -> None:
        self.hw.flush()
        for hw in self.hw_variants.values():
            hw.flush()


def _default_threshold(accel) -> float:
    from search_spaces.vitcod_space import POLARIZE_THRESHOLDS
    t = next(c.polarize_threshold for c in accel.chunks if c.pe_type == "sparse_attention")
    return t if t in POLARIZE_THRESHOLDS else 0.25


class VitcodDriver(SpaceDriver):
    name = "vitcod"
    default_hw = "vitcod"
    default_baselines = ("dense",)
    strategies = ("sample",)
    reference_label = "dense baseline (no mask, no auto-encoder)"
    reference_family = "dense"
    reference_marker = "dense (no mask)"
    identity_keys = ("pretrain_epochs", "pretrain_lr")

    def default_lr(self, cfg) -> float:
        return 1e-3

    # -- set-up ----------------------------------------------------------------------------------
    def validate(self, cfg) -> None:
        from search_spaces.vitcod_space import MASK_RULES
        if cfg.pretrain_epochs is None:
            cfg.pretrain_epochs = 20 if cfg.dataset == "digits" else 12
        if cfg.pretrain_lr is None:
            cfg.pretrain_lr = 5.0 * cfg.lr
        e = cfg.pretrain_epochs
        if not isinstance(e, int) or isinstance(e, bool) or e < 0:
            raise CodesignError(f"--pretrain-epochs must be an integer >= 0, got {e!r}")
        if not (isinstance(cfg.pretrain_lr, (int, float)) and math.isfinite(cfg.pretrain_lr) and cfg.pretrain_lr > 0):
            raise CodesignError(f"--pretrain-lr must be > 0, got {cfg.pretrain_lr!r}")
        for b in cfg.baselines:
            if b not in MASK_RULES:
                raise CodesignError(f"--baseline {b}: not a mask rule of the vitcod space (one of "
                                    f"{', '.join(MASK_RULES)})")

    def make_context(self, cfg) -> VitcodContext:
        from codesign.data import load_dataset
        from codesign.nas.hardware import HardwareModel
        from codesign.nas.train import resolve_device
        device = resolve_device(cfg.device)
        hw = HardwareModel(cfg.hw, objective=cfg.map_objective, map_budget_s=cfg.map_budget_s, seed=cfg.seed,
                           cache_path=cfg.out_dir / "hw_cache.json", effort=cfg.map_effort)
        sparse = [c.name for c in hw.accel.chunks if c.pe_type == "sparse_attention"]
        if not sparse:
            raise CodesignError(f"--space vitcod needs an accelerator with a sparse_attention chunk (its dense/sparse "
                                f"split is searched); {hw.name} has none (chunks: "
                                f"{', '.join(f'{c.name}:{c.pe_type}' for c in hw.accel.chunks)}); try --hw vitcod")
        bundle = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, split_seed=0,
                              val_fraction=cfg.val_fraction or (0.2 if cfg.dataset == "digits" else 0.1),
                              train_limit=cfg.train_limit)
        try:
            vit = vit_for(bundle.input_shape, bundle.num_classes, cfg.width_mult, cfg.depth_mult)
        except ValueError as exc:
            raise CodesignError(f"search space: {exc}") from None
        return VitcodContext(cfg, bundle, hw, device, vit=vit)

    def describe(self, ctx: VitcodContext) -> str:
        from search_spaces.vitcod_space import MASK_RULES, POLARIZE_THRESHOLDS
        v = ctx.vit
        return (f"space vitcod (ViT {v.image_size}x{v.image_size}/patch {v.patch}: {v.tokens} tokens, width "
                f"{v.embed_dim}, {v.depth} blocks x {v.heads} heads; {len(MASK_RULES)} mask rules x {v.heads} "
                f"auto-encoder options x {len(POLARIZE_THRESHOLDS)} dense/sparse splits)")

    def prepare(self, ctx: VitcodContext, log=None) -> None:
        if ctx.state is None:
            ctx.state, ctx.maps, ctx.pretrain_info = _pretrained(ctx, log)

    def enqueue_baselines(self, study, ctx: VitcodContext) -> list[str]:
        thr = _default_threshold(ctx.hw.accel)
        for rule in ctx.cfg.baselines:
            study.enqueue_trial({"mask": rule, "qk_heads": 0, "polarize": thr}, user_attrs={"baseline": rule})
        return list(ctx.cfg.baselines)

    # -- a trial ---------------------------------------------------------------------------------
    def suggest(self, trial, ctx: VitcodContext):
        from search_spaces.vitcod_space import (MASK_RULES, POLARIZE_THRESHOLDS, ViTCoDArch, ae_choices,
                                                masks_for_rule)
        rule = trial.suggest_categorical("mask", list(MASK_RULES))
        ae = trial.suggest_categorical("qk_heads", list(ae_choices(ctx.vit.heads)))
        thr = trial.suggest_categorical("polarize", list(POLARIZE_THRESHOLDS))
        arch = ViTCoDArch(replace(ctx.vit, qk_compressed_heads=int(ae) or None), rule,
                          masks_for_rule(ctx.maps, rule), thr)
        return arch.to_string(), arch

    def evaluate(self, trial, study, arch, ctx: VitcodContext):
        t0 = time.perf_counter()
        net_key = arch.network_key()
        trained = _trained_before(study, net_key, trial.number)
        if trained is not None:                            # same network, another dense/sparse split
            attrs = {k: trained.user_attrs[k] for k in ("accuracy", "test_accuracy", "accuracy_before_finetune",
                                                         "params", "train_loss", "diverged", "weights",
                                                         "pretrained_accuracy") if k in trained.user_attrs}
            attrs["network_of"] = trained.number
        else:
            attrs = _train_trial(trial.number, arch, ctx, net_key)
        t1 = time.perf_counter()
        hw = ctx.hw_for(arch.polarize_threshold).measure_workload_cached(workload_from_record(arch))
        ctx.flush()
        t2 = time.perf_counter()
        attrs.update({"arch": arch.to_dict(), "family": arch.family, "net_key": net_key,
                      "mask_rule": arch.mask_rule, "sparsity": arch.sparsity,
                      "qk_compressed_heads": arch.qk_compressed_heads, "polarize_threshold": arch.polarize_threshold,
                      "global_tokens_per_head": _global_tokens(arch),
                      "latency_s": hw.latency_s, "energy_pj": hw.energy_pj, "cycles": hw.cycles,
                      "train_seconds": round(t1 - t0, 3), "hw_seconds": round(t2 - t1, 3), "device": str(ctx.device)})
        return (attrs["accuracy"], hw.latency_s, hw.energy_pj), attrs

    # -- the front -------------------------------------------------------------------------------
    def point_extras(self, attrs):
        return {k: attrs.get(k) for k in ("mask_rule", "sparsity", "qk_compressed_heads", "polarize_threshold",
                                          "global_tokens_per_head", "weights")}

    def reference(self, points):
        dense = [p for p in points if p.get("family") == "dense"]
        return min(dense, key=lambda p: p["trial"]) if dense else None

    def table_columns(self):
        def ae(p):
            k, h = p.get("qk_compressed_heads"), ((p.get("arch") or {}).get("vit") or {}).get("heads")
            return f"{h}->{k}" if k else "-"

        def split(p):
            t = p.get("polarize_threshold")
            return "-" if t is None else f"{t:g}"
        return [("mask", lambda p: str(p.get("mask_rule", "?"))),
                ("sparsity %", lambda p: f"{100 * float(p.get('sparsity') or 0.0):.1f}"),
                ("Q/K AE", ae), ("split", split)]

    def front_extras(self, front, reference):
        return {"dense_baseline": reference,
                "sparse_on_front": [p["trial"] for p in front if str(p.get("family", "")).startswith("sparse")]}


# ---------------------------------------------------------------------------------------------
# helpers


def _trained_before(study, net_key: str, number: int):
    from optuna.trial import TrialState
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number != number and t.user_attrs.get("net_key") == net_key and "accuracy" in t.user_attrs:
            return t
    return None


def _global_tokens(arch) -> float | None:
    """Mean global-token (dense) columns per head and block at the record's threshold."""
    if arch.masks is None:
        return None
    from search_spaces.vitcod import polarize
    counts = [float(polarize(m, arch.polarize_threshold).num_global.float().mean()) for m in arch.masks]
    return sum(counts) / len(counts)


def _train(model, bundle, *, epochs: int, lr: float, batch_size: int, device, seed: int, warmup_epochs: int = 0,
           progress: bool = False, desc: str = "train") -> dict:
    """AdamW (decay on matrices only), linear warm-up then cosine to MIN_LR_RATIO x lr, cross-entropy
    + ViTCoD's reconstruction loss of the Q/K auto-encoders; CUDA mixed precision when on the GPU."""
    import torch
    from codesign.nas.train import TrainConfig, train_model
    from search_spaces.vitcod import DEFAULT_RECON_WEIGHT

    def recon(m) -> "torch.Tensor | float":
        r = m.recon_loss()
        return DEFAULT_RECON_WEIGHT * r if torch.is_tensor(r) else 0.0

    steps = max(1, math.ceil(len(bundle.train) / batch_size))
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=WEIGHT_DECAY,
                      warmup_steps=steps * warmup_epochs, optimizer="adamw", min_lr_ratio=MIN_LR_RATIO, clip_grad=1.0)
    return train_model(model, bundle, cfg, device, seed, progress=progress, desc=desc, extra_loss=recon)


def _pretrain_identity(ctx: VitcodContext) -> str:
    cfg = ctx.cfg
    keys = ("dataset", "seed", "batch_size", "pretrain_epochs", "pretrain_lr", "train_limit", "val_fraction")
    return json.dumps({**{k: getattr(cfg, k) for k in keys}, "vit": ctx.vit.to_dict(), "map_images": MAP_IMAGES,
                       "weight_decay": WEIGHT_DECAY, "warmup_epochs": WARMUP_EPOCHS, "format": 1}, sort_keys=True)


def _pretrained(ctx: VitcodContext, log=None) -> tuple[dict, Any, dict]:
    """(dense weights, averaged attention maps, info): loaded from OUT/vitcod_pretrained.pt when it was
    made with the same settings, else trained, measured and saved (atomic replace)."""
    import torch
    from codesign.data import batches
    from codesign.nas.train import evaluate
    from search_spaces.vit import MaskedViT
    from search_spaces.vitcod import collect_attention_maps
    cfg = ctx.cfg
    path = cfg.out_dir / PRETRAINED_FILE
    ident = _pretrain_identity(ctx)
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("identity") == ident:
                info = json.loads(blob["info"])
                if log:
                    log(f"pretrained dense ViT loaded from {path} (val accuracy {100 * info['val_accuracy']:.2f} %)")
                return blob["state"], blob["maps"], info
        except Exception:                                          # noqa: BLE001 - retrain on a bad file
            pass
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = MaskedViT(ctx.vit)
    hist = _train(model, ctx.bundle, epochs=cfg.pretrain_epochs, lr=cfg.pretrain_lr, batch_size=cfg.batch_size,
                  device=ctx.device, seed=cfg.seed, warmup_epochs=min(WARMUP_EPOCHS, cfg.pretrain_epochs),
                  progress=cfg.progress, desc="pretrain dense ViT")
    val = evaluate(model, ctx.bundle, ctx.bundle.val, ctx.device)
    maps = collect_attention_maps(model, batches(ctx.bundle, ctx.bundle.train, 256, device=ctx.device),
                                  max_images=MAP_IMAGES)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    info = {"val_accuracy": val, "epochs": cfg.pretrain_epochs, "train_loss": hist["train_loss"],
            "seconds": round(hist["seconds"], 3), "map_images": min(MAP_IMAGES, len(ctx.bundle.train))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"identity": ident, "state": state, "maps": maps.float(), "info": json.dumps(info)}, tmp)
    os.replace(tmp, path)
    if log:
        log(f"pretrained dense ViT: {cfg.pretrain_epochs} epoch(s), val accuracy {100 * val:.2f} % "
            f"({hist['seconds']:.1f} s); attention maps from {info['map_images']} images; saved to {path}")
    return state, maps.float(), info


def _train_trial(number: int, arch, ctx: VitcodContext, net_key: str) -> dict:
    """Copy the pretrained model, mask it, add the auto-encoder, fine-tune, score, save the weights."""
    import torch
    from codesign.data import batches
    from codesign.nas.train import arch_seed, count_parameters, evaluate
    from search_spaces.vit import MaskedViT
    from search_spaces.vitcod import add_autoencoders, init_autoencoders_pca
    cfg = ctx.cfg
    seed = arch_seed(cfg.seed, net_key)
    torch.manual_seed(seed)
    model = MaskedViT(ctx.vit)
    model.load_state_dict(ctx.state)
    model.to(ctx.device)
    model.set_attention_masks(None if arch.masks is None else list(arch.masks))
    if arch.qk_compressed_heads:
        add_autoencoders(model, arch.qk_compressed_heads)
        init_autoencoders_pca(model, batches(ctx.bundle, ctx.bundle.train, 256, device=ctx.device),
                              max_images=PCA_IMAGES)
    before = evaluate(model, ctx.bundle, ctx.bundle.val, ctx.device)
    hist = _train(model, ctx.bundle, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, device=ctx.device,
                  seed=seed, progress=cfg.progress and cfg.workers == 1, desc=f"trial {number}")
    val = evaluate(model, ctx.bundle, ctx.bundle.val, ctx.device)
    test = evaluate(model, ctx.bundle, ctx.bundle.test, ctx.device)
    rel = Path(WEIGHTS_DIR) / f"trial-{number:04d}.pt"
    path = cfg.out_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"record": arch.to_string(), "state": {k: v.detach().cpu() for k, v in model.state_dict().items()}},
               tmp)
    os.replace(tmp, path)
    return {"accuracy": val, "test_accuracy": test, "accuracy_before_finetune": before,
            "pretrained_accuracy": ctx.pretrain_info.get("val_accuracy"), "params": count_parameters(model),
            "train_loss": hist["train_loss"], "diverged": hist["diverged"], "weights": rel.as_posix()}
