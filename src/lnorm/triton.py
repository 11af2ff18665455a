"""LayerNorm and RMSNorm in Triton: forward and backward kernels behind ``torch.autograd.Function``s.

Same signatures, semantics, errors and dtype rules as :mod:`lnorm.torch`
(``layer_norm``, ``rms_norm``); the algorithms are those of :mod:`lnorm.moments`
(the shifted two-pass; RMSNorm's mean of squares) and the backward formulas
those of :mod:`lnorm.gradients`, written as GPU kernels. The two norms share
the tiling, the backward pass's programs and its parameter-gradient sums.

How the work is shared (``tiling``): in the forward pass, rows of up to 16384
elements (8192 in float64: a block is also capped at ``MAX_BLOCK_BYTES``) are
held in registers, several short rows per program as one ``[BLOCK_M, BLOCK_N]``
tile; longer rows are walked in blocks of that size and read twice. The backward
pass, which holds more values per element, keeps rows of up to 4096 elements
(``BACKWARD_MAX_BLOCK``) in registers and walks longer ones in blocks of 4096.
The backward pass runs one program per streaming multiprocessor over tiles
dealt round robin, and sums the parameter gradients by pairwise trees and
Kahan's compensated summation, so that their error does not grow with the
number of rows. ``lnorm.ptx`` compiles every launch for an H100 without a GPU
and checks registers, spills, access width and 64-bit offsets.

Where it runs:

- on a CUDA tensor, compiled for the GPU;
- on a CPU tensor, through Triton's interpreter, which runs each program of the
  kernel in NumPy: correct but slow, for testing and reading. (Its conversion of
  float32 to bfloat16 truncates; ``_rounded_to`` rounds to nearest there, as a GPU does.) It must be
  switched on *before* this module is imported, because ``triton.jit`` decides
  at decoration time: ``TRITON_INTERPRET=1 python ...``, or set
  ``os.environ["TRITON_INTERPRET"] = "1"`` before ``import lnorm.triton``.
"""

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except ImportError as error:  # Triton ships wheels for Linux only
    raise ImportError(
        "lnorm.triton needs Triton, which is not installed (it has wheels for Linux only). "
        "lnorm.numpy and lnorm.torch work without it."
    ) from error

import lnorm.torch

#: True when Triton's interpreter was switched on before this module was imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: The largest row segment one program holds at once: 64 KiB of input, as in Triton's tutorial.
MAX_BLOCK_BYTES = 1 << 16

#: Triton's interpreter (3.x) converts float32 to bfloat16 by dropping the low 16 bits, rounding
#: toward zero, where a GPU rounds to nearest (``cvt.rn.bf16.f32``): ``_rounded_to`` rounds by hand
#: there. A constant of the kernels (tl.constexpr): compiled for a GPU, the branch is not there.
_ROUND_BFLOAT16_BY_HAND = tl.constexpr(INTERPRETED)


