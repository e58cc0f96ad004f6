"""codesign search: the Pareto front, the hardware cost term, the differentiable search, and the Optuna loop
end to end (tiny, on digits) including a SIGKILL mid-trial followed by --resume."""
import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from codesign.nas.differentiable import (NASA_PRETRAIN, DnasConfig, Phase, normalized_cost_table, parse_schedule,
                                         pretrain, search)
from codesign.nas.front import dominates, pareto_front
from codesign.nas.train import resolve_device
from hw_models.errors import CodesignError
from search_spaces.nasa_space import build_space
from search_spaces.supernet import Supernet

ROOT = Path(__file__).resolve().parents[1]
DIGITS = build_space("nasa", (1, 8, 8), 10)


def _pipeline_missing():
    for mod in ("codesign.lower", "codesign.mapper"):
        try:
            __import__(mod)
        except ImportError as exc:
            return f"{mod} is not importable yet ({exc})"
    return None


needs_pipeline = pytest.mark.skipif(_pipeline_missing() is not None, reason=str(_pipeline_missing()))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny networks: one intra-op thread is faster, and much faster beside other jobs (restored after)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _parser():
    from codesign.nas.cli import add_search_parser
    p = argparse.ArgumentParser(prog="codesign")
    add_search_parser(p.add_subparsers(dest="command"))
    return p


def _run_cli(*argv):
    args = _parser().parse_args(["search", *map(str, argv)])
    return args.func(args)


TINY = ["--trials", "3", "--epochs", "1", "--train-limit", "256", "--no-progress", "--seed", "0"]


# --------------------------------------------------------------------------------------------
# the front


def test_pareto_front_is_exactly_the_non_dominated_set():
    rng = random.Random(0)
    for _ in range(30):
        pts = [{"trial": i, "accuracy": rng.choice([0.5, 0.6, 0.7, 0.8]), "latency_s": rng.choice([1, 2, 3, 4]),
                "energy_pj": rng.choice([10, 20, 30])} for i in range(25)]
        front = pareto_front(pts)
        brute = [p for p in pts if not any(dominates(q, p) for q in pts)]
        vec = lambda p: (p["accuracy"], p["latency_s"], p["energy_pj"])
        assert {vec(p) for p in front} == {vec(p) for p in brute}
        assert len(front) == len({vec(p) for p in front})             # duplicates kept once
        for p in front:                                                # lowest trial number represents a tie
            assert p["trial"] == min(q["trial"] for q in pts if vec(q) == vec(p))
    a = {"accuracy": 0.9, "latency_s": 1.0, "energy_pj": 5.0}
    assert dominates(a, {"accuracy": 0.8, "latency_s": 1.0, "energy_pj": 5.0})
    assert not dominates(a, a) and not dominates(a, {"accuracy": 0.95, "latency_s": 2.0, "energy_pj": 1.0})


# --------------------------------------------------------------------------------------------
# bad input: one line, a CodesignError


@pytest.mark.parametrize("extra, msg", [
    (["--space", "darts"], "unknown search space 'darts'"),
    (["--hw", "warp-drive"], "warp-drive"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "does not exist"),
    (["--trials", "0"], "--trials must be an integer >= 1"),
    (["--workers", "0"], "--workers must be an integer >= 1"),
    (["--storage", "not a url"], "bad --storage URL"),
    (["--storage", "sqlite:////nonexistent-dir/x/trials.db"], "cannot open storage"),
    (["--strategy", "random"], "unknown strategy"),
    (["--supernet-pretrain", "40:conv+mult"], "unknown op type 'mult'"),
    (["--baseline", "conv_k4_e1"], "--baseline"),
    (["--device", "tpu"], "unknown --device"),
])
def test_bad_input_is_a_one_line_codesign_error(tmp_path, extra, msg):
    with pytest.raises(CodesignError) as err:
        _run_cli("--out", tmp_path / "run", *TINY, *extra)
    text = str(err.value)
    assert msg in text and "\n" not in text


