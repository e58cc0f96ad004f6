"""codesign search --space vitcod: a tiny end-to-end search on digits through the CLI (front, plot,
reproducibility), an interrupted search resumed without redoing finished trials, a front record resolved
to its workload IR and PyTorch model, the record's mask packing, and bad input as one-line errors."""
import json
import subprocess

import numpy as np
import pytest
import torch

from codesign.cli import main as cli_main
from codesign.nas.front import dominates, pareto_front

TINY = ["--space", "vitcod", "--trials", "5", "--epochs", "1", "--pretrain-epochs", "2", "--train-limit", "192",
        "--no-progress", "--seed", "0"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _search(out, *extra):
    return cli_main(["search", "--out", str(out), *TINY, *extra])


def _front(out):
    return json.loads((out / "front.json").read_text())


def _study(out):
    import optuna
    return optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'trials.db'}")


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    out = tmp_path_factory.mktemp("vitcod") / "a"
    assert _search(out) == 0
    return out


def test_tiny_vitcod_search_end_to_end_and_reproducible(run_a, tmp_path, capsys):
    from optuna.trial import TrialState
    out_b = tmp_path / "b"
    assert _search(out_b) == 0
    printed = capsys.readouterr().out
    assert "Pareto front:" in printed and "| trial" in printed and "dense baseline" in printed
    assert "modelled on vitcod" in printed                          # --hw defaults to vitcod for this space
    data = _front(run_a)
    assert data["format"] == "codesign-front/1" and data["space"] == "vitcod" and data["trials_complete"] == 5
    assert data["config"]["hw"] == "vitcod" and (run_a / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    front = data["front"]
    assert front and all(not dominates(q, p) for p in front for q in front)
    complete = [t for t in _study(run_a).trials if t.state == TrialState.COMPLETE]
    points = [{"trial": t.number, "accuracy": t.values[0], "latency_s": t.values[1], "energy_pj": t.values[2]}
              for t in complete]
    assert {p["trial"] for p in pareto_front(points)} == {p["trial"] for p in front}
    # trial 0 is the dense baseline, the reference of the summary
    t0 = complete[0]
    assert t0.number == 0 and t0.params["mask"] == "dense" and t0.params["qk_heads"] == 0
    assert data["reference"]["trial"] == 0 and data["dense_baseline"]["trial"] == 0
    assert t0.user_attrs["arch"]["masks"] is None and t0.user_attrs["sparsity"] == 0.0
    for p in front:                                                  # every point carries its record
        rec = p["arch"]
        assert rec["format"] == "codesign-arch-vitcod/1" and rec["string"] == p["arch_string"]
        assert {"vit", "mask_rule", "masks", "qk_compressed_heads", "polarize_threshold", "sparsity"} <= set(rec)
        assert 0 <= p["accuracy"] <= 1 and p["latency_s"] > 0 and p["energy_pj"] > 0
        assert p["sparsity"] == rec["sparsity"] and (run_a / p["weights"]).is_file()
    assert any(p["arch"]["masks"] is not None for p in front)       # sparse attention makes it to the front
    # same seed, same front
    strip = lambda f: [(p["arch_string"], p["accuracy"], p["latency_s"], p["energy_pj"]) for p in f["front"]]
    assert strip(data) == strip(_front(out_b))


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing in the search catches it, the trial stays RUNNING."""


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_interrupted_search_resumes_without_redoing_finished_trials(tmp_path, monkeypatch, capsys):
    from optuna.trial import TrialState
    from codesign.nas import vitcod_space
    out = tmp_path / "run"
    real_evaluate = vitcod_space.VitcodDriver.evaluate
    evaluated, killed = [], []

    def evaluate(self, trial, study, arch, ctx):
        if trial.number >= 2 and not killed:
            killed.append(trial.number)
            raise _Killed()
        evaluated.append(trial.number)
        return real_evaluate(self, trial, study, arch, ctx)

    monkeypatch.setattr(vitcod_space.VitcodDriver, "evaluate", evaluate)
    with pytest.raises(_Killed):
        _search(out)
    study = _study(out)
    running = [t for t in study.trials if t.state == TrialState.RUNNING]
    assert [t.number for t in running] == killed
    # what SIGKILL leaves behind: a RUNNING trial whose process is gone
    owner = {**running[0].user_attrs["worker"], "pid": _dead_pid()}
    study._storage.set_trial_user_attr(running[0]._trial_id, "worker", owner)
    kept = {t.number: (t.values, t.user_attrs["arch_string"]) for t in study.trials if t.state == TrialState.COMPLETE}
    assert kept and max(kept) < killed[0]
    capsys.readouterr()

    evaluated.clear()
    assert _search(out, "--resume") == 0
    err = capsys.readouterr().err
    assert f"marked interrupted trial(s) {killed[0]}" in err
    assert "pretrained dense ViT loaded from" in err                 # the per-search context is reused
    after = {t.number: t for t in _study(out).trials}
    complete = {n: t for n, t in after.items() if t.state == TrialState.COMPLETE}
    assert len(complete) == 5                                         # --trials counts COMPLETE only
    for n, (values, key) in kept.items():                             # finished trials kept, not redone
        assert complete[n].values == values and complete[n].user_attrs["arch_string"] == key
    assert not set(evaluated) & set(kept)
    assert after[killed[0]].state == TrialState.FAIL
    retries = [t for t in complete.values() if t.user_attrs.get("retry_of") == killed[0]]
    assert len(retries) == 1 and retries[0].params == after[killed[0]].params   # re-run once, same params
    assert _front(out)["trials_complete"] == 5


def test_front_record_resolves_to_masked_workload_and_model(run_a, tmp_path):
    from codesign.report.resolve import resolve_model
    from hw_models.zoo import attention_masks
    from search_spaces.vitcod_space import unpack_masks
    front = _front(run_a)["front"]
    k = next(i for i, p in enumerate(front) if p["arch"]["masks"] is not None)
    point = front[k]
    rm = resolve_model(f"{run_a}@{k}")
    rec = point["arch"]
    masks = unpack_masks(rec["masks"]).numpy()
    depth, heads = rec["vit"]["depth"], rec["vit"]["heads"]
    assert masks.shape == (depth, heads, 17, 17) and rm.input_shape == (1, 1, 8, 8)
    masked = [op for op in rm.workload.ops() if op.kind == "sparse_matmul"]
    assert len(masked) == 2 * depth and {op.mask_on for op in masked} == {"out", "a"}
    for op in masked:                                                 # QK^T and A.V carry the trial's masks
        block = int(op.name.split(".")[0].removeprefix("block"))
        assert np.array_equal(op.mask.to_array(), masks[block])
    assert np.array_equal(np.stack(attention_masks(rm.workload)), masks)
    ae = rec["qk_compressed_heads"]
    assert any(op.codec_macs for op in rm.workload.ops()) == bool(ae)
    # the PyTorch model: the record's masks and auto-encoder, the search's fine-tuned weights
    saved = torch.load(run_a / point["weights"], weights_only=True)["state"]
    assert all(torch.equal(v, saved[n]) for n, v in rm.module.state_dict().items())
    assert np.array_equal(np.stack([m.cpu().numpy() for m in rm.module.attention_masks()]), masks)
    assert (rm.module.blocks[0].attn.autoencoder is not None) == bool(ae)
    with torch.no_grad():
        assert rm.module(torch.randn(rm.input_shape)).shape == (1, 10)
    assert "fine-tuned weights" in rm.notes[0]
    # the bare record as a JSON file (no weights next to it): same IR, random weights, said so
    path = tmp_path / "rec.json"
    path.write_text(json.dumps(rec))
    bare = resolve_model(str(path))
    assert bare.workload.macs == rm.workload.macs and "random weights" in bare.notes[0]


def test_mask_packing_round_trip_matches_numpy_packbits():
    from search_spaces.vitcod_space import pack_masks, unpack_masks
    import base64
    import zlib
    m = torch.rand(2, 3, 17, 17, generator=torch.Generator().manual_seed(0)) < 0.3
    packed = pack_masks(m)
    assert torch.equal(unpack_masks(packed), m)
    raw = zlib.decompress(base64.b64decode(packed["data"]))
    assert raw == np.packbits(m.numpy().reshape(-1)).tobytes()


@pytest.mark.parametrize("extra, msg", [
    (["--strategy", "derive"], "--strategy derive is not available for --space vitcod"),
    (["--hw", "nasa-chunked"], "needs an accelerator with a sparse_attention chunk"),
    (["--baseline", "sparsity-0.3"], "not a mask rule of the vitcod space"),
    (["--pretrain-epochs", "-1"], "--pretrain-epochs must be an integer >= 0"),
    (["--space", "vit"], "unknown search space 'vit'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, msg):
    assert _search(tmp_path / "bad", *extra) == 2
    err = capsys.readouterr().err
    assert msg in err and err.startswith("codesign: error:") and err.count("\n") == 1
