"""Optional native CPU kernels for the adder layers, built lazily with the system C++ compiler.

Why: an adder layer's forward (sum_k |x - w|) and AdderNet's input gradient
(sum_m g * HardTanh(w - x)) are O(P*M*K) elementwise reductions that no BLAS call expresses; in pure
torch they run at a few Gop/s (``torch.cdist``) or worse (broadcasting), while conv2d runs at
~100 GFLOP/s per core. These two register-blocked SIMD loops, written like a GEMM micro-kernel
(6x64 / 3x64 output tiles held in registers, packed input panels), run at ~40 Gop/s on two cores.

How: plain C++ with GCC vector extensions and no torch headers (so it compiles in < 1 s, unlike a
torch C++ extension), called through ctypes on raw float32 pointers. It is compiled on first use,
never at import, into ``$CODESIGN_KERNEL_CACHE`` (default ``~/.cache/codesign/kernels``), keyed by a
hash of source, compiler, flags and CPU, and reused afterwards. If there is no compiler or the build
fails, callers fall back to the pure-torch implementation in :mod:`search_spaces.adder`.

``CODESIGN_ADDER_BACKEND=torch`` disables this module; ``=native`` makes a failed build an error.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

__all__ = ["available", "load", "forward", "grad_x", "backend_env", "build_info"]

_SOURCE = r"""
// AdderNet CPU kernels: see search_spaces/_adder_native.py.
#include <stdint.h>
#include <string.h>
#include <pthread.h>
#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define VL 16
#define FWD_MB 6
#define FWD_PV 4
#define GX_KB 3
#define GX_PV 4
#elif defined(__AVX__)
#define VL 8
#define FWD_MB 4
#define FWD_PV 2
#define GX_KB 2
#define GX_PV 2
#else
#define VL 4
#define FWD_MB 4
#define FWD_PV 2
#define GX_KB 2
#define GX_PV 2
#endif

