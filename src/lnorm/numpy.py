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

from lnorm import moments, validation


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
    x = np.asarray(x)
    weight = None if weight is None else np.asarray(weight)
    bias = None if bias is None else np.asarray(bias)
    normalized_shape = validation.as_normalized_shape(normalized_shape)
    validation.check_shapes(x.shape, normalized_shape, _shape(weight), _shape(bias))
    work_dtype = validation.compute_dtype(x.dtype, _dtype(weight), _dtype(bias))
    eps = validation.check_eps(eps)

    row_length = int(np.prod(normalized_shape))
    if x.size == 0:  # no rows, or empty rows: nothing to normalize (and no mean of nothing)
        return np.empty_like(x)

    rows = x.reshape(-1, row_length).astype(work_dtype, copy=False)
    # inf - inf in a row holding inf, or 0/0 for a constant row with eps=0, give NaN silently, as in torch.
    with np.errstate(invalid="ignore", divide="ignore"):
        _, var, centred = moments.shifted_two_pass(rows)
        y = centred
        y *= 1.0 / np.sqrt(var + eps)
    if weight is not None:
        y *= weight.reshape(-1).astype(work_dtype)
    if bias is not None:
        y += bias.reshape(-1).astype(work_dtype)
    return y.reshape(x.shape).astype(x.dtype, copy=False)


def _shape(a: np.ndarray | None) -> tuple[int, ...] | None:
    return None if a is None else a.shape


def _dtype(a: np.ndarray | None) -> np.dtype | None:
    return None if a is None else a.dtype
