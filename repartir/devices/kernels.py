"""OpenCL C source of the tensor operations (text only: :mod:`~repartir.devices.opencl` builds it).

One program holds every kernel; it is built once per device actor and cached with the user's own
programs.  The kernels, and where their shape comes from:

* ``ew_<op>``: element-wise, one work-item per four elements (``float4`` loads and stores, the
  widest a memory transaction coalesces), scalar code for the last ``n % 4``.  Bound by memory
  bandwidth: three streams for ``add``, so the figure of merit is bytes moved per second against
  the device's own buffer copy (``gpu_vec``).
* ``reduce_<op>``: the two-stage reduction of Harris ("Optimizing parallel reduction in CUDA",
  NVIDIA 2007): each work-item folds a grid-stride slice, a work-group folds its items in local
  memory, a second launch of one work-group folds the groups' partials.  ``argreduce`` carries
  the index along (ties go to the smaller index: numpy's first occurrence).
* ``softmax_rows``: one work-group per row (max, sum of exponentials, write).
* ``sgemm_128x128``: C = A·B for row-major float32, M and N multiples of 128 and K of 32.  A
  work-group of 256 items computes a 128×128 tile of C, each item an 8×8 block held in
  registers; tiles of A (transposed, padded against bank conflicts) and B go through local
  memory 32 columns at a time (``-DSGEMM_BK=8|16|32``; on an H200, 4096²: 23.9, 25.5 and 29.3
  TFLOP/s).  This is the register-blocked scheme of Volkov & Demmel
  ("Benchmarking GPUs to tune dense linear algebra", SC 2008) and of CLBlast's ``Xgemm``
  (Nugteren, IWOCL 2018).
  ``sgemm_tiled`` (16×16 tiles, bounds-checked) serves the other shapes.
* ``matvec_rows`` (one work-group per row), ``transpose_tiled`` (16×16 tiles through local memory,
  padded).
"""

from __future__ import annotations

__all__ = ["ELEMENTWISE", "REDUCTIONS", "program_source", "SGEMM_TILE", "SGEMM_K_STEP"]

#: Element-wise operations: name -> (arity, expression in x, y, z and parameters p0, p1).
#: The expression is valid for ``float`` and ``float4`` alike (OpenCL built-ins are overloaded).
ELEMENTWISE: dict[str, tuple[int, str]] = {
    "add": (2, "x + y"),
    "sub": (2, "x - y"),
    "mul": (2, "x * y"),
    "div": (2, "x / y"),
    "fma": (3, "fma(x, y, z)"),
    "scale": (1, "x * p0"),
    "abs": (1, "fabs(x)"),
    "clamp": (1, "fmin(fmax(x, p0), p1)"),
    "exp": (1, "exp(x)"),
    "log": (1, "log(x)"),
    "sqrt": (1, "sqrt(x)"),
    "relu": (1, "fmax(x, 0.0f)"),
    "sigmoid": (1, "1.0f / (1.0f + exp(-x))"),
    "tanh": (1, "tanh(x)"),
    "gelu": (1, "0.5f * x * (1.0f + tanh(0.7978845608028654f * (x + 0.044715f * x * x * x)))"),
}

#: Sum-like and min/max reductions: name -> (per-element map of x, y and p0, fold, identity).
REDUCTIONS: dict[str, tuple[str, str, str]] = {
    "sum": ("x", "a + b", "0.0f"),
    "dot": ("x * y", "a + b", "0.0f"),
    "abs_sum": ("fabs(x)", "a + b", "0.0f"),
    "sq_sum": ("x * x", "a + b", "0.0f"),
    "dev_sq_sum": ("(x - p0) * (x - p0)", "a + b", "0.0f"),
    "min": ("x", "fmin(a, b)", "INFINITY"),
    "max": ("x", "fmax(a, b)", "-INFINITY"),
}

#: The tile of C one work-group of ``sgemm_128x128`` computes, and the step along K.
SGEMM_TILE = 128
SGEMM_K_STEP = 32

_EW_TEMPLATE = """
inline float ew1_{name}(float x, float y, float z, float p0, float p1) {{ return {expr}; }}
inline float4 ew4_{name}(float4 x, float4 y, float4 z, float p0, float p1) {{ return {expr}; }}
__kernel void ew_{name}(const ulong n, __global const float* restrict a,
                        __global const float* restrict b, __global const float* restrict c,
                        __global float* restrict out, const float p0, const float p1)
{{
    const ulong q = get_global_id(0);
    const ulong i = q * 4;
    if (i + 3 < n) {{
        float4 x = ((__global const float4*)a)[q];
        float4 y = {load_y};
        float4 z = {load_z};
        ((__global float4*)out)[q] = ew4_{name}(x, y, z, p0, p1);
    }} else {{
        for (ulong j = i; j < n; ++j)
            out[j] = ew1_{name}(a[j], {y1}, {z1}, p0, p1);
    }}
}}
"""

