"""The Triton kernels of lnorm.triton: one forward and one backward body for both norms.

``CENTRED`` (a ``tl.constexpr``) switches between LayerNorm (centred: the corrected two-pass
mean and variance of :mod:`lnorm.moments` for a row in one block, sums shifted by the first
block's mean for longer rows) and RMSNorm (the mean of squares, nothing subtracted); the
compiler removes the branch not taken, so each norm's compiled kernel has only its own
instructions. The backward formulas are those of :mod:`lnorm.gradients`.

Every kernel is *persistent*: the launch plan (:mod:`lnorm.triton.plan`) starts a fixed number of
programs and each takes tiles of rows round robin (tile p, p + P, p + 2P, ... for P programs), so
that what a program loads once, the weight and the bias, is loaded once per program and not once
per row, and the backward's partial parameter gradients stay in registers across all of a
program's rows and are written once. Row indices are int64: a row offset ``row * stride`` passes
2**31 elements in large activations. Column indices are int32 (a row is never that long).
"""

import os

import triton
import triton.language as tl

#: True when Triton's interpreter was switched on before this module was imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: Triton's interpreter (3.x) converts float32 to bfloat16 by dropping the low 16 bits, rounding
#: toward zero, where a GPU rounds to nearest (``cvt.rn.bf16.f32``): ``_rounded_to`` rounds by hand
#: there. A constant of the kernels (tl.constexpr): compiled for a GPU, the branch is not there.
_ROUND_BFLOAT16_BY_HAND = tl.constexpr(INTERPRETED)

# fmt: off


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
    """1 / sqrt(v) from the correctly rounded sqrt and division (Triton's defaults are
    approximate)."""
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
        # the interpreter then only truncates
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        value = tl.where(value != value, value, bits.to(tl.float32, bitcast=True))
    return value.to(DTYPE)


@triton.jit
def _two_sum(a, b):
    """s = fl(a + b) and the exact error e, a + b = s + e (Knuth's TwoSum: no condition on |a|
    and |b|)."""
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
def _add_tile_rows(total, carry, tile, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   KAHAN: tl.constexpr):
    """total + (the rows of a [BLOCK_M, BLOCK_N] tile, summed by a pairwise tree), added by
    Kahan's compensated summation (KAHAN), or by a plain addition (carry stays 0): how a backward
    program adds a parameter gradient's terms, tile after tile, in registers."""
    if KAHAN:
        return _compensated_add(total, carry, _pairwise_sum_rows(tile, BLOCK_M, BLOCK_N))
    else:
        return total + _pairwise_sum_rows(tile, BLOCK_M, BLOCK_N), carry


@triton.jit
def _add_to_partials(total_ptrs, carry_ptrs, mask, term):
    """total += term by Kahan's compensated summation, the carry kept at carry_ptrs: the same
    sum as _add_tile_rows for rows longer than a block, whose partial sums do not fit in
    registers and live in the program's own rows of the partial buffer."""
    total, carry = _compensated_add(
        tl.load(total_ptrs, mask=mask), tl.load(carry_ptrs, mask=mask), term)
    tl.store(total_ptrs, total, mask=mask)
    tl.store(carry_ptrs, carry, mask=mask)


@triton.jit
def _loaded_or_one(ptr, offsets, mask, PRESENT: tl.constexpr, COMPUTE: tl.constexpr):
    """The parameter at ptr + offsets in the compute dtype, or the constant 1 when absent."""
    if PRESENT:
        return tl.load(ptr + offsets, mask=mask, other=0.0).to(COMPUTE)
    else:
        return 1.0


@triton.jit
def _loaded_or_zero(ptr, offsets, mask, PRESENT: tl.constexpr, COMPUTE: tl.constexpr):
    """The parameter at ptr + offsets in the compute dtype, or the constant 0 when absent."""
    if PRESENT:
        return tl.load(ptr + offsets, mask=mask, other=0.0).to(COMPUTE)
    else:
        return 0.0