typedef float vf __attribute__((vector_size(VL * 4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));

static inline vf vload(const float* p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float* p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf vbcast(float x) { vf v = {}; return v + x; }
static inline vf vabs(vf v) { return (vf)((vi)v & 0x7fffffff); }

// clamp(d, -1, 1): one vrangeps on AVX-512DQ (|result| = min(|d|, 1), sign of d), else min/max.
#if defined(__AVX512F__) && defined(__AVX512DQ__)
static inline vf vclamp1(vf d) { return (vf)_mm512_range_ps((__m512)d, _mm512_set1_ps(1.f), 0x02); }
#elif defined(__AVX512F__)
static inline vf vclamp1(vf d) {
  return (vf)_mm512_min_ps(_mm512_max_ps((__m512)d, _mm512_set1_ps(-1.f)), _mm512_set1_ps(1.f)); }
#elif defined(__AVX__)
static inline vf vclamp1(vf d) {
  return (vf)_mm256_min_ps(_mm256_max_ps((__m256)d, _mm256_set1_ps(-1.f)), _mm256_set1_ps(1.f)); }
#else
static inline vf vsel(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }
static inline vf vclamp1(vf d) {
  const vf lo = vbcast(-1.f), hi = vbcast(1.f);
  d = vsel((vi)(d < lo), lo, d);
  return vsel((vi)(d > hi), hi, d); }
#endif

// ---- forward: O[m, p] = -sum_k |X[k, p] - W[m, k]|, tile of MB rows x PV vectors ----
template <int MB, int PV>
static inline __attribute__((always_inline)) void fwd_tile(const float* X, int64_t ldx, const float* W,
    int64_t ldw, float* O, int64_t ldo, int64_t K) {
  vf acc[MB][PV];
  for (int i = 0; i < MB; i++) for (int j = 0; j < PV; j++) acc[i][j] = vbcast(0.f);
  for (int64_t k = 0; k < K; k++) {
    vf xv[PV];
    for (int j = 0; j < PV; j++) xv[j] = vload(X + k * ldx + j * VL);
    for (int i = 0; i < MB; i++) {
      vf w = vbcast(W[i * ldw + k]);
      for (int j = 0; j < PV; j++) acc[i][j] += vabs(xv[j] - w);
    }
  }
  for (int i = 0; i < MB; i++) for (int j = 0; j < PV; j++) vstore(O + i * ldo + j * VL, -acc[i][j]);
}

static void fwd_panel(const float* X, int64_t ldx, const float* W, int64_t ldw, float* O, int64_t ldo,
    int64_t K, int64_t M) {
  int64_t m = 0;
  for (; m + FWD_MB <= M; m += FWD_MB) fwd_tile<FWD_MB, FWD_PV>(X, ldx, W + m * ldw, ldw, O + m * ldo, ldo, K);
  const float* Wm = W + m * ldw; float* Om = O + m * ldo;
  switch (M - m) {
#if FWD_MB > 5
    case 5: fwd_tile<5, FWD_PV>(X, ldx, Wm, ldw, Om, ldo, K); break;
#endif
#if FWD_MB > 4
    case 4: fwd_tile<4, FWD_PV>(X, ldx, Wm, ldw, Om, ldo, K); break;
#endif
    case 3: fwd_tile<3, FWD_PV>(X, ldx, Wm, ldw, Om, ldo, K); break;
    case 2: fwd_tile<2, FWD_PV>(X, ldx, Wm, ldw, Om, ldo, K); break;
    case 1: fwd_tile<1, FWD_PV>(X, ldx, Wm, ldw, Om, ldo, K); break;
    default: break;
  }
}

// ---- grad_x: O[k, p] = sum_m G[m, p] * clamp(W[m, k] - X[k, p], -1, 1), tile KB rows x PV vectors ----
template <int KB, int PV>
static inline __attribute__((always_inline)) void gx_tile(const float* X, int64_t ldx, const float* G,
    int64_t ldg, const float* W, int64_t ldw, float* O, int64_t ldo, int64_t M) {
  vf x[KB][PV], acc[KB][PV];
  for (int i = 0; i < KB; i++)
    for (int j = 0; j < PV; j++) { x[i][j] = vload(X + i * ldx + j * VL); acc[i][j] = vbcast(0.f); }
  for (int64_t m = 0; m < M; m++) {
    vf g[PV];
    for (int j = 0; j < PV; j++) g[j] = vload(G + m * ldg + j * VL);
    for (int i = 0; i < KB; i++) {
      vf w = vbcast(W[m * ldw + i]);
      for (int j = 0; j < PV; j++) acc[i][j] += g[j] * vclamp1(w - x[i][j]);
    }
  }
  for (int i = 0; i < KB; i++) for (int j = 0; j < PV; j++) vstore(O + i * ldo + j * VL, acc[i][j]);
}

static void gx_panel(const float* X, int64_t ldx, const float* G, int64_t ldg, const float* W, int64_t ldw,
    float* O, int64_t ldo, int64_t K, int64_t M) {
  int64_t k = 0;
  for (; k + GX_KB <= K; k += GX_KB) gx_tile<GX_KB, GX_PV>(X + k * ldx, ldx, G, ldg, W + k, ldw, O + k * ldo, ldo, M);
  const float* Xk = X + k * ldx; const float* Wk = W + k; float* Ok = O + k * ldo;
  switch (K - k) {
#if GX_KB > 3
    case 3: gx_tile<3, GX_PV>(Xk, ldx, G, ldg, Wk, ldw, Ok, ldo, M); break;
#endif
#if GX_KB > 2
    case 2: gx_tile<2, GX_PV>(Xk, ldx, G, ldg, Wk, ldw, Ok, ldo, M); break;
#endif
    case 1: gx_tile<1, GX_PV>(Xk, ldx, G, ldg, Wk, ldw, Ok, ldo, M); break;
    default: break;
  }
}

struct Args {
  const float* X; const float* W; const float* G; float* O;
  int64_t N, NG, K, M, P;   // batch, groups, reduction and outputs per group, positions
  int64_t sxn, sxg, sxk;    // X strides; p is contiguous
  int64_t sgn, sgg, sgm;    // G strides (grad_x only)
  int64_t son, sog, sor;    // output strides (row = m for forward, k for grad_x)
  int64_t ptile, ntasks, next;
  int mode;                 // 0 forward, 1 grad_x
};

// Copy rows x width floats into a contiguous zero-padded (rows, full) panel. Unfolded rows are L
// floats apart; unpacked, L = 1024 puts every row in the same L1 sets (measured ~30% slower).
static inline void pack(float* dst, const float* src, int64_t rows, int64_t ld, int64_t width, int64_t full) {
  for (int64_t r = 0; r < rows; r++) {
    memcpy(dst + r * full, src + r * ld, width * 4);
    if (width < full) memset(dst + r * full + width, 0, (full - width) * 4);
  }
}

// One task = (n, group, p-tile).
static void run_task(Args* a, int64_t t, float* scratch) {
  const int64_t tiles = (a->P + a->ptile - 1) / a->ptile, full = a->ptile;
  const int64_t pt = t % tiles, ng = t / tiles, g = ng % a->NG, n = ng / a->NG;
  const int64_t p0 = pt * full, width = (a->P - p0 < full) ? a->P - p0 : full;
  const bool direct = width == full;
  const float* X = a->X + n * a->sxn + g * a->sxg + p0;
  const float* W = a->W + g * a->M * a->K;
  float* O = a->O + n * a->son + g * a->sog + p0;
  float* xs = scratch;
  pack(xs, X, a->K, a->sxk, width, full);
  if (a->mode == 0) {
    float* os = xs + a->K * full;
    fwd_panel(xs, full, W, a->K, direct ? O : os, direct ? a->sor : full, a->K, a->M);
    if (!direct) for (int64_t m = 0; m < a->M; m++) memcpy(O + m * a->sor, os + m * full, width * 4);
  } else {
    const float* G = a->G + n * a->sgn + g * a->sgg + p0;
    float* gs = xs + a->K * full; float* os = gs + a->M * full;
    pack(gs, G, a->M, a->sgm, width, full);
    gx_panel(xs, full, gs, full, W, a->K, direct ? O : os, direct ? a->sor : full, a->K, a->M);
    if (!direct) for (int64_t k = 0; k < a->K; k++) memcpy(O + k * a->sor, os + k * full, width * 4);
  }
}

struct Worker { Args* a; float* scratch; };

static void* worker(void* arg) {
  Worker* w = (Worker*)arg;
  for (;;) {
    const int64_t t = __atomic_fetch_add(&w->a->next, 1, __ATOMIC_RELAXED);
    if (t >= w->a->ntasks) break;
    run_task(w->a, t, w->scratch);
  }
  return 0;
}

#define MAX_THREADS 256
static void run(Args* a, int nthreads, float* scratch, int64_t per_thread) {
  a->ntasks = a->N * a->NG * ((a->P + a->ptile - 1) / a->ptile);
  a->next = 0;
  if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
  if (nthreads > a->ntasks) nthreads = (int)a->ntasks;
  if (nthreads < 1) nthreads = 1;
  pthread_t th[MAX_THREADS]; Worker ws[MAX_THREADS];
  int started = 0;
  for (int i = 0; i < nthreads; i++) { ws[i].a = a; ws[i].scratch = scratch + i * per_thread; }
  for (int i = 1; i < nthreads; i++) {  // if a thread cannot start, the others take its tasks
    if (pthread_create(&th[i], 0, worker, &ws[i]) != 0) break;
    started = i;
  }
  worker(&ws[0]);
  for (int i = 1; i <= started; i++) pthread_join(th[i], 0);
}

extern "C" {
int adder_lanes(void) { return VL; }
int64_t adder_fwd_ptile(void) { return FWD_PV * VL; }
int64_t adder_gx_ptile(void) { return GX_PV * VL; }
int64_t adder_fwd_scratch(int64_t K, int64_t M) { return (K + M) * FWD_PV * VL; }
int64_t adder_gx_scratch(int64_t K, int64_t M) { return (2 * K + M) * GX_PV * VL; }

// X (N, NG, K, P) and O (N, NG, M, P) by strides, p contiguous; W (NG, M, K) contiguous.
void adder_forward(const float* X, const float* W, float* O, int64_t N, int64_t NG, int64_t K, int64_t M,
    int64_t P, int64_t sxn, int64_t sxg, int64_t sxk, int64_t son, int64_t sog, int64_t som,
    float* scratch, int nthreads) {
  Args a = {};
  a.X = X; a.W = W; a.O = O; a.N = N; a.NG = NG; a.K = K; a.M = M; a.P = P;
  a.sxn = sxn; a.sxg = sxg; a.sxk = sxk; a.son = son; a.sog = sog; a.sor = som;
  a.ptile = FWD_PV * VL; a.mode = 0;
  run(&a, nthreads, scratch, adder_fwd_scratch(K, M));
}

// G (N, NG, M, P) and O (N, NG, K, P) by strides, p contiguous.
void adder_grad_x(const float* X, const float* W, const float* G, float* O, int64_t N, int64_t NG, int64_t K,
    int64_t M, int64_t P, int64_t sxn, int64_t sxg, int64_t sxk, int64_t sgn, int64_t sgg, int64_t sgm,
    int64_t son, int64_t sog, int64_t sok, float* scratch, int nthreads) {
  Args a = {};
  a.X = X; a.W = W; a.G = G; a.O = O; a.N = N; a.NG = NG; a.K = K; a.M = M; a.P = P;
  a.sxn = sxn; a.sxg = sxg; a.sxk = sxk; a.sgn = sgn; a.sgg = sgg; a.sgm = sgm;
  a.son = son; a.sog = sog; a.sor = sok;
  a.ptile = GX_PV * VL; a.mode = 1;
  run(&a, nthreads, scratch, adder_gx_scratch(K, M));
}
}
"""

_FLAGS = ["-O3", "-march=native", "-std=gnu++17", "-shared", "-fPIC", "-pthread", "-fno-exceptions"]

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_info: dict[str, str] = {}


def backend_env() -> str:
    """The requested backend: 'auto' (default), 'native' (required) or 'torch' (never build)."""
    value = os.environ.get("CODESIGN_ADDER_BACKEND", "auto").strip().lower()
    if value not in ("auto", "native", "torch"):
        raise ValueError(f"CODESIGN_ADDER_BACKEND must be auto, native or torch, got {value!r}")
    return value


def _cache_dir() -> Path:
    env = os.environ.get("CODESIGN_KERNEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "codesign" / "kernels"


def _cpu_id() -> str:
    # -march=native code is only valid on the CPU it was built for: key the cache by model + flags.
    try:
        text = Path("/proc/cpuinfo").read_text()
        keep = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(sorted(set(keep)))
    except OSError:
        return platform.processor() or platform.machine()


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build() -> ctypes.CDLL:
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\0".join([_SOURCE, cxx, version, " ".join(_FLAGS), platform.machine(),
                                    _cpu_id()]).encode()).hexdigest()[:16]
    cache = _cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        cache = Path(tempfile.gettempdir()) / "codesign-kernels"
        cache.mkdir(parents=True, exist_ok=True)
    lib_path = cache / f"adder_{key}.so"
    _info.update(path=str(lib_path), compiler=cxx, flags=" ".join(_FLAGS), cached="yes")
    if not lib_path.exists():
        _info["cached"] = "no"
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            src = Path(tmp) / "adder.cpp"
            src.write_text(_SOURCE)
            out = Path(tmp) / "adder.so"
            proc = subprocess.run([cxx, *_FLAGS, str(src), "-o", str(out)], capture_output=True, text=True,
                                  timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"compiling the adder kernel failed:\n{proc.stderr[-2000:]}")
            os.replace(out, lib_path)  # atomic: concurrent builders never see a half-written file
    lib = ctypes.CDLL(str(lib_path))  # CDLL releases the GIL during calls
    i64, vp = ctypes.c_int64, ctypes.c_void_p
    lib.adder_lanes.restype = ctypes.c_int
    for name in ("adder_fwd_ptile", "adder_gx_ptile"):
        getattr(lib, name).restype = i64
    for name in ("adder_fwd_scratch", "adder_gx_scratch"):
        getattr(lib, name).restype = i64
        getattr(lib, name).argtypes = [i64, i64]
    lib.adder_forward.restype = None
    lib.adder_forward.argtypes = [vp, vp, vp] + [i64] * 5 + [i64] * 6 + [vp, ctypes.c_int]
    lib.adder_grad_x.restype = None
    lib.adder_grad_x.argtypes = [vp, vp, vp, vp] + [i64] * 5 + [i64] * 9 + [vp, ctypes.c_int]
    _info["lanes"] = str(lib.adder_lanes())
    return lib


def load() -> ctypes.CDLL | None:
    """The compiled kernel library, building it on first call; None when unavailable or disabled."""
    global _lib, _tried
    if _lib is not None or (_tried and backend_env() != "native"):
        return _lib
    if backend_env() == "torch":
        return None
    with _lock:
        if _lib is None and not _tried:
            _tried = True
            try:
                _lib = _build()
            except Exception as exc:  # no compiler, odd platform: the torch path still works
                _info["error"] = str(exc)
                if backend_env() == "native":
                    raise
                warnings.warn(f"search_spaces: native adder kernel unavailable, using the slower pure-torch "
                              f"path ({exc})", RuntimeWarning, stacklevel=3)
        if _lib is None and backend_env() == "native":
            raise RuntimeError(f"CODESIGN_ADDER_BACKEND=native but the kernel is unavailable: {_info.get('error')}")
    return _lib


def available() -> bool:
    """Whether the native kernels can be used (builds them if needed)."""
    return load() is not None


def build_info() -> dict[str, str]:
    """Where the library lives, how it was built, SIMD lanes; 'error' if the build failed."""
    return dict(_info)


def _check(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.device.type != "cpu" or t.dtype != torch.float32 or (t.shape[-1] > 1 and t.stride(-1) != 1):
            raise ValueError("native adder kernels take CPU float32 tensors contiguous in the last dim")


def forward(X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """out[n, g, m, p] = -sum_k |X[n, g, k, p] - W[g, m, k]| for X (N, G, K, P), W (G, M, K)."""
    lib = load()
    assert lib is not None
    W = W.contiguous()
    _check(X, W)
    N, NG, K, P = X.shape
    M = W.shape[1]
    out = torch.empty((N, NG, M, P), dtype=torch.float32)
    nt = max(1, torch.get_num_threads())
    scratch = torch.empty(nt * lib.adder_fwd_scratch(K, M), dtype=torch.float32)
    lib.adder_forward(X.data_ptr(), W.data_ptr(), out.data_ptr(), N, NG, K, M, P, *X.stride()[:3],
                      *out.stride()[:3], scratch.data_ptr(), nt)
    return out


def grad_x(X: torch.Tensor, W: torch.Tensor, G: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """gx[n, g, k, p] = sum_m G[n, g, m, p] * clamp(W[g, m, k] - X[n, g, k, p], -1, 1) (into ``out``)."""
    lib = load()
    assert lib is not None
    W = W.contiguous()
    _check(X, W, G)
    N, NG, K, P = X.shape
    M = W.shape[1]
    if out is None:
        out = torch.empty((N, NG, K, P), dtype=torch.float32)
    elif out.shape != X.shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {tuple(X.shape)}")
    _check(out)
    nt = max(1, torch.get_num_threads())
    scratch = torch.empty(nt * lib.adder_gx_scratch(K, M), dtype=torch.float32)
    lib.adder_grad_x(X.data_ptr(), W.data_ptr(), G.data_ptr(), out.data_ptr(), N, NG, K, M, P,
                     *X.stride()[:3], *G.stride()[:3], *out.stride()[:3], scratch.data_ptr(), nt)
    return out


def ptiles() -> tuple[int, int]:
    """Output-tile widths (forward, grad_x) along p: the layout heuristic in adder.py uses them."""
    lib = load()
    assert lib is not None
    return int(lib.adder_fwd_ptile()), int(lib.adder_gx_ptile())