def test_resume_rules(tmp_path):
    with pytest.raises(CodesignError, match="nothing to resume"):
        _run_cli("--out", tmp_path / "none", *TINY, "--resume")


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(CodesignError, match="no CUDA device"):
            resolve_device("cuda")


# --------------------------------------------------------------------------------------------
# hardware cost from the hardware model


@needs_pipeline
def test_block_costs_come_from_lowering_mapping_and_simulation(tmp_path):
    from codesign.lower import lower_model
    from codesign.nas.hardware import HardwareModel
    from hw_models.simulator import simulate
    from search_spaces.nasa_space import build_block
    cache = tmp_path / "hw_cache.json"
    hw = HardwareModel("nasa-chunked", cache_path=cache)
    block = DIGITS.blocks[2]                                      # 16 -> 16, stride 1, 4x4: skip allowed
    costs = {c: hw.block_cost(block, c) for c in ("conv_k3_e1", "conv_k3_e6", "adder_k3_e6", "shift_k3_e6", "skip")}
    assert costs["skip"].latency_s == 0 and costs["skip"].energy_pj == 0
    assert costs["conv_k3_e6"].energy_pj > costs["conv_k3_e1"].energy_pj > 0
    assert costs["conv_k3_e6"].latency_s > costs["conv_k3_e1"].latency_s > 0
    # the same number the mapper + simulator give for the lowered standalone block
    wl = lower_model(build_block("adder_k3_e6", 16, 16, 1).eval(), (1, 16, 4, 4))
    assert {op.kind for op in wl.ops() if op.is_gemm} == {"adder_conv"}
    sim = simulate(wl, hw.accel, hw.map(wl))
    assert costs["adder_k3_e6"].energy_pj == pytest.approx(sim.energy_total_pj)
    assert costs["adder_k3_e6"].latency_s == pytest.approx(sim.seconds)
    # cached: in memory, and in the file for the next process
    before = hw.calls["mapped"]
    hw.block_cost(block, "conv_k3_e6")
    assert hw.calls["mapped"] == before
    hw.flush()
    again = HardwareModel("nasa-chunked", cache_path=cache)
    assert again.block_cost(block, "adder_k3_e6") == costs["adder_k3_e6"] and again.calls["mapped"] == 0
    other = HardwareModel("eyeriss-like", cache_path=cache)    # another accelerator: not the same entry
    assert other.block_cost(block, "conv_k3_e6") != costs["conv_k3_e6"] and other.calls["mapped"] == 1


# --------------------------------------------------------------------------------------------
# differentiable search


def test_schedule_parsing_and_nasa_temperature():
    phases = parse_schedule(NASA_PRETRAIN)
    assert phases == (Phase(40, ("conv", "shift"), ("conv", "shift")),
                      Phase(40, ("conv", "shift", "adder"), ("adder",)))
    assert parse_schedule("3:all") == (Phase(3, ("conv", "shift", "adder"), ("conv", "shift", "adder")),)
    cfg = DnasConfig()
    assert cfg.pretrain_epochs == 80 and cfg.tau(0) == 5.0 and cfg.tau(10) == pytest.approx(5.0 * 0.975 ** 10)
    for bad in ("40", "x:conv", "4:conv/adder", "4:conv+mult"):
        with pytest.raises(CodesignError):
            parse_schedule(bad)


@pytest.fixture(scope="module")
def small_digits():
    from codesign.data import load_dataset
    return load_dataset(train_limit=192)


def _snapshot(net, kind):
    return {(b, key, k): v.detach().clone() for b, blk in enumerate(net.blocks) for key, path in blk.paths.items()
            if key.startswith(kind) for k, v in path.state_dict().items()}


