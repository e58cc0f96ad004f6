"""The outer multi-objective loop: Optuna (NSGA-II) trials in a real database, resumable, multi-worker.

The loop does not know what it searches: a :class:`~codesign.nas.spaces.SpaceDriver` (chosen by
``--space``: :mod:`codesign.nas.nasa_space`, :mod:`codesign.nas.vitcod_space`) builds the per-search
context, turns a trial's parameters into a candidate, trains and measures it, and says what the front
shows. Objectives: validation accuracy (max), latency in seconds (min), energy in pJ (min), modelled on
the accelerator by the mapper and the simulator. The record and every metric are stored as the trial's
user attributes.

Storage: ``sqlite:///OUT/trials.db`` by default, or any SQLAlchemy URL (PostgreSQL, MySQL) so
workers on many machines share one study. Robustness:

* only COMPLETE trials count toward ``trials``; a worker does not start a trial when the complete
  plus running ones already reach it;
* every running trial records its host and pid and a heartbeat; a RUNNING trial whose process is
  gone (same host) or whose heartbeat is older than ``stale_after_s`` (any host) is marked FAIL and
  its parameters are enqueued again, so a search killed with SIGKILL resumes (``resume=True``)
  without redoing finished trials and without losing the interrupted one;
* Ctrl-C marks the running trial FAIL and enqueues it again before exiting;
* a candidate already evaluated in the study (same canonical string) is not trained again: its
  metrics are copied.

Determinism: with ``workers=1`` on the CPU, the same seed gives the same trials and the same front
(seeded NSGA-II sampler, per-architecture training seeds, deterministic mapper budget permitting).
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from hw_models.errors import CodesignError

__all__ = ["SearchConfig", "SearchOutcome", "run_search", "run_worker", "open_study", "collect_points",
           "validate", "OBJECTIVE_NAMES", "DIRECTIONS", "STRATEGIES"]

OBJECTIVE_NAMES = ("accuracy", "latency_s", "energy_pj")
DIRECTIONS = ("maximize", "minimize", "minimize")
STRATEGIES = ("sample", "derive")
CONFIG_ATTR = "codesign_config"
#: Consecutive failed trials after which a worker gives up (a systematic error, not a bad architecture).
MAX_CONSECUTIVE_FAILURES = 3


@dataclass
class SearchConfig:
    out: str
    space: str = "nasa"
    hw: str | None = None                  # default: the space's (nasa-chunked; vitcod for --space vitcod)
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    trials: int = 20
    epochs: int = 3
    workers: int = 1
    storage: str | None = None
    resume: bool = False
    seed: int = 0
    strategy: str = "sample"
    batch_size: int | None = None          # default: 32 for digits, 64 otherwise
    lr: float | None = None                # default: the space's (SGD 0.1 for nasa, AdamW 1e-3 for vitcod)
    device: str = "auto"
    width_mult: float = 1.0
    depth_mult: float = 1.0
    map_budget_s: float = 30.0
    map_objective: str = "edp"
    map_effort: str = "quick"
    population: int | None = None
    study_name: str | None = None
    baselines: tuple[str, ...] | None = None   # default: the space's (conv_k3_e6 for nasa, dense for vitcod)
    train_limit: int | None = None
    val_fraction: float | None = None
    # differentiable search (strategy "derive")
    supernet_pretrain: str = "2:conv+shift;2:conv+shift+adder/adder"
    supernet_search_epochs: int = 4
    supernet_mode: str = "hard"
    tau0: float = 5.0
    tau_decay: float = 0.975
    # ViTCoD space: the dense ViT pretrained once per search
    pretrain_epochs: int | None = None      # default 20 for digits, 12 otherwise
    pretrain_lr: float | None = None        # default 5 x lr
    # robustness / UI
    heartbeat_s: float = 10.0
    stale_after_s: float = 300.0
    progress: bool = True
    threads: int | None = None
    max_minutes: float | None = None        # start no new trial after this much wall time
    deadline_unix: float | None = None      # (set by run_search from max_minutes; shared with workers)

    # -- derived ----------------------------------------------------------------------------
    @property
    def out_dir(self) -> Path:
        return Path(self.out).expanduser().resolve()

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{self.out_dir / 'trials.db'}"

    @property
    def name(self) -> str:
        return self.study_name or self.out_dir.name or "codesign-search"

    @property
    def population_size(self) -> int:
        return self.population or max(4, min(50, self.trials // 3))

    def identity(self) -> dict[str, Any]:
        """Settings a resumed (or joining) worker must share with the study."""
        from codesign.nas.spaces import get_driver
        keys = ("space", "hw", "dataset", "epochs", "seed", "strategy", "batch_size", "lr", "width_mult",
                "depth_mult", "map_budget_s", "map_objective", "map_effort", "train_limit", "val_fraction",
                "supernet_pretrain", "supernet_search_epochs", "supernet_mode", "tau0", "tau_decay")
        keys += get_driver(self.space).identity_keys
        return {k: getattr(self, k) for k in keys}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["baselines"] = None if self.baselines is None else list(self.baselines)
        if self.storage:
            d["storage"] = _redact(self.storage)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchConfig":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if kw.get("baselines") is not None:
            kw["baselines"] = tuple(kw["baselines"])
        return cls(**kw)


@dataclass
class SearchOutcome:
    front: list[dict[str, Any]]
    points: list[dict[str, Any]]
    reference: dict[str, Any] | None
    front_json: Path
    front_png: Path
    table: str
    complete: int
    failed: int
    seconds: float = 0.0


def _redact(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:                                        # noqa: BLE001
        return url


# ---------------------------------------------------------------------------------------------
# validation and set-up


def validate(cfg: SearchConfig) -> None:
    """Check the settings (one-line CodesignError) and fill in the defaults of the chosen space."""
    from codesign.data import DATASETS
    from codesign.nas.spaces import get_driver
    driver = get_driver(cfg.space)                       # unknown --space: one line
    if cfg.dataset not in DATASETS:
        raise CodesignError(f"unknown dataset {cfg.dataset!r} (known: {', '.join(DATASETS)})")
    if cfg.strategy not in STRATEGIES:
        raise CodesignError(f"unknown strategy {cfg.strategy!r} (known: {', '.join(STRATEGIES)})")
    if cfg.strategy not in driver.strategies:
        raise CodesignError(f"--strategy {cfg.strategy} is not available for --space {cfg.space} "
                            f"(available: {', '.join(driver.strategies)})")
    if cfg.batch_size is None:
        cfg.batch_size = 32 if cfg.dataset == "digits" else 64
    if cfg.hw is None:
        cfg.hw = driver.default_hw
    if cfg.lr is None:
        cfg.lr = driver.default_lr(cfg)
    if cfg.baselines is None:
        cfg.baselines = tuple(driver.default_baselines)
    for name, value, low in (("--trials", cfg.trials, 1), ("--workers", cfg.workers, 1), ("--epochs", cfg.epochs, 0),
                             ("--batch-size", cfg.batch_size, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise CodesignError(f"{name} must be an integer >= {low}, got {value!r}")
    if cfg.max_minutes is not None and not cfg.max_minutes > 0:
        raise CodesignError(f"--max-minutes must be > 0, got {cfg.max_minutes}")
    if cfg.population is not None and cfg.population < 2:
        raise CodesignError(f"--population must be >= 2, got {cfg.population}")
    for name, value in (("--lr", cfg.lr), ("--width-mult", cfg.width_mult), ("--depth-mult", cfg.depth_mult),
                        ("--map-budget", cfg.map_budget_s)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise CodesignError(f"{name} must be > 0, got {value!r}")
    if cfg.map_effort not in ("quick", "full"):
        raise CodesignError(f"--map-effort must be quick or full, got {cfg.map_effort!r}")
    if cfg.map_objective not in ("edp", "latency", "energy"):
        raise CodesignError(f"--map-objective must be edp, latency or energy, got {cfg.map_objective!r}")
    driver.validate(cfg)
    if cfg.storage is not None:
        _check_url(cfg.storage)


def _check_url(url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError
    try:
        u = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise CodesignError(f"bad --storage URL {url!r}: {str(exc).splitlines()[0]}") from None
    if not u.drivername:
        raise CodesignError(f"bad --storage URL {url!r}: no database driver")


def _storage(cfg: SearchConfig):
    import optuna
    from sqlalchemy.exc import SQLAlchemyError
    url = cfg.storage_url
    if cfg.storage is None:
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 120}}
    else:
        kwargs = {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except ImportError as exc:     # SQLAlchemy names the driver module it needs (postgresql:// -> psycopg)
        module, err = None, exc
        while err is not None and module is None:       # Optuna re-raises SQLAlchemy's ImportError
            found = re.search(r"No module named '([^'.]+)", str(err))
            module = getattr(err, "name", None) or (found.group(1) if found else None)
            err = err.__cause__ or err.__context__
        if module is None:
            raise CodesignError(f"--storage {_redact(url)}: its database driver is not installed ({exc})") from None
        hint = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary"}.get(module, module)
        raise CodesignError(f"--storage {_redact(url)}: the database driver module {module!r} is not installed "
                            f"(pip install {hint})") from None
    except (SQLAlchemyError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CodesignError(f"cannot open storage {_redact(url)}: {msg}") from None


def _sampler(cfg: SearchConfig, salt: int = 0):
    import optuna
    return optuna.samplers.NSGAIISampler(population_size=cfg.population_size, seed=cfg.seed + salt)


def open_study(cfg: SearchConfig, create: bool, salt: int = 0):
    """Create (``create=True``; refuses an existing study unless ``cfg.resume``) or load the study."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _storage(cfg)
    existing = {s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)}
    exists = cfg.name in existing
    if create and exists and not cfg.resume:
        raise CodesignError(f"study {cfg.name!r} already exists in {_redact(cfg.storage_url)}; pass --resume to "
                            f"continue it or choose another --out")
    if cfg.resume and not exists:
        raise CodesignError(f"nothing to resume: no study {cfg.name!r} in {_redact(cfg.storage_url)}")
    if not exists and not create:
        raise CodesignError(f"no study {cfg.name!r} in {_redact(cfg.storage_url)}")
    if exists:
        study = optuna.load_study(study_name=cfg.name, storage=storage, sampler=_sampler(cfg, salt))
        # A resumed sampler must not replay the random draws of the first run: offset its seed by the
        # number of trials already started (0 for a fresh search, so fresh runs stay reproducible).
        from optuna.trial import TrialState
        started = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL,
                                                                TrialState.RUNNING, TrialState.PRUNED)))
        if started:
            study.sampler = _sampler(cfg, salt + 104_729 * started)
        stored = study.user_attrs.get(CONFIG_ATTR)
        if stored is not None:
            mine = json.loads(json.dumps(cfg.identity()))
            for k, v in mine.items():
                if k in stored and stored[k] != v:
                    raise CodesignError(f"--resume: this search was started with {k}={stored[k]!r}, not {v!r}")
        if [d.name.lower() for d in study.directions] != list(DIRECTIONS):
            raise CodesignError(f"study {cfg.name!r} is not a codesign search (objectives differ)")
        return study, False
    study = optuna.create_study(study_name=cfg.name, storage=storage, sampler=_sampler(cfg, salt),
                                directions=list(DIRECTIONS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                 # "experimental" in Optuna; harmless here
        study.set_metric_names(list(OBJECTIVE_NAMES))
    study.set_user_attr(CONFIG_ATTR, json.loads(json.dumps(cfg.identity())))
    return study, True


# ---------------------------------------------------------------------------------------------
# stale trials


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _trial_is_stale(t, now: float, stale_after_s: float, host: str) -> bool:
    owner = t.user_attrs.get("worker") or {}
    beat = t.user_attrs.get("heartbeat")
    if beat is None and t.datetime_start is not None:
        beat = t.datetime_start.timestamp()
    if owner.get("host") == host and isinstance(owner.get("pid"), int) and owner["pid"] != os.getpid():
        if not _pid_alive(owner["pid"]):
            return True
    if owner.get("host") == host and owner.get("pid") == os.getpid() and owner.get("token") != _TOKEN:
        return True                                   # pid reused by this very process
    return beat is not None and now - float(beat) > stale_after_s


def fail_stale_trials(study, cfg: SearchConfig) -> list[int]:
    """Mark stale RUNNING trials FAIL and enqueue their parameters again; returns their numbers."""
    from optuna.trial import TrialState
    host, now = socket.gethostname(), time.time()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _trial_is_stale(t, now, cfg.stale_after_s, host):
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):
            continue                                 # another worker got there first
        _requeue(study, t, reason="stale")
        failed.append(t.number)
    return failed


def _requeue(study, t, reason: str) -> None:
    attrs = {k: v for k, v in t.user_attrs.items() if k in ("baseline", "fixed_arch")}
    attrs["retry_of"] = t.number
    attrs["retry_reason"] = reason
    # a trial stopped before it suggested anything still holds the parameters it was enqueued with
    params = dict(t.params) or dict(t.system_attrs.get("fixed_params") or {})
    if params or attrs.get("fixed_arch"):
        study.enqueue_trial(params, user_attrs=attrs)


# ---------------------------------------------------------------------------------------------
# the trial


_TOKEN = f"{os.getpid()}-{time.time_ns()}"


class _Heartbeat:
    """Writes ``heartbeat`` = now into the trial's user attributes every ``interval`` seconds."""

    def __init__(self, trial, interval: float) -> None:
        self.trial, self.interval = trial, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="codesign-heartbeat")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.trial.set_user_attr("heartbeat", time.time())
            except Exception:                                   # noqa: BLE001 - trial finished meanwhile
                return

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


