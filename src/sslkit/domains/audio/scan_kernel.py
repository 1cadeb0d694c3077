"""The CPU selective scan's inner work as one small C kernel (optional): a block's states, its output, and in backward
the states again, the adjoint recurrence and every contraction, in one pass per block instead of ~60 eager PyTorch
passes over (position × N × channel) tensors.

Why C and how it is built: the eager scan is memory-bound (each pass streams block-sized tensors through the cache);
here a block is walked 16 channels at a time with the N states of those channels in registers, the decays
exp(dt·A) computed in place (a vectorisable polynomial: gcc turns the lane loops into AVX/AVX-512 code). The
source below is plain C99 (no PyTorch headers, no ninja): it is compiled at first use with the system C compiler
(`cc`, ~1 s) into SSLKIT_CACHE_DIR (default ~/.cache/sslkit)/scan-kernel/<hash>/, keyed by the source, the flags
and the machine, written atomically (several processes may build at once), and called through ctypes on the
tensors' memory. Without a compiler, or when the build fails, or with SSLKIT_SCAN_KERNEL=0, `load()` returns None
and the scan runs in plain PyTorch (the same maths; tests check both against the sequential reference).

Shapes (float32; the caller passes row and batch strides, channels and B/C columns contiguous): u (B, k, D),
dt (B, k, D) contiguous, A (G, N, Dg) contiguous with D = G·Dg, Bm/Cm (B, k, G, N), h (B, G, N, Dg) contiguous.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from torch import Tensor

BASE_FLAGS = ["-O3", "-fPIC", "-shared", "-std=c99", "-fno-math-errno", "-fno-trapping-math"]
# this machine's vector units (x86: 512-bit vectors where there are: 14 % faster than gcc's 256-bit default on a
# Xeon with AVX-512); a compiler or CPU that refuses these flags gets BASE_FLAGS
FLAGS = BASE_FLAGS + ["-march=native", "-mprefer-vector-width=512"]

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#define W 16                 /* channels per pass: one AVX-512 vector, two AVX2 ones */
typedef int64_t I;

/* exp(x) for x <= 0 (Cephes expf: 2^n times a degree-7 polynomial of the remainder; ~1 ulp); x < -87 gives
   ~1e-38 instead of 0. Branch-free, so the lane loops around it vectorise. */
static inline float expneg(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f; p = p * r + 8.3334519073e-3f; p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f; p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } s;
    s.i = ((int32_t)n + 127) << 23;
    return p * s.f;
}

/* forward over a block of k positions: h (B,G,N,Dg) holds the entering state and leaves holding the last one;
   y[t] = sum_n C[t,n] h_t[n] + D u_t. */
#define INLINE static inline __attribute__((always_inline))
/* one position's lanes, shared by forward and backward: dl = dt, xl = dt u, yl = D u (lanes from nl on: 0) */
INLINE void step_in(I nl, const float *restrict ut, const float *restrict dtt, const float *restrict Dl,
                    float *restrict dl, float *restrict xl, float *restrict yl) {
    for (I l = 0; l < W; l++) {
        float uu = l < nl ? ut[l] : 0.0f;
        dl[l] = l < nl ? dtt[l] : 0.0f;
        xl[l] = dl[l] * uu;
        yl[l] = Dl[l] * uu;
    }
}

INLINE void fwd(I bsz, I k, I G, const I N, I Dg,
                const float *restrict u, I u_b, I u_t, const float *restrict dt, const float *restrict A,
                const float *restrict Bm, I b_b, I b_t, const float *restrict Cm, I c_b, I c_t,
                const float *restrict Dv, float *restrict h, float *restrict y, I y_b, I y_t) {
    I D = G * Dg;
    float hs[64][W], Al[64][W];
    for (I b = 0; b < bsz; b++) for (I j = 0; j < G; j++) for (I c0 = 0; c0 < Dg; c0 += W) {
        I nl = Dg - c0 < W ? Dg - c0 : W, d0 = j * Dg + c0;
        float *hb = h + ((b * G + j) * N) * Dg + c0;
        float Dl[W];
        for (I l = 0; l < W; l++) Dl[l] = l < nl ? Dv[d0 + l] : 0.0f;
        for (I n = 0; n < N; n++) for (I l = 0; l < W; l++) {
            hs[n][l] = l < nl ? hb[n * Dg + l] : 0.0f;
            Al[n][l] = l < nl ? A[(j * N + n) * Dg + c0 + l] : 0.0f;
        }
        for (I t = 0; t < k; t++) {
            const float *ut = u + b * u_b + t * u_t + d0, *dtt = dt + (b * k + t) * D + d0;
            const float *Bt = Bm + b * b_b + t * b_t + j * N, *Ct = Cm + b * c_b + t * c_t + j * N;
            float dl[W], xl[W], yl[W];
            step_in(nl, ut, dtt, Dl, dl, xl, yl);
            for (I n = 0; n < N; n++) {
                float bn = Bt[n], cn = Ct[n];
                for (I l = 0; l < W; l++) {
                    hs[n][l] = expneg(dl[l] * Al[n][l]) * hs[n][l] + xl[l] * bn;
                    yl[l] += hs[n][l] * cn;
                }
            }
            float *yt = y + b * y_b + t * y_t + d0;
            for (I l = 0; l < nl; l++) yt[l] = yl[l];
        }
        for (I n = 0; n < N; n++) for (I l = 0; l < nl; l++) hb[n * Dg + l] = hs[n][l];
    }
}

/* backward over the same block: h0 the state entering it, gy = dL/dy (B,k,D) contiguous, gn (B,G,N,Dg): on entry
   dL/d(the block's last state) from later blocks, on exit dL/d(h0). Writes gu = D gy + dt sum_n g B,
   gdt = sum_n g a h_{t-1} A + u sum_n g B and yr = the forward's y (B,k,D contiguous), gB, gC; adds into gA
   (G,N,Dg) and gD (D). */
INLINE void bwd(I bsz, I k, I G, const I N, I Dg,
                const float *restrict u, I u_b, I u_t, const float *restrict dt, const float *restrict A,
                const float *restrict Bm, I b_b, I b_t, const float *restrict Cm, I c_b, I c_t,
                const float *restrict Dv, const float *restrict h0, const float *restrict gy, float *restrict gn,
                float *restrict gu, I gu_b, I gu_t, float *restrict gdt, float *restrict gB, I gb_b, I gb_t,
                float *restrict gC, I gc_b, I gc_t, float *restrict gA, float *restrict gD, float *restrict yr) {
    I D = G * Dg;
    float *H = malloc(sizeof(float) * (size_t)(k * N * W)), *E = malloc(sizeof(float) * (size_t)(k * N * W));
    float *PB = malloc(sizeof(float) * (size_t)(k * N * W)), *PC = malloc(sizeof(float) * (size_t)(k * N * W));
    float Al[64][W], hp0[64][W], g[64][W], gAl[64][W];
    for (I b = 0; b < bsz; b++) for (I j = 0; j < G; j++) {
        memset(PB, 0, sizeof(float) * (size_t)(k * N * W));
        memset(PC, 0, sizeof(float) * (size_t)(k * N * W));
        for (I c0 = 0; c0 < Dg; c0 += W) {
            I nl = Dg - c0 < W ? Dg - c0 : W, d0 = j * Dg + c0;
            const float *hb = h0 + ((b * G + j) * N) * Dg + c0;
            float *gnb = gn + ((b * G + j) * N) * Dg + c0;
            float Dl[W], gDl[W];
            for (I l = 0; l < W; l++) { Dl[l] = l < nl ? Dv[d0 + l] : 0.0f; gDl[l] = 0.0f; }
            for (I n = 0; n < N; n++) for (I l = 0; l < W; l++) {
                hp0[n][l] = l < nl ? hb[n * Dg + l] : 0.0f;
                Al[n][l] = l < nl ? A[(j * N + n) * Dg + c0 + l] : 0.0f;
                g[n][l] = l < nl ? gnb[n * Dg + l] : 0.0f;
                gAl[n][l] = 0.0f;
            }
            /* the block's states again: H[t] = h_t, E[t] = a_t, and the ungated output y[t] */
            for (I t = 0; t < k; t++) {
                const float *ut = u + b * u_b + t * u_t + d0, *dtt = dt + (b * k + t) * D + d0;
                const float *Bt = Bm + b * b_b + t * b_t + j * N, *Ct = Cm + b * c_b + t * c_t + j * N;
                float dl[W], xl[W], yl[W];
                step_in(nl, ut, dtt, Dl, dl, xl, yl);
                const float *hp = t ? H + ((t - 1) * N) * W : &hp0[0][0];
                float *ht = H + (t * N) * W, *et = E + (t * N) * W;
                for (I n = 0; n < N; n++) {
                    float bn = Bt[n], cn = Ct[n];
                    for (I l = 0; l < W; l++) {
                        float a = expneg(dl[l] * Al[n][l]);
                        et[n * W + l] = a;
                        ht[n * W + l] = a * hp[n * W + l] + xl[l] * bn;
                        yl[l] += ht[n * W + l] * cn;
                    }
                }
                float *yt = yr + (b * k + t) * D + d0;
                for (I l = 0; l < nl; l++) yt[l] = yl[l];
            }
            /* the adjoint, from the block's end: g_t = C_t gy_t + a_{t+1} g_{t+1} */
            for (I t = k - 1; t >= 0; t--) {
                const float *ut = u + b * u_b + t * u_t + d0, *dtt = dt + (b * k + t) * D + d0;
                const float *Bt = Bm + b * b_b + t * b_t + j * N, *Ct = Cm + b * c_b + t * c_t + j * N;
                const float *gyt = gy + (b * k + t) * D + d0;
                const float *hp = t ? H + ((t - 1) * N) * W : &hp0[0][0];
                const float *ht = H + (t * N) * W, *et = E + (t * N) * W;
                float *pb = PB + (t * N) * W, *pc = PC + (t * N) * W;
                float dl[W], ul[W], xl[W], gyl[W], gdu[W], gda[W];
                for (I l = 0; l < W; l++) {
                    dl[l] = l < nl ? dtt[l] : 0.0f;
                    ul[l] = l < nl ? ut[l] : 0.0f;
                    gyl[l] = l < nl ? gyt[l] : 0.0f;
                    xl[l] = dl[l] * ul[l];
                    gdu[l] = 0.0f;
                    gda[l] = 0.0f;
                }
                for (I n = 0; n < N; n++) {
                    float bn = Bt[n], cn = Ct[n];
                    for (I l = 0; l < W; l++) {
                        float gg = g[n][l] + cn * gyl[l];
                        float q = gg * et[n * W + l] * hp[n * W + l];
                        gdu[l] += gg * bn;
                        gda[l] += q * Al[n][l];
                        gAl[n][l] += q * dl[l];
                        pb[n * W + l] += gg * xl[l];
                        pc[n * W + l] += ht[n * W + l] * gyl[l];
                        g[n][l] = et[n * W + l] * gg;
                    }
                }
                float *gut = gu + b * gu_b + t * gu_t + d0, *gdtt = gdt + (b * k + t) * D + d0;
                for (I l = 0; l < nl; l++) {
                    gut[l] = Dl[l] * gyl[l] + gdu[l] * dl[l];
                    gdtt[l] = gda[l] + gdu[l] * ul[l];
                    gDl[l] += gyl[l] * ul[l];
                }
            }
            for (I n = 0; n < N; n++) for (I l = 0; l < nl; l++) {
                gnb[n * Dg + l] = g[n][l];
                gA[(j * N + n) * Dg + c0 + l] += gAl[n][l];
            }
            for (I l = 0; l < nl; l++) gD[d0 + l] += gDl[l];
        }
        for (I t = 0; t < k; t++) for (I n = 0; n < N; n++) {
            float sb = 0.0f, sc = 0.0f;
            for (I l = 0; l < W; l++) { sb += PB[(t * N + n) * W + l]; sc += PC[(t * N + n) * W + l]; }
            gB[b * gb_b + t * gb_t + j * N + n] = sb;
            gC[b * gc_b + t * gc_t + j * N + n] = sc;
        }
    }
    free(H); free(E); free(PB); free(PC);
}

/* the exported entry points: N = 16 (Mamba's d_state) gets a copy compiled for it (states in registers) */
void scan_fwd(I bsz, I k, I G, I N, I Dg, const float *u, I u_b, I u_t, const float *dt, const float *A,
              const float *Bm, I b_b, I b_t, const float *Cm, I c_b, I c_t, const float *Dv, float *h, float *y,
              I y_b, I y_t) {
    if (N == 16) fwd(bsz, k, G, 16, Dg, u, u_b, u_t, dt, A, Bm, b_b, b_t, Cm, c_b, c_t, Dv, h, y, y_b, y_t);
    else fwd(bsz, k, G, N, Dg, u, u_b, u_t, dt, A, Bm, b_b, b_t, Cm, c_b, c_t, Dv, h, y, y_b, y_t);
}

void scan_bwd(I bsz, I k, I G, I N, I Dg, const float *u, I u_b, I u_t, const float *dt, const float *A,
              const float *Bm, I b_b, I b_t, const float *Cm, I c_b, I c_t, const float *Dv, const float *h0,
              const float *gy, float *gn, float *gu, I gu_b, I gu_t, float *gdt, float *gB, I gb_b, I gb_t,
              float *gC, I gc_b, I gc_t, float *gA, float *gD, float *yr) {
    if (N == 16) bwd(bsz, k, G, 16, Dg, u, u_b, u_t, dt, A, Bm, b_b, b_t, Cm, c_b, c_t, Dv, h0, gy, gn, gu, gu_b,
                     gu_t, gdt, gB, gb_b, gb_t, gC, gc_b, gc_t, gA, gD, yr);
    else bwd(bsz, k, G, N, Dg, u, u_b, u_t, dt, A, Bm, b_b, b_t, Cm, c_b, c_t, Dv, h0, gy, gn, gu, gu_b, gu_t,
             gdt, gB, gb_b, gb_t, gC, gc_b, gc_t, gA, gD, yr);
}
"""