_REDUCE_TEMPLATE = """
__kernel void reduce_{name}(const ulong n, __global const float* restrict a,
                            __global const float* restrict b, const float p0,
                            __global float* restrict partial, __local float* scratch)
{{
    const uint lid = get_local_id(0), ls = get_local_size(0);
    float acc = {ident};
    for (ulong i = get_global_id(0); i < n; i += get_global_size(0)) {{
        const float x = a[i];
        const float y = {load_y};
        const float v = {map_};
        {{ const float a = acc, b = v; acc = {fold}; }}
    }}
    scratch[lid] = acc;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint s = ls / 2; s > 0; s >>= 1) {{
        if (lid < s) {{
            const float a = scratch[lid], b = scratch[lid + s];
            scratch[lid] = {fold};
        }}
        barrier(CLK_LOCAL_MEM_FENCE);
    }}
    if (lid == 0) partial[get_group_id(0)] = scratch[0];
}}
"""

_FIXED = r"""
/* argmin (is_max = 0) / argmax (is_max = 1); idx_in = 0 on the first stage (index = position). */
__kernel void argreduce(const ulong n, __global const float* restrict a,
                        __global const long* restrict idx_in, const int use_idx, const int is_max,
                        __global float* restrict val_out, __global long* restrict idx_out,
                        __local float* sval, __local long* sidx)
{
    const uint lid = get_local_id(0), ls = get_local_size(0);
    float best = is_max ? -INFINITY : INFINITY;
    long bi = -1;
    for (ulong i = get_global_id(0); i < n; i += get_global_size(0)) {
        const float v = a[i];
        const long k = use_idx ? idx_in[i] : (long)i;
        const int better = is_max ? (v > best) : (v < best);
        if (bi < 0 || better || (v == best && k < bi)) { best = v; bi = k; }
    }
    sval[lid] = best; sidx[lid] = bi;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint s = ls / 2; s > 0; s >>= 1) {
        if (lid < s) {
            const float v = sval[lid + s]; const long k = sidx[lid + s];
            const float w = sval[lid]; const long j = sidx[lid];
            const int better = is_max ? (v > w) : (v < w);
            if (k >= 0 && (j < 0 || better || (v == w && k < j))) { sval[lid] = v; sidx[lid] = k; }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) { val_out[get_group_id(0)] = sval[0]; idx_out[get_group_id(0)] = sidx[0]; }
}

/* softmax (log_mode = 0) or log_softmax (log_mode = 1) of each row; one work-group per row. */
__kernel void softmax_rows(const ulong cols, __global const float* restrict a,
                           __global float* restrict out, const int log_mode,
                           __local float* scratch)
{
    const uint lid = get_local_id(0), ls = get_local_size(0);
    __global const float* r = a + get_group_id(0) * cols;
    __global float* o = out + get_group_id(0) * cols;
    float m = -INFINITY;
    for (ulong c = lid; c < cols; c += ls) m = fmax(m, r[c]);
    scratch[lid] = m;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint s = ls / 2; s > 0; s >>= 1) {
        if (lid < s) scratch[lid] = fmax(scratch[lid], scratch[lid + s]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    m = scratch[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    float t = 0.0f;
    for (ulong c = lid; c < cols; c += ls) t += exp(r[c] - m);
    scratch[lid] = t;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint s = ls / 2; s > 0; s >>= 1) {
        if (lid < s) scratch[lid] += scratch[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    t = scratch[0];
    const float lt = log(t);
    for (ulong c = lid; c < cols; c += ls)
        o[c] = log_mode ? (r[c] - m) - lt : exp(r[c] - m) / t;
}

/* y = A x, A (rows, cols) row-major; one work-group per row. */
__kernel void matvec_rows(const ulong cols, __global const float* restrict A,
                          __global const float* restrict x, __global float* restrict y,
                          __local float* scratch)
{
    const uint lid = get_local_id(0), ls = get_local_size(0);
    __global const float* r = A + get_group_id(0) * cols;
    float t = 0.0f;
    for (ulong c = lid; c < cols; c += ls) t = fma(r[c], x[c], t);
    scratch[lid] = t;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint s = ls / 2; s > 0; s >>= 1) {
        if (lid < s) scratch[lid] += scratch[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) y[get_group_id(0)] = scratch[0];
}

/* out (cols, rows) = transpose of a (rows, cols); 16x16 tiles, local size (16, 16). */
__kernel void transpose_tiled(const uint rows, const uint cols, __global const float* restrict a,
                              __global float* restrict out)
{
    __local float tile[16][17];
    const uint tx = get_local_id(0), ty = get_local_id(1);
    uint c = get_group_id(0) * 16 + tx, r = get_group_id(1) * 16 + ty;
    if (r < rows && c < cols) tile[ty][tx] = a[(ulong)r * cols + c];
    barrier(CLK_LOCAL_MEM_FENCE);
    c = get_group_id(1) * 16 + tx; r = get_group_id(0) * 16 + ty;
    if (r < cols && c < rows) out[(ulong)r * rows + c] = tile[tx][ty];
}

/* C (M, N) = A (M, K) B (K, N), any sizes; 16x16 tiles, local size (16, 16). */
__kernel void sgemm_tiled(const uint M, const uint N, const uint K,
                          __global const float* restrict A, __global const float* restrict B,
                          __global float* restrict C)
{
    __local float As[16][17], Bs[16][17];
    const uint tx = get_local_id(0), ty = get_local_id(1);
    const uint col = get_group_id(0) * 16 + tx, row = get_group_id(1) * 16 + ty;
    float acc = 0.0f;
    for (uint k0 = 0; k0 < K; k0 += 16) {
        As[ty][tx] = (row < M && k0 + tx < K) ? A[(ulong)row * K + k0 + tx] : 0.0f;
        Bs[ty][tx] = (k0 + ty < K && col < N) ? B[(ulong)(k0 + ty) * N + col] : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (uint k = 0; k < 16; ++k) acc = fma(As[ty][k], Bs[k][tx], acc);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (row < M && col < N) C[(ulong)row * N + col] = acc;
}

/* C (M, N) = A (M, K) B (K, N); M, N multiples of 128, K of SGEMM_BK; local size 256, global
   (N / 128 * 256, M / 128).  Each item: an 8x8 block of C in registers. */
#define BM 128
#define BN 128
#ifndef SGEMM_BK
#define SGEMM_BK 32
#endif
#define BK SGEMM_BK
#define PAD 4
__kernel __attribute__((reqd_work_group_size(256, 1, 1)))
void sgemm_128x128(const uint M, const uint N, const uint K,
                   __global const float* restrict A, __global const float* restrict B,
                   __global float* restrict C)
{
    __local float As[BK][BM + PAD];
    __local float Bs[BK][BN];
    const uint tid = get_local_id(0);
    const uint tx = tid % 16, ty = tid / 16;
    const uint bm = get_group_id(1) * BM, bn = get_group_id(0) * BN;
    float acc[8][8];
    for (int i = 0; i < 8; ++i)
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;
    for (uint k0 = 0; k0 < K; k0 += BK) {
        for (int l = 0; l < BK / 8; ++l) {
            const uint idx = tid + l * 256;
            const uint r = idx / (BK / 4), c = (idx % (BK / 4)) * 4;
            const float4 v = vload4(0, A + (ulong)(bm + r) * K + k0 + c);
            As[c + 0][r] = v.x; As[c + 1][r] = v.y; As[c + 2][r] = v.z; As[c + 3][r] = v.w;
        }
        for (int l = 0; l < BK / 8; ++l) {
            const uint idx = tid + l * 256;
            const uint r = idx / (BN / 4), c = (idx % (BN / 4)) * 4;
            vstore4(vload4(0, B + (ulong)(k0 + r) * N + bn + c), 0, &Bs[r][c]);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        #pragma unroll
        for (int k = 0; k < BK; ++k) {
            const float4 a0 = vload4(0, &As[k][ty * 4]);
            const float4 a1 = vload4(0, &As[k][ty * 4 + 64]);
            const float4 b0 = vload4(0, &Bs[k][tx * 4]);
            const float4 b1 = vload4(0, &Bs[k][tx * 4 + 64]);
            const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
            #pragma unroll
            for (int i = 0; i < 8; ++i)
                #pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    for (int i = 0; i < 8; ++i) {
        const uint row = bm + ty * 4 + (i < 4 ? i : 60 + i);
        __global float* crow = C + (ulong)row * N + bn;
        vstore4((float4)(acc[i][0], acc[i][1], acc[i][2], acc[i][3]), 0, crow + tx * 4);
        vstore4((float4)(acc[i][4], acc[i][5], acc[i][6], acc[i][7]), 0, crow + tx * 4 + 64);
    }
}
"""


def program_source() -> str:
    """The OpenCL C source of every built-in kernel (one program)."""
    parts = []
    for name, (arity, expr) in ELEMENTWISE.items():
        parts.append(_EW_TEMPLATE.format(
            name=name, expr=expr,
            load_y="((__global const float4*)b)[q]" if arity >= 2 else "(float4)(0.0f)",
            load_z="((__global const float4*)c)[q]" if arity >= 3 else "(float4)(0.0f)",
            y1="b[j]" if arity >= 2 else "0.0f", z1="c[j]" if arity >= 3 else "0.0f"))
    for name, (map_, fold, ident) in REDUCTIONS.items():
        parts.append(_REDUCE_TEMPLATE.format(
            name=name, map_=map_, fold=fold, ident=ident,
            load_y="b[i]" if "y" in map_ else "0.0f"))
    parts.append(_FIXED)
    return "\n".join(parts)
