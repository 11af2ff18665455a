"""Bad input raises a clear error that names the problem: never a silent wrong answer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lnorm.numpy
import lnorm.torch
from conftest import BACKENDS

X = torch.zeros(2, 3, 4)
W4 = torch.ones(4)


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        (
            (X, (5,)),
            {},
            ValueError,
            r"normalized_shape=\(5,\) must match the trailing dimensions .* shape \(2, 3, 4\)",
        ),
        ((X, (2, 4)), {}, ValueError, r"normalized_shape=\(2, 4\) must match"),
        ((X, (1, 2, 3, 4)), {}, ValueError, r"normalized_shape=\(1, 2, 3, 4\) must match"),
        ((X, ()), {}, ValueError, r"at least one dimension"),
        ((X, (-4,)), {}, ValueError, r"must not be negative"),
        ((X, 4.0), {}, TypeError, r"normalized_shape must be an int or a sequence of ints"),
        ((X, (4.0,)), {}, TypeError, r"normalized_shape must contain only ints"),
        (
            (X, (4,), torch.ones(5)),
            {},
            ValueError,
            r"weight must have shape normalized_shape=\(4,\), got weight of shape \(5,\)",
        ),
        (
            (X, (4,), torch.ones(1, 4)),
            {},
            ValueError,
            r"weight must have shape .* got weight of shape \(1, 4\)",
        ),
        (
            (X, (4,), None, torch.ones(3)),
            {},
            ValueError,
            r"bias must have shape normalized_shape=\(4,\), got bias of shape \(3,\)",
        ),
        (
            (X, (3, 4), torch.ones(4)),
            {},
            ValueError,
            r"weight must have shape normalized_shape=\(3, 4\)",
        ),
        ((X.long(), (4,)), {}, TypeError, r"floating-point input .* got dtype int64"),
        ((X.int(), (4,)), {}, TypeError, r"got dtype int32"),
        ((X.bool(), (4,)), {}, TypeError, r"got dtype bool"),
        ((X.to(torch.complex64), (4,)), {}, TypeError, r"got dtype complex64"),
        (
            (X, (4,), W4.double()),
            {},
            TypeError,
            r"weight has dtype float64, but an input of dtype float32 needs float32",
        ),
        ((X, (4,), W4.half()), {}, TypeError, r"weight has dtype float16"),
        ((X, (4,), None, W4.long()), {}, TypeError, r"bias has dtype int64"),
        (
            (X.double(), (4,), W4),
            {},
            TypeError,
            r"input of dtype float64 needs float64 parameters",
        ),
        ((X.half(), (4,), W4.double()), {}, TypeError, r"needs float16 or float32 parameters"),
        ((X, (4,)), {"eps": -1e-5}, ValueError, r"eps must be finite and >= 0"),
        ((X, (4,)), {"eps": float("nan")}, ValueError, r"eps must be finite"),
        ((X, (4,)), {"eps": float("inf")}, ValueError, r"eps must be finite"),
        ((X, (4,)), {"eps": "1e-5"}, TypeError, r"eps must be a real number"),
    ],
)
def test_bad_input_raises_a_clear_error(
    layer_norm, backend_name, args, kwargs, error, message
) -> None:
    with pytest.raises(error, match=message):
        layer_norm(*args, **kwargs)


def test_numpy_backend_rejects_non_numeric_arrays() -> None:
    with pytest.raises(TypeError, match="got dtype <U1"):
        lnorm.numpy.layer_norm(np.array([["a", "b"]]), 2)
    with pytest.raises(TypeError, match="got dtype object"):
        lnorm.numpy.layer_norm(np.array([[1.0, None]], dtype=object), 2)


def test_torch_backends_reject_parameters_on_another_device(torch_backend_name: str) -> None:
    # The meta device stands in for a GPU: any device other than the input's is an error,
    # a RuntimeError as in torch.
    layer_norm = BACKENDS[torch_backend_name]
    with pytest.raises(RuntimeError, match=r"weight is on meta but the input is on cpu"):
        layer_norm(X, 4, torch.ones(4, device="meta"))
    with pytest.raises(RuntimeError, match=r"bias is on meta but the input is on cpu"):
        layer_norm(X, 4, None, torch.ones(4, device="meta"))
    with pytest.raises(RuntimeError, match="not on the expected device"):
        F.layer_norm(X, (4,), torch.ones(4, device="meta"))


PARAMETER_DTYPES = [None, torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_accepts_exactly_the_dtype_combinations_torch_accepts(
    layer_norm, backend_name: str, x_dtype: torch.dtype
) -> None:
    if backend_name == "numpy" and x_dtype == torch.bfloat16:
        pytest.skip("NumPy has no bfloat16")
    x = torch.randn(2, 4).to(x_dtype)
    for weight_dtype, bias_dtype in itertools.product(PARAMETER_DTYPES, PARAMETER_DTYPES):
        if backend_name == "numpy" and torch.bfloat16 in (weight_dtype, bias_dtype):
            continue
        weight = None if weight_dtype is None else torch.ones(4, dtype=weight_dtype)
        bias = None if bias_dtype is None else torch.zeros(4, dtype=bias_dtype)
        try:
            expected = F.layer_norm(x, (4,), weight, bias)
        except RuntimeError:
            with pytest.raises(TypeError, match="dtype"):
                layer_norm(x, 4, weight, bias)
        else:
            assert layer_norm(x, 4, weight, bias).dtype == expected.dtype


def test_weight_and_bias_of_different_dtypes_are_rejected(layer_norm) -> None:
    with pytest.raises(
        TypeError, match="weight and bias must have the same dtype, got float16 and float32"
    ):
        layer_norm(X.half(), 4, W4.half(), W4)


def test_torch_backend_rejects_non_tensors() -> None:
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        lnorm.torch.layer_norm([[1.0, 2.0]], 2)
    with pytest.raises(TypeError, match="weight must be a torch.Tensor or None, got list"):
        lnorm.torch.layer_norm(X, 4, [1.0] * 4)