def _changed(a, b):
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_progressive_pretraining_trains_only_the_phase_types(small_digits):
    torch.manual_seed(0)
    net = Supernet(DIGITS, mode="hard")
    dev = torch.device("cpu")
    snap = {t: _snapshot(net, t) for t in ("conv", "shift", "adder")}
    pretrain(net, small_digits, DnasConfig(pretrain=parse_schedule("1:conv+shift")), dev, seed=0)
    after1 = {t: _snapshot(net, t) for t in snap}
    assert _changed(snap["conv"], after1["conv"]) and _changed(snap["shift"], after1["shift"])
    assert not _changed(snap["adder"], after1["adder"])             # inactive: never sampled
    pretrain(net, small_digits, DnasConfig(pretrain=parse_schedule("1:conv+shift+adder/adder")), dev, seed=1)
    after2 = {t: _snapshot(net, t) for t in snap}
    assert _changed(after1["adder"], after2["adder"])
    assert not _changed(after1["conv"], after2["conv"]) and not _changed(after1["shift"], after2["shift"])
    assert all(float(a.detach().abs().sum()) == 0 for a in net.alphas)     # pretraining leaves alpha alone


def test_hardware_term_steers_the_derived_architecture(small_digits):
    """Same supernet, same data: a large hardware weight derives a cheaper network than none."""
    rng = np.random.default_rng(0)
    raw = []
    for b in DIGITS.blocks:                                  # cost grows with expansion and kernel, skip free
        rows = [[0.0, 0.0] if c.is_skip else [c.expansion * c.kernel * (1 + rng.random()), c.expansion * c.kernel]
                for c in b.candidates]
        raw.append(np.array(rows))
    table = normalized_cost_table(raw)
    dev = torch.device("cpu")
    cost = {}
    for lam in (0.0, 20.0):
        torch.manual_seed(0)
        net = Supernet(DIGITS, mode="hard")
        res = search(net, small_digits, table, DnasConfig(pretrain=(), search_epochs=3, hw_weight=lam, a_lr=0.05),
                     dev, seed=0)
        idx = DIGITS.encode(res.arch)
        cost[lam] = sum(float(t[i, 0] + t[i, 1]) for t, i in zip(table, idx))
        assert len(res.probabilities) == len(DIGITS) and res.history[-1]["tau"] == pytest.approx(5.0 * 0.975 ** 2)
    uniform = sum(float(t.mean(0).sum()) for t in table)
    assert cost[20.0] < cost[0.0] and cost[20.0] < 0.5 * uniform


# --------------------------------------------------------------------------------------------
# the Optuna loop, end to end


def _front(out):
    return json.loads((Path(out) / "front.json").read_text())


