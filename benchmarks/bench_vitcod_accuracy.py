"""Accuracy of ViTCoD-style fixed sparse attention on a small ViT trained on a CIFAR-10 subset.

Trains ``vit-c32-mini`` (32x32 images, patch 4 -> 65 tokens, dim 96, 4 blocks, 3 heads) from
scratch on the training batches of the CIFAR-10 subset (CPU, short schedule), averages its attention
maps over training images, builds masks at 50 / 70 / 90 % sparsity (ViTCoD's rule by target
sparsity: CLS row/column kept, every row keeps at least its largest entry), fine-tunes a copy briefly
with each mask and reports top-1 on the subset's test batch against the unmasked model -- both the
model as trained and the model fine-tuned for the same number of epochs without a mask (so the
fine-tuning itself is not credited to the masks). Also per sparsity: top-1 with the mask applied
before fine-tuning, the reached sparsity and the polarization statistics (global tokens per head,
density of the sparse remainder). ``--autoencoder`` adds a run with the Q/K auto-encoder across
heads (3 -> 2, PCA-initialised) and the 90 % masks.

    .venv/bin/python benchmarks/bench_vitcod_accuracy.py --data-dir ../shared/data/cifar-10-batches-py

Runs on one CPU thread by default (on these shared 2-core machines one thread is ~5x faster than two
when other jobs run). Numbers are reported as they come out; nothing is tuned on the test batch.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from codesign.data import batches, load_dataset  # noqa: E402
from search_spaces.vit import build_vit  # noqa: E402
from search_spaces.vitcod import (add_autoencoders, collect_attention_maps, evaluate, finetune,  # noqa: E402
                                  init_autoencoders_pca, mask_sparsity, polarize, sparsity_mask)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "cifar-10-batches-py"))
    ap.add_argument("--model", default="vit-c32-mini")
    ap.add_argument("--epochs", type=int, default=12, help="pretraining epochs (dense)")
    ap.add_argument("--ft-epochs", type=int, default=2, help="fine-tuning epochs per mask")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ft-lr", type=float, default=3e-4)
    ap.add_argument("--sparsities", default="0.5,0.7,0.9")
    ap.add_argument("--map-images", type=int, default=2000, help="training images averaged for the maps")
    ap.add_argument("--autoencoder", action="store_true", help="also run Q/K auto-encoder + 90 %% masks")
    ap.add_argument("--train-limit", type=int, default=None, help="use only this many training images (smoke runs)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="", help="write the results as JSON here")
    ap.add_argument("--save-masks", default="", help="directory: save the averaged maps and the masks (.npy)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    data = load_dataset("cifar10", args.data_dir, val_fraction=0.02, split_seed=0,
                        train_limit=args.train_limit)
    print(data.describe(), flush=True)

    def train_batches(epoch: int):
        g = torch.Generator().manual_seed(1000 * args.seed + max(epoch, 0))
        return batches(data, data.train, args.batch, shuffle=True, generator=g, augment=True, drop_last=True)

    def test_batches():
        return batches(data, data.test, 250)

    steps = len(data.train) // args.batch
    model = build_vit(args.model, seed=args.seed)
    print(f"model {args.model}: {model.cfg}; {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    log = lambda s: print("  " + s, flush=True)                                  # noqa: E731
    print(f"pretraining {args.epochs} epochs (dense)", flush=True)
    pre = finetune(model, None, train_batches, args.epochs, lr=args.lr, warmup_steps=steps,
                   steps_per_epoch=steps, label_smoothing=0.1, log=log)
    dense_top1 = evaluate(model, test_batches())
    print(f"dense top-1 {dense_top1:.4f} ({pre.seconds:.0f} s)", flush=True)

    t = time.time()
    map_loader = batches(data, data.train, 250)
    maps = collect_attention_maps(model, map_loader, max_images=args.map_images)
    print(f"attention maps {tuple(maps.shape)} from {min(args.map_images, len(data.train))} images "
          f"({time.time() - t:.0f} s)", flush=True)

    if args.save_masks:
        import numpy as np
        out_dir = Path(args.save_masks)
        out_dir.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / "attention_maps.npy", maps.numpy())

    def run_ft(masks, label, m=None):
        m = m or copy.deepcopy(model)
        m.set_attention_masks(masks)
        before = evaluate(m, test_batches())
        hist = finetune(m, masks, train_batches, args.ft_epochs, lr=args.ft_lr, warmup_steps=0,
                        steps_per_epoch=steps, label_smoothing=0.1, log=log)
        after = evaluate(m, test_batches())
        print(f"{label}: top-1 before fine-tune {before:.4f}, after {after:.4f} ({hist.seconds:.0f} s)", flush=True)
        return before, after

    rows = []
    _, dense_ft = run_ft(None, "dense control (fine-tuned, no mask)")
    for s in [float(x) for x in args.sparsities.split(",")]:
        masks = sparsity_mask(maps, s)
        if args.save_masks:
            np.save(Path(args.save_masks) / f"masks_{round(100 * s)}.npy", masks.numpy())
        pol = [polarize(masks[layer]).stats() for layer in range(masks.shape[0])]
        globals_per_head = sum(sum(p["num_global"]) for p in pol) / sum(p["heads"] for p in pol)
        sparse_density = sum(p["sparse_nnz"] for p in pol) / max(1, sum(
            p["tokens"] * (p["tokens"] * p["heads"] - sum(p["num_global"])) for p in pol))
        before, after = run_ft(masks, f"sparsity {s:.0%}")
        rows.append({"target_sparsity": s, "sparsity": mask_sparsity(masks), "top1_mask_only": before,
                     "top1_finetuned": after, "global_tokens_per_head": globals_per_head,
                     "sparse_part_density": sparse_density})
    if args.autoencoder:
        m = copy.deepcopy(model)
        add_autoencoders(m)
        init_autoencoders_pca(m, batches(data, data.train, 250), max_images=500)
        masks = sparsity_mask(maps, 0.9)
        before, after = run_ft(masks, "auto-encoder 3->2 + 90 % masks", m)
        rows.append({"target_sparsity": 0.9, "sparsity": mask_sparsity(masks), "top1_mask_only": before,
                     "top1_finetuned": after, "autoencoder": f"{m.cfg.heads}->{m.cfg.qk_compressed_heads}"})

    total = time.time() - t0
    print(f"\n{data.describe()}\nmodel {args.model}, pretrain {args.epochs} ep, fine-tune {args.ft_epochs} ep "
          f"per mask, total {total / 60:.1f} min\n")
    print("| model | attention sparsity | top-1 (mask, no fine-tune) | top-1 (fine-tuned) | global tokens / head "
          "| sparse-part density |")
    print("|---|---|---|---|---|---|")
    print(f"| unmasked (as pretrained) | 0 % | {dense_top1:.2%} | -- | -- | -- |")
    print(f"| unmasked, fine-tuned {args.ft_epochs} ep (control) | 0 % | -- | {dense_ft:.2%} | -- | -- |")
    for r in rows:
        name = "auto-encoder " + r["autoencoder"] + " + mask" if "autoencoder" in r else "masked"
        g = f"{r['global_tokens_per_head']:.1f}" if "global_tokens_per_head" in r else "--"
        d = f"{r['sparse_part_density']:.3f}" if "sparse_part_density" in r else "--"
        print(f"| {name} | {r['sparsity']:.1%} | {r['top1_mask_only']:.2%} | {r['top1_finetuned']:.2%} | {g} | {d} |")
    result = {"model": args.model, "config": model.cfg.to_dict(), "args": vars(args), "data": data.describe(),
              "dense_top1": dense_top1, "dense_finetuned_top1": dense_ft, "rows": rows, "minutes": total / 60}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
