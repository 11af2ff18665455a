"""Argument checks shared by every backend.

``torch.nn.functional.layer_norm`` is the specification: the same arguments are
accepted, and what it rejects is rejected here too, with a message that names
the argument and the shapes involved. The checks work on plain shapes and dtype
names so that NumPy arrays and torch tensors go through the same code.

Deliberate deviations from torch, all of them on input torch also rejects or
silently turns into NaN (this is the one place that lists them):

- The exception types follow Python's conventions: a wrong shape is a
  ``ValueError`` and a wrong dtype or argument type a ``TypeError``, where
  torch raises ``RuntimeError`` for both. A weight or bias on another device
  than the input raises ``RuntimeError``, as in torch.
- ``eps`` must be finite and ``>= 0``: torch accepts a negative ``eps`` (and
  returns NaN wherever ``var + eps < 0``) and an infinite one (and returns
  zeros); both are almost certainly bugs in the caller, so they are errors here.
- ``lnorm.numpy`` has no bfloat16 (NumPy has no such dtype).

Apart from ``eps``, every input torch accepts is accepted, with the same result dtype
and shape; the tests check this over every combination of input and parameter dtypes.

``rms_norm`` follows ``torch.nn.functional.rms_norm``'s dtype rule, which is wider than
``layer_norm``'s: any floating weight with any floating input. The input is computed in
float64 if it is float64, else in float32 (:func:`rms_norm_compute_dtype`); ``eps=None`` is
that dtype's machine epsilon (:func:`rms_norm_eps`); ``x_hat * weight`` is formed in
``promote_types(compute dtype, weight dtype)`` (:func:`rms_norm_product_dtype`) and rounded
once to the input's dtype. ``lnorm.triton.rms_norm`` computes in float32 or float64 as its
input asks and has no float64 product for a float32 or 16-bit input: a float64 weight with
such an input is a ``TypeError`` there (its docstring says so). Under CUDA autocast,
``lnorm.triton`` casts its inputs as torch casts those of its own norm (``layer_norm`` to float32,
so the result is float32 as torch's): no deviation there.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

#: Floating dtypes a backend accepts, mapped to the dtype it computes in.
#: Half-precision inputs are computed in float32 and rounded back once at the end.
COMPUTE_DTYPE = {
    "float16": "float32",
    "bfloat16": "float32",
    "float32": "float32",
    "float64": "float64",
}


def dtype_name(dtype: object) -> str:
    """``'float32'`` for ``np.float32``, ``np.dtype('float32')`` and ``torch.float32`` alike."""
    return str(dtype).removeprefix("torch.")


def shape_of(a: object | None) -> tuple[int, ...] | None:
    """The shape of an array or tensor, or None for an absent weight or bias."""
    return None if a is None else tuple(a.shape)


def dtype_of(a: object | None) -> object | None:
    """The dtype of an array or tensor, or None for an absent weight or bias."""
    return None if a is None else a.dtype


def as_normalized_shape(normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    """Return ``normalized_shape`` as a tuple; an int ``n`` means ``(n,)``, as in
    ``nn.LayerNorm``."""
    dims = (
        (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else normalized_shape
    )
    try:
        dims = tuple(dims)
    except TypeError:
        raise TypeError(
            f"normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}"
        ) from None
    if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in dims):
        raise TypeError(f"normalized_shape must contain only ints, got {normalized_shape!r}")
    if not dims:
        raise ValueError("normalized_shape must name at least one dimension, got ()")
    if any(d < 0 for d in dims):
        raise ValueError(f"normalized_shape must not be negative, got {dims}")
    return tuple(int(d) for d in dims)


def check_shapes(
    x_shape: Sequence[int],
    normalized_shape: tuple[int, ...],
    weight_shape: Sequence[int] | None,
    bias_shape: Sequence[int] | None,
) -> None:
    """Raise ``ValueError`` unless ``x`` ends in ``normalized_shape`` and weight/bias have exactly
    that shape."""
    x_shape = tuple(x_shape)
    if (
        len(normalized_shape) > len(x_shape)
        or x_shape[len(x_shape) - len(normalized_shape) :] != normalized_shape
    ):
        raise ValueError(
            f"normalized_shape={normalized_shape} must match the trailing dimensions "
            f"of the input, but the input has shape {x_shape}"
        )
    for name, shape in (("weight", weight_shape), ("bias", bias_shape)):
        if shape is not None and tuple(shape) != normalized_shape:
            raise ValueError(
                f"{name} must have shape normalized_shape={normalized_shape}, "
                f"got {name} of shape {tuple(shape)}"
            )


def check_eps(eps: float) -> float:
    """``eps`` is added to the variance: it must be a finite number ≥ 0 (a negative one can make
    ``var + eps`` negative)."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {eps!r}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    return float(eps)


