"""``codesign search``: the Pareto search over a space, on an accelerator, on a data set.

The lead's ``codesign.cli`` registers it with :func:`add_search_parser`; bad input raises
:class:`hw_models.errors.CodesignError` with a one-line message (the CLI prints it, exit code 2).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from hw_models.errors import CodesignError

__all__ = ["add_search_parser", "cmd_search", "config_from_args"]

EPILOG = """spaces:
  nasa    conv/shift/adder hybrid CNNs (NASA); a trial trains a network from scratch; --hw nasa-chunked
  vitcod  sparse-attention ViTs (ViTCoD): a dense ViT sized to the data set is pretrained once per search
          (--pretrain-epochs, cached in OUT); a trial picks the mask rule (dense, target sparsity
          0.5..0.95 or info_cut 0.8..0.95, from the pretrained model's averaged attention maps), the
          Q/K auto-encoder (none or 1..heads-1 compressed heads, PCA-initialised) and the accelerator's
          dense/sparse split (polarize_threshold 0.1, 0.25, 0.5), fine-tunes --epochs epochs (AdamW,
          --lr) and maps the masked ViT onto --hw (default vitcod; it needs a sparse_attention chunk).
          The dense model is the first trial and the reference of the summary.

examples:
  codesign search                                   # digits (ships with scikit-learn), offline
  codesign search --dataset cifar10 --data-dir ../shared/data --trials 30 --epochs 5 --out runs/c10
  codesign search --out runs/c10 --resume           # continue after a crash or Ctrl-C
  codesign search --storage postgresql://user@db/codesign --out runs/c10 --workers 4   # many machines
  codesign search --space vitcod --trials 20 --epochs 2 --out runs/vit-digits        # sparse-attention ViTs
  codesign report --model runs/vit-digits@0 --hw vitcod --search runs/vit-digits    # report a front point
"""


def add_search_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``search`` on an argparse sub-parser collection; sets ``func`` -> :func:`cmd_search`."""
    p = subparsers.add_parser(
        "search", help="multi-objective NAS (accuracy, latency, energy): conv/shift/adder hybrids or sparse-attention ViTs",
        description="Search the NASA hybrid space (--space nasa) or the ViTCoD sparse-attention space (--space "
                    "vitcod) for Pareto-optimal (accuracy, latency, energy) networks on an accelerator. Trials "
                    "live in a database (SQLite OUT/trials.db by default), so a search resumes after a crash and "
                    "runs on several workers or machines. Writes OUT/front.json and OUT/front.png and prints the "
                    "front.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to search")
    g.add_argument("--space", default="nasa", help="search space: nasa (default) or vitcod (see below)")
    g.add_argument("--hw", default=None, help="accelerator preset or YAML file (default: nasa-chunked for --space "
                                              "nasa, vitcod for --space vitcod)")
    g.add_argument("--dataset", default="digits", help="digits (default, ships with scikit-learn), cifar10 or cifar100")
    g.add_argument("--data-dir", default=None, metavar="D",
                   help="folder holding cifar-10-batches-py/ or cifar-100-python/ (or that folder itself); "
                        "default $CODESIGN_DATA_DIR")
    g.add_argument("--download", action="store_true", help="fetch the official CIFAR archive into --data-dir if missing")
    g.add_argument("--width-mult", type=float, default=1.0,
                   help="channel width (vitcod: embedding width) multiplier of the space (default 1)")
    g.add_argument("--depth-mult", type=float, default=1.0,
                   help="blocks-per-stage (vitcod: transformer blocks) multiplier of the space (default 1)")
    g.add_argument("--train-limit", type=int, default=None, metavar="N", help="use only the first N training images")
    g = p.add_argument_group("how")
    g.add_argument("--trials", type=int, default=20, metavar="N", help="COMPLETE trials to reach (default 20)")
    g.add_argument("--epochs", type=int, default=3, metavar="E", help="training epochs per trial (default 3)")
    g.add_argument("--strategy", default="sample",
                   help="sample: NSGA-II picks every block; derive: NSGA-II picks the hardware-cost weight of the "
                        "differentiable supernet search, which derives the network (default sample)")
    g.add_argument("--batch-size", type=int, default=None, help="default 32 for digits, 64 for CIFAR")
    g.add_argument("--lr", type=float, default=None,
                   help="learning rate, cosine schedule: nasa SGD (default 0.1), vitcod AdamW fine-tuning (default 1e-3)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch threads per worker (default 1 for digits, else cores / workers)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--population", type=int, default=None, help="NSGA-II population (default trials/3, 4..50)")
    g.add_argument("--baseline", default=None,
                   help="comma-separated candidates to evaluate first (reference points; 'none' for none): nasa: "
                        "uniform all-of-one networks (default conv_k3_e6); vitcod: mask rules without auto-encoder "
                        "(default dense)")
    g.add_argument("--map-budget", type=float, default=30.0, metavar="S",
                   help="mapper time ceiling per network in seconds (default 30; the searches normally stop on "
                        "their evaluation caps first, which keeps results reproducible)")
    g.add_argument("--map-effort", default="quick", help="mapper per-op search effort: quick (default) or full")
    g.add_argument("--map-objective", default="edp", help="mapper objective: edp, latency or energy")
    g.add_argument("--device", default="auto", help="auto (CUDA with mixed precision if present, else CPU), cpu, cuda[:N]")
    g = p.add_argument_group("differentiable search (--strategy derive)")
    g.add_argument("--supernet-pretrain", default="2:conv+shift;2:conv+shift+adder/adder", metavar="SCHED",
                   help="progressive pretraining, EPOCHS:ACTIVE[/TRAINABLE] phases joined by ';' "
                        "(NASA: 40:conv+shift;40:conv+shift+adder/adder)")
    g.add_argument("--supernet-epochs", type=int, default=4, help="search epochs after pretraining (per trial)")
    g.add_argument("--supernet-mode", default="hard", help="hard (one sampled path per step) or soft (all paths)")
    g.add_argument("--tau0", type=float, default=5.0, help="initial Gumbel temperature (NASA: 5)")
    g.add_argument("--tau-decay", type=float, default=0.975, help="temperature decay per epoch (NASA: 0.975)")
    g = p.add_argument_group("ViTCoD space (--space vitcod)")
    g.add_argument("--pretrain-epochs", type=int, default=None, metavar="E",
                   help="epochs of the dense ViT trained once per search (default 20 for digits, 12 for CIFAR)")
    g.add_argument("--pretrain-lr", type=float, default=None, help="its AdamW learning rate (default 5 x --lr)")
    g = p.add_argument_group("where")
    g.add_argument("--out", default=None, metavar="runs/NAME",
                   help="output folder (default runs/search-DATASET; runs/search-vitcod-DATASET for --space vitcod)")
    g.add_argument("--storage", default=None, metavar="URL",
                   help="SQLAlchemy URL of the trial database (default sqlite:///OUT/trials.db)")
    g.add_argument("--study", default=None, help="study name in the database (default: the --out folder's name)")
    g.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes on this machine (default 1)")
    g.add_argument("--max-minutes", type=float, default=None, metavar="M",
                   help="start no new trial after M minutes (the front covers the trials done; --resume continues)")
    g.add_argument("--resume", action="store_true", help="continue an existing search (or join it from another machine)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_search)
    return p


def config_from_args(args: argparse.Namespace):
    from codesign.nas.pareto import SearchConfig
    baselines: tuple[str, ...] | None = None               # the space's default
    if args.baseline is not None:
        baselines = () if args.baseline.strip().lower() == "none" else \
            tuple(b.strip() for b in args.baseline.split(",") if b.strip())
    if args.supernet_mode not in ("hard", "soft"):
        raise CodesignError(f"--supernet-mode must be hard or soft, got {args.supernet_mode!r}")
    from codesign.nas.differentiable import parse_schedule
    parse_schedule(args.supernet_pretrain)
    if args.supernet_epochs < 0:
        raise CodesignError(f"--supernet-epochs must be >= 0, got {args.supernet_epochs}")
    if args.train_limit is not None and args.train_limit < 1:
        raise CodesignError(f"--train-limit must be >= 1, got {args.train_limit}")
    return SearchConfig(
        out=args.out or (f"runs/search-{args.dataset}" if args.space == "nasa" else f"runs/search-{args.space}-{args.dataset}"),
        space=args.space, hw=args.hw, dataset=args.dataset,
        data_dir=args.data_dir, download=args.download, trials=args.trials, epochs=args.epochs,
        workers=args.workers, storage=args.storage, resume=args.resume, seed=args.seed, strategy=args.strategy,
        batch_size=args.batch_size, lr=args.lr, device=args.device, width_mult=args.width_mult,
        depth_mult=args.depth_mult, map_budget_s=args.map_budget, map_objective=args.map_objective, map_effort=args.map_effort,
        population=args.population, study_name=args.study, baselines=baselines, train_limit=args.train_limit,
        supernet_pretrain=args.supernet_pretrain, supernet_search_epochs=args.supernet_epochs,
        supernet_mode=args.supernet_mode, tau0=args.tau0, tau_decay=args.tau_decay,
        progress=not args.no_progress, threads=args.threads,
        max_minutes=args.max_minutes, pretrain_epochs=args.pretrain_epochs, pretrain_lr=args.pretrain_lr)


def cmd_search(args: argparse.Namespace) -> int:
    from codesign.nas.pareto import run_search
    from codesign.nas.spaces import get_driver
    cfg = config_from_args(args)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    outcome = run_search(cfg, log=log)
    print(f"Pareto front: {len(outcome.front)} of {outcome.complete} complete trials "
          f"(accuracy on the validation split; latency/energy modelled on {cfg.hw}, batch 1)")
    print(outcome.table)
    if outcome.reference is not None:
        ref = outcome.reference
        print(f"{get_driver(cfg.space).reference_label}: trial {ref['trial']} ({100 * ref['accuracy']:.2f} % val, "
              f"{1e3 * ref['latency_s']:.4f} ms, {1e-6 * ref['energy_pj']:.3f} uJ)")
    print(f"wrote {outcome.front_json} and {outcome.front_png}")
    return 0