@needs_pipeline
def test_tiny_search_end_to_end_and_reproducible(tmp_path, capsys):
    import optuna
    from search_spaces.nasa_space import Architecture
    fronts = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert _run_cli("--out", out, *TINY) == 0
        printed = capsys.readouterr().out
        assert "Pareto front:" in printed and "| trial" in printed and "front.json" in printed
        fronts.append(_front(out))
        assert (out / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = fronts[0]
    assert data["format"] == "codesign-front/1" and data["trials_complete"] == 3
    front = data["front"]
    assert front and all(not dominates(q, p) for p in front for q in front)
    study = optuna.load_study(study_name="a", storage=f"sqlite:///{tmp_path / 'a' / 'trials.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    points = [{"trial": t.number, "accuracy": t.values[0], "latency_s": t.values[1], "energy_pj": t.values[2]}
              for t in complete]
    # the front is the non-dominated set of all completed trials (no completed trial dominates a front point)
    assert {p["trial"] for p in pareto_front(points)} == {p["trial"] for p in front}
    for p in front:
        arch = Architecture.from_dict(p["arch"])                   # every point carries its record
        assert arch.to_string() == p["arch_string"] and 0 <= p["accuracy"] <= 1
        assert p["latency_s"] > 0 and p["energy_pj"] > 0
    # trial 0 is the all-conv reference, stored with its record and metrics
    t0 = complete[0]
    assert t0.user_attrs["family"] == "conv" and data["best_all_conv"]["trial"] == 0
    assert {"arch", "accuracy", "test_accuracy", "latency_s", "energy_pj", "cycles"} <= set(t0.user_attrs)
    # same seed, same front (CPU)
    strip = lambda f: [(p["arch_string"], p["accuracy"], p["latency_s"], p["energy_pj"]) for p in f["front"]]
    assert strip(fronts[0]) == strip(fronts[1])
    # an existing study is not silently reused
    with pytest.raises(CodesignError, match="pass --resume"):
        _run_cli("--out", tmp_path / "a", *TINY)
    with pytest.raises(CodesignError, match="started with epochs=1, not 2"):
        _run_cli("--out", tmp_path / "a", *TINY, "--epochs", "2", "--resume")


LAUNCHER = textwrap.dedent("""
    import argparse, sys
    sys.path.insert(0, {root!r})
    from codesign.nas.cli import add_search_parser
    from hw_models.errors import CodesignError
    p = argparse.ArgumentParser(prog="codesign")
    add_search_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["search", *sys.argv[1:]])
    try:
        sys.exit(args.func(args))
    except CodesignError as exc:
        print(f"codesign: error: {{exc}}", file=sys.stderr)
        sys.exit(2)
""")


def _db_states(db):
    con = sqlite3.connect(db, timeout=30)
    try:
        return dict(con.execute("select number, state from trials").fetchall())
    except sqlite3.OperationalError:                      # tables not created yet
        return {}
    finally:
        con.close()


@needs_pipeline
def test_search_killed_mid_trial_resumes_and_keeps_every_completed_trial_once(tmp_path):
    import optuna
    from optuna.trial import TrialState
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER.format(root=str(ROOT)))
    out = tmp_path / "run"
    args = [sys.executable, str(launcher), "--out", str(out), "--trials", "3", "--epochs", "3", "--train-limit", "256",
            "--no-progress", "--seed", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    db = out / "trials.db"
    deadline = time.time() + 90
    killed_running = None
    try:
        while time.time() < deadline and proc.poll() is None:
            states = _db_states(db) if db.exists() else {}
            done = [n for n, s in states.items() if s == "COMPLETE"]
            running = [n for n, s in states.items() if s == "RUNNING"]
            if done and running:
                time.sleep(0.3)                           # well inside the running trial's training
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                killed_running = running
                break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed_running, f"the search never had a completed and a running trial: {proc.stdout.read().decode()[-2000:]}"
    storage = f"sqlite:///{db}"
    before = {t.number: t for t in optuna.load_study(study_name="run", storage=storage).trials}
    stale = [n for n, t in before.items() if t.state == TrialState.RUNNING]
    assert stale == killed_running                        # SIGKILL left the interrupted trial RUNNING
    kept = {n: (t.values, t.user_attrs["arch_string"]) for n, t in before.items() if t.state == TrialState.COMPLETE}

    res = subprocess.run(args + ["--resume"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=150)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "marked interrupted trial" in res.stderr
    after = {t.number: t for t in optuna.load_study(study_name="run", storage=storage).trials}
    complete = {n: t for n, t in after.items() if t.state == TrialState.COMPLETE}
    assert len(complete) == 3                                           # --trials counts COMPLETE only
    for n, (values, arch) in kept.items():                              # finished trials kept, not redone
        assert complete[n].values == values and complete[n].user_attrs["arch_string"] == arch
    for n in stale:
        assert after[n].state == TrialState.FAIL
        retries = [t for t in complete.values() if t.user_attrs.get("retry_of") == n]
        assert len(retries) == 1 and retries[0].params == before[n].params   # re-run once, same params
    front = _front(out)
    assert front["trials_complete"] == 3
    numbers = [p["trial"] for p in front["front"]]
    assert len(numbers) == len(set(numbers)) and set(numbers) <= set(complete)


@needs_pipeline
@pytest.mark.slow
def test_workers_share_one_database(tmp_path):
    import optuna
    out = tmp_path / "w"
    assert _run_cli("--out", out, "--trials", "4", "--epochs", "1", "--train-limit", "256", "--no-progress",
                    "--workers", "2") == 0
    study = optuna.load_study(study_name="w", storage=f"sqlite:///{out / 'trials.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    assert len({t.user_attrs["worker"]["pid"] for t in complete}) == 2
    assert _front(out)["trials_complete"] == 4


@needs_pipeline
@pytest.mark.slow
def test_derive_strategy_end_to_end(tmp_path):
    out = tmp_path / "d"
    assert _run_cli("--out", out, "--trials", "3", "--epochs", "1", "--train-limit", "256", "--no-progress",
                    "--strategy", "derive", "--supernet-pretrain", "1:conv+shift;1:all/adder",
                    "--supernet-epochs", "1") == 0
    data = _front(out)
    assert data["trials_complete"] == 3 and (out / "supernet.pt").is_file()
    cache = json.loads((out / "hw_cache.json").read_text())
    entries = next(iter(cache["entries"].values()))
    assert sum(k.startswith("block|") for k in entries) >= len(DIGITS.blocks)


# ---------------------------------------------------------------------------------------------
# PostgreSQL: a throwaway local server (slow; needs Debian's postgresql and the psycopg driver)


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture()
def postgres_url():
    """Start a private PostgreSQL cluster on a free port; yield its SQLAlchemy URL; stop it."""
    import importlib.util
    import shutil
    import socket
    import tempfile
    pg = _pg_bin()
    if pg is None or importlib.util.find_spec("psycopg") is None:
        pytest.skip("PostgreSQL test needs the server (apt-get install postgresql) and psycopg (pip install '.[pg]')")
    tmp_path = Path(tempfile.mkdtemp(prefix="codesign-pg-"))     # outside pytest's 0700 tree: the server reads it
    data = tmp_path / "pgdata"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    as_user: list[str] = []
    if os.geteuid() == 0:                           # initdb refuses root: run the server as 'postgres'
        os.chmod(tmp_path, 0o777)
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_user, str(pg / "initdb"), "-D", str(data), "-U", "codesign", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-w", "-l", str(tmp_path / "pg.log"), "-o",
                    f"-p {port} -k {tmp_path} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        subprocess.run([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "codesign", "search"],
                       check=True, capture_output=True)
        yield f"postgresql://codesign@127.0.0.1:{port}/search"
    finally:
        subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.slow
@needs_pipeline
def test_two_workers_on_postgresql_survive_sigkill_and_resume(tmp_path, postgres_url):
    import optuna
    from optuna.trial import TrialState
    out = tmp_path / "run"
    args = [sys.executable, "-m", "codesign.cli", "search", "--out", str(out), "--trials", "6", "--epochs", "3",
            "--train-limit", "256", "--workers", "2", "--storage", postgres_url, "--study", "pg", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    killed = None
    deadline = time.time() + 180
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                trials = optuna.load_study(study_name="pg", storage=postgres_url).get_trials(deepcopy=False)
            except KeyError:                                          # study not created yet
                trials = []
            if any(t.state == TrialState.COMPLETE for t in trials) and any(t.state == TrialState.RUNNING for t in trials):
                os.killpg(proc.pid, signal.SIGKILL)                   # the driver and both workers at once
                proc.wait(timeout=30)
                killed = trials
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert killed is not None, proc.stdout.read().decode()[-2000:]
    before = optuna.load_study(study_name="pg", storage=postgres_url).trials
    kept = {t.number: t.values for t in before if t.state == TrialState.COMPLETE}
    res = subprocess.run(args + ["--resume"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    after = {t.number: t for t in optuna.load_study(study_name="pg", storage=postgres_url).trials}
    complete = {n: t for n, t in after.items() if t.state == TrialState.COMPLETE}
    assert len(complete) == 6
    assert all(complete[n].values == v for n, v in kept.items())     # finished trials kept, not redone
    assert not [t for t in after.values() if t.state == TrialState.RUNNING]
    assert _front(out)["trials_complete"] == 6
