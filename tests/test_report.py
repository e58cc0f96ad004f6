"""codesign report: files, numbers, plots, labelled estimates, one-line errors, headless Chromium."""
from __future__ import annotations

import html.parser
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from codesign.report import hw as hwmod  # noqa: E402
from codesign.cli import main as report_main  # noqa: E402
from codesign.report.devices import GENERIC_WATTS_PER_THREAD, cpu_info, cpu_power_estimate  # noqa: E402
from codesign.report.measure import Rapl, measure_cuda  # noqa: E402
from codesign.report.render import fmt  # noqa: E402
from hw_models.zoo import get_builtin  # noqa: E402

FAST = ["--batches", "1,2", "--warmup", "1", "--reps", "3", "--time-cap", "5", "--threads", "1", "--mapper", "default",
        "--quiet"]
NUM_RE = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


# ---------------------------------------------------------------------------------------------
# helpers


class _Text(html.parser.HTMLParser):
    """Visible text of an HTML page, and the text inside each span.estimate."""

    def __init__(self):
        super().__init__()
        self.parts, self.estimates, self.imgs = [], [], []
        self._est_depth = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "span" and "estimate" in (a.get("class") or "").split():
            self._est_depth += 1
            self.estimates.append("")
        if tag == "img":
            self.imgs.append(a.get("src"))

    def handle_endtag(self, tag):
        if tag == "span" and self._est_depth:
            self._est_depth -= 1

    def handle_data(self, data):
        self.parts.append(data)
        if self._est_depth:
            self.estimates[-1] += data


def parse_html(text):
    p = _Text()
    p.feed(text)
    return p


def numbers_in(text):
    return {float(m) for m in NUM_RE.findall(text)}