#: User attributes of a trial that belong to that trial only (a duplicate does not copy them).
_OWN_ATTRS = ("worker", "heartbeat", "baseline", "retry_of", "retry_reason", "fixed_arch")


def _duplicate_of(study, arch_string: str, number: int):
    from optuna.trial import TrialState
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number != number and t.user_attrs.get("arch_string") == arch_string:
            return t
    return None


def _evaluate_trial(trial, study, ctx) -> tuple[float, float, float]:
    """Suggest (the space's driver), skip known candidates, evaluate, store the record."""
    driver = _driver(ctx.cfg)
    key, candidate = driver.suggest(trial, ctx)
    trial.set_user_attr("arch_string", key)
    dup = _duplicate_of(study, key, trial.number)
    if dup is not None:
        for k, v in dup.user_attrs.items():
            if k not in _OWN_ATTRS and k not in driver.private_attrs:
                trial.set_user_attr(k, v)
        trial.set_user_attr("duplicate_of", dup.number)
        return tuple(dup.values)                       # type: ignore[return-value]
    values, attrs = driver.evaluate(trial, study, candidate, ctx)
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    return values


def _counts(study) -> tuple[int, int]:
    from optuna.trial import TrialState
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    return complete, len(trials) - complete


def _driver(cfg: SearchConfig):
    from codesign.nas.spaces import get_driver
    return get_driver(cfg.space)