def layer_norm(
    x: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Layer normalization of ``x`` over its trailing ``normalized_shape`` dimensions, by Triton kernels.

    Differentiable once in x, weight and bias. float16 and bfloat16 inputs are
    loaded as they are and computed in float32; float64 is computed in float64.
    """
    normalized_shape, eps, work_dtype = lnorm.torch.checked_arguments(
        x, normalized_shape, weight, bias, eps
    )
    _check_runs_here(x)
    return TritonLayerNormFunction.apply(
        x, weight, bias, normalized_shape, eps, work_dtype
    )


def rms_norm(
    x: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    eps: float | None = None,
) -> torch.Tensor:
    """RMSNorm of ``x`` over its trailing ``normalized_shape`` dimensions, by Triton kernels:
    ``x / sqrt(mean(x²) + eps) * weight``.

    The semantics, errors and dtype rules of :func:`lnorm.torch.rms_norm`, which are
    ``torch.nn.functional.rms_norm``'s (``eps=None`` is the machine epsilon of the dtype computed
    in), with one exception. Differentiable once in x and weight. float16, bfloat16 and float32
    inputs are computed in float32 and rounded once, float64 in float64; a weight of any floating
    dtype is converted exactly to that dtype, which is where torch forms ``x_hat * weight`` too.
    The exception: a float64 weight with a float32 or 16-bit input. torch forms that product in
    float64, which these kernels, computing such inputs in float32, do not: it raises a
    ``TypeError`` (convert the weight to float32, or the input to float64).
    """
    normalized_shape, eps, work_dtype = lnorm.torch.checked_rms_norm_arguments(
        x, normalized_shape, weight, eps
    )
    if weight is not None and weight.dtype == torch.float64 and work_dtype != torch.float64:
        raise TypeError(
            f"lnorm.triton.rms_norm computes a {str(x.dtype).removeprefix('torch.')} input in "
            "float32 and cannot form x_hat * weight in float64, as torch does for a float64 "
            "weight: pass a float32 weight, or a float64 input"
        )
    _check_runs_here(x)
    return TritonRMSNormFunction.apply(x, weight, normalized_shape, eps, work_dtype)


def _check_runs_here(x: torch.Tensor) -> None:
    """A CPU tensor runs only through the interpreter: say how to switch it on."""
    if not x.is_cuda and not INTERPRETED:
        raise RuntimeError(
            f"lnorm.triton runs its kernels on a CUDA GPU, but the input is on {x.device}. To run them "
            "on the CPU through Triton's interpreter, set the environment variable TRITON_INTERPRET=1 "
            "before lnorm.triton is imported."
        )


# fmt: off
# --- kernels -----------------------------------------------------------------
# Addresses: a row's offset is row * row_stride, which passes 2**31 for large
# activations (524288 rows of 4096 is 2**31 elements), so it is formed in int64.
# Column indices stay int32: a row is never that long.


@triton.jit
def _aligned(value, ALIGN: tl.constexpr):
    """value, written so that the compiler sees it is a multiple of ALIGN (the launcher checked
    that it is, so this is value itself). Triton's launcher hints only divisibility by 16; with
    this, rows of N = 8k elements also load 128 bits at a time. (tl.multiple_of cannot mark a
    kernel argument: it annotates the operation that made a value, and an argument has none.)"""
    return (value // ALIGN) * ALIGN


@triton.jit
def _as_compute(count, COMPUTE: tl.constexpr):
    """An integer count as a float of the compute dtype (exact below 2**24). Works for a
    runtime integer and for a size Triton specialized to the constant 1."""
    return count + tl.zeros([], dtype=COMPUTE)


@triton.jit
def _divide(a, count, COMPUTE: tl.constexpr):
    """a / count, correctly rounded: Triton's float32 division is otherwise
    approximate on a GPU (``div.full.f32``, 2 ulp)."""
    if COMPUTE == tl.float32:
        return tl.div_rn(a, _as_compute(count, COMPUTE))
    else:
        return a / _as_compute(count, COMPUTE)


@triton.jit
def _reciprocal_sqrt(v, COMPUTE: tl.constexpr):
    """1 / sqrt(v) from the correctly rounded sqrt and division (Triton's defaults are approximate)."""
    if COMPUTE == tl.float32:
        return tl.div_rn(1.0, tl.sqrt_rn(v))
    else:
        return 1.0 / tl.sqrt(v)


@triton.jit
def _rounded_to(value, DTYPE: tl.constexpr):
    """value converted to the output's dtype DTYPE, rounded to nearest, ties to even, as a GPU
    converts. In the interpreter a float32 value bound for bfloat16 is first moved to the
    bfloat16 nearest it, by the integer trick (add 0x7FFF plus the last kept bit, clear the low
    16 bits), so that the interpreter's truncation is exact. NaN is kept as it is (the trick
    could carry a NaN's payload into infinity). Results below 2**-126, bfloat16's subnormals,
    still come out of the interpreter as zero. A float64 value bound for bfloat16 (the weight's
    gradient of a float64 input with a bfloat16 weight), which the interpreter does not convert
    at all, is rounded the same way to 8 significant bits, then passes exactly through float32."""
    if _ROUND_BFLOAT16_BY_HAND and DTYPE == tl.bfloat16 and value.dtype == tl.float64:
        bits = value.to(tl.uint64, bitcast=True)
        bits = ((bits + (0xFFFFFFFFFFF + ((bits >> 45) & 1))) >> 45) << 45  # 53 - 8 = 45 low bits
        value = tl.where(value != value, value, bits.to(tl.float64, bitcast=True)).to(tl.float32)
    if _ROUND_BFLOAT16_BY_HAND and DTYPE == tl.bfloat16 and value.dtype == tl.float32:
        bits = value.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000  # the interpreter then only truncates
        value = tl.where(value != value, value, bits.to(tl.float32, bitcast=True))
    return value.to(DTYPE)


@triton.jit
def _two_sum(a, b):
    """s = fl(a + b) and the exact error e, a + b = s + e (Knuth's TwoSum: no condition on |a|, |b|)."""
    s = a + b
    b_virtual = s - a
    e = (a - (s - b_virtual)) + (b - b_virtual)
    return s, e


@triton.jit
def _compensated_add(total, carry, term):
    """One step of Kahan's compensated summation: total + term, with the low part that
    the addition loses kept in carry and added back next time. The error of a sum of
    k terms so formed is at most (2u + O(k u^2)) sum|term|, whatever k."""
    corrected = term - carry
    new_total = total + corrected
    carry = (new_total - total) - corrected
    return new_total, carry


@triton.jit
def _pairwise_sum_rows(tile, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Sum of a [ROWS, COLS] tile over its rows by a balanced binary tree (ROWS a power of
    two): rows 2i and 2i+1 are added, then the pairs, and so on. Error at most
    log2(ROWS) u sum|tile|, in this order on every device and in the interpreter."""
    for level in tl.static_range(ROWS.bit_length() - 1):
        halves = tl.reshape(tile, [ROWS >> (level + 1), 2, COLS])
        even, odd = tl.split(tl.permute(halves, [0, 2, 1]))
        tile = even + odd
    return tl.reshape(tile, [COLS])


@triton.jit
def _add_tile_rows(total, carry, tile, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """total + (the rows of a [BLOCK_M, BLOCK_N] tile, summed by a pairwise tree), added by
    Kahan's compensated summation: how a backward program adds a parameter gradient's terms,
    tile after tile, in registers."""
    return _compensated_add(total, carry, _pairwise_sum_rows(tile, BLOCK_M, BLOCK_N))


@triton.jit
def _add_to_partials(partial_ptr, carry_offset, at, mask, term):
    """partial[at] += term by Kahan's compensated summation, the carry kept at
    partial[carry_offset + at]: the same sum as _add_tile_rows for rows longer than a block,
    whose partial sums do not fit in registers and live in the program's own rows of the buffer."""
    total, carry = _compensated_add(
        tl.load(partial_ptr + at, mask=mask), tl.load(partial_ptr + carry_offset + at, mask=mask), term)
    tl.store(partial_ptr + at, total, mask=mask)
    tl.store(partial_ptr + carry_offset + at, carry, mask=mask)


@triton.jit
def _forward_kernel(
    x_ptr, y_ptr, weight_ptr, bias_ptr, mean_hi_ptr, mean_lo_ptr, rstd_ptr,
    n_rows, n_cols, x_row_stride, y_row_stride, eps: tl.float64,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ONE_BLOCK: tl.constexpr,
    ALIGN: tl.constexpr,
):
    program = tl.program_id(0)
    n_cols = _aligned(n_cols, ALIGN)
    x_row_stride = _aligned(x_row_stride, ALIGN)
    y_row_stride = _aligned(y_row_stride, ALIGN)
    eps = tl.full([], eps, COMPUTE)  # the interpreter passes a Python float: no rounding to float32
    cols = tl.arange(0, BLOCK_N)
    if ONE_BLOCK:
        # BLOCK_M whole rows per program, one [BLOCK_M, BLOCK_N] tile, read once
        # and kept in registers for all four steps; weight and bias read once.
        rows = program * BLOCK_M + tl.arange(0, BLOCK_M)
        row_in = rows < n_rows
        col_in = cols < n_cols
        mask = row_in[:, None] & col_in[None, :]
        offsets = rows.to(tl.int64)[:, None] * x_row_stride + cols[None, :]
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(COMPUTE)
        # 1. the mean, rounded
        hi = _divide(tl.sum(x, axis=1), n_cols, COMPUTE)
        # 2. rounds relative to the deviation, not the mean (exact, by Sterbenz's lemma,
        # when x and hi have the same sign and |hi|/2 <= |x| <= 2|hi|)
        centred = tl.where(mask, x - hi[:, None], 0.0)
        # 3. the rounding error of hi, removed
        lo = _divide(tl.sum(centred, axis=1), n_cols, COMPUTE)
        centred = tl.where(mask, centred - lo[:, None], 0.0)
        # 4. variance, rstd and the output
        var = _divide(tl.sum(centred * centred, axis=1), n_cols, COMPUTE)
        rstd = _reciprocal_sqrt(var + eps, COMPUTE)
        y = centred * rstd[:, None]
        if HAS_WEIGHT:
            y = y * tl.load(weight_ptr + cols, mask=col_in, other=0.0).to(COMPUTE)[None, :]
        if HAS_BIAS:
            y = y + tl.load(bias_ptr + cols, mask=col_in, other=0.0).to(COMPUTE)[None, :]
        y_offsets = rows.to(tl.int64)[:, None] * y_row_stride + cols[None, :]
        tl.store(y_ptr + y_offsets, _rounded_to(y, y_ptr.dtype.element_ty), mask=mask)
        tl.store(mean_hi_ptr + rows, hi, mask=row_in)
        tl.store(mean_lo_ptr + rows, lo, mask=row_in)
        tl.store(rstd_ptr + rows, rstd, mask=row_in)
    else:
        # One row longer than a block (BLOCK_M is 1), read twice: once for the
        # statistics, once for the output. The row is shifted by the mean of its
        # first block, `shift`, which lies within sqrt(n_cols / BLOCK_N - 1) standard
        # deviations of the row's mean (Cauchy-Schwarz), so mean(d^2) <=
        # (n_cols / BLOCK_N) sigma^2 with d = x - shift, and the corrected formula
        # var = mean(d^2) - mean(d)^2 loses at most a factor n_cols / BLOCK_N to
        # cancellation (Chan, Golub and LeVeque).
        x_row = x_ptr + tl.cast(program, tl.int64) * x_row_stride
        y_row = y_ptr + tl.cast(program, tl.int64) * y_row_stride
        first = tl.load(x_row + cols).to(COMPUTE)  # n_cols > BLOCK_N: all in the row
        shift = _divide(tl.sum(first, axis=0), BLOCK_N, COMPUTE)
        sum_d = first - shift
        sum_d2 = sum_d * sum_d
        for start in range(BLOCK_N, n_cols, BLOCK_N):
            mask = start + cols < n_cols
            x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(COMPUTE)
            d = tl.where(mask, x - shift, 0.0)
            sum_d += d
            sum_d2 += d * d
        mean_d = _divide(tl.sum(sum_d, axis=0), n_cols, COMPUTE)
        # the mean as the unevaluated sum hi + lo, exactly shift + mean_d
        hi, lo = _two_sum(shift, mean_d)
        var = tl.maximum(_divide(tl.sum(sum_d2, axis=0), n_cols, COMPUTE) - mean_d * mean_d, 0.0)
        rstd = _reciprocal_sqrt(var + eps, COMPUTE)
        for start in range(0, n_cols, BLOCK_N):
            mask = start + cols < n_cols
            x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(COMPUTE)
            y = ((x - hi) - lo) * rstd
            if HAS_WEIGHT:
                y = y * tl.load(weight_ptr + start + cols, mask=mask, other=0.0).to(COMPUTE)
            if HAS_BIAS:
                y = y + tl.load(bias_ptr + start + cols, mask=mask, other=0.0).to(COMPUTE)
            tl.store(y_row + start + cols, _rounded_to(y, y_ptr.dtype.element_ty), mask=mask)
        tl.store(mean_hi_ptr + program, hi)
        tl.store(mean_lo_ptr + program, lo)
        tl.store(rstd_ptr + program, rstd)
    # The mean is saved as the unevaluated sum hi + lo, so that the backward
    # pass can recompute x_hat as accurately as the forward pass did: hi + lo
    # rounded to one number would lose lo.


@triton.jit
def _backward_kernel(
    dy_ptr, x_ptr, weight_ptr, mean_hi_ptr, mean_lo_ptr, rstd_ptr, dx_ptr,
    partial_dweight_ptr, partial_dbias_ptr,
    n_rows, n_cols, dy_row_stride, x_row_stride, dx_row_stride,
    HAS_WEIGHT: tl.constexpr, COMPUTE_DX: tl.constexpr,
    COMPUTE_DWEIGHT: tl.constexpr, COMPUTE_DBIAS: tl.constexpr,
    COMPUTE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ONE_BLOCK: tl.constexpr, ALIGN: tl.constexpr,
):
    # Every program takes tiles of BLOCK_M rows, round robin (tile p, p + P,
    # p + 2P, ... for P programs), so that no two programs' row counts differ by
    # more than one tile; a program may have none. Each adds up its own partial
    # dweight and dbias: per tile by a pairwise tree, across tiles by Kahan's
    # compensated summation; it writes them to its own row of the partial
    # buffers, which _column_sum_kernel then sums pairwise. No two programs
    # write the same place: no locks, no atomics, and a result that does not
    # depend on timing.
    program = tl.program_id(0)
    programs = tl.num_programs(0)
    n_cols = _aligned(n_cols, ALIGN)
    dy_row_stride = _aligned(dy_row_stride, ALIGN)
    x_row_stride = _aligned(x_row_stride, ALIGN)
    dx_row_stride = _aligned(dx_row_stride, ALIGN)
    cols = tl.arange(0, BLOCK_N)
    partial_row = tl.cast(program, tl.int64) * n_cols
    if ONE_BLOCK:
        col_in = cols < n_cols
        weight = tl.load(weight_ptr + cols, mask=col_in, other=0.0).to(COMPUTE) if HAS_WEIGHT else 1.0
        dweight = tl.zeros([BLOCK_N], dtype=COMPUTE)
        dweight_carry = tl.zeros([BLOCK_N], dtype=COMPUTE)
        dbias = tl.zeros([BLOCK_N], dtype=COMPUTE)
        dbias_carry = tl.zeros([BLOCK_N], dtype=COMPUTE)
        for tile in range(program, tl.cdiv(n_rows, BLOCK_M), programs):
            rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
            row_in = rows < n_rows
            mask = row_in[:, None] & col_in[None, :]
            rows64 = rows.to(tl.int64)[:, None]
            dy = tl.load(dy_ptr + rows64 * dy_row_stride + cols[None, :], mask=mask, other=0.0).to(COMPUTE)
            x = tl.load(x_ptr + rows64 * x_row_stride + cols[None, :], mask=mask, other=0.0).to(COMPUTE)
            hi = tl.load(mean_hi_ptr + rows, mask=row_in, other=0.0)
            lo = tl.load(mean_lo_ptr + rows, mask=row_in, other=0.0)
            rstd = tl.load(rstd_ptr + rows, mask=row_in, other=0.0)
            x_hat = tl.where(mask, ((x - hi[:, None]) - lo[:, None]) * rstd[:, None], 0.0)
            if COMPUTE_DX:
                g = dy * weight[None, :] if HAS_WEIGHT else dy
                mean_g = _divide(tl.sum(g, axis=1), n_cols, COMPUTE)
                mean_gx = _divide(tl.sum(g * x_hat, axis=1), n_cols, COMPUTE)
                dx = (g - mean_g[:, None] - x_hat * mean_gx[:, None]) * rstd[:, None]
                tl.store(dx_ptr + rows64 * dx_row_stride + cols[None, :], _rounded_to(dx, dx_ptr.dtype.element_ty), mask=mask)
            if COMPUTE_DWEIGHT:
                dweight, dweight_carry = _add_tile_rows(dweight, dweight_carry, dy * x_hat, BLOCK_M, BLOCK_N)
            if COMPUTE_DBIAS:
                dbias, dbias_carry = _add_tile_rows(dbias, dbias_carry, dy, BLOCK_M, BLOCK_N)
        if COMPUTE_DWEIGHT:
            tl.store(partial_dweight_ptr + partial_row + cols, dweight, mask=col_in)
        if COMPUTE_DBIAS:
            tl.store(partial_dbias_ptr + partial_row + cols, dbias, mask=col_in)
    else:
        # Rows longer than a block (BLOCK_M is 1): two passes over each row; the
        # partial sums and their Kahan carries live in the buffers (second half:
        # the carries), which only this program touches.
        carry_offset = tl.cast(programs, tl.int64) * n_cols
        for row in range(program, n_rows, programs):
            x_row = x_ptr + tl.cast(row, tl.int64) * x_row_stride
            dy_row = dy_ptr + tl.cast(row, tl.int64) * dy_row_stride
            dx_row = dx_ptr + tl.cast(row, tl.int64) * dx_row_stride
            hi, lo = tl.load(mean_hi_ptr + row), tl.load(mean_lo_ptr + row)
            rstd = tl.load(rstd_ptr + row)
            mean_g = 0.0
            mean_gx = 0.0
            if COMPUTE_DX:
                sum_g = tl.zeros([BLOCK_N], dtype=COMPUTE)
                sum_gx = tl.zeros([BLOCK_N], dtype=COMPUTE)
                for start in range(0, n_cols, BLOCK_N):
                    mask = start + cols < n_cols
                    x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(COMPUTE)
                    g = tl.load(dy_row + start + cols, mask=mask, other=0.0).to(COMPUTE)
                    if HAS_WEIGHT:
                        g = g * tl.load(weight_ptr + start + cols, mask=mask, other=0.0).to(COMPUTE)
                    sum_g += g
                    sum_gx += g * tl.where(mask, ((x - hi) - lo) * rstd, 0.0)
                mean_g = _divide(tl.sum(sum_g, axis=0), n_cols, COMPUTE)
                mean_gx = _divide(tl.sum(sum_gx, axis=0), n_cols, COMPUTE)
            for start in range(0, n_cols, BLOCK_N):
                mask = start + cols < n_cols
                x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(COMPUTE)
                dy = tl.load(dy_row + start + cols, mask=mask, other=0.0).to(COMPUTE)
                x_hat = tl.where(mask, ((x - hi) - lo) * rstd, 0.0)
                if COMPUTE_DX:
                    g = dy
                    if HAS_WEIGHT:
                        g = dy * tl.load(weight_ptr + start + cols, mask=mask, other=0.0).to(COMPUTE)
                    dx = (g - mean_g - x_hat * mean_gx) * rstd
                    tl.store(dx_row + start + cols, _rounded_to(dx, dx_ptr.dtype.element_ty), mask=mask)
                at = partial_row + start + cols
                if COMPUTE_DWEIGHT:
                    _add_to_partials(partial_dweight_ptr, carry_offset, at, mask, dy * x_hat)
                if COMPUTE_DBIAS:
                    _add_to_partials(partial_dbias_ptr, carry_offset, at, mask, dy)


@triton.jit
def _column_sum_kernel(partial_ptr, out_ptr, n_partials, n_cols,
                       PARTIALS: tl.constexpr, BLOCK_N: tl.constexpr, ALIGN: tl.constexpr):
    """out[j] = sum over the n_partials rows of partial[:, j], by a pairwise tree over a
    [PARTIALS, BLOCK_N] tile (rows beyond n_partials are zero): one launch, one step."""
    n_cols = _aligned(n_cols, ALIGN)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.arange(0, PARTIALS)
    mask = (rows < n_partials)[:, None] & (cols < n_cols)[None, :]
    tile = tl.load(partial_ptr + rows.to(tl.int64)[:, None] * n_cols + cols[None, :], mask=mask, other=0.0)
    total = _pairwise_sum_rows(tile, PARTIALS, BLOCK_N)
    tl.store(out_ptr + cols, _rounded_to(total, out_ptr.dtype.element_ty), mask=cols < n_cols)


# --- RMSNorm ------------------------------------------------------------------
# The same tiling, addressing and parameter-gradient sums as LayerNorm's kernels; one statistic,
# mean(x²), whose terms are all >= 0: nothing cancels, so it needs neither a shift nor a
# correction pass, and a row longer than a block is read twice (statistic, output), as LayerNorm's.


@triton.jit
def _rms_forward_kernel(
    x_ptr, y_ptr, weight_ptr, rstd_ptr,
    n_rows, n_cols, x_row_stride, y_row_stride, eps: tl.float64,
    HAS_WEIGHT: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ONE_BLOCK: tl.constexpr,
    ALIGN: tl.constexpr,
):
    # y = x * rstd * weight, rstd = 1 / sqrt(mean(x²) + eps): lnorm.moments.rms_normalize.
    program = tl.program_id(0)
    n_cols = _aligned(n_cols, ALIGN)
    x_row_stride = _aligned(x_row_stride, ALIGN)
    y_row_stride = _aligned(y_row_stride, ALIGN)
    eps = tl.full([], eps, COMPUTE)  # the interpreter passes a Python float: no rounding to float32
    cols = tl.arange(0, BLOCK_N)
    if ONE_BLOCK:
        # BLOCK_M whole rows per program, one tile, read once; masked lanes are 0 and add nothing
        rows = program * BLOCK_M + tl.arange(0, BLOCK_M)
        row_in = rows < n_rows
        col_in = cols < n_cols
        mask = row_in[:, None] & col_in[None, :]
        offsets = rows.to(tl.int64)[:, None] * x_row_stride + cols[None, :]
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(COMPUTE)
        rstd = _reciprocal_sqrt(_divide(tl.sum(x * x, axis=1), n_cols, COMPUTE) + eps, COMPUTE)
        y = x * rstd[:, None]
        if HAS_WEIGHT:
            y = y * tl.load(weight_ptr + cols, mask=col_in, other=0.0).to(COMPUTE)[None, :]
        y_offsets = rows.to(tl.int64)[:, None] * y_row_stride + cols[None, :]
        tl.store(y_ptr + y_offsets, _rounded_to(y, y_ptr.dtype.element_ty), mask=mask)
        tl.store(rstd_ptr + rows, rstd, mask=row_in)
    else:
        # one row longer than a block (BLOCK_M is 1): each lane adds the squares of its column of
        # blocks, then a tree adds the lanes
        x_row = x_ptr + tl.cast(program, tl.int64) * x_row_stride
        y_row = y_ptr + tl.cast(program, tl.int64) * y_row_stride
        sum_squares = tl.zeros([BLOCK_N], dtype=COMPUTE)
        for start in range(0, n_cols, BLOCK_N):
            x = tl.load(x_row + start + cols, mask=start + cols < n_cols, other=0.0).to(COMPUTE)
            sum_squares += x * x
        rstd = _reciprocal_sqrt(_divide(tl.sum(sum_squares, axis=0), n_cols, COMPUTE) + eps, COMPUTE)
        for start in range(0, n_cols, BLOCK_N):
            mask = start + cols < n_cols
            y = tl.load(x_row + start + cols, mask=mask, other=0.0).to(COMPUTE) * rstd
            if HAS_WEIGHT:
                y = y * tl.load(weight_ptr + start + cols, mask=mask, other=0.0).to(COMPUTE)
            tl.store(y_row + start + cols, _rounded_to(y, y_ptr.dtype.element_ty), mask=mask)
        tl.store(rstd_ptr + program, rstd)


@triton.jit
def _rms_backward_kernel(
    dy_ptr, x_ptr, weight_ptr, rstd_ptr, dx_ptr, partial_dweight_ptr,
    n_rows, n_cols, dy_row_stride, x_row_stride, dx_row_stride,
    HAS_WEIGHT: tl.constexpr, COMPUTE_DX: tl.constexpr, COMPUTE_DWEIGHT: tl.constexpr,
    COMPUTE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ONE_BLOCK: tl.constexpr, ALIGN: tl.constexpr,
):
    # dx = rstd (g - x_hat mean(g x_hat)), g = dy * weight, dweight = sum over rows of dy x_hat
    # (lnorm.gradients.rms_norm_backward_rows); x_hat = x * rstd recomputed by the forward's own
    # operation, so bit for bit the forward's. Programs, tiles and the partial dweight as in
    # _backward_kernel.
    program = tl.program_id(0)
    programs = tl.num_programs(0)
    n_cols = _aligned(n_cols, ALIGN)
    dy_row_stride = _aligned(dy_row_stride, ALIGN)
    x_row_stride = _aligned(x_row_stride, ALIGN)
    dx_row_stride = _aligned(dx_row_stride, ALIGN)
    cols = tl.arange(0, BLOCK_N)
    partial_row = tl.cast(program, tl.int64) * n_cols
    if ONE_BLOCK:
        col_in = cols < n_cols
        weight = tl.load(weight_ptr + cols, mask=col_in, other=0.0).to(COMPUTE) if HAS_WEIGHT else 1.0
        dweight = tl.zeros([BLOCK_N], dtype=COMPUTE)
        dweight_carry = tl.zeros([BLOCK_N], dtype=COMPUTE)
        for tile in range(program, tl.cdiv(n_rows, BLOCK_M), programs):
            rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
            row_in = rows < n_rows
            mask = row_in[:, None] & col_in[None, :]
            rows64 = rows.to(tl.int64)[:, None]
            dy = tl.load(dy_ptr + rows64 * dy_row_stride + cols[None, :], mask=mask, other=0.0).to(COMPUTE)
            x = tl.load(x_ptr + rows64 * x_row_stride + cols[None, :], mask=mask, other=0.0).to(COMPUTE)
            rstd = tl.load(rstd_ptr + rows, mask=row_in, other=0.0)
            # masked lanes 0 even where rstd is inf (a zero row with eps = 0)
            x_hat = tl.where(mask, x * rstd[:, None], 0.0)
            if COMPUTE_DX:
                g = dy * weight[None, :] if HAS_WEIGHT else dy
                mean_gx = _divide(tl.sum(g * x_hat, axis=1), n_cols, COMPUTE)
                dx = (g - x_hat * mean_gx[:, None]) * rstd[:, None]
                tl.store(dx_ptr + rows64 * dx_row_stride + cols[None, :], _rounded_to(dx, dx_ptr.dtype.element_ty), mask=mask)
            if COMPUTE_DWEIGHT:
                dweight, dweight_carry = _add_tile_rows(dweight, dweight_carry, dy * x_hat, BLOCK_M, BLOCK_N)
        if COMPUTE_DWEIGHT:
            tl.store(partial_dweight_ptr + partial_row + cols, dweight, mask=col_in)
    else:
        # rows longer than a block (BLOCK_M is 1): one pass for mean(g x_hat), one for dx and
        # dweight, whose partial sums and carries live in the buffer
        carry_offset = tl.cast(programs, tl.int64) * n_cols
        for row in range(program, n_rows, programs):
            x_row = x_ptr + tl.cast(row, tl.int64) * x_row_stride
            dy_row = dy_ptr + tl.cast(row, tl.int64) * dy_row_stride
            dx_row = dx_ptr + tl.cast(row, tl.int64) * dx_row_stride
            rstd = tl.load(rstd_ptr + row)
            mean_gx = 0.0
            if COMPUTE_DX:
                sum_gx = tl.zeros([BLOCK_N], dtype=COMPUTE)
                for start in range(0, n_cols, BLOCK_N):
                    mask = start + cols < n_cols
                    x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(COMPUTE)
                    g = tl.load(dy_row + start + cols, mask=mask, other=0.0).to(COMPUTE)
                    if HAS_WEIGHT:
                        g = g * tl.load(weight_ptr + start + cols, mask=mask, other=0.0).to(COMPUTE)
                    sum_gx += g * tl.where(mask, x * rstd, 0.0)
                mean_gx = _divide(tl.sum(sum_gx, axis=0), n_cols, COMPUTE)
            for start in range(0, n_cols, BLOCK_N):
                mask = start + cols < n_cols
                x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(COMPUTE)
                dy = tl.load(dy_row + start + cols, mask=mask, other=0.0).to(COMPUTE)
                x_hat = tl.where(mask, x * rstd, 0.0)
                if COMPUTE_DX:
                    g = dy
                    if HAS_WEIGHT:
                        g = dy * tl.load(weight_ptr + start + cols, mask=mask, other=0.0).to(COMPUTE)
                    dx = (g - x_hat * mean_gx) * rstd
                    tl.store(dx_row + start + cols, _rounded_to(dx, dx_ptr.dtype.element_ty), mask=mask)
                if COMPUTE_DWEIGHT:
                    _add_to_partials(partial_dweight_ptr, carry_offset, partial_row + start + cols, mask, dy * x_hat)


# fmt: on


# --- choosing the launch -----------------------------------------------------
# Small functions, so that every kernel of this module (and the compile-only
# check in lnorm.ptx) makes the same choices.

#: Elements of one loaded [rows, columns] tile a thread may hold: enough in
#: flight to saturate memory, few enough that no kernel spills registers.
FORWARD_ELEMENTS_PER_THREAD = 16
BACKWARD_ELEMENTS_PER_THREAD = 8
#: The longest block each pass holds in registers without spilling (checked by lnorm.ptx for an
#: H100 at 16 warps: 128 registers a thread). The backward pass holds x, dy, weight and four
#: accumulators per element, the forward x and two accumulators: longer rows are walked in
#: blocks of this size.
FORWARD_MAX_BLOCK = 16384
BACKWARD_MAX_BLOCK = 4096
#: Short rows are grouped so that one program's tile has up to this many elements.
TILE_ELEMENTS = 4096
MAX_ROWS_PER_PROGRAM = 16
MAX_WARPS = 16


@dataclass(frozen=True)
class Tiling:
    """How a kernel walks its rows: ``rows_per_program`` rows per tile, ``block`` columns per
    block (a power of two), whether a whole row fits in one block, and the warps per program."""

    block: int
    one_block: bool
    rows_per_program: int
    num_warps: int


def block_size(n_cols: int, element_size: int, max_elements: int = FORWARD_MAX_BLOCK) -> tuple[int, bool]:
    """The column block (the next power of two of the row, capped at MAX_BLOCK_BYTES of input
    and at max_elements) and whether a whole row fits in it."""
    max_block = max(1, min(MAX_BLOCK_BYTES // element_size, max_elements))
    block = min(max_block, triton.next_power_of_2(max(n_cols, 1)))
    return block, n_cols <= block


def rows_per_program(block: int, one_block: bool, n_rows: int, tile_elements: int = TILE_ELEMENTS) -> int:
    """Rows per program: several short rows (a tile of up to tile_elements), one long row."""
    if not one_block:
        return 1
    rows = max(1, min(MAX_ROWS_PER_PROGRAM, tile_elements // block))
    return min(rows, triton.next_power_of_2(max(n_rows, 1)))


def num_warps(tile_elements: int, elements_per_thread: int) -> int:
    """Warps per program: enough that each of the 32 threads of a warp holds at most
    ``elements_per_thread`` elements of a tile, between 1 and MAX_WARPS (the interpreter
    ignores it)."""
    warps = triton.next_power_of_2(max(1, tile_elements // (32 * elements_per_thread)))
    return max(1, min(MAX_WARPS, warps))


def tiling(n_cols: int, element_size: int, n_rows: int, elements_per_thread: int,
           max_elements: int) -> Tiling:
    """The tiling of one pass; float64 elements take two registers each, so half as many a thread
    and half as large a tile."""
    tile_elements = TILE_ELEMENTS
    if element_size == 8:
        elements_per_thread, tile_elements = elements_per_thread // 2, tile_elements // 2
    block, one_block = block_size(n_cols, element_size, max_elements)
    rows = rows_per_program(block, one_block, n_rows, tile_elements)
    return Tiling(block, one_block, rows, num_warps(rows * block, elements_per_thread))


def _launch_config(n_cols: int, element_size: int) -> tuple[int, bool]:
    """(block, whole row in one block) of the forward pass: kept for tests/test_triton.py."""
    return block_size(n_cols, element_size)


def backward_program_count(n_tiles: int, device: torch.device) -> int:
    """Programs of the backward pass: one per streaming multiprocessor on a GPU (each loops over
    tiles, so the weight of rows up to BACKWARD_MAX_BLOCK is loaded once per SM, and the partial
    buffers stay small; longer rows reload it block by block), 16 in the interpreter; never more
    than there are tiles."""
    if device.type == "cuda":
        available = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        available = 16
    return max(1, min(n_tiles, available))


def column_sum_tiling(n_partials: int, n_cols: int) -> tuple[int, int]:
    """(PARTIALS, BLOCK_N) of _column_sum_kernel: all partial rows in one tile, padded to a power
    of two, by as many columns as keep the tile at TILE_ELEMENTS."""
    partials = triton.next_power_of_2(max(n_partials, 1))
    columns = min(triton.next_power_of_2(max(n_cols, 1)), max(16, TILE_ELEMENTS // partials))
    return partials, columns


@dataclass(frozen=True)
class KernelLaunch:
    """One kernel launch as the dispatcher makes it: the kernel, its runtime arguments (a
    tensor, or an int/float scalar), its compile-time constants, the grid and warps."""

    name: str
    kernel: object
    args: dict
    constants: dict
    grid: int
    num_warps: int
    rows_per_program: int

    def __call__(self) -> None:
        self.kernel[(self.grid,)](
            *self.args.values(), **self.constants, num_warps=self.num_warps
        )


def alignment(*sizes: int) -> int:
    """The largest power of two up to 16 that divides every size (row length, row strides), in
    elements: what the kernels may declare with tl.multiple_of."""
    for align in (16, 8, 4, 2):
        if all(size % align == 0 for size in sizes):
            return align
    return 1


def _rows_view(t: torch.Tensor, n_rows: int, n_cols: int) -> torch.Tensor:
    """t as an (n_rows, n_cols) matrix with unit column stride: a view when the trailing
    dimensions are contiguous (any row stride), a copy only otherwise."""
    rows = t.reshape(n_rows, n_cols)
    return rows if rows.stride(1) == 1 or n_cols <= 1 else rows.contiguous()


def _on_device(t: torch.Tensor):
    """Launch on t's GPU, whichever is current; nothing to do on the CPU."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def forward_launch(x_rows, y, weight, bias, mean_hi, mean_lo, rstd, eps: float) -> KernelLaunch:
    n_rows, n_cols = x_rows.shape
    t = tiling(n_cols, x_rows.element_size(), n_rows, FORWARD_ELEMENTS_PER_THREAD, FORWARD_MAX_BLOCK)
    return KernelLaunch(
        "forward",
        _forward_kernel,
        dict(x_ptr=x_rows, y_ptr=y, weight_ptr=_pointer(weight, x_rows),
             bias_ptr=_pointer(bias, x_rows), mean_hi_ptr=mean_hi, mean_lo_ptr=mean_lo,
             rstd_ptr=rstd, n_rows=n_rows, n_cols=n_cols, x_row_stride=x_rows.stride(0),
             y_row_stride=y.stride(0), eps=float(eps)),
        dict(HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
             COMPUTE=_triton_dtype(mean_hi.dtype), BLOCK_M=t.rows_per_program,
             BLOCK_N=t.block, ONE_BLOCK=t.one_block,
             ALIGN=alignment(n_cols, x_rows.stride(0), y.stride(0))),
        triton.cdiv(n_rows, t.rows_per_program),
        t.num_warps,
        t.rows_per_program,
    )


def backward_launches(dy_rows, x_rows, weight, mean_hi, mean_lo, rstd, dx, dweight, dbias,
                      compute_dx: bool, sm_count: int | None = None) -> list[KernelLaunch]:
    """The backward kernel, then one column sum per parameter gradient asked for (dweight,
    dbias: output tensors, or None when not wanted). ``sm_count`` overrides the device's (for
    compiling without a GPU)."""
    n_rows, n_cols = x_rows.shape
    t, programs = _backward_plan(x_rows, sm_count)
    partials = {name: _partial_sums(t, programs, out, mean_hi)
                for name, out in (("dweight", dweight), ("dbias", dbias))}
    return [KernelLaunch(
        "backward",
        _backward_kernel,
        dict(dy_ptr=dy_rows, x_ptr=x_rows, weight_ptr=_pointer(weight, x_rows),
             mean_hi_ptr=mean_hi, mean_lo_ptr=mean_lo, rstd_ptr=rstd, dx_ptr=dx,
             partial_dweight_ptr=partials["dweight"], partial_dbias_ptr=partials["dbias"],
             n_rows=n_rows, n_cols=n_cols, dy_row_stride=dy_rows.stride(0),
             x_row_stride=x_rows.stride(0), dx_row_stride=dx.stride(0)),
        dict(HAS_WEIGHT=weight is not None, COMPUTE_DX=compute_dx,
             COMPUTE_DWEIGHT=dweight is not None, COMPUTE_DBIAS=dbias is not None,
             COMPUTE=_triton_dtype(mean_hi.dtype), BLOCK_M=t.rows_per_program,
             BLOCK_N=t.block, ONE_BLOCK=t.one_block,
             ALIGN=alignment(n_cols, dy_rows.stride(0), x_rows.stride(0), dx.stride(0))),
        programs,
        t.num_warps,
        t.rows_per_program,
    )] + [
        _column_sum_launch(f"column_sum_{name}", partials[name], out, programs)
        for name, out in (("dweight", dweight), ("dbias", dbias)) if out is not None
    ]


def _backward_plan(x_rows: torch.Tensor, sm_count: int | None) -> tuple[Tiling, int]:
    """The tiling of a backward pass over x_rows, and its number of programs: one per streaming
    multiprocessor (``sm_count`` overrides the device's), never more than there are tiles."""
    n_rows, n_cols = x_rows.shape
    t = tiling(n_cols, x_rows.element_size(), n_rows, BACKWARD_ELEMENTS_PER_THREAD, BACKWARD_MAX_BLOCK)
    n_tiles = triton.cdiv(n_rows, t.rows_per_program)
    programs = (
        backward_program_count(n_tiles, x_rows.device) if sm_count is None else min(n_tiles, sm_count)
    )
    return t, programs


def _partial_sums(t: Tiling, programs: int, out: torch.Tensor | None,
                  work: torch.Tensor) -> torch.Tensor:
    """The zeroed buffer of one parameter gradient's per-program partial sums, in the dtype of
    ``work`` (the compute dtype): (programs, N), and (2 programs, N) with their Kahan carries
    when rows are walked in blocks. ``work`` itself (an unused pointer) when ``out`` is None."""
    if out is None:
        return work
    n_cols = out.numel()
    shape = (programs if t.one_block else 2 * programs, n_cols)
    return torch.zeros(shape, dtype=work.dtype, device=work.device)


def _column_sum_launch(name: str, partials: torch.Tensor, out: torch.Tensor, programs: int) -> KernelLaunch:
    """out = the sum of the first ``programs`` rows of partials, by _column_sum_kernel."""
    n_cols = out.numel()
    n_partials, columns = column_sum_tiling(programs, n_cols)
    return KernelLaunch(
        name,
        _column_sum_kernel,
        dict(partial_ptr=partials, out_ptr=out, n_partials=programs, n_cols=n_cols),
        dict(PARTIALS=n_partials, BLOCK_N=columns, ALIGN=alignment(n_cols)),
        triton.cdiv(n_cols, columns),
        4,  # a small kernel: (programs x N) partial sums
        n_partials,
    )


def rms_forward_launch(x_rows, y, weight, rstd, eps: float) -> KernelLaunch:
    """The RMSNorm forward kernel, tiled as LayerNorm's forward."""
    n_rows, n_cols = x_rows.shape
    t = tiling(n_cols, x_rows.element_size(), n_rows, FORWARD_ELEMENTS_PER_THREAD, FORWARD_MAX_BLOCK)
    return KernelLaunch(
        "rms_forward",
        _rms_forward_kernel,
        dict(x_ptr=x_rows, y_ptr=y, weight_ptr=_pointer(weight, x_rows), rstd_ptr=rstd,
             n_rows=n_rows, n_cols=n_cols, x_row_stride=x_rows.stride(0),
             y_row_stride=y.stride(0), eps=float(eps)),
        dict(HAS_WEIGHT=weight is not None, COMPUTE=_triton_dtype(rstd.dtype),
             BLOCK_M=t.rows_per_program, BLOCK_N=t.block, ONE_BLOCK=t.one_block,
             ALIGN=alignment(n_cols, x_rows.stride(0), y.stride(0))),
        triton.cdiv(n_rows, t.rows_per_program),
        t.num_warps,
        t.rows_per_program,
    )


def rms_backward_launches(dy_rows, x_rows, weight, rstd, dx, dweight, compute_dx: bool,
                          sm_count: int | None = None) -> list[KernelLaunch]:
    """The RMSNorm backward kernel, then the column sum of dweight if asked for (an output
    tensor, or None): LayerNorm's programs, partial buffers and column sum."""
    n_rows, n_cols = x_rows.shape
    t, programs = _backward_plan(x_rows, sm_count)
    partials = _partial_sums(t, programs, dweight, rstd)
    launches = [KernelLaunch(
        "rms_backward",
        _rms_backward_kernel,
        dict(dy_ptr=dy_rows, x_ptr=x_rows, weight_ptr=_pointer(weight, x_rows), rstd_ptr=rstd,
             dx_ptr=dx, partial_dweight_ptr=partials, n_rows=n_rows, n_cols=n_cols,
             dy_row_stride=dy_rows.stride(0), x_row_stride=x_rows.stride(0),
             dx_row_stride=dx.stride(0)),
        dict(HAS_WEIGHT=weight is not None, COMPUTE_DX=compute_dx,
             COMPUTE_DWEIGHT=dweight is not None, COMPUTE=_triton_dtype(rstd.dtype),
             BLOCK_M=t.rows_per_program, BLOCK_N=t.block, ONE_BLOCK=t.one_block,
             ALIGN=alignment(n_cols, dy_rows.stride(0), x_rows.stride(0), dx.stride(0))),
        programs,
        t.num_warps,
        t.rows_per_program,
    )]
    if dweight is not None:
        launches.append(_column_sum_launch("rms_column_sum_dweight", partials, dweight, programs))
    return launches


class TritonLayerNormFunction(torch.autograd.Function):
    """Forward and backward by the kernels above; saves x, the two-part mean and rstd."""

    @staticmethod
    def forward(ctx, x, weight, bias, normalized_shape, eps, work_dtype):
        rows = _input_rows(x, normalized_shape)
        n_rows, n_cols = rows.shape
        # y is allocated in x's shape and returned as it is: a Function's output that is a view
        # could not be modified in place, as torch's can.
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        mean_hi, mean_lo, rstd = (
            torch.empty(n_rows, dtype=work_dtype, device=x.device) for _ in range(3)
        )
        weight = None if weight is None else weight.contiguous()
        bias = None if bias is None else bias.contiguous()
        if rows.numel():
            with _on_device(x):
                forward_launch(rows, y.view(rows.shape), weight, bias, mean_hi, mean_lo, rstd, eps)()
        ctx.save_for_backward(rows, weight, bias, mean_hi, mean_lo, rstd)
        ctx.x_shape = x.shape
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        rows, weight, bias, mean_hi, mean_lo, rstd = ctx.saved_tensors
        n_rows, n_cols = rows.shape
        wants_dx, wants_dweight, wants_dbias = ctx.needs_input_grad[:3]
        dx = torch.empty((n_rows, n_cols), dtype=rows.dtype, device=rows.device) if wants_dx else None
        dweight = torch.zeros_like(weight) if weight is not None and wants_dweight else None
        dbias = torch.zeros_like(bias) if bias is not None and wants_dbias else None
        if rows.numel() and (wants_dx or dweight is not None or dbias is not None):
            dy_rows = _rows_view(dy, n_rows, n_cols)
            with _on_device(rows):
                for launch in backward_launches(
                    dy_rows, rows, weight, mean_hi, mean_lo, rstd,
                    rows if dx is None else dx, dweight, dbias, compute_dx=wants_dx,
                ):
                    launch()
        return (
            None if dx is None else dx.reshape(ctx.x_shape),
            dweight, dbias, None, None, None,
        )


class TritonRMSNormFunction(torch.autograd.Function):
    """Forward and backward by the RMSNorm kernels; saves x and rstd (x_hat = x * rstd is
    recomputed, bit for bit, as :class:`lnorm.torch.RMSNormFunction` does)."""

    @staticmethod
    def forward(ctx, x, weight, normalized_shape, eps, work_dtype):
        rows = _input_rows(x, normalized_shape)
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # not a view: see above
        rstd = torch.empty(rows.shape[0], dtype=work_dtype, device=x.device)
        weight = None if weight is None else weight.contiguous()
        if rows.numel():
            with _on_device(x):
                rms_forward_launch(rows, y.view(rows.shape), weight, rstd, eps)()
        ctx.save_for_backward(rows, weight, rstd)
        ctx.x_shape = x.shape
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        rows, weight, rstd = ctx.saved_tensors
        wants_dx, wants_dweight = ctx.needs_input_grad[:2]
        dx = torch.empty(rows.shape, dtype=rows.dtype, device=rows.device) if wants_dx else None
        dweight = torch.zeros_like(weight) if weight is not None and wants_dweight else None
        if rows.numel() and (wants_dx or dweight is not None):
            with _on_device(rows):
                for launch in rms_backward_launches(
                    _rows_view(dy, *rows.shape), rows, weight, rstd,
                    rows if dx is None else dx, dweight, compute_dx=wants_dx,
                ):
                    launch()
        return None if dx is None else dx.reshape(ctx.x_shape), dweight, None, None, None


def _input_rows(x: torch.Tensor, normalized_shape: tuple[int, ...]) -> torch.Tensor:
    """x as its matrix of rows of prod(normalized_shape) elements (no rows when that is 0)."""
    n_cols = x.shape[x.dim() - len(normalized_shape) :].numel()
    n_rows = x.numel() // n_cols if n_cols else 0
    return _rows_view(x, n_rows, n_cols)


def _pointer(param: torch.Tensor | None, fallback: torch.Tensor) -> torch.Tensor:
    """A tensor to pass where a kernel expects a pointer; unused (HAS_WEIGHT=False) when param is None."""
    return fallback if param is None else param


def _triton_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32
