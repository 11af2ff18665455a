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


def layer_norm(
    x: ArrayLike,
    normalized_shape: int | Sequence[int],
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    eps: float = 1e-5,
) -> np.ndarray:
    """Layer normalization of ``x`` over its trailing ``normalized_shape`` dimensions.

    float16 inputs are computed in float32 and rounded once at the end; float32
    and float64 are computed in their own precision. The result has the input's
    dtype and shape; the input is not modified. A row holding NaN or inf
    gives NaN in that row only.
    """
    x, weight, bias, row_length, work_dtype, eps = _checked(x, normalized_shape, weight, bias, eps)
    if x.size == 0:  # no rows, or empty rows: nothing to normalize (and no mean of nothing)
        return np.empty_like(x)

    rows = x.reshape(-1, row_length)
    weight = None if weight is None else weight.reshape(-1).astype(work_dtype)
    bias = None if bias is None else bias.reshape(-1).astype(work_dtype)
    y = np.empty(rows.shape, dtype=x.dtype)
    # Rows go through in blocks small enough to stay in cache: every pass over a
    # block after the first reads from cache, not memory. The working arrays are
    # allocated once and reused; for float32 the output itself is one of them.
    row_bytes = row_length * np.dtype(work_dtype).itemsize
    block_rows = min(rows.shape[0], max(1, BLOCK_BYTES // row_bytes))
    squares = np.empty((block_rows, row_length), dtype=work_dtype)
    work = None if y.dtype == work_dtype else np.empty_like(squares)
    # A row holding inf (inf - inf), or a constant row with eps=0 (0/0),
    # gives NaN silently, as in torch.
    with np.errstate(invalid="ignore", divide="ignore"):
        for start in range(0, rows.shape[0], block_rows):
            stop = min(start + block_rows, rows.shape[0])
            out = y[start:stop] if work is None else work[: stop - start]
            block, _ = moments.standardize(
                rows[start:stop], eps, out=out, scratch=squares[: stop - start]
            )
            if weight is not None:
                block *= weight
            if bias is not None:
                block += bias
            if work is not None:
                y[start:stop] = block  # rounds once to the input dtype
    return y.reshape(x.shape)


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
