"""The backward pass of every backend agrees with autograd through
torch.nn.functional.layer_norm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import lnorm.gradients
import lnorm.moments
import lnorm.numpy
import lnorm.torch
from conftest import BACKWARDS, DTYPES, autograd_backward, layer_norm_cases
from lnorm import errors

torch_backward = autograd_backward(lambda x, shape, w, b, eps: F.layer_norm(x, shape, w, b, eps))


def _tuple_shape(case: dict) -> tuple[int, ...]:
    shape = case["normalized_shape"]
    return (shape,) if isinstance(shape, int) else tuple(shape)


def float64_gradients(case: dict, dy: torch.Tensor) -> tuple:
    """Autograd through torch's LayerNorm in float64: the reference gradients."""

    def wide(t):
        return None if t is None else t.double()

    return torch_backward(
        dy.double(),
        wide(case["x"]),
        _tuple_shape(case),
        wide(case["weight"]),
        wide(case["bias"]),
        case["eps"],
    )


def gradient_scales(case: dict, dy: torch.Tensor) -> tuple[float, float, float, float]:
    """The size of the numbers each gradient is computed from, which sets its rounding error.

    dx is rstd * (combinations of g = dy * weight): its error scales with max rstd * max |g|,
    however small dx itself is. dweight and dbias are sums over rows: their error scales with
    the sums of absolute values. The last value bounds the float64 reference's own error:
    torch's kernel works with x and the mean separately, so its error scales with |x| * rstd.
    """
    x = case["x"].double()
    ndim = len(_tuple_shape(case))
    dims = tuple(range(x.dim() - ndim, x.dim()))
    centred = x - x.mean(dim=dims, keepdim=True)
    rstd = ((centred**2).mean(dim=dims, keepdim=True) + case["eps"]).rsqrt()
    x_hat = centred * rstd
    g = dy.double() * (1 if case["weight"] is None else case["weight"].double())
    batch = tuple(range(x.dim() - ndim))
    if x.numel() == 0:
        return 0.0, 0.0, 0.0, 0.0
    dx_scale = float((rstd * g.abs().amax(dim=dims, keepdim=True)).max())
    return (
        dx_scale,
        float((dy.double() * x_hat).abs().sum(dim=batch).max()),
        float(dy.double().abs().sum(dim=batch).max()),
        2.0**-40
        * dx_scale
        * float(x.abs().max())
        * float(dy.double().abs().sum(dim=batch).max() + 1),
    )