def _make_context(cfg: SearchConfig, prepare: bool = True):
    """The space's context; ``prepare`` also builds its once-per-search state (loaded when cached)."""
    driver = _driver(cfg)
    ctx = driver.make_context(cfg)
    if prepare:
        driver.prepare(ctx)
    return ctx


def _set_threads(cfg: SearchConfig) -> None:
    """Intra-op threads per worker: ``cfg.threads``, else 1 for the tiny digits networks (thread
    hand-offs cost more than they gain there, and far more on a shared machine), else cores/workers."""
    import torch
    n = cfg.threads or (1 if cfg.dataset == "digits" else max(1, (os.cpu_count() or 1) // cfg.workers))
    torch.set_num_threads(n)


def run_worker(cfg: SearchConfig, worker_id: int = 0, ctx=None,
               on_complete=None) -> int:
    """Run trials until the study has ``cfg.trials`` COMPLETE ones; returns how many this worker ran."""
    from optuna.trial import TrialState
    _set_threads(cfg)
    study, _ = open_study(cfg, create=False, salt=_salt(cfg, worker_id))
    ctx = ctx or _make_context(cfg)
    host = socket.gethostname()
    ran, failures = 0, 0
    while True:
        fail_stale_trials(study, cfg)
        complete, running = _counts(study)
        if complete >= cfg.trials:
            break
        if cfg.deadline_unix is not None and time.time() >= cfg.deadline_unix:
            break                                       # time budget spent: --resume continues
        if complete + running >= cfg.trials:
            time.sleep(min(2.0, cfg.heartbeat_s))        # the remaining trials are running elsewhere
            continue
        trial = study.ask()
        trial.set_user_attr("worker", {"host": host, "pid": os.getpid(), "token": _TOKEN, "id": worker_id})
        trial.set_user_attr("heartbeat", time.time())
        complete, running = _counts(study)
        if complete + running > cfg.trials and _is_surplus(study, trial.number, cfg.trials - complete):
            study.tell(trial, state=TrialState.FAIL)
            _requeue(study, _frozen(study, trial.number), reason="surplus")
            continue
        try:
            with _Heartbeat(trial, cfg.heartbeat_s):
                values = _evaluate_trial(trial, study, ctx)
        except KeyboardInterrupt:
            study.tell(trial, state=TrialState.FAIL)
            _requeue(study, _frozen(study, trial.number), reason="interrupted")
            raise
        except Exception as exc:                                       # noqa: BLE001 - record, go on
            failures += 1
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            study.tell(trial, state=TrialState.FAIL)
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise CodesignError(f"{failures} trials in a row failed; last: {type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
            continue
        failures = 0
        try:
            study.tell(trial, values=list(values))
        except (RuntimeError, ValueError) as exc:        # declared stale meanwhile (e.g. process was stopped)
            print(f"codesign: trial {trial.number} finished after it was marked FAIL ({exc}); it was re-queued",
                  file=sys.stderr)
            continue
        ran += 1
        if on_complete is not None:
            on_complete(trial.number)
    ctx.flush()
    return ran


def _frozen(study, number: int):
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _is_surplus(study, number: int, allowed: int) -> bool:
    from optuna.trial import TrialState
    running = sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return number in running[max(0, allowed):]


def _salt(cfg: SearchConfig, worker_id: int) -> int:
    """Sampler seed offset: worker 0 of a fresh single-worker search uses the plain seed."""
    return 7919 * worker_id


def _worker_main(cfg_dict: dict[str, Any], worker_id: int) -> None:        # spawned process entry
    cfg = SearchConfig.from_dict(cfg_dict)
    cfg.progress = False
    try:
        run_worker(cfg, worker_id)
    except KeyboardInterrupt:
        sys.exit(130)
    except CodesignError as exc:
        print(f"codesign: worker {worker_id}: error: {exc}", file=sys.stderr)
        sys.exit(2)


# ---------------------------------------------------------------------------------------------
# results


def collect_points(study, driver=None) -> list[dict[str, Any]]:
    """One dict per COMPLETE trial: its objectives, metrics and architecture record (plus the fields
    ``driver.point_extras`` adds)."""
    from optuna.trial import TrialState
    pts = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = t.user_attrs
        p = {"trial": t.number, "accuracy": float(t.values[0]), "latency_s": float(t.values[1]),
             "energy_pj": float(t.values[2]), "test_accuracy": a.get("test_accuracy"),
             "cycles": a.get("cycles"), "family": a.get("family"), "params": a.get("params"),
             "arch_string": a.get("arch_string"), "arch": a.get("arch", {}),
             "duplicate_of": a.get("duplicate_of"), "baseline": "baseline" in a,
             "train_seconds": a.get("train_seconds")}
        if driver is not None:
            p.update(driver.point_extras(a))
        pts.append(p)
    return sorted(pts, key=lambda p: p["trial"])


def summarize(cfg: SearchConfig, study, seconds: float = 0.0) -> SearchOutcome:
    from optuna.trial import TrialState
    from codesign.nas.front import front_table, pareto_front, plot_front, write_front_json
    driver = _driver(cfg)
    points = collect_points(study, driver)
    front = pareto_front(points)
    ref = driver.reference(points)
    failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    out = cfg.out_dir
    payload = {"study": cfg.name, "space": cfg.space, "storage": _redact(cfg.storage_url),
               "objectives": list(OBJECTIVE_NAMES), "directions": list(DIRECTIONS), "config": cfg.to_dict(),
               "trials_complete": len(points), "trials_failed": failed, "front": front,
               "reference": ref, **driver.front_extras(front, ref)}
    fj = write_front_json(out / "front.json", payload)
    fp = plot_front(out / "front.png", points, front,
                    title=f"{cfg.name}: {cfg.dataset}, {cfg.space}, {cfg.hw}, {len(points)} trials",
                    reference_family=driver.reference_family, reference_label=driver.reference_marker)
    table = front_table(front, ref, columns=driver.table_columns())
    return SearchOutcome(front, points, ref, fj, fp, table, len(points), failed, seconds)


# ---------------------------------------------------------------------------------------------
# the driver


def run_search(cfg: SearchConfig, log=print) -> SearchOutcome:
    """Create or resume the study, run the workers, write front.json / front.png, return the front."""
    validate(cfg)
    t0 = time.perf_counter()
    if cfg.max_minutes is not None:
        cfg.deadline_unix = time.time() + 60.0 * cfg.max_minutes
    _set_threads(cfg)
    driver = _driver(cfg)
    ctx = _make_context(cfg, prepare=False)             # validates data set, hardware, space up front
    study, created = open_study(cfg, create=True)
    if created:
        driver.enqueue_baselines(study, ctx)
    else:
        stale = fail_stale_trials(study, cfg)
        if stale:
            log(f"resume: marked interrupted trial(s) {', '.join(map(str, stale))} as FAIL and queued them again")
    complete, _ = _counts(study)
    log(f"search {cfg.name}: {ctx.bundle.describe()}; {driver.describe(ctx)}; "
        f"hw {ctx.hw.name}; {complete}/{cfg.trials} trials complete; storage {_redact(cfg.storage_url)}")
    driver.prepare(ctx, log=log)                        # e.g. NASA's supernet, ViTCoD's pretrained ViT (cached)
    bar = None
    if cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.trials, initial=min(complete, cfg.trials), desc="trials", unit="trial")
    try:
        if cfg.workers == 1:
            run_worker(cfg, 0, ctx, on_complete=(lambda n: bar.update(1)) if bar is not None else None)
        else:
            _run_pool(cfg, study, bar)
    finally:
        if bar is not None:
            bar.close()
    outcome = summarize(cfg, study, time.perf_counter() - t0)
    if outcome.complete < cfg.trials and cfg.max_minutes is not None:
        log(f"time budget of {cfg.max_minutes:g} min reached with {outcome.complete}/{cfg.trials} trials complete; "
            f"--resume continues the search")
    return outcome


def _run_pool(cfg: SearchConfig, study, bar) -> None:
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(cfg.to_dict() | {"storage": cfg.storage}, i), daemon=False)
             for i in range(cfg.workers)]
    for p in procs:
        p.start()
    try:
        last = _counts(study)[0]
        while any(p.is_alive() for p in procs):
            time.sleep(1.0)
            done = min(_counts(study)[0], cfg.trials)
            if bar is not None and done > last:
                bar.update(done - last)
            last = max(last, done)
        bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
        if bad:
            raise CodesignError(f"{len(bad)} worker(s) failed (exit codes {bad}); see the messages above")
    except KeyboardInterrupt:
        # Ctrl-C in a terminal reaches the workers too; give them a moment to mark their trials FAIL and
        # re-queue them, then pass the interrupt on to any that did not get it.
        time.sleep(2.0)
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGINT)
        for p in procs:
            p.join(timeout=30)
        raise
