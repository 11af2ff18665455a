"""LayerNorm in NumPy: the readable reference implementation.

    y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias

over the trailing ``normalized_shape`` dimensions, with the biased variance
``var(x) = mean((x - mean(x))**2)``: the semantics of
``torch.nn.functional.layer_norm``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from lnorm import gradients, moments, validation

#: Bytes of working data per block of rows: a share of a typical 1-2 MiB L2 cache.
BLOCK_BYTES = 1 << 20

#: The float32 value of each of the 65536 float16 bit patterns (NaN payloads included), as
#: NumPy's own conversion gives it: widening by lookup gives the same bits.
_FLOAT16_AS_FLOAT32 = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


def layer_norm(
    x: ArrayLike,
    normalized_shape: int | Sequence[int],
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    eps: float = 1e-5,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Layer normalization of ``x`` over its trailing ``normalized_shape`` dimensions.

    float16 inputs are computed in float32 and rounded once at the end; float32
    and float64 are computed in their own precision. The result has the input's
    dtype and shape; the input is not modified (unless it is ``out``). A row
    holding NaN or inf gives NaN in that row only.

    ``out`` (keyword-only) is an extension that ``torch.nn.functional.layer_norm``
    does not have, and changes nothing else: a C-contiguous array of the input's
    shape and dtype that receives the result (bit for bit the result of the call
    without it) and is returned, so that a caller who normalizes batch after
    batch allocates no output. It may be ``x`` itself (in place), but not
    overlap ``x`` otherwise.
    """
    x, weight, bias, row_length, work_dtype, eps = _checked(x, normalized_shape, weight, bias, eps)
    y = np.empty(x.shape, dtype=x.dtype) if out is None else _checked_out(out, x)
    if x.size == 0:  # no rows, or empty rows: nothing to normalize (and no mean of nothing)
        return y

    rows, y_rows = x.reshape(-1, row_length), y.reshape(-1, row_length)
    weight = None if weight is None else weight.reshape(-1).astype(work_dtype)
    bias = None if bias is None else bias.reshape(-1).astype(work_dtype)
    # Rows go through in blocks small enough to stay in cache: every pass over a
    # block after the first reads from cache, not memory. The working arrays are
    # allocated once and reused; for float32 the output itself is one of them.
    row_bytes = row_length * np.dtype(work_dtype).itemsize
    block_rows = min(rows.shape[0], max(1, BLOCK_BYTES // row_bytes))
    squares = np.empty((block_rows, row_length), dtype=work_dtype)
    statistics = np.empty((block_rows, 1), dtype=work_dtype)  # m1, m2, then rstd: one per row
    work = None if y.dtype == work_dtype else np.empty_like(squares)
    # A contiguous input in the working dtype is read where it is (no copy first):
    # its mean is the same sum, in the same order, as the mean of a copy.
    read_in_place = work is None and rows.dtype == work_dtype and rows.flags.c_contiguous
    # A row holding inf (inf - inf), or a constant row with eps=0 (0/0),
    # gives NaN silently, as in torch.
    with np.errstate(invalid="ignore", divide="ignore"):
        for start in range(0, rows.shape[0], block_rows):
            stop = min(start + block_rows, rows.shape[0])
            block = y_rows[start:stop] if work is None else work[: stop - start]
            if read_in_place:
                source = rows[start:stop]
            elif rows.dtype == np.float16 and work_dtype == "float32":
                # exactly as block[...] = rows widens them, from a table: NumPy converts
                # float16 in software, one value at a time, and a lookup is faster (every
                # index is in range: "wrap" changes none, and writes straight into block)
                bits = rows[start:stop].view(np.uint16)
                np.take(_FLOAT16_AS_FLOAT32, bits, out=block, mode="wrap")
                source = block
            else:
                block[...] = rows[start:stop]  # widens a 16-bit row exactly
                source = block
            standardize_block(
                source, eps, block, squares[: stop - start], statistics[: stop - start]
            )
            if weight is not None:
                np.multiply(block, weight, out=block)
            if bias is not None:
                np.add(block, bias, out=block)
            if work is not None:
                y_rows[start:stop] = block  # rounds once to the input dtype
    return y


def standardize_block(
    source: np.ndarray,
    eps: float,
    out: np.ndarray,
    squares: np.ndarray,
    statistics: np.ndarray,
) -> None:
    """``x_hat`` of the rows of ``source`` into ``out``, allocating nothing:
    :func:`lnorm.moments.standardize`, bit for bit.

    Each call below is one pass over the block; the three means are NumPy's
    pairwise sums. ``source`` may be ``out`` itself. ``squares`` (the block's
    shape) and ``statistics`` (one number per row) are working buffers.
    """
    _row_mean(source, out=statistics)  # m1
    np.subtract(source, statistics, out=out)  # x - m1
    _row_mean(out, out=statistics)  # m2, the correction
    np.subtract(out, statistics, out=out)  # (x - m1) - m2
    np.multiply(out, out, out=squares)
    _row_mean(squares, out=statistics)  # the variance
    # rstd = 1 / sqrt(var + eps), each step correctly rounded (moments.reciprocal_std)
    np.add(statistics, eps, out=statistics)
    np.sqrt(statistics, out=statistics)
    np.divide(1, statistics, out=statistics)
    np.multiply(out, statistics, out=out)


def _row_mean(rows: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``rows.mean(axis=-1, keepdims=True)`` into ``out``, bit for bit as NumPy computes it:
    the pairwise sum along the row, then one division by N (in float64, rounded back)."""
    np.add.reduce(rows, axis=-1, keepdims=True, out=out)
    return np.true_divide(out, np.intp(rows.shape[-1]), out=out, casting="unsafe")


def _checked_out(out: object, x: np.ndarray) -> np.ndarray:
    """``out`` of :func:`layer_norm`: a writable C-contiguous array of x's shape and dtype."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"out has shape {out.shape}, but the result has shape {x.shape}")
    if out.dtype != x.dtype:
        raise TypeError(f"out has dtype {out.dtype}, but the result has dtype {x.dtype}")
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError("out must be a writable C-contiguous array")
    in_place = (
        out.__array_interface__["data"][0] == x.__array_interface__["data"][0]
        and out.strides == x.strides
    )
    if not in_place and np.may_share_memory(out, x):
        raise ValueError("out overlaps x: pass x itself (in place) or a separate array")
    return out


def layer_norm_backward(
    dy: ArrayLike,
    x: ArrayLike,
    normalized_shape: int | Sequence[int],
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    eps: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Gradients ``(dx, dweight, dbias)`` of ``layer_norm(x, ...)`` given ``dy = dL/dy``.

    The formulas are in :mod:`lnorm.gradients`. ``dweight`` (``dbias``) is None
    when ``weight`` (``bias``) is None; each gradient has the dtype and shape of
    what it is the gradient of. The statistics are recomputed from ``x``.
    """
    x, weight, bias, row_length, work_dtype, eps = _checked(x, normalized_shape, weight, bias, eps)
    dy = np.asarray(dy)
    validation.check_grad_output(dy.shape, dy.dtype, x.shape, x.dtype)
    if x.size == 0:  # no rows: no gradient flows to the parameters
        dweight, dbias = np.zeros(row_length, work_dtype), np.zeros(row_length, work_dtype)
        dx = np.empty_like(x)
    else:
        rows = x.reshape(-1, row_length).astype(work_dtype, copy=False)
        dy_rows = dy.reshape(-1, row_length).astype(work_dtype, copy=False)
        weight_row = None if weight is None else weight.reshape(-1).astype(work_dtype)
        with np.errstate(invalid="ignore", divide="ignore"):  # NaN rows stay NaN, silently
            x_hat, rstd = moments.standardize(rows, eps)
            dx, dweight, dbias = gradients.layer_norm_backward_rows(
                dy_rows, x_hat, rstd, weight_row, needs=(True, weight is not None, bias is not None)
            )
        dx = dx.reshape(x.shape).astype(x.dtype, copy=False)
    return (
        dx,
        None if weight is None else dweight.reshape(weight.shape).astype(weight.dtype),
        None if bias is None else dbias.reshape(bias.shape).astype(bias.dtype),
    )


def _checked(
    x: ArrayLike,
    normalized_shape: int | Sequence[int],
    weight: ArrayLike | None,
    bias: ArrayLike | None,
    eps: float,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, int, str, float]:
    """The argument checks shared by forward and backward.

    Returns x, weight and bias as arrays, the row length, the name of the
    working dtype, and eps.
    """
    x = np.asarray(x)
    weight = None if weight is None else np.asarray(weight)
    bias = None if bias is None else np.asarray(bias)
    normalized_shape = validation.as_normalized_shape(normalized_shape)
    validation.check_shapes(
        x.shape, normalized_shape, validation.shape_of(weight), validation.shape_of(bias)
    )
    work_dtype = validation.compute_dtype(
        x.dtype, validation.dtype_of(weight), validation.dtype_of(bias)
    )
    eps = validation.check_eps(eps)
    return x, weight, bias, int(np.prod(normalized_shape)), work_dtype, eps


def rms_norm(
    x: ArrayLike,
    normalized_shape: int | Sequence[int],
    weight: ArrayLike | None = None,
    eps: float | None = None,
) -> np.ndarray:
    """RMSNorm of ``x`` over its trailing ``normalized_shape`` dimensions: ``x / sqrt(mean(x²) + eps) * weight``.

    The semantics of ``torch.nn.functional.rms_norm``, dtypes included: any
    floating input (no bfloat16 in NumPy) with any floating weight. ``x_hat`` is
    computed in float64 for a float64 input, else in float32; ``eps=None`` means
    that dtype's machine epsilon (2**-23 or 2**-52); ``x_hat * weight`` is formed
    in float64 if either is float64, else in float32
    (:func:`lnorm.validation.rms_norm_product_dtype`), and rounded once to the
    input's dtype. Errors and NaN confinement as in :func:`layer_norm`.
    """
    x, weight, row_length, work_dtype, eps = _checked_rms(x, normalized_shape, weight, eps)
    if x.size == 0:
        return np.empty_like(x)

    rows = x.reshape(-1, row_length)
    product_dtype = validation.rms_norm_product_dtype(work_dtype, validation.dtype_of(weight))
    weight = None if weight is None else weight.reshape(-1).astype(product_dtype)
    y = np.empty(rows.shape, dtype=x.dtype)
    # Blocks that stay in cache, working arrays allocated once: as in layer_norm.
    row_bytes = row_length * np.dtype(work_dtype).itemsize
    block_rows = min(rows.shape[0], max(1, BLOCK_BYTES // row_bytes))
    squares = np.empty((block_rows, row_length), dtype=work_dtype)
    work = None if y.dtype == work_dtype else np.empty_like(squares)
    # A float64 weight with a float32 x_hat: the product is formed in float64, as torch forms it.
    widened = None if product_dtype == work_dtype else np.empty(squares.shape, product_dtype)
    in_place = work is None and widened is None  # the blocks are written straight into y
    # A row holding inf (inf * 0), or a zero row with eps=0 (0/0), gives NaN silently, as in torch.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for start in range(0, rows.shape[0], block_rows):
            stop = min(start + block_rows, rows.shape[0])
            out = y[start:stop] if work is None else work[: stop - start]
            block, _ = moments.rms_normalize(
                rows[start:stop], eps, out=out, scratch=squares[: stop - start]
            )
            if widened is not None:
                block = widened[: stop - start]
                block[...] = out  # exact: float32 into float64
            if weight is not None:
                block *= weight
            if not in_place:
                y[start:stop] = block  # rounds once to the input dtype
    return y.reshape(x.shape)


def rms_norm_backward(
    dy: ArrayLike,
    x: ArrayLike,
    normalized_shape: int | Sequence[int],
    weight: ArrayLike | None = None,
    eps: float | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Gradients ``(dx, dweight)`` of ``rms_norm(x, ...)`` given ``dy = dL/dy``.

    The formulas are in :func:`lnorm.gradients.rms_norm_backward_rows`.
    ``dweight`` is None when ``weight`` is None; each gradient has the dtype
    and shape of what it is the gradient of. ``rstd`` is recomputed from ``x``.
    The dtypes of :func:`rms_norm`: ``dweight`` is summed in the product's dtype.
    """
    x, weight, row_length, work_dtype, eps = _checked_rms(x, normalized_shape, weight, eps)
    dy = np.asarray(dy)
    validation.check_grad_output(dy.shape, dy.dtype, x.shape, x.dtype)
    product_dtype = validation.rms_norm_product_dtype(work_dtype, validation.dtype_of(weight))
    if x.size == 0:  # no rows: no gradient flows to the weight
        dweight, dx = np.zeros(row_length, product_dtype), np.empty_like(x)
    else:
        rows = x.reshape(-1, row_length).astype(work_dtype, copy=False)
        dy_rows = dy.reshape(-1, row_length).astype(product_dtype, copy=False)
        weight_row = None if weight is None else weight.reshape(-1).astype(product_dtype)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # NaN rows stay NaN
            x_hat, rstd = moments.rms_normalize(rows, eps)
            if product_dtype == work_dtype:
                dx, dweight = gradients.rms_norm_backward_rows(dy_rows, x_hat, rstd, weight_row)
            else:  # a float64 weight with a float32 x_hat: g = dy * weight formed in float64
                g = (dy_rows * weight_row).astype(work_dtype)
                dx, _ = gradients.rms_norm_backward_rows(g, x_hat, rstd, None)
                dweight = moments.pairwise_column_sum(dy_rows * x_hat.astype(product_dtype))
        dx = dx.reshape(x.shape).astype(x.dtype, copy=False)
    return dx, None if weight is None else dweight.reshape(weight.shape).astype(weight.dtype)


def _checked_rms(
    x: ArrayLike,
    normalized_shape: int | Sequence[int],
    weight: ArrayLike | None,
    eps: float | None,
) -> tuple[np.ndarray, np.ndarray | None, int, str, float]:
    """The argument checks of rms_norm and its backward: x and weight as arrays, the row length, the working dtype, eps."""
    x = np.asarray(x)
    weight = None if weight is None else np.asarray(weight)
    normalized_shape = validation.as_normalized_shape(normalized_shape)
    validation.check_shapes(x.shape, normalized_shape, validation.shape_of(weight), None)
    work_dtype = validation.rms_norm_compute_dtype(x.dtype, validation.dtype_of(weight))
    eps = validation.rms_norm_eps(eps, work_dtype)
    return x, weight, int(np.prod(normalized_shape)), work_dtype, eps