@pytest.mark.parametrize("backend_name", sorted(BACKWARDS))
@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_gradients_match_float64_autograd(backend_name: str, data: st.DataObject) -> None:
    case = data.draw(layer_norm_cases(DTYPES[backend_name]))
    seed = data.draw(st.integers(0, 2**32 - 1))
    dy = torch.from_numpy(np.random.default_rng(seed).normal(size=case["x"].shape)).to(
        case["x"].dtype
    )
    grads = BACKWARDS[backend_name](dy, **case)
    expected = float64_gradients(case, dy)
    *scales, reference_error = gradient_scales(case, dy)
    for name, actual, reference, scale, param in zip(
        ("dx", "dweight", "dbias"),
        grads,
        expected,
        scales,
        (case["x"], case["weight"], case["bias"]),
    ):
        if param is None:
            assert actual is None, name
            continue
        assert actual.shape == param.shape and actual.dtype == param.dtype, name
        # float32 arithmetic inside, then one rounding to the gradient's dtype
        # one rounding to the gradient's dtype: relative to the largest element, or the
        # spacing of the subnormal numbers, whichever is larger
        spacing = float(torch.finfo(actual.dtype).tiny) * errors.machine_epsilon(actual)
        rounding = (
            errors.machine_epsilon(actual) * errors.max_abs_error(reference, 0 * reference)
            + spacing
        )
        # the arithmetic is done in float32 for 16-bit inputs, else in the input's dtype
        work_eps = 2.0**-52 if actual.dtype == torch.float64 else 2.0**-23
        atol = 16 * work_eps * scale + rounding + reference_error
        torch.testing.assert_close(actual.double(), reference, rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("normalized_shape", [(5,), (2, 3), (1,)])
def test_gradcheck_in_float64(affine: bool, normalized_shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(
        3, *normalized_shape, dtype=torch.float64, generator=generator, requires_grad=True
    )
    params = (
        [
            torch.randn(
                normalized_shape, dtype=torch.float64, generator=generator, requires_grad=True
            )
            for _ in range(2)
        ]
        if affine
        else [None, None]
    )
    assert torch.autograd.gradcheck(
        lambda x, *p: lnorm.torch.layer_norm(x, normalized_shape, *p), (x, *params)
    )


def test_double_backward_raises_a_clear_error() -> None:
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    (dx,) = torch.autograd.grad(lnorm.torch.layer_norm(x, 4).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        dx.sum().backward()


def test_gradients_only_for_what_requires_them() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    weight, bias = torch.ones(4), torch.zeros(4, requires_grad=True)
    lnorm.torch.layer_norm(x, 4, weight, bias).sum().backward()
    assert x.grad is not None and bias.grad is not None and weight.grad is None


def test_output_can_be_modified_in_place_before_backward() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    y = lnorm.torch.layer_norm(x, 4)
    y.mul_(2)  # the output does not alias anything saved for backward
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("backend_name", sorted(BACKWARDS))
def test_empty_batch_gives_zero_parameter_gradients(backend_name: str) -> None:
    x, dy = torch.empty(0, 4), torch.empty(0, 4)
    dx, dweight, dbias = BACKWARDS[backend_name](dy, x, 4, torch.ones(4), torch.zeros(4))
    assert (
        dx.shape == (0, 4)
        and torch.equal(dweight, torch.zeros(4))
        and torch.equal(dbias, torch.zeros(4))
    )


@pytest.mark.parametrize("backend_name", sorted(BACKWARDS))
def test_nan_row_poisons_its_dx_row_only(backend_name: str) -> None:
    x = torch.tensor([[1.0, 2.0, 4.0], [1.0, float("nan"), 3.0]])
    dy = torch.tensor([[0.5, -1.0, 2.0], [1.0, 1.0, 1.0]])
    dx, _, _ = BACKWARDS[backend_name](dy, x, 3)
    expected, _, _ = torch_backward(dy, x, (3,))
    assert torch.isnan(dx[1]).all()
    torch.testing.assert_close(dx[0], expected[0])


def test_numpy_backward_rejects_a_mismatched_dy() -> None:
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"dy must have the shape of x, \(2, 4\), got \(2, 3\)"):
        lnorm.numpy.layer_norm_backward(np.zeros((2, 3), np.float32), x, 4)
    with pytest.raises(TypeError, match="dy must have the dtype of x, float32, got float64"):
        lnorm.numpy.layer_norm_backward(np.zeros((2, 4)), x, 4)
    with pytest.raises(ValueError, match="weight must have shape"):
        lnorm.numpy.layer_norm_backward(x, x, 4, np.ones(3, np.float32))


@pytest.mark.parametrize("backend_name", sorted(BACKWARDS))
@pytest.mark.parametrize("offset", [0.0, 1e2, 1e4, 1e6])
@pytest.mark.parametrize("n", [16, 768, 4096])
def test_float32_gradients_accurate_at_any_offset(
    backend_name: str, offset: float, n: int
) -> None:
    rng = np.random.default_rng(n)
    x = torch.from_numpy(rng.normal(offset, 1.0, size=(64, n)).astype(np.float32))
    weight = torch.from_numpy(rng.normal(1.0, 0.5, size=n).astype(np.float32))
    bias = torch.from_numpy(rng.normal(0.0, 1.0, size=n).astype(np.float32))
    dy = torch.from_numpy(rng.normal(size=(64, n)).astype(np.float32))
    case = dict(x=x, normalized_shape=n, weight=weight, bias=bias, eps=1e-5)
    ours = BACKWARDS[backend_name](dy, **case)
    for name, actual, reference in zip(
        ("dx", "dweight", "dbias"), ours, float64_gradients(case, dy)
    ):
        assert errors.eps_units(actual, reference) <= 2, name


def test_weight_gradient_over_a_million_rows() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1 << 20, 4)).astype(np.float32)
    dy = rng.uniform(0.0, 1.0, size=x.shape).astype(
        np.float32
    )  # same sign: no cancellation to hide behind
    _, dweight, dbias = lnorm.numpy.layer_norm_backward(
        dy, x, 4, np.ones(4, np.float32), np.zeros(4, np.float32)
    )
    exact_dbias = dy.astype(np.float64).sum(axis=0)
    x_hat, _ = lnorm.moments.standardize(x.astype(np.float64), 1e-5)
    products = dy.astype(np.float64) * x_hat
    exact_dweight = products.sum(axis=0)
    # Pairwise sums over 2**20 rows: an error of at most (log2(M) + a few) u times the sum of
    # absolute values, far below the M u = 2**20 u of a sum taken row after row.
    assert np.all(np.abs(dbias - exact_dbias) <= 24 * 2.0**-24 * exact_dbias)
    assert np.all(
        np.abs(dweight - exact_dweight) <= 24 * 2.0**-24 * np.abs(products).sum(axis=0)
    )


def test_saves_what_torchs_kernel_saves() -> None:
    # The input itself, and per row the mean (as two numbers) and rstd: O(M), not a float32
    # copy of a 16-bit input.
    x = torch.randn(8, 16, dtype=torch.float16, requires_grad=True)
    weight = torch.ones(16, dtype=torch.float16, requires_grad=True)
    y = lnorm.torch.layer_norm(x, 16, weight)
    saved = y.grad_fn.saved_tensors
    assert any(t is x or t.data_ptr() == x.data_ptr() for t in saved)
    assert sum(t.numel() for t in saved) == x.numel() + 3 * 8 + 16


def test_backward_computes_only_the_gradients_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    # dweight and dbias are the only column sums: with neither asked for, none is computed.
    def refuse(rows):
        raise AssertionError("a parameter gradient was computed that nobody asked for")

    monkeypatch.setattr(lnorm.gradients, "pairwise_column_sum", refuse)
    x = torch.randn(3, 4, requires_grad=True)
    weight, bias = torch.rand(4), torch.randn(4)
    lnorm.torch.layer_norm(x, 4, weight, bias).sum().backward()
    assert x.grad is not None