def numeric_leaves(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from numeric_leaves(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from numeric_leaves(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


def quantities(obj):
    if isinstance(obj, dict):
        if "value" in obj and "estimate" in obj:
            yield obj
        for v in obj.values():
            yield from quantities(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from quantities(v)


def png_check(path: Path):
    """(width, height, distinct colours, non-white fraction) of a PNG, after PIL has verified it
    (signature, chunk CRCs) and decoded it fully."""
    from PIL import Image
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name}: not a PNG"
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        rgb = im.convert("RGB")
        w, h = rgb.size
        colors = rgb.getcolors(maxcolors=1 << 20) or []
    white = sum(n for n, c in colors if c == (255, 255, 255))
    return w, h, len(colors), 1 - white / (w * h)


# ---------------------------------------------------------------------------------------------
# the report generated once for most tests


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    run = root / "runs" / "demo"
    run.mkdir(parents=True)
    front = [{"trial": 3, "family": "hybrid", "accuracy": 0.91, "latency_s": 2.1e-4, "energy_pj": 3.0e8},
             {"trial": 5, "family": "conv", "accuracy": 0.93, "latency_s": 4.2e-4, "energy_pj": 5.5e8, "chosen": True},
             {"trial": 8, "family": "hybrid", "accuracy": 0.88, "latency_s": 1.2e-4, "energy_pj": 2.2e8}]
    (run / "front.json").write_text(json.dumps({"format": "codesign-front/1", "front": front}))
    area = root / "rtl_area.json"
    area.write_text(json.dumps({"entries": [{"pe_type": "mac", "bits": 8, "rows": 8, "cols": 16, "cells": 51234},
                                            {"pe_type": "adder", "bits": 8, "cells": 181}]}))
    out = root / "out"
    mp = pytest.MonkeyPatch()
    mp.setattr(hwmod, "RTL_AREA_PATH", area)
    try:
        rc = report_main(["report", "--model", "resnet20-hybrid", "--hw", "nasa-chunked", "--hw", "eyeriss-like",
                          "--ref-gpu", "a100", "--search", str(run), "--out", str(out),
                          "--note", "test report", *FAST])
    finally:
        mp.undo()
    assert rc == 0
    data = json.loads((out / "data.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in data.json"))
    html_text = (out / "index.html").read_text()
    return {"out": out, "data": data, "html": html_text, "md": (out / "report.md").read_text(),
            "page": parse_html(html_text)}


def test_writes_the_three_files_and_the_plots(report):
    out, data = report["out"], report["data"]
    for name in ("index.html", "report.md", "data.json"):
        assert (out / name).stat().st_size > 1000
    files = {p["file"] for p in data["plots"]}
    prefixes = ("layers_0_", "layers_1_", "roofline_0_", "roofline_1_")
    for prefix in prefixes:
        assert any(f.startswith(prefix) for f in files), prefix
    assert {"chunk_energy.png", "comparison.png", "pareto.png", "area.png"} <= files
    assert files == {p.name for p in out.glob("*.png")}                 # no stray or missing PNG
    assert sorted(report["page"].imgs) == sorted(files)                 # every plot is on the page
    for f in files:
        assert f"]({f})" in report["md"]


def test_every_number_of_data_json_is_in_html_and_markdown(report):
    html_nums = numbers_in(" ".join(report["page"].parts))
    md_nums = numbers_in(report["md"])
    leaves = list(numeric_leaves(report["data"]))
    assert len(leaves) > 500                                           # per-layer tables are included
    missing_html = [p for p, v in leaves if float(v) not in html_nums]
    missing_md = [p for p, v in leaves if float(v) not in md_nums]
    assert not missing_html, missing_html[:10]
    assert not missing_md, missing_md[:10]


def test_numbers_are_rounded_as_printed(report):
    for path, v in numeric_leaves(report["data"]):
        assert math.isfinite(v), path
        if isinstance(v, float):
            assert float(fmt(v)) == v, path


def test_plots_are_valid_pngs_with_content(report):
    for p in report["data"]["plots"]:
        w, h, colors, non_white = png_check(report["out"] / p["file"])
        assert w >= 300 and h >= 200, p["file"]
        assert (report["out"] / p["file"]).stat().st_size < 400_000, p["file"]
        assert colors > 20 and non_white > 0.03, (p["file"], colors, non_white)
        assert p["title"] and p["caption"]
    # the check rejects a blank image
    from PIL import Image
    blank = report["out"].parent / "blank.png"
    Image.new("RGB", (640, 480), "white").save(blank)
    _, _, colors, non_white = png_check(blank)
    assert colors == 1 and non_white == 0


def test_no_nan_or_inf_anywhere(report):
    for text in (report["html"], report["md"], json.dumps(report["data"])):
        assert not re.search(r"\b(nan|inf|infinity)\b", text, re.I)


def test_every_estimate_is_labelled(report):
    data, md = report["data"], report["md"]
    est = [q for q in quantities(data) if q["estimate"]]
    assert est, "the test report has estimates (CPU energy from TDP or RAPL-less, reference GPU)"
    spans = report["page"].estimates
    assert spans and all(s.strip().endswith("(estimate)") for s in spans)
    span_values = {float(NUM_RE.match(s.strip()).group()) for s in spans}
    for q in est:
        assert q["method"].startswith("estimate")
        assert q["value"] in span_values, q
        assert f"{fmt(q['value'])} (estimate)" in md, q
    # the comparison plot labels its estimated bars
    comp = next(p for p in data["plots"] if p["file"] == "comparison.png")
    a100 = [s for s in comp["series"] if "A100" in s]
    assert a100 and all("estimate" in s for s in a100)
    # every reference-GPU number is an estimate
    for g in data["reference_gpus"]:
        assert g["latency_ms"]["estimate"] and g["energy_mj"]["estimate"] and "estimate" in g["label"]


def test_cpu_protocol_is_recorded(report):
    cpu = report["data"]["cpu"]
    info = cpu_info()
    assert cpu["cpu"]["model_name"] == info["model_name"]
    assert cpu["batches"] == [1, 2] and cpu["warmup"] == 1 and cpu["reps_requested"] == 3 and cpu["threads"] == 1
    text = " ".join(report["page"].parts)
    import torch
    for needle in (info["model_name"], torch.__version__, "torch threads", "IQR", "warm-up", "fp32"):
        assert needle in text, needle
    for row in cpu["results"]:
        assert row["min_ms"] <= row["q1_ms"] <= row["median_ms"] <= row["q3_ms"] <= row["max_ms"]
        assert 3 <= row["reps"]
    assert cpu["best"]["throughput_per_s"] == max(r["throughput_per_s"] for r in cpu["results"])
    if cpu["energy_source"] == "estimate":
        assert cpu["power_w"]["estimate"] and "TDP" in cpu["energy_note"] or "generic" in cpu["energy_note"]


def test_unsupported_accelerator_is_one_clear_line_and_variant_is_labelled(report):
    data = report["data"]
    eyeriss = next(e for e in data["accelerators"] if e["name"] == "eyeriss-like")
    line = eyeriss["unsupported"]
    assert "\n" not in line and "adder" in line and "eyeriss-like" in line
    assert line in " ".join(report["page"].parts) and line in report["md"]
    assert eyeriss["status"] == "variant" and "(MAC-only variant)" in eyeriss["label"]
    rows = [r for r in data["comparison"]["rows"] if "eyeriss" in r["label"]]
    assert rows and all("MAC-only variant" in r["label"] for r in rows)
    nasa = next(e for e in data["accelerators"] if e["name"] == "nasa-chunked")
    assert nasa["status"] == "ok" and "unsupported" not in nasa
    assert nasa["macs"] == get_builtin("resnet20-hybrid").macs


def test_search_front_and_area(report):
    s = report["data"]["search"]
    assert [p["trial"] for p in s["points"]] == [3, 5, 8] and s["chosen"] == [1]
    assert s["points"][0]["latency"] == pytest.approx(0.21) and s["points"][0]["energy"] == pytest.approx(300)
    a = report["data"]["area"]
    assert a["available"]
    mac = next(r for r in a["rows"] if r["accelerator"] == "nasa-chunked" and r["chunk"] == "mac")
    assert mac["cells"] == 51234
    adder = next(r for r in a["rows"] if r["chunk"] == "adder")
    assert adder["cells"] == 181 * 256                                  # per-PE cells x 16x16 PEs
    assert any("nasa-chunked/shift" in m for m in a["missing"])


def test_no_variant_and_no_cpu(tmp_path):
    out = tmp_path / "r"
    assert report_main(["report", "--model", "resnet20-adder", "--hw", "eyeriss-like", "--no-variant", "--no-cpu",
                        "--out", str(out), *FAST]) == 0
    data = json.loads((out / "data.json").read_text())
    e = data["accelerators"][0]
    n_adder = sum(op.kind == "adder_conv" for op in get_builtin("resnet20-adder").ops())
    assert e["status"] == "unsupported" and "ops" not in e and f"{n_adder} adder_conv" in e["unsupported"]
    assert data["cpu"] is None and data["comparison"]["rows"] == []
    # nothing was simulated, so no simulation plot; only the RTL area plot, when area data exists
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs <= {"area.png"} and (("area.png" in pngs) == bool(data.get("area", {}).get("rows")))
    assert e["unsupported"] in (out / "index.html").read_text()
    assert any("nothing was simulated" in o for o in data["plots_omitted"])


def test_workload_json_is_simulated_but_not_run(tmp_path):
    wl_path = tmp_path / "net.json"
    get_builtin("resnet20-conv").to_json(wl_path)
    out = tmp_path / "r"
    assert report_main(["report", "--model", str(wl_path), "--hw", "tpu-like", "--out", str(out), *FAST]) == 0
    data = json.loads((out / "data.json").read_text())
    assert data["cpu"] is None and "cannot be run on a CPU" in data["cpu_skipped"]
    assert data["comparison"]["baseline"] is None
    assert [r["kind"] for r in data["comparison"]["rows"]] == ["simulated"]
    assert "cannot be run on a CPU" in (out / "index.html").read_text()
    assert "comparison.png" in {p["file"] for p in data["plots"]}


@pytest.mark.parametrize("args, needle", [
    (["--model", "no-such-net", "--hw", "nasa-chunked"], "cannot load model"),
    (["--model", "resnet20-conv", "--hw", "no-such-hw"], "unknown accelerator"),
    (["--model", "missing.json", "--hw", "nasa-chunked"], "not found"),
    (["--model", "os:no_such_factory", "--input-shape", "1,3,8,8", "--hw", "nasa-chunked"], "no callable"),
    (["--model", "os:getcwd", "--hw", "nasa-chunked"], "needs --input-shape"),
    (["--model", "resnet20-conv", "--hw", "nasa-chunked", "--ref-gpu", "v100"], "unknown reference GPU"),
    (["--model", "resnet20-conv", "--hw", "nasa-chunked", "--search", "no/such/run"], "not found"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, needle):
    rc = report_main(["report", *args, "--out", str(tmp_path / "r"), "--no-cpu", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("codesign: error:") and needle in err, err
    assert not (tmp_path / "r" / "index.html").exists()


def test_exit_code_2_from_a_real_process(tmp_path):
    r = subprocess.run([sys.executable, "-m", "codesign.cli", "report", "--model", "resnet20-conv",
                        "--hw", str(tmp_path / "nope.yaml")], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nope.yaml" in r.stderr


def test_cli_wiring(tmp_path, capsys):
    from codesign import cli
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert "report" in sub.choices
    assert cli.main(["report", "--model", "nope", "--hw", "nasa-chunked", "--out", str(tmp_path)]) == 2
    assert "cannot load model" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# measurement helpers


def test_rapl_reader(tmp_path):
    assert Rapl.open(str(tmp_path))[0] is None
    dom = tmp_path / "intel-rapl:0"
    dom.mkdir()
    (dom / "energy_uj").write_text("1000000\n")
    (dom / "max_energy_range_uj").write_text("5000000\n")
    sub = tmp_path / "intel-rapl:0:0"                                   # a sub-domain: not counted twice
    sub.mkdir()
    (sub / "energy_uj").write_text("7\n")
    rapl, note = Rapl.open(str(tmp_path))
    assert rapl is not None and len(rapl.domains) == 1 and "intel-rapl:0" in note
    start = rapl.read()
    (dom / "energy_uj").write_text("3500000\n")
    assert rapl.joules_since(start) == pytest.approx(2.5)
    (dom / "energy_uj").write_text("500000\n")                          # wrapped around
    assert rapl.joules_since(start) == pytest.approx(4.5)


def test_cpu_power_estimate_table_and_generic_default():
    known = cpu_power_estimate("Intel(R) Xeon(R) Platinum 8380 CPU @ 2.30GHz", 4)
    assert not known["generic"] and known["watts"] == pytest.approx(270 / 80 * 4) and "ARK" in known["basis"]
    unknown = cpu_power_estimate("Some CPU", 2)
    assert unknown["generic"] and unknown["watts"] == pytest.approx(GENERIC_WATTS_PER_THREAD * 2)
    assert "generic default" in unknown["basis"]


def test_cuda_absent_is_reported_not_invented():
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the measurement runs instead")
    r = measure_cuda(torch.nn.Linear(2, 2), (1, 2), [1], 0, 1)
    assert r["available"] is False and "no CUDA device" in r["reason"]


# ---------------------------------------------------------------------------------------------
# headless Chromium


COLLECTOR = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  window.__errors.push(t && t !== window && t.tagName ? 'failed to load ' + t.tagName + ' ' + (t.src || t.href)
                                                      : 'error: ' + e.message);
}, true);
var _ce = console.error;
console.error = function () { window.__errors.push('console.error: ' + Array.prototype.join.call(arguments, ' ')); };
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; }).map(function (i) { return i.src; });
  var pre = document.createElement('pre');
  pre.id = '__report_test__';
  pre.textContent = JSON.stringify({errors: window.__errors, images: imgs.length, broken: bad});
  document.body.appendChild(pre);
});
</script>"""


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_in_chromium(page: Path, profile: Path) -> tuple[dict, str]:
    """Load ``page`` with the collector injected; return (collected result, browser console lines)."""
    text = page.read_text()
    probe = page.with_name("__probe__.html")
    probe.write_text(text.replace("<head>", "<head>" + COLLECTOR, 1))
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
           "--dump-dom", probe.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    probe.unlink()
    m = re.search(r'<pre id="__report_test__">(.*?)</pre>', r.stdout, re.S)
    assert m, f"chromium produced no result (rc {r.returncode}): {r.stderr[-2000:]}"
    result = json.loads(html.unescape(m.group(1)))
    console = "\n".join(line for line in r.stderr.splitlines() if ":CONSOLE" in line)
    return result, console


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (setup.sh installs Debian's chromium)")
def test_index_html_in_headless_chromium(report, tmp_path):
    out = tmp_path / "site"
    shutil.copytree(report["out"], out)
    result, console = run_in_chromium(out / "index.html", tmp_path / "profile")
    assert result["errors"] == [] and console == "", (result, console)
    assert result["images"] == len(report["data"]["plots"]) and result["broken"] == []
    # the same harness catches a broken image, a script error and a console error
    (out / "broken.html").write_text('<!DOCTYPE html><html><head></head><body><img src="missing.png">'
                                     '<script>console.error("boom"); undefined_fn();</script></body></html>')
    result, console = run_in_chromium(out / "broken.html", tmp_path / "profile2")
    assert result["broken"] and any("boom" in e for e in result["errors"])
    assert any("undefined_fn" in e for e in result["errors"])


def test_mapping_failure_is_one_line_not_a_crash(tmp_path):
    yaml_path = tmp_path / "tiny.yaml"
    yaml_path.write_text("name: tiny-gb\nclock_mhz: 500\ndram: {bandwidth_gbs: 25.6}\n"
                         "global_buffer: {size_kb: 0.05, banks: 1, bandwidth_bytes_per_cycle: 8}\n"
                         "chunks:\n  - {name: mac, pe_type: mac, rows: 4, cols: 4, local_buffer_kb: 0, vector_lanes: 4}\n")
    out = tmp_path / "r"
    assert report_main(["report", "--model", "resnet20-conv", "--hw", str(yaml_path), "--no-cpu", "--out", str(out),
                        "--no-plots", *FAST]) == 0
    e = json.loads((out / "data.json").read_text())["accelerators"][0]
    assert e["status"] == "unsupported" and "could not be mapped onto tiny-gb" in e["unsupported"]
    assert "\n" not in e["unsupported"] and e["unsupported"] in (out / "report.md").read_text()


def test_architecture_record_from_a_search(tmp_path, capsys):
    """runs/NAME@K builds the record's PyTorch model and IR, and marks it on the Pareto front."""
    nasa_space = pytest.importorskip("search_spaces.nasa_space")
    space = nasa_space.build_space("nasa", (3, 16, 16), 10)
    arch = space.sample(0)
    run = tmp_path / "runs" / "mini"
    run.mkdir(parents=True)
    front = [{"trial": 0, "family": arch.family, "accuracy": 0.5, "latency_s": 1e-4, "energy_pj": 1e8,
              "arch": arch.to_dict()},
             {"trial": 1, "family": "conv", "accuracy": 0.6, "latency_s": 2e-4, "energy_pj": 2e8, "arch": {}}]
    (run / "front.json").write_text(json.dumps({"format": "codesign-front/1", "front": front}))
    out = tmp_path / "r"
    rc = report_main(["report", "--model", f"{run}@0", "--search", str(run), "--hw", "nasa-chunked", "--out", str(out),
                      "--no-plots", *FAST])
    try:
        import codesign.lower  # noqa: F401
    except ImportError:
        assert rc == 2 and "needs codesign.lower" in capsys.readouterr().err   # one line until lowering lands
        return
    assert rc == 0
    data = json.loads((out / "data.json").read_text())
    assert data["model"]["form"] == "architecture record" and arch.to_string() in data["model"]["description"]
    assert data["search"]["chosen"] == [0] and data["cpu"]["results"]


def test_factory_model_and_architecture_string(tmp_path, monkeypatch, capsys):
    pytest.importorskip("codesign.lower", reason="codesign.lower is not in this checkout yet")
    (tmp_path / "tiny_net.py").write_text(
        "import torch.nn as nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(8, 4))\n")
    monkeypatch.chdir(tmp_path)
    assert report_main(["report", "--model", "tiny_net:make", "--hw", "nasa-chunked", "--out", "r1", *FAST]) == 2
    assert "--input-shape" in capsys.readouterr().err
    assert report_main(["report", "--model", "tiny_net:make", "--input-shape", "1,3,8,8", "--hw", "nasa-chunked",
                        "--out", "r1", "--no-plots", *FAST]) == 0
    data = json.loads((tmp_path / "r1" / "data.json").read_text())
    assert data["model"]["form"] == "PyTorch factory" and data["model"]["macs"] == 8 * 8 * 8 * 27 + 8 * 4
    assert data["cpu"]["results"][0]["batch"] == 1
    nasa_space = pytest.importorskip("search_spaces.nasa_space")
    arch = nasa_space.build_space("nasa", (3, 16, 16), 10).sample(1)
    assert report_main(["report", "--model", arch.to_string(), "--hw", "nasa-chunked", "--no-cpu", "--out", "r2",
                        "--no-plots", *FAST]) == 0
    data = json.loads((tmp_path / "r2" / "data.json").read_text())
    assert data["model"]["form"] == "architecture record" and data["model"]["input_shape"] == [1, 3, 16, 16]


class _FakeEvent:
    """Stands in for torch.cuda.Event on a CPU-only machine (wall clock instead of GPU events)."""

    def __init__(self, enable_timing=True):
        self.t = None

    def record(self):
        import time
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return (end.t - self.t) * 1e3


def test_gpu_section_with_cuda_path_faked(tmp_path, monkeypatch):
    """The CUDA timing loop (CUDA events swapped for a wall clock) feeds a GPU section whose numbers
    all reach the report; a precision that fails is reported in one line, not a crash."""
    import torch
    from codesign.report import build, measure
    from codesign.report.devices import GPU_SPECS

    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)

    def fake_measure_cuda(model, input_shape, batches, warmup, reps, cap_s=20.0):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            rows = measure._cuda_rows(model, torch.device("cpu"), input_shape, batches, warmup, reps, cap_s, "fp32",
                                      torch.bfloat16, None, GPU_SPECS["h100"], "NVIDIA H100 80GB HBM3")
        finally:
            torch.set_num_threads(threads)
        return {"available": True, "device": "GPU: NVIDIA H100 80GB HBM3 (faked)", "torch_version": torch.__version__,
                "cuda_version": "12.x", "timer": "CUDA events", "warmup": warmup, "reps_requested": reps,
                "time_cap_s": cap_s, "batches": list(batches), "energy_source": "estimate",
                "energy_note": "pynvml is not installed",
                "precisions": {"fp32": {"precision": "fp32", "results": rows, "batch1": rows[0],
                                        "best": max(rows, key=lambda r: r["throughput_per_s"])},
                               "amp": {"precision": "autocast bfloat16", "error": "failed on the GPU: no kernel"}}}

    monkeypatch.setattr(build, "measure_cuda", fake_measure_cuda)
    out = tmp_path / "r"
    assert report_main(["report", "--model", "resnet20-conv", "--hw", "tpu-like", "--out", str(out), "--no-plots",
                        *FAST]) == 0
    data = json.loads((out / "data.json").read_text())
    assert data["plots"] == [] and not list(out.glob("*.png")) and "--no-plots" in data["plots_omitted"][0]
    rows = data["gpu"]["precisions"]["fp32"]["results"]
    assert [r["batch"] for r in rows] == [1, 2] and all(r["energy_per_inference_mj"]["estimate"] for r in rows)
    gpu_rows = [r for r in data["comparison"]["rows"] if r["label"].startswith("GPU")]
    assert len(gpu_rows) == 1 and gpu_rows[0]["energy_mj"]["estimate"]
    page = parse_html((out / "index.html").read_text())
    text = " ".join(page.parts)
    nums = numbers_in(text)
    assert all(float(v) in nums for _, v in numeric_leaves(data))
    assert "failed on the GPU: no kernel" in text and "H100" in text
    for r in rows:
        assert f"{fmt(r['energy_per_inference_mj']['value'])} (estimate)" in (out / "report.md").read_text()


EXAMPLES = sorted(p.parent for p in (Path(__file__).parents[1] / "reports").glob("*/data.json"))


@pytest.mark.skipif(not EXAMPLES, reason="no example reports under reports/")
@pytest.mark.parametrize("folder", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_checked_in_example_reports(folder, tmp_path):
    """The examples under reports/ obey the same rules as a fresh report (they were made by the tool)."""
    data = json.loads((folder / "data.json").read_text())
    assert data["format"] == "codesign-report/1" and data["cpu"]["results"]
    page = parse_html((folder / "index.html").read_text())
    html_nums, md_nums = numbers_in(" ".join(page.parts)), numbers_in((folder / "report.md").read_text())
    assert all(float(v) in html_nums and float(v) in md_nums for _, v in numeric_leaves(data))
    assert all(s.strip().endswith("(estimate)") for s in page.estimates)
    assert sorted(page.imgs) == sorted(p["file"] for p in data["plots"]) == sorted(p.name for p in folder.glob("*.png"))
    for p in data["plots"]:
        w, h, colors, non_white = png_check(folder / p["file"])
        assert w >= 300 and h >= 200 and colors > 20 and non_white > 0.03
        assert (folder / p["file"]).stat().st_size < 400_000
    if _chromium():
        site = tmp_path / "site"
        shutil.copytree(folder, site)
        result, console = run_in_chromium(site / "index.html", tmp_path / "profile")
        assert result["errors"] == [] and console == "" and result["broken"] == []
        assert result["images"] == len(data["plots"])


def test_transformer_report_shows_attention_only(tmp_path):
    from hw_models.zoo import synthetic_attention_masks, vit
    masks = [synthetic_attention_masks(17, 2, 0.7, seed=i, grid=4) for i in range(2)]
    wl = vit("tiny-sparse-vit", embed_dim=32, depth=2, heads=2, image_size=16, patch=4, num_classes=10, masks=masks)
    spec = tmp_path / "wl.json"
    wl.to_json(spec)
    out = tmp_path / "out"
    assert report_main(["report", "--model", str(spec), "--hw", "vitcod", "--out", str(out), "--no-plots",
                        "--mapper", "default", "--quiet"]) == 0
    data = json.loads((out / "data.json").read_text())
    entry = next(e for e in data["accelerators"] if e.get("attention_only"))
    attn = entry["attention_only"]
    assert 0 < attn["cycles"] < entry["cycles"] and 0 < attn["share_of_cycles"] < 1
    md = (out / "report.md").read_text()
    assert "attention only: cycles (QK^T, softmax, A.V)" in md
    md_nums = numbers_in(md)
    assert all(float(v) in md_nums for _, v in numeric_leaves(attn))