def compute_dtype(x_dtype: object, weight_dtype: object | None, bias_dtype: object | None) -> str:
    """Check the dtypes and return the name of the dtype the statistics are computed in.

    The input must be floating point. Weight and bias have the input's dtype, or
    float32 when the input is float16/bfloat16 (mixed precision, as torch allows);
    when both are given they share one dtype, as torch requires.
    """
    x_name = dtype_name(x_dtype)
    if x_name not in COMPUTE_DTYPE:
        raise TypeError(
            f"layer_norm needs a floating-point input ({', '.join(COMPUTE_DTYPE)}), "
            f"got dtype {x_name}"
        )
    allowed = {x_name, COMPUTE_DTYPE[x_name]}
    for name, dtype in (("weight", weight_dtype), ("bias", bias_dtype)):
        if dtype is not None and dtype_name(dtype) not in allowed:
            raise TypeError(
                f"{name} has dtype {dtype_name(dtype)}, but an input of dtype {x_name} "
                f"needs {' or '.join(sorted(allowed))} parameters"
            )
    if (
        weight_dtype is not None
        and bias_dtype is not None
        and dtype_name(weight_dtype) != dtype_name(bias_dtype)
    ):
        raise TypeError(
            f"weight and bias must have the same dtype, got {dtype_name(weight_dtype)} "
            f"and {dtype_name(bias_dtype)}"
        )
    return COMPUTE_DTYPE[x_name]


def check_grad_output(
    dy_shape: Sequence[int], dy_dtype: object, x_shape: Sequence[int], x_dtype: object
) -> None:
    """The gradient of the output must have the output's shape and dtype (which are the
    input's)."""
    if tuple(dy_shape) != tuple(x_shape):
        raise ValueError(f"dy must have the shape of x, {tuple(x_shape)}, got {tuple(dy_shape)}")
    if dtype_name(dy_dtype) != dtype_name(x_dtype):
        raise TypeError(
            f"dy must have the dtype of x, {dtype_name(x_dtype)}, got {dtype_name(dy_dtype)}"
        )


def rms_norm_compute_dtype(x_dtype: object, weight_dtype: object | None) -> str:
    """The dtype ``rms_norm`` computes ``x_hat`` in (torch's "opmath"): float64 for a float64
    input, float32 for every other floating input. The weight may have any floating dtype.

    These are ``torch.nn.functional.rms_norm``'s rules, not ``layer_norm``'s: a float32 input
    with a float16 or float64 weight is accepted (see :func:`rms_norm_product_dtype`).
    """
    x_name = dtype_name(x_dtype)
    if x_name not in COMPUTE_DTYPE:
        raise TypeError(
            f"rms_norm needs a floating-point input ({', '.join(COMPUTE_DTYPE)}), "
            f"got dtype {x_name}"
        )
    if weight_dtype is not None and dtype_name(weight_dtype) not in COMPUTE_DTYPE:
        raise TypeError(
            f"rms_norm needs a floating-point weight ({', '.join(COMPUTE_DTYPE)}), "
            f"got dtype {dtype_name(weight_dtype)}"
        )
    return COMPUTE_DTYPE[x_name]


def rms_norm_product_dtype(compute_dtype_name: str, weight_dtype: object | None) -> str:
    """The dtype ``x_hat * weight`` is formed in: ``torch.promote_types(opmath, weight.dtype)``.

    float64 if the input or the weight is float64, else float32 (the compute dtype when there
    is no weight). torch's rule, written out: ``x_hat`` (in the compute dtype) and the weight are
    both converted to it, multiplied there, and the product is rounded once to the input's dtype;
    the weight's gradient is summed there and rounded to the weight's dtype.
    """
    if weight_dtype is not None and dtype_name(weight_dtype) == "float64":
        return "float64"
    return compute_dtype_name


def rms_norm_eps(eps: float | None, compute_dtype_name: str) -> float:
    """``eps`` checked as :func:`check_eps` does; ``None`` means the machine epsilon of the
    compute dtype.

    That is ``torch.nn.functional.rms_norm``'s default: ``torch.finfo(x.dtype).eps``
    for float32 and float64 inputs (2**-23 and 2**-52), and float32's 2**-23 for
    float16 and bfloat16 inputs, which are computed in float32.
    """
    if eps is None:
        return {"float32": 2.0**-23, "float64": 2.0**-52}[compute_dtype_name]
    return check_eps(eps)