MAX_STATE = 64          # N (d_state) the kernel's fixed-size state arrays hold


def _cache_root() -> Path:
    return Path(os.environ.get("SSLKIT_CACHE_DIR", Path.home() / ".cache" / "sslkit")) / "scan-kernel"


def _build(compiler: str) -> Path:
    """Compile SOURCE into the cache (once per source, flags and machine) and return the library's path."""
    cpu = ""
    try:
        cpu = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        pass
    tag = hashlib.sha256("\0".join([SOURCE, *FLAGS, compiler, platform.machine(), cpu]).encode()).hexdigest()[:16]
    lib = _cache_root() / tag / "libsslkit_scan.so"
    if lib.is_file():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        src, out = Path(tmp) / "scan.c", Path(tmp) / "scan.so"
        src.write_text(SOURCE)
        try:
            subprocess.run([compiler, *FLAGS, str(src), "-o", str(out)], check=True, capture_output=True, timeout=120)
        except subprocess.CalledProcessError:
            subprocess.run([compiler, *BASE_FLAGS, str(src), "-o", str(out)], check=True, capture_output=True,
                           timeout=120)
        os.replace(out, lib)                    # atomic: a concurrent builder's copy is identical
    return lib


@functools.cache
def load() -> Any:
    """The compiled kernel library (ctypes), or None: SSLKIT_SCAN_KERNEL=0, not a Linux/macOS x86-64/arm64 machine,
    no C compiler, or the build failed (the reason is in `load.reason`)."""
    if os.environ.get("SSLKIT_SCAN_KERNEL", "1").strip().lower() in ("0", "false", "no", "off"):
        return _fail("turned off by SSLKIT_SCAN_KERNEL")
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        return _fail("no C compiler (cc/gcc/clang) on PATH")
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError) as e:
        err = getattr(e, "stderr", b"") or b""
        return _fail(f"build failed: {e} {err.decode(errors='replace')[-300:]}".strip())
    i, p = ctypes.c_int64, ctypes.c_void_p
    lib.scan_fwd.argtypes = [i] * 5 + [p, i, i, p, p, p, i, i, p, i, i, p, p, p, i, i]
    lib.scan_bwd.argtypes = ([i] * 5 + [p, i, i, p, p, p, i, i, p, i, i, p, p, p, p, p, i, i, p, p, i, i, p, i, i]
                             + [p, p, p])
    lib.scan_fwd.restype = lib.scan_bwd.restype = None
    return lib


