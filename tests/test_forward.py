"""The forward pass of every backend agrees with torch.nn.functional.layer_norm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import BACKENDS, DTYPES, layer_norm_cases
from lnorm import errors


def torch_layer_norm(case: dict, in_float64: bool = False, rounded: bool = True) -> torch.Tensor:
    """``torch.nn.functional.layer_norm`` on a case; ``in_float64``: computed in float64, and
    rounded once to the input dtype if ``rounded``."""
    x = case["x"]
    ndim = 1 if isinstance(case["normalized_shape"], int) else len(case["normalized_shape"])

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        return t.double() if in_float64 and t is not None else t

    y = F.layer_norm(
        cast(x), x.shape[x.dim() - ndim :], cast(case["weight"]), cast(case["bias"]), case["eps"]
    )
    return y.to(x.dtype) if rounded else y


@pytest.mark.parametrize("backend_name", sorted(BACKENDS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_matches_torch_layer_norm(backend_name: str, data: st.DataObject) -> None:
    case = data.draw(layer_norm_cases(DTYPES[backend_name]))
    y = BACKENDS[backend_name](**case)
    assert y.dtype == case["x"].dtype and y.shape == case["x"].shape
    # Against the answer computed in float64, within a few roundings of the output's scale:
    # the accuracy the backends promise (tests/test_accuracy.py), not torch.testing's looser
    # defaults. (Not against torch's kernel in the input's dtype: on tiny-variance rows it is
    # the less accurate of the two.)
    expected = torch_layer_norm(case, in_float64=True, rounded=False)
    torch.testing.assert_close(
        y.double(), expected, rtol=0, atol=_output_tolerance(case, expected)
    )


def _output_tolerance(case: dict, expected: torch.Tensor) -> float:
    """4 eps of the input's dtype times the output's scale, plus the float64 reference's own error.

    The scale is that of the terms added, max|x_hat| max|weight| + max|bias|, not of their
    sum: where the bias cancels x_hat * weight, the rounding of each term still counts. The
    reference, torch's float64 kernel, works with x and the mean separately: its own error is
    about kappa u64 (kappa = sqrt(1 + mean**2 / var), chapter 4), which matters for float64 inputs.
    """
    if expected.numel() == 0:
        return 0.0
    x = case["x"].double()
    x_hat = torch_layer_norm(
        {**case, "weight": None, "bias": None}, in_float64=True, rounded=False
    )
    weight = 1.0 if case["weight"] is None else float(case["weight"].double().abs().max())
    bias = 0.0 if case["bias"] is None else float(case["bias"].double().abs().max())
    scale = float(x_hat.abs().max()) * weight + bias
    dims = tuple(range(x.dim() - len(_normalized_dims(case)), x.dim()))
    mean, var = x.mean(dim=dims), x.var(dim=dims, correction=0)
    # The row's own spread, not eps, sets how far the kernel's rounded mean moves the output
    # relative to max|y| (a constant row's output is 0 whatever the mean's error: kappa 1 there).
    kappa = float(torch.where(var > 0, torch.sqrt(1 + mean**2 / var), 1.0).max())
    return 4 * errors.machine_epsilon(case["x"]) * scale + 16 * 2.0**-53 * kappa * scale


def _normalized_dims(case: dict) -> tuple[int, ...]:
    shape = case["normalized_shape"]
    return (shape,) if isinstance(shape, int) else tuple(shape)


@pytest.mark.parametrize("shape", [(50, 768), (4, 3, 16), (1, 1)])
def test_matches_torch_kernel_on_typical_inputs(
    layer_norm, backend_name: str, shape: tuple[int, ...]
) -> None:
    generator = torch.Generator().manual_seed(0)
    for dtype in DTYPES[backend_name]:
        x = torch.randn(shape, generator=generator).to(dtype)
        weight, bias = (
            torch.rand(shape[-1:], generator=generator).to(dtype),
            torch.randn(shape[-1:], generator=generator).to(dtype),
        )
        torch.testing.assert_close(
            layer_norm(x, shape[-1], weight, bias), F.layer_norm(x, shape[-1:], weight, bias)
        )


def test_input_is_not_modified(layer_norm, backend_name: str) -> None:
    for dtype in DTYPES[backend_name]:
        x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0)).to(dtype) + 3
        x_t = x.t()  # non-contiguous too
        before, before_t = x.clone(), x_t.clone()
        layer_norm(x, 5)
        layer_norm(x_t.contiguous() if backend_name == "numpy" else x_t, 6)
        assert torch.equal(x, before) and torch.equal(x_t, before_t)


def test_non_contiguous_input(layer_norm) -> None:
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(1)).t()
    torch.testing.assert_close(layer_norm(x, (7,)), F.layer_norm(x, (7,)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_poison_only_their_row(layer_norm, bad: float) -> None:
    x = torch.tensor([[1.0, 2.0, 4.0], [1.0, bad, 3.0], [0.5, -1.0, 2.0]])
    y = layer_norm(x, 3)
    assert torch.isnan(y[1]).all()
    torch.testing.assert_close(y[[0, 2]], F.layer_norm(x[[0, 2]].double(), (3,)).float())


@pytest.mark.parametrize(
    "shape, normalized_shape", [((0, 4), (4,)), ((3, 0), (0,)), ((2, 0, 5), (5,)), ((0,), (0,))]
)
def test_empty_inputs_give_empty_outputs(
    layer_norm, backend_name, shape, normalized_shape
) -> None:
    for dtype in DTYPES[backend_name]:
        x = torch.empty(shape, dtype=dtype)
        y = layer_norm(x, normalized_shape)
        assert y.shape == x.shape and y.dtype == dtype


def test_one_element_rows_are_zero_plus_bias(layer_norm) -> None:
    x = torch.tensor([[3.0], [-1e3], [0.0]])
    bias = torch.tensor([0.25])
    y = layer_norm(x, 1, torch.tensor([2.0]), bias)
    torch.testing.assert_close(y, F.layer_norm(x, (1,), torch.tensor([2.0]), bias))
    assert torch.equal(y, torch.full((3, 1), 0.25))


def test_constant_rows_normalize_to_zero(layer_norm) -> None:
    x = torch.full((2, 64), 7.25)
    assert torch.equal(layer_norm(x, 64), torch.zeros(2, 64))


def test_huge_constant_rows_normalize_to_zero(layer_norm) -> None:
    # Centring first keeps the squares small: a kernel that squares the inputs themselves
    # (torch's float32 CPU kernel did) gets inf - inf = NaN here.
    x = torch.full((1, 2), 1e20)
    assert torch.equal(layer_norm(x, 2), torch.zeros(1, 2))


def test_eps_zero_on_a_constant_row_gives_nan_like_torch(layer_norm) -> None:
    # 0 / sqrt(0 + 0): NaN, as torch.nn.functional.layer_norm gives, not an error.
    assert torch.isnan(layer_norm(torch.ones(1, 4), 4, eps=0.0)).all()
