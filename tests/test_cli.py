"""The codesign CLI: outputs for the happy paths, one-line errors with exit code 2 for bad input."""
import json
import subprocess
import sys

import pytest
import yaml

from hw_models.accelerator import load_accelerator


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "codesign.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_workloads_and_hw_listing():
    out = run("workloads")
    assert out.returncode == 0
    for name in ("resnet20-hybrid", "mobilenetv2-cifar", "resnet18", "deit-small"):
        assert name in out.stdout
    out = run("hw", "list")
    assert out.returncode == 0 and "nasa-chunked" in out.stdout and "12x14" in out.stdout
    out = run("hw", "show", "tpu-like")
    assert out.returncode == 0 and yaml.safe_load(out.stdout)["chunks"][0]["rows"] == 128


def test_simulate_prints_table_and_writes_json(tmp_path):
    out_json = tmp_path / "r.json"
    out = run("simulate", "--workload", "resnet20-hybrid", "--hw", "nasa-chunked", "--json", str(out_json))
    assert out.returncode == 0, out.stderr
    assert "layer1.2.conv1" in out.stdout and "energy by level" in out.stdout
    data = json.loads(out_json.read_text())
    assert data["workload"] == "resnet20-hybrid" and data["cycles"] > 0
    assert {"dram", "global_buffer", "rf", "compute"} <= set(data["energy_by_level_pj"])
    assert f"{data['cycles']:,.0f}" in out.stdout


def test_user_yaml_and_workload_json(tmp_path):
    data = yaml.safe_load(open(load_accelerator("nasa-chunked").source))
    data["name"] = "custom"
    hw = tmp_path / "custom.yaml"
    hw.write_text(yaml.safe_dump(data))
    wl = tmp_path / "wl.json"
    from hw_models.zoo import get_builtin
    get_builtin("resnet20-shift").to_json(wl)
    out = run("simulate", "--workload", str(wl), "--hw", str(hw))
    assert out.returncode == 0, out.stderr and "custom" in out.stdout


def bad_yaml(tmp_path, mutate):
    data = yaml.safe_load(open(load_accelerator("nasa-chunked").source))
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("case, expect", [
    ("unknown_preset", "unknown accelerator 'warp-drive'"),
    ("malformed_yaml", "malformed YAML"),
    ("zero_rows", "chunks[mac].rows: must be > 0"),
    ("negative_buffer", "global_buffer.size_kb: must be > 0"),
    ("tiny_buffer", "no tile fits"),
    ("unsupported_kind", "no chunk of eyeriss-like supports adder_conv"),
    ("missing_workload_file", "workload file not found"),
    ("missing_hw_file", "accelerator file not found"),
    ("unknown_workload", "unknown workload 'resnet9000'"),
    ("bad_workload_json", "not valid JSON"),
    ("missing_schedule", "schedule file not found"),
])
def test_bad_input_one_line_exit_2(tmp_path, case, expect):
    args = {"workload": "resnet20-conv", "hw": "nasa-chunked"}
    extra = []
    if case == "unknown_preset":
        args["hw"] = "warp-drive"
    elif case == "malformed_yaml":
        p = tmp_path / "m.yaml"
        p.write_text("name: [unclosed\n")
        args["hw"] = str(p)
    elif case == "zero_rows":
        args["hw"] = bad_yaml(tmp_path, lambda d: d["chunks"][0].__setitem__("rows", 0))
    elif case == "negative_buffer":
        args["hw"] = bad_yaml(tmp_path, lambda d: d["global_buffer"].__setitem__("size_kb", -1))
    elif case == "tiny_buffer":
        args["hw"] = bad_yaml(tmp_path, lambda d: d["global_buffer"].__setitem__("size_kb", 0.0001))
    elif case == "unsupported_kind":
        args.update(workload="resnet20-adder", hw="eyeriss-like")
    elif case == "missing_workload_file":
        args["workload"] = str(tmp_path / "nope.json")
    elif case == "missing_hw_file":
        args["hw"] = str(tmp_path / "nope.yaml")
    elif case == "unknown_workload":
        args["workload"] = "resnet9000"
    elif case == "bad_workload_json":
        p = tmp_path / "w.json"
        p.write_text("{not json")
        args["workload"] = str(p)
    elif case == "missing_schedule":
        extra = ["--schedule", str(tmp_path / "s.json")]
    out = run("simulate", "--workload", args["workload"], "--hw", args["hw"], *extra)
    assert out.returncode == 2
    assert expect in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_usage_errors_are_one_line():
    out = run("simulate", "--hw", "nasa-chunked")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "--workload" in out.stderr


def test_map_effort_and_closed_pipe(tmp_path) -> None:
    out = tmp_path / "s.json"
    proc = run("map", "--model", "resnet20-conv", "--hw", "nasa-chunked", "--effort", "quick", "--quiet", "-o", str(out))
    assert proc.returncode == 0 and json.loads(out.read_text())["mappings"]
    # `codesign ... | head`: the reader is gone before the first write; exit 0 without an error message
    proc = subprocess.Popen([sys.executable, "-m", "codesign.cli", "workloads"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and err == ""
