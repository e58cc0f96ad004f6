"""Optional native CPU kernels for the adder layers, built lazily with the system C++ compiler.

Why: an adder layer's forward (sum_k |x - w|) and AdderNet's input gradient
(sum_m g * HardTanh(w - x)) are O(P*M*K) elementwise reductions that no BLAS call expresses; in pure
torch they run at a few Gop/s (``torch.cdist``) or worse (broadcasting), while conv2d runs at
~100 GFLOP/s per core. These two register-blocked SIMD loops, written like a GEMM micro-kernel
(6x64 / 3x64 output tiles held in registers, packed input panels), run at ~40 Gop/s on two cores.
Depthwise layers have K = kh*kw and one output per group, too little to tile that way, and an
unfolded input kh*kw times their size: ``adder_dw`` works on the input planes directly instead
(forward, AdderNet's input gradient and the weight gradient, no unfold).

How: plain C++ with GCC vector extensions and no torch headers (so it compiles in 1-2 s, unlike a
torch C++ extension), called through ctypes on raw float32 pointers. It is compiled on first use,
never at import, into ``$CODESIGN_KERNEL_CACHE`` (default ``~/.cache/codesign/kernels``), keyed by a
hash of source, compiler, flags and CPU, and reused afterwards. If there is no compiler or the build
fails, callers fall back to the pure-torch implementation in :mod:`search_spaces.adder`.

``CODESIGN_ADDER_BACKEND=torch`` disables this module; ``=native`` makes a failed build an error;
``=triton`` selects the CUDA kernels of :mod:`search_spaces._adder_triton` instead (see adder.py).
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

__all__ = ["available", "load", "forward", "grad_x", "dw_forward", "dw_backward", "backend_env", "build_info"]

_SOURCE = r"""
// AdderNet CPU kernels: see search_spaces/_adder_native.py.
#include <stdint.h>
#include <string.h>
#include <pthread.h>
#include <stdlib.h>
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

// ---- depthwise (one input channel per group, Mg outputs per group): direct, no unfold ----
// A task is (channel c, block of NB samples). Each input plane is copied into a zero-bordered
// buffer split into `sw` column phases (xs[ph][r][q] = xpad[r][q*sw + ph]), so every kernel tap
// reads contiguous vectors at any stride; the Mg upstream-gradient planes go into a buffer with
// zero borders (gs), so taps falling outside the output read zeros. The borders are zeroed once
// per thread: every plane writes the same interior. Sums run in the unfold path's order: forward
// over (a, b) like the GEMM's k; grad_x over m per tap, then over the taps in (a, b) order like
// col2im. grad_w is summed per task in vectors (partial sums per sample block, summed by the caller).
struct DwArgs {
  const float* X; const float* W; const float* G; float* O; float* GX; float* GW;
  int64_t N, C, Mg, H, Wd, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo;
  int64_t Hp, RS, LP, GS, NB, nblk;  // padded rows; xs / gs row strides; gs left border; samples per task
  int64_t TP, GR;                    // gs: zero rows above the output rows; rows per gs plane
  int64_t xoff[64];                  // per kernel column b: phase * plane + column offset (kw <= 64)
  int64_t qlo[64], qn[64];           // per phase: first column q that maps into the input, count
  int64_t ntasks, next;
  int mode;                          // 0 forward; else bit 1 grad_x, bit 2 grad_w
};