def _fail(reason: str) -> None:
    load.reason = reason  # type: ignore[attr-defined]
    return None


def _ptr(x: Tensor) -> int:
    return x.data_ptr()


def forward_block(lib: Any, u: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, D: Tensor, h: Tensor,
                  y: Tensor) -> None:
    """One block: u, y (B, k, G, 1, Dg) views (channels contiguous), dt contiguous, A (G, N, Dg), Bm/Cm
    (B, k, G, N, 1) views (B/C columns contiguous), D (G, 1, Dg), h (B, G, N, Dg) entering → last state (in place);
    y = Σ_n C h + D u."""
    bsz, k, g = u.shape[:3]
    n, dg = A.shape[1], A.shape[2]
    dt = dt.contiguous()
    lib.scan_fwd(bsz, k, g, n, dg, _ptr(u), u.stride(0), u.stride(1), _ptr(dt), _ptr(A),
                 _ptr(Bm), Bm.stride(0), Bm.stride(1), _ptr(Cm), Cm.stride(0), Cm.stride(1), _ptr(D), _ptr(h),
                 _ptr(y), y.stride(0), y.stride(1))


def backward_block(lib: Any, u: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, D: Tensor, h0: Tensor,
                   gy: Tensor, g_next: Tensor, gu: Tensor, gdt: Tensor, gB: Tensor, gC: Tensor, gA: Tensor,
                   gD: Tensor, yr: Tensor) -> None:
    """One block backward (shapes as `forward_block`; gy, gdt, yr contiguous (B, k, G, 1, Dg)); g_next (B, G, N, Dg):
    dL/d(last state) in, dL/d(entering state) out; gA, gD accumulate; yr: the block's ungated output again."""
    bsz, k, g = u.shape[:3]
    n, dg = A.shape[1], A.shape[2]
    lib.scan_bwd(bsz, k, g, n, dg, _ptr(u), u.stride(0), u.stride(1), _ptr(dt), _ptr(A),
                 _ptr(Bm), Bm.stride(0), Bm.stride(1), _ptr(Cm), Cm.stride(0), Cm.stride(1), _ptr(D), _ptr(h0),
                 _ptr(gy), _ptr(g_next), _ptr(gu), gu.stride(0), gu.stride(1), _ptr(gdt),
                 _ptr(gB), gB.stride(0), gB.stride(1), _ptr(gC), gC.stride(0), gC.stride(1), _ptr(gA), _ptr(gD),
                 _ptr(yr))