@triton.jit
def _forward_kernel(
    x_ptr, y_ptr, weight_ptr, bias_ptr, mean_hi_ptr, mean_lo_ptr, rstd_ptr,
    n_rows, n_cols, x_row_stride, y_row_stride, eps: tl.float64,
    CENTRED: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    COMPUTE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ONE_BLOCK: tl.constexpr, ALIGN: tl.constexpr,
):
    """y = x_hat * weight + bias per row. LayerNorm (CENTRED): x_hat = (x - mean) rstd, the mean
    saved as the unevaluated sum mean_hi + mean_lo so that the backward recomputes x_hat as
    accurately as the forward did. RMSNorm: x_hat = x rstd, rstd = 1 / sqrt(mean(x²) + eps)."""
    program = tl.program_id(0)
    programs = tl.num_programs(0)
    n_cols = _aligned(n_cols, ALIGN)
    x_row_stride = _aligned(x_row_stride, ALIGN)
    y_row_stride = _aligned(y_row_stride, ALIGN)
    eps = tl.full([], eps, COMPUTE)  # the interpreter passes a Python float: not rounded to f32
    cols = tl.arange(0, BLOCK_N)
    if ONE_BLOCK:
        # Tiles of BLOCK_M whole rows, each loaded once and kept in registers for every step;
        # weight and bias loaded once per program, before its first tile.
        col_in = cols < n_cols
        # kept in their own dtype (two 16-bit values a register), converted where used
        weight = tl.load(weight_ptr + cols, mask=col_in, other=0.0) if HAS_WEIGHT else 1.0
        bias = tl.load(bias_ptr + cols, mask=col_in, other=0.0) if HAS_BIAS else 0.0
        for tile in range(program, tl.cdiv(n_rows, BLOCK_M), programs):
            rows = tl.cast(tile, tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
            row_in = rows < n_rows
            mask = row_in[:, None] & col_in[None, :]
            x = tl.load(x_ptr + rows[:, None] * x_row_stride + cols[None, :],
                        mask=mask, other=0.0).to(COMPUTE)
            if CENTRED:
                # 1. the mean, rounded
                hi = _divide(tl.sum(x, axis=1), n_cols, COMPUTE)
                # 2. rounds relative to the deviation, not the mean (exact, by Sterbenz's
                # lemma, when x and hi have the same sign and |hi|/2 <= |x| <= 2|hi|)
                centred = tl.where(mask, x - hi[:, None], 0.0)
                # 3. the rounding error of hi, removed
                lo = _divide(tl.sum(centred, axis=1), n_cols, COMPUTE)
                centred = tl.where(mask, centred - lo[:, None], 0.0)
                # 4. variance, rstd and the output
                var = _divide(tl.sum(centred * centred, axis=1), n_cols, COMPUTE)
                rstd = _reciprocal_sqrt(var + eps, COMPUTE)
                y = centred * rstd[:, None]
                tl.store(mean_hi_ptr + rows, hi, mask=row_in)
                tl.store(mean_lo_ptr + rows, lo, mask=row_in)
            else:
                # masked lanes are 0 and add nothing
                mean_square = _divide(tl.sum(x * x, axis=1), n_cols, COMPUTE)
                rstd = _reciprocal_sqrt(mean_square + eps, COMPUTE)
                y = x * rstd[:, None]
            if HAS_WEIGHT:
                y = y * weight.to(COMPUTE)[None, :]
            if HAS_BIAS:
                y = y + bias.to(COMPUTE)[None, :]
            tl.store(y_ptr + rows[:, None] * y_row_stride + cols[None, :],
                     _rounded_to(y, y_ptr.dtype.element_ty), mask=mask)
            tl.store(rstd_ptr + rows, rstd, mask=row_in)
    else:
        # Rows longer than a block (BLOCK_M is 1), each read twice: once for the statistics,
        # once for the output; weight and bias are read block by block with it. LayerNorm
        # shifts the row by the mean of its first block, `shift`, which lies within
        # sqrt(n_cols / BLOCK_N - 1) standard deviations of the row's mean (Cauchy-Schwarz), so
        # mean(d^2) <= (n_cols / BLOCK_N) sigma^2 with d = x - shift, and the corrected formula
        # var = mean(d^2) - mean(d)^2 loses at most a factor n_cols / BLOCK_N to cancellation
        # (Chan, Golub and LeVeque). RMSNorm adds the squares, lane by lane, then across lanes.
        for row in range(program, n_rows, programs):
            x_row = x_ptr + tl.cast(row, tl.int64) * x_row_stride
            y_row = y_ptr + tl.cast(row, tl.int64) * y_row_stride
            first = tl.load(x_row + cols).to(COMPUTE)  # n_cols > BLOCK_N: all in the row
            shift = _divide(tl.sum(first, axis=0), BLOCK_N, COMPUTE) if CENTRED else 0.0
            sum_d = first - shift
            sum_d2 = sum_d * sum_d
            for start in range(BLOCK_N, n_cols, BLOCK_N):
                mask = start + cols < n_cols
                x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(COMPUTE)
                d = tl.where(mask, x - shift, 0.0)
                if CENTRED:
                    sum_d += d
                sum_d2 += d * d
            if CENTRED:
                mean_d = _divide(tl.sum(sum_d, axis=0), n_cols, COMPUTE)
                # the mean as the unevaluated sum hi + lo, exactly shift + mean_d
                hi, lo = _two_sum(shift, mean_d)
                var = tl.maximum(
                    _divide(tl.sum(sum_d2, axis=0), n_cols, COMPUTE) - mean_d * mean_d, 0.0)
                tl.store(mean_hi_ptr + row, hi)
                tl.store(mean_lo_ptr + row, lo)
            else:
                hi, lo = 0.0, 0.0
                var = _divide(tl.sum(sum_d2, axis=0), n_cols, COMPUTE)
            rstd = _reciprocal_sqrt(var + eps, COMPUTE)
            for start in range(0, n_cols, BLOCK_N):
                mask = start + cols < n_cols
                x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(COMPUTE)
                y = ((x - hi) - lo) * rstd if CENTRED else x * rstd
                if HAS_WEIGHT:
                    y = y * tl.load(weight_ptr + start + cols, mask=mask, other=0.0).to(COMPUTE)
                if HAS_BIAS:
                    y = y + tl.load(bias_ptr + start + cols, mask=mask, other=0.0).to(COMPUTE)
                tl.store(y_row + start + cols, _rounded_to(y, y_ptr.dtype.element_ty), mask=mask)
            tl.store(rstd_ptr + row, rstd)


@triton.jit
def _normalized(x, hi, lo, rstd, mask, CENTRED: tl.constexpr):
    """x_hat, recomputed by the forward's own operations (bit for bit the forward's); masked
    lanes 0, even where rstd is inf (a zero row with eps = 0)."""
    if CENTRED:
        return tl.where(mask, ((x - hi) - lo) * rstd, 0.0)
    else:
        return tl.where(mask, x * rstd, 0.0)


@triton.jit
def _backward_kernel(
    dy_ptr, x_ptr, weight_ptr, mean_hi_ptr, mean_lo_ptr, rstd_ptr, dx_ptr, partial_ptr,
    n_rows, n_cols, dy_row_stride, x_row_stride, dx_row_stride,
    CENTRED: tl.constexpr, HAS_WEIGHT: tl.constexpr, COMPUTE_DX: tl.constexpr,
    COMPUTE_DWEIGHT: tl.constexpr, COMPUTE_DBIAS: tl.constexpr,
    COMPUTE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ONE_BLOCK: tl.constexpr, ALIGN: tl.constexpr, KAHAN: tl.constexpr,
):
    """dx = rstd (g - mean(g) - x_hat mean(g x_hat)), g = dy weight (RMSNorm: without mean(g)),
    and this program's partial sums of dweight = sum dy x_hat and dbias = sum dy over its rows.

    Each program adds up its own partial dweight and dbias: per tile by a pairwise tree, across
    tiles by Kahan's compensated summation, in registers; it writes them once, to its own row of
    the partial buffer (dweight's rows first, then dbias's), which _column_sum_kernel sums
    pairwise. No two programs write the same place: no locks, no atomics, no zero-fill, and a
    result that does not depend on timing."""
    program = tl.program_id(0)
    programs = tl.num_programs(0)
    n_cols = _aligned(n_cols, ALIGN)
    dy_row_stride = _aligned(dy_row_stride, ALIGN)
    x_row_stride = _aligned(x_row_stride, ALIGN)
    dx_row_stride = _aligned(dx_row_stride, ALIGN)
    cols = tl.arange(0, BLOCK_N)
    # this program's row of each gradient's partial sums (and, looped, of its carries)
    partial_rows = tl.cast(programs, tl.int64) * n_cols * (1 if ONE_BLOCK else 2)
    dweight_partial = partial_ptr + tl.cast(program, tl.int64) * n_cols
    dbias_partial = dweight_partial + (partial_rows if COMPUTE_DWEIGHT else 0)
    if ONE_BLOCK:
        # Axis 1 of the grid splits the columns of rows longer than a block, in a launch that
        # computes only the parameter gradients (COMPUTE_DX is then False: dx needs whole rows).
        cols = tl.program_id(1) * BLOCK_N + cols
        col_in = cols < n_cols
        weight = _loaded_or_one(weight_ptr, cols, col_in, HAS_WEIGHT and COMPUTE_DX, COMPUTE)
        dweight = tl.zeros([BLOCK_N], dtype=COMPUTE)
        dweight_carry = tl.zeros([BLOCK_N], dtype=COMPUTE)
        dbias = tl.zeros([BLOCK_N], dtype=COMPUTE)
        dbias_carry = tl.zeros([BLOCK_N], dtype=COMPUTE)
        for tile in range(program, tl.cdiv(n_rows, BLOCK_M), programs):
            rows = tl.cast(tile, tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
            row_in = rows < n_rows
            mask = row_in[:, None] & col_in[None, :]
            dy = tl.load(dy_ptr + rows[:, None] * dy_row_stride + cols[None, :],
                         mask=mask, other=0.0).to(COMPUTE)
            x = tl.load(x_ptr + rows[:, None] * x_row_stride + cols[None, :],
                        mask=mask, other=0.0).to(COMPUTE)
            rstd = tl.load(rstd_ptr + rows, mask=row_in, other=0.0)[:, None]
            hi = tl.load(mean_hi_ptr + rows, mask=row_in, other=0.0)[:, None] if CENTRED else 0.0
            lo = tl.load(mean_lo_ptr + rows, mask=row_in, other=0.0)[:, None] if CENTRED else 0.0
            x_hat = _normalized(x, hi, lo, rstd, mask, CENTRED)
            if COMPUTE_DX:
                g = dy * weight[None, :] if HAS_WEIGHT else dy
                mean_gx = _divide(tl.sum(g * x_hat, axis=1), n_cols, COMPUTE)[:, None]
                if CENTRED:
                    mean_g = _divide(tl.sum(g, axis=1), n_cols, COMPUTE)[:, None]
                    dx = (g - mean_g - x_hat * mean_gx) * rstd
                else:
                    dx = (g - x_hat * mean_gx) * rstd
                tl.store(dx_ptr + rows[:, None] * dx_row_stride + cols[None, :],
                         _rounded_to(dx, dx_ptr.dtype.element_ty), mask=mask)
            if COMPUTE_DWEIGHT:
                dweight, dweight_carry = _add_tile_rows(
                    dweight, dweight_carry, dy * x_hat, BLOCK_M, BLOCK_N, KAHAN)
            if COMPUTE_DBIAS:
                dbias, dbias_carry = _add_tile_rows(
                    dbias, dbias_carry, dy, BLOCK_M, BLOCK_N, KAHAN)
        if COMPUTE_DWEIGHT:
            tl.store(dweight_partial + cols, dweight, mask=col_in)
        if COMPUTE_DBIAS:
            tl.store(dbias_partial + cols, dbias, mask=col_in)
    else:
        # Rows longer than a block (BLOCK_M is 1): two passes over each row (x and dy are read
        # twice), and the partial sums with their Kahan carries live in the program's rows of
        # the buffer (each gradient's carries after its sums), zeroed here first.
        carries = tl.cast(programs, tl.int64) * n_cols
        for start in range(0, n_cols, BLOCK_N):
            mask = start + cols < n_cols
            zero = tl.zeros([BLOCK_N], dtype=COMPUTE)
            if COMPUTE_DWEIGHT:
                tl.store(dweight_partial + start + cols, zero, mask=mask)
                tl.store(dweight_partial + carries + start + cols, zero, mask=mask)
            if COMPUTE_DBIAS:
                tl.store(dbias_partial + start + cols, zero, mask=mask)
                tl.store(dbias_partial + carries + start + cols, zero, mask=mask)
        for row in range(program, n_rows, programs):
            x_row = x_ptr + tl.cast(row, tl.int64) * x_row_stride
            dy_row = dy_ptr + tl.cast(row, tl.int64) * dy_row_stride
            dx_row = dx_ptr + tl.cast(row, tl.int64) * dx_row_stride
            rstd = tl.load(rstd_ptr + row)
            hi = tl.load(mean_hi_ptr + row) if CENTRED else 0.0
            lo = tl.load(mean_lo_ptr + row) if CENTRED else 0.0
            mean_g = 0.0
            mean_gx = 0.0
            if COMPUTE_DX:
                sum_g = tl.zeros([BLOCK_N], dtype=COMPUTE)
                sum_gx = tl.zeros([BLOCK_N], dtype=COMPUTE)
                for start in range(0, n_cols, BLOCK_N):
                    mask = start + cols < n_cols
                    x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(COMPUTE)
                    g = tl.load(dy_row + start + cols, mask=mask, other=0.0).to(COMPUTE)
                    g = g * _loaded_or_one(weight_ptr, start + cols, mask, HAS_WEIGHT, COMPUTE)
                    if CENTRED:
                        sum_g += g
                    sum_gx += g * _normalized(x, hi, lo, rstd, mask, CENTRED)
                if CENTRED:
                    mean_g = _divide(tl.sum(sum_g, axis=0), n_cols, COMPUTE)
                mean_gx = _divide(tl.sum(sum_gx, axis=0), n_cols, COMPUTE)
            for start in range(0, n_cols, BLOCK_N):
                mask = start + cols < n_cols
                x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(COMPUTE)
                dy = tl.load(dy_row + start + cols, mask=mask, other=0.0).to(COMPUTE)
                x_hat = _normalized(x, hi, lo, rstd, mask, CENTRED)
                if COMPUTE_DX:
                    g = dy * _loaded_or_one(weight_ptr, start + cols, mask, HAS_WEIGHT, COMPUTE)
                    if CENTRED:
                        dx = (g - mean_g - x_hat * mean_gx) * rstd
                    else:
                        dx = (g - x_hat * mean_gx) * rstd
                    tl.store(dx_row + start + cols, _rounded_to(dx, dx_ptr.dtype.element_ty),
                             mask=mask)
                if COMPUTE_DWEIGHT:
                    at = dweight_partial + start + cols
                    _add_to_partials(at, at + carries, mask, dy * x_hat)
                if COMPUTE_DBIAS:
                    at = dbias_partial + start + cols
                    _add_to_partials(at, at + carries, mask, dy)


@triton.jit
def _column_sum_kernel(
    partial_ptr, dweight_ptr, dbias_ptr, n_partials, n_cols, gradient_stride,
    HAS_DWEIGHT: tl.constexpr, HAS_DBIAS: tl.constexpr,
    PARTIALS: tl.constexpr, BLOCK_N: tl.constexpr, ALIGN: tl.constexpr,
):
    """dweight[j] and dbias[j] = the sums over the n_partials rows of their partial buffers: each
    chunk of PARTIALS rows summed by a pairwise tree over a [PARTIALS, BLOCK_N] tile (rows beyond
    n_partials are zero), the chunks added by Kahan's compensated summation. Error at most
    (log2 PARTIALS + 2) u sum|partials| (first order), whatever n_partials. One launch for both
    gradients: axis 1 of the grid is the gradient (dweight's buffer first, then dbias's,
    gradient_stride elements further)."""
    n_cols = _aligned(n_cols, ALIGN)
    gradient = tl.program_id(1)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_in = cols < n_cols
    partials = partial_ptr + tl.cast(gradient, tl.int64) * gradient_stride
    total = tl.zeros([BLOCK_N], dtype=partial_ptr.dtype.element_ty)
    carry = tl.zeros([BLOCK_N], dtype=partial_ptr.dtype.element_ty)
    for start in range(0, n_partials, PARTIALS):
        rows = start + tl.arange(0, PARTIALS)
        mask = (rows < n_partials)[:, None] & col_in[None, :]
        tile = tl.load(partials + rows.to(tl.int64)[:, None] * n_cols + cols[None, :],
                       mask=mask, other=0.0)
        total, carry = _add_tile_rows(total, carry, tile, PARTIALS, BLOCK_N, True)
    if HAS_DWEIGHT and HAS_DBIAS:
        if gradient == 0:
            _store_rounded(dweight_ptr + cols, total, col_in)
        else:
            _store_rounded(dbias_ptr + cols, total, col_in)
    elif HAS_DWEIGHT:
        _store_rounded(dweight_ptr + cols, total, col_in)
    else:
        _store_rounded(dbias_ptr + cols, total, col_in)


@triton.jit
def _store_rounded(pointers, value, mask):
    """value stored at pointers, rounded to nearest in their dtype (_rounded_to)."""
    tl.store(pointers, _rounded_to(value, pointers.dtype.element_ty), mask=mask)


# fmt: on