static inline int64_t rup(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
#if defined(__AVX512F__)
static inline vf vset1(float x) { return (vf)_mm512_set1_ps(x); }
#elif defined(__AVX__)
static inline vf vset1(float x) { return (vf)_mm256_set1_ps(x); }
#else
static inline vf vset1(float x) { return (vf){x, x, x, x}; }
#endif
static inline float vsum(vf v) { float s = 0.f; for (int i = 0; i < VL; i++) s += v[i]; return s; }

static inline void copy_floats(float* dst, const float* src, int64_t n) {
  int64_t x = 0;
  for (; x + VL <= n; x += VL) vstore(dst + x, vload(src + x));
  for (; x < n; x++) dst[x] = src[x];
}

static void dw_pack(const DwArgs* a, const float* X, float* xs) {
  const int64_t plane = a->Hp * a->RS, sw = a->sw, pw = a->pw;
  for (int64_t y = 0; y < a->H; y++) {
    const float* src = X + y * a->Wd;
    float* dst = xs + (y + a->ph) * a->RS;
    if (sw == 1) { copy_floats(dst + pw, src, a->Wd); continue; }
    for (int64_t x = 0; x < a->Wd; x++) dst[((x + pw) % sw) * plane + (x + pw) / sw] = src[x];
  }
}

// The product g * clamp(.) of one tap is rounded before it is added, as in the unfold path
// (per-tap products, then col2im's sum): keep the compiler from fusing it into an FMA.
#if defined(__x86_64__) || defined(__i386__)
#define DW_ROUND(v) __asm__("" : "+v"(v))
#else
#define DW_ROUND(v) ((void)0)
#endif

// KH, KW: compile-time kernel size, or 0 for any. R output rows at a time: independent sums.
template <int KH, int KW, int R>
static inline void dw_fwd_rows(const DwArgs* a, const float* xs, const float* w, const int64_t* xo, float* O,
    int64_t i0, float* tmp) {
  const int64_t kh = KH ? KH : a->kh, kw = KW ? KW : a->kw;
  const int64_t RS = a->RS, Wo = a->Wo, srow = a->sh * RS, drow = a->dh * RS;
  const float* xi = xs + i0 * srow;
  for (int64_t j0 = 0; j0 < Wo; j0 += VL) {
    vf acc[R];
    for (int r = 0; r < R; r++) acc[r] = vbcast(0.f);
    for (int64_t ka = 0; ka < kh; ka++) {
      const float* xr = xi + ka * drow + j0;
      for (int64_t kb = 0; kb < kw; kb++) {
        const vf wv = vset1(w[ka * kw + kb]);
        for (int r = 0; r < R; r++) acc[r] += vabs(vload(xr + r * srow + xo[kb]) - wv);
      }
    }
    for (int r = 0; r < R; r++) {
      float* orow = O + (i0 + r) * Wo;
      if (j0 + VL <= Wo) vstore(orow + j0, -acc[r]);
      else { vstore(tmp, -acc[r]); memcpy(orow + j0, tmp, (Wo - j0) * 4); }
    }
  }
}

template <int KH, int KW>
static void dw_fwd_plane(const DwArgs* a, const float* xs, const float* w, float* O, float* tmp) {
  int64_t xo[KW ? KW : 64];
  for (int64_t b = 0; b < (KW ? KW : a->kw); b++) xo[b] = a->xoff[b];
  int64_t i = 0;
  for (; i + 4 <= a->Ho; i += 4) dw_fwd_rows<KH, KW, 4>(a, xs, w, xo, O, i, tmp);
  for (; i < a->Ho; i++) dw_fwd_rows<KH, KW, 1>(a, xs, w, xo, O, i, tmp);
}

// grad_x, unit stride and one output per group (the usual depthwise layer), R input rows at a time.
// The gs buffer has (kh-1)*dh zero rows above the output rows and enough below, so every tap reads.
template <int KH, int KW, int R>
static inline void dw_gx_rows(const DwArgs* a, const float* xs, const float* gs, const float* w, float* GX,
    int64_t y0, float* tmp) {
  const int64_t kh = KH ? KH : a->kh, kw = KW ? KW : a->kw;
  const int64_t RS = a->RS, GS = a->GS, Wd = a->Wd, pw = a->pw, dh = a->dh, dw = a->dw;
  const int64_t q1 = a->qlo[0] + a->qn[0];
  for (int64_t q0 = a->qlo[0]; q0 < q1; q0 += VL) {
    vf xv[R], acc[R];
    for (int r = 0; r < R; r++) { xv[r] = vload(xs + (y0 + r + a->ph) * RS + q0); acc[r] = vbcast(0.f); }
    // row of g for input row y, tap a: i = y + ph - a*dh, stored at gs row i + TP
    const float* g0 = gs + (y0 + a->ph + a->TP) * GS + a->LP + q0;
    for (int64_t ka = 0; ka < kh; ka++)
      for (int64_t kb = 0; kb < kw; kb++) {
        const vf wv = vset1(w[ka * kw + kb]);
        const float* gk = g0 - ka * dh * GS - kb * dw;
        for (int r = 0; r < R; r++) {
          vf tap = vload(gk + r * GS) * vclamp1(wv - xv[r]);
          DW_ROUND(tap);
          acc[r] += tap;
        }
      }
    const int64_t x0 = q0 - pw;
    for (int r = 0; r < R; r++) {
      float* grow = GX + (y0 + r) * Wd;
      if (x0 + VL <= Wd) vstore(grow + x0, acc[r]);
      else { vstore(tmp, acc[r]); memcpy(grow + x0, tmp, (Wd - x0) * 4); }
    }
  }
}

// grad_x, any stride and outputs per group: gx[y, x] = sum over the taps (a, b) hitting (y, x) of
// sum_m g[m, i, j] * clamp(w[m, a, b] - x, -1, 1).
template <int KH, int KW>
static void dw_gx_plane(const DwArgs* a, const float* xs, const float* gs, const float* Wc, float* GX,
    float* rb, float* tmp) {
  const int64_t kh = KH ? KH : a->kh, kw = KW ? KW : a->kw, K = kh * kw;
  const int64_t RS = a->RS, GS = a->GS, sh = a->sh, sw = a->sw, dh = a->dh, dw = a->dw, Mg = a->Mg;
  const int64_t plane = a->Hp * RS, gplane = a->GR * GS, Wd = a->Wd, pw = a->pw;
  if (sh == 1 && sw == 1 && Mg == 1) {
    int64_t y = 0;
    for (; y + 4 <= a->H; y += 4) dw_gx_rows<KH, KW, 4>(a, xs, gs, Wc, GX, y, tmp);
    for (; y < a->H; y++) dw_gx_rows<KH, KW, 1>(a, xs, gs, Wc, GX, y, tmp);
    return;
  }
  for (int64_t y = 0; y < a->H; y++) {
    const int64_t yp = y + a->ph;
    float* grow = GX + y * Wd;
    for (int64_t p = 0; p < sw; p++) {
      int64_t tb[KW ? KW : 64]; bool on[KW ? KW : 64];  // taps b landing on phase p, column offset
      for (int64_t b = 0; b < kw; b++) { on[b] = (b * dw - p) % sw == 0 && b * dw >= p; tb[b] = (b * dw - p) / sw; }
      const int64_t q1 = a->qlo[p] + a->qn[p];
      for (int64_t q0 = a->qlo[p]; q0 < q1; q0 += VL) {
        const vf xv = vload(xs + p * plane + yp * RS + q0);
        vf acc = vbcast(0.f);
        for (int64_t ka = 0; ka < kh; ka++) {
          const int64_t t = yp - ka * dh;
          if (t < 0) break;
          if (t % sh) continue;
          const int64_t i = t / sh;
          if (i >= a->Ho) continue;
          const float* gr = gs + (i + a->TP) * GS + a->LP + q0;
          for (int64_t kb = 0; kb < kw; kb++) {
            if (!on[kb]) continue;
            vf tap = vload(gr - tb[kb]) * vclamp1(vset1(Wc[ka * kw + kb]) - xv);
            for (int64_t mm = 1; mm < Mg; mm++)
              tap += vload(gr + mm * gplane - tb[kb]) * vclamp1(vset1(Wc[mm * K + ka * kw + kb]) - xv);
            DW_ROUND(tap);
            acc += tap;
          }
        }
        if (sw == 1) {
          const int64_t x0 = q0 - pw;
          if (x0 + VL <= Wd) vstore(grow + x0, acc);
          else { vstore(tmp, acc); memcpy(grow + x0, tmp, (Wd - x0) * 4); }
        } else {
          vstore(rb + p * RS + q0, acc);
        }
      }
    }
    if (sw > 1)
      for (int64_t x = 0; x < Wd; x++) grow[x] = rb[((x + pw) % sw) * RS + (x + pw) / sw];
  }
}

// grad_w of one plane into vector accumulators: acc[m][k] += g * x, gsum[m] += g.
template <int KH, int KW>
static void dw_gw_plane(const DwArgs* a, const float* xs, const float* gs, vf* acc, vf* gsum) {
  const int64_t kh = KH ? KH : a->kh, kw = KW ? KW : a->kw, K = kh * kw;
  const int64_t RS = a->RS, GS = a->GS, Wo = a->Wo, srow = a->sh * RS, drow = a->dh * RS;
  int64_t xo[KW ? KW : 64];
  for (int64_t b = 0; b < kw; b++) xo[b] = a->xoff[b];
  for (int64_t mm = 0; mm < a->Mg; mm++) {
    const float* gp = gs + (mm * a->GR + a->TP) * GS + a->LP;
    vf am[KH && KW ? KH * KW : 1];  // in registers for a fixed kernel size
    vf* t = (KH && KW) ? am : acc + mm * K;
    if (KH && KW) for (int64_t k = 0; k < K; k++) am[k] = acc[mm * K + k];
    vf s = gsum[mm];
    for (int64_t i = 0; i < a->Ho; i++)
      for (int64_t j0 = 0; j0 < Wo; j0 += VL) {
        const vf g = vload(gp + i * GS + j0);
        s += g;
        const float* xr = xs + i * srow + j0;
        for (int64_t ka = 0; ka < kh; ka++)
          for (int64_t kb = 0; kb < kw; kb++) t[ka * kw + kb] += g * vload(xr + ka * drow + xo[kb]);
      }
    gsum[mm] = s;
    if (KH && KW) for (int64_t k = 0; k < K; k++) acc[mm * K + k] = am[k];
  }
}

struct DwScratch { float* xs; float* gs; float* rb; float* tmp; vf* acc; vf* gsum; };

template <int KH, int KW>
static void dw_task(const DwArgs* a, int64_t t, const DwScratch& s) {
  const int64_t c = t / a->nblk, blk = t % a->nblk, K = a->kh * a->kw, M = a->C * a->Mg;
  const int64_t n0 = blk * a->NB, n1 = n0 + a->NB < a->N ? n0 + a->NB : a->N;
  const int64_t HW = a->H * a->Wd, HWo = a->Ho * a->Wo;
  const float* Wc = a->W + c * a->Mg * K;
  if (a->mode & 2)
    for (int64_t e = 0; e < a->Mg * K; e++) s.acc[e] = vbcast(0.f);
  if (a->mode & 2)
    for (int64_t mm = 0; mm < a->Mg; mm++) s.gsum[mm] = vbcast(0.f);
  for (int64_t n = n0; n < n1; n++) {
    dw_pack(a, a->X + (n * a->C + c) * HW, s.xs);
    if (a->mode == 0) {
      for (int64_t mm = 0; mm < a->Mg; mm++)
        dw_fwd_plane<KH, KW>(a, s.xs, Wc + mm * K, a->O + (n * M + c * a->Mg + mm) * HWo, s.tmp);
      continue;
    }
    for (int64_t mm = 0; mm < a->Mg; mm++) {
      const float* G = a->G + (n * M + c * a->Mg + mm) * HWo;
      float* gp = s.gs + (mm * a->GR + a->TP) * a->GS + a->LP;
      for (int64_t i = 0; i < a->Ho; i++) copy_floats(gp + i * a->GS, G + i * a->Wo, a->Wo);
    }
    if (a->mode & 1) dw_gx_plane<KH, KW>(a, s.xs, s.gs, Wc, a->GX + (n * a->C + c) * HW, s.rb, s.tmp);
    if (a->mode & 2) dw_gw_plane<KH, KW>(a, s.xs, s.gs, s.acc, s.gsum);
  }
  if (a->mode & 2)
    for (int64_t mm = 0; mm < a->Mg; mm++) {
      const float sg = vsum(s.gsum[mm]);
      float* gw = a->GW + (blk * M + c * a->Mg + mm) * K;
      for (int64_t k = 0; k < K; k++) gw[k] = vsum(s.acc[mm * K + k]) - Wc[mm * K + k] * sg;  // sum g (x - w)
    }
}

template <int KH, int KW>
static void dw_loop(DwArgs* a, const DwScratch& s) {
  for (;;) {
    const int64_t t = __atomic_fetch_add(&a->next, 1, __ATOMIC_RELAXED);
    if (t >= a->ntasks) break;
    dw_task<KH, KW>(a, t, s);
  }
}

static void* dw_worker(void* arg) {
  DwArgs* a = (DwArgs*)arg;
  const int64_t K = a->kh * a->kw;
  const int64_t xn = rup(a->sw * a->Hp * a->RS, VL), gn = a->mode ? rup(a->Mg * a->GR * a->GS, VL) : 0;
  const int64_t rn = a->mode ? rup(a->sw * a->RS, VL) : 0, vn = (a->mode & 2) ? a->Mg * (K + 1) * VL : 0;
  float* buf = 0;
  if (posix_memalign((void**)&buf, 64, (xn + gn + rn + VL + vn) * 4) != 0) return 0;
  memset(buf, 0, (xn + gn) * 4);  // the zero borders; tasks only write interiors
  DwScratch s;
  s.xs = buf; s.gs = buf + xn; s.rb = s.gs + gn; s.tmp = s.rb + rn;
  s.acc = (vf*)(s.tmp + VL); s.gsum = s.acc + a->Mg * K;
  // 3x3 compiled for its size; others run the generic loops (about 1.3x slower at 5x5 and 7x7; each
  // specialisation costs ~0.4 s of compile time).
  if (a->kh == 3 && a->kw == 3) dw_loop<3, 3>(a, s);
  else dw_loop<0, 0>(a, s);
  free(buf);
  return 0;
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

// Depthwise adder conv on X (N, C, H, W), W (C*Mg, 1, kh, kw), G / O (N, C*Mg, Ho, Wo), all
// contiguous; padding is implicit zeros. mode 0: O = forward. Else bit 1: GX (N, C, H, W) =
// AdderNet's input gradient; bit 2: GW rows (nblk, C*Mg, kh*kw) = sum_p g * (x - w) over a block of
// samples each (GW must hold N rows). Returns nblk (>= 1), 0 for an empty problem, -1 if the
// scratch buffers could not be allocated or kw > 64 or stride > 64.
int64_t adder_dw(const float* X, const float* W, const float* G, float* O, float* GX, float* GW, int64_t N,
    int64_t C, int64_t Mg, int64_t H, int64_t Wd, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
    int64_t pw, int64_t dh, int64_t dw, int mode, int nthreads) {
  DwArgs args = {};
  DwArgs* a = &args;
  a->X = X; a->W = W; a->G = G; a->O = O; a->GX = GX; a->GW = GW;
  a->N = N; a->C = C; a->Mg = Mg; a->H = H; a->Wd = Wd; a->kh = kh; a->kw = kw; a->sh = sh; a->sw = sw;
  a->ph = ph; a->pw = pw; a->dh = dh; a->dw = dw; a->mode = mode;
  a->Ho = (H + 2 * ph - dh * (kh - 1) - 1) / sh + 1;
  a->Wo = (Wd + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
  if (N <= 0 || C <= 0 || Mg <= 0 || H <= 0 || Wd <= 0 || a->Ho <= 0 || a->Wo <= 0) return 0;
  if (kw > 64 || sw > 64) return -1;
  a->Hp = H + 2 * ph;
  const int64_t Lq = (Wd + 2 * pw + sw - 1) / sw, maxoff = (kw - 1) * dw / sw;
  int64_t qx = rup(a->Wo, VL);  // columns read past q = 0: forward / grad_w vectors (+ maxoff for xs)
  for (int64_t p = 0; p < sw; p++) {  // grad_x: columns q of phase p whose input column is inside
    const int64_t lo = pw >= p ? (pw - p + sw - 1) / sw : 0, hi = (pw + Wd - 1 - p) / sw;
    a->qlo[p] = lo; a->qn[p] = (pw + Wd - 1 >= p && hi >= lo) ? hi - lo + 1 : 0;
    if (a->qn[p] && lo + rup(a->qn[p], VL) > qx) qx = lo + rup(a->qn[p], VL);
  }
  a->RS = rup(Lq > qx + maxoff ? Lq : qx + maxoff, VL);
  a->LP = maxoff;
  a->GS = a->LP + qx;
  a->TP = (kh - 1) * dh;  // dw_gx_rows reads g rows i = y + ph - a*dh in [-TP, ph + H - 1]
  a->GR = a->TP + (a->Ho > ph + H ? a->Ho : ph + H);
  for (int64_t b = 0; b < kw; b++) a->xoff[b] = (b * dw % sw) * a->Hp * a->RS + b * dw / sw;
  if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
  if (nthreads < 1) nthreads = 1;
  // Tasks: about 16 per thread, as (channel, sample block) pairs.
  const int64_t want = 16 * (int64_t)nthreads, per_c = (want + C - 1) / C;
  a->NB = (N + per_c - 1) / per_c;
  a->nblk = (N + a->NB - 1) / a->NB;
  a->ntasks = C * a->nblk; a->next = 0;
  if (nthreads > a->ntasks) nthreads = (int)a->ntasks;
  pthread_t th[MAX_THREADS];
  int started = 0;
  for (int i = 1; i < nthreads; i++) {
    if (pthread_create(&th[i], 0, dw_worker, a) != 0) break;
    started = i;
  }
  dw_worker(a);
  for (int i = 1; i <= started; i++) pthread_join(th[i], 0);
  return a->next >= a->ntasks ? a->nblk : -1;  // a worker that could not allocate leaves its tasks to the others
}
}
"""

_FLAGS = ["-O3", "-march=native", "-std=gnu++17", "-shared", "-fPIC", "-pthread", "-fno-exceptions"]

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_info: dict[str, str] = {}


BACKENDS = ("auto", "native", "triton", "torch")


def backend_env() -> str:
    """The requested backend: 'auto' (default), 'native' (required), 'triton' (required: the
    CUDA kernels of :mod:`search_spaces._adder_triton`) or 'torch' (never build)."""
    value = os.environ.get("CODESIGN_ADDER_BACKEND", "auto").strip().lower()
    if value not in BACKENDS:
        raise ValueError(f"CODESIGN_ADDER_BACKEND must be one of {', '.join(BACKENDS)}, got {value!r}")
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
    lib.adder_dw.restype = i64
    lib.adder_dw.argtypes = [vp] * 6 + [i64] * 13 + [ctypes.c_int, ctypes.c_int]
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


def _dw_call(x: torch.Tensor, w: torch.Tensor, g: torch.Tensor | None, out: torch.Tensor | None,
             gx: torch.Tensor | None, gw: torch.Tensor | None, stride: tuple[int, int], padding: tuple[int, int],
             dilation: tuple[int, int], mode: int) -> int:
    """Runs the kernel; returns how many leading rows of ``gw`` (one per sample block) it filled."""
    lib = load()
    assert lib is not None
    N, C, H, Wd = x.shape
    M, _, kh, kw = w.shape
    rc = lib.adder_dw(x.data_ptr(), w.data_ptr(), None if g is None else g.data_ptr(),
                      None if out is None else out.data_ptr(), None if gx is None else gx.data_ptr(),
                      None if gw is None else gw.data_ptr(), N, C, M // C, H, Wd, kh, kw, *stride, *padding,
                      *dilation, mode, max(1, torch.get_num_threads()))
    if rc < 0:
        raise MemoryError("native depthwise adder kernel: could not allocate its scratch buffers "
                          "(or kernel width / column stride > 64)")
    return int(rc)


def _dw_shapes(x: torch.Tensor, w: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int],
               dilation: tuple[int, int]) -> tuple[int, int]:
    if x.dim() != 4 or w.dim() != 4 or w.shape[1] != 1 or w.shape[0] % x.shape[1]:
        raise ValueError(f"depthwise adder kernel: input {tuple(x.shape)} / weight {tuple(w.shape)} is not depthwise")
    H, Wd = x.shape[2:]
    kh, kw = w.shape[2:]
    Ho = (H + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    Wo = (Wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if Ho <= 0 or Wo <= 0 or min(*stride, *dilation) < 1 or min(padding) < 0:
        raise ValueError(f"depthwise adder kernel: bad geometry (output {Ho}x{Wo})")
    return Ho, Wo


def dw_forward(x: torch.Tensor, w: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int],
               dilation: tuple[int, int]) -> torch.Tensor:
    """Depthwise adder conv (groups = channels, weight (C*mult, 1, kh, kw)) straight from the input.

    out[n, m, i, j] = -sum_{a,b} |xpad[n, m // mult, i*sh + a*dh, j*sw + b*dw] - w[m, 0, a, b]|,
    zero padding; no unfolded copy of the input is made.
    """
    x, w = x.contiguous(), w.contiguous()
    _check(x, w)
    Ho, Wo = _dw_shapes(x, w, stride, padding, dilation)
    out = torch.empty((x.shape[0], w.shape[0], Ho, Wo), dtype=torch.float32)
    _dw_call(x, w, None, out, None, None, stride, padding, dilation, 0)
    return out


def dw_backward(x: torch.Tensor, w: torch.Tensor, g: torch.Tensor, stride: tuple[int, int],
                padding: tuple[int, int], dilation: tuple[int, int], need_x: bool, need_w: bool
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """AdderNet's gradients of :func:`dw_forward` for upstream gradient ``g`` (N, M, Ho, Wo).

    dx = sum over taps and m of g * HardTanh(w - x) (padding positions dropped); dw = sum_p g * (x - w),
    before adaptive scaling, as in :func:`search_spaces.adder._adder_backward`.
    """
    x, w, g = x.contiguous(), w.contiguous(), g.contiguous()
    _check(x, w, g)
    Ho, Wo = _dw_shapes(x, w, stride, padding, dilation)
    N, M = x.shape[0], w.shape[0]
    if tuple(g.shape) != (N, M, Ho, Wo):
        raise ValueError(f"grad has shape {tuple(g.shape)}, expected {(N, M, Ho, Wo)}")
    if not (need_x or need_w):
        return None, None
    gx = torch.empty(x.shape, dtype=torch.float32) if need_x else None
    gw_parts = torch.empty((N, M, w[0].numel()), dtype=torch.float32) if need_w else None
    blocks = _dw_call(x, w, g, None, gx, gw_parts, stride, padding, dilation,
                      (1 if need_x else 0) | (2 if need_w else 0))
    gw = gw_parts[:blocks].sum(0).view(w.shape) if gw_parts is not None else None
    return gx, gw
