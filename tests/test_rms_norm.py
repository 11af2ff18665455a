"""RMSNorm: every backend agrees with torch.nn.functional.rms_norm, forward and backward.

The same cases as the LayerNorm tests (conftest.layer_norm_cases, without the bias, and
with ``eps=None`` among the eps values), compared in float64; gradcheck; bad input; and
accuracy in eps units against a float64 reference, never worse than torch's kernel.
lnorm.triton runs through Triton's interpreter (conftest switches it on), on small shapes, and
through both of its kernel paths (``triton_block_bytes``); it is skipped where Triton is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import lnorm.numpy
import lnorm.torch
from conftest import DTYPES, HAVE_TRITON, NO_TRITON, _as_numpy, _needs_triton, layer_norm_cases
from lnorm import errors, gradients, moments

if HAVE_TRITON:
    import lnorm.triton
from gradient_tolerances import within_bounds

# torch warns when a float16/bfloat16 input meets a float32 weight (no fused kernel):
# expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")


def numpy_rms_norm(x, normalized_shape, weight=None, eps=None) -> torch.Tensor:
    y = lnorm.numpy.rms_norm(_as_numpy(x), normalized_shape, _as_numpy(weight), eps)
    return torch.from_numpy(np.asarray(y))


def numpy_rms_norm_backward(dy, x, normalized_shape, weight=None, eps=None) -> tuple:
    grads = lnorm.numpy.rms_norm_backward(
        _as_numpy(dy), _as_numpy(x), normalized_shape, _as_numpy(weight), eps
    )
    return tuple(None if g is None else torch.from_numpy(np.asarray(g)) for g in grads)


def autograd_rms_norm_backward(forward: Callable[..., torch.Tensor]) -> Callable[..., tuple]:
    """(dx, dweight) of ``forward`` by torch.autograd; None for an absent weight."""

    def backward(dy, x, normalized_shape, weight=None, eps=None):
        leaves = [
            None if t is None else t.detach().clone().requires_grad_(True) for t in (x, weight)
        ]
        forward(leaves[0], normalized_shape, leaves[1], eps).backward(dy)
        return tuple(None if t is None else t.grad for t in leaves)

    return backward


def _shape_tuple(normalized_shape) -> tuple[int, ...]:
    return (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)


torch_rms_norm_backward = autograd_rms_norm_backward(
    lambda x, shape, w, eps: F.rms_norm(x, _shape_tuple(shape), w, eps)
)

RMS_NORMS = {
    "numpy": numpy_rms_norm,
    "torch": lnorm.torch.rms_norm,
    "triton": _needs_triton("rms_norm"),
}
RMS_NORM_BACKWARDS = {
    "numpy": numpy_rms_norm_backward,
    "torch": autograd_rms_norm_backward(lnorm.torch.rms_norm),
    "triton": autograd_rms_norm_backward(_needs_triton("rms_norm")),
}


@pytest.fixture(params=sorted(RMS_NORMS))
def rms_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@st.composite
def rms_norm_cases(draw: st.DrawFn, dtypes: tuple[torch.dtype, ...]) -> dict:
    """conftest.layer_norm_cases without the bias, and with eps=None (torch's default)
    among the eps."""
    case = draw(layer_norm_cases(dtypes))
    del case["bias"]
    case["eps"] = draw(st.sampled_from([None, case["eps"]]))
    return case


def resolved_eps(x: torch.Tensor, eps: float | None) -> float:
    """torch's eps=None: the machine epsilon of the dtype computed in (float32 for
    16-bit inputs)."""
    if eps is not None:
        return eps
    return torch.finfo(
        torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    ).eps


def float64_rms_norm(case: dict) -> torch.Tensor:
    """torch.nn.functional.rms_norm computed in float64, rounded once to the input's dtype."""
    x, weight = case["x"], case["weight"]
    y = F.rms_norm(
        x.double(),
        _shape_tuple(case["normalized_shape"]),
        None if weight is None else weight.double(),
        resolved_eps(x, case["eps"]),
    )
    return y.to(x.dtype)


# ---------------------------------------------------------------------------- forward


@pytest.mark.parametrize("backend_name", sorted(RMS_NORMS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_matches_torch_rms_norm(backend_name: str, data: st.DataObject) -> None:
    case = data.draw(rms_norm_cases(DTYPES[backend_name]))
    y = RMS_NORMS[backend_name](**case)
    assert y.dtype == case["x"].dtype and y.shape == case["x"].shape
    torch.testing.assert_close(y, float64_rms_norm(case))


@pytest.mark.parametrize("eps", [None, 1e-6])
@pytest.mark.parametrize("shape", [(50, 768), (4, 3, 16), (1, 1)])
def test_matches_torch_kernel_on_typical_inputs(rms_backend: str, shape, eps) -> None:
    generator = torch.Generator().manual_seed(0)
    for dtype in DTYPES[rms_backend]:
        x = torch.randn(shape, generator=generator).to(dtype)
        for weight_dtype in {dtype, torch.float32 if dtype.itemsize == 2 else dtype}:
            weight = torch.rand(shape[-1:], generator=generator).to(weight_dtype)
            torch.testing.assert_close(
                RMS_NORMS[rms_backend](x, shape[-1], weight, eps),
                F.rms_norm(x, shape[-1:], weight, eps),
            )


ALL_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def triton_cannot(x_dtype: torch.dtype, weight_dtype: torch.dtype | None) -> bool:
    """The one combination lnorm.triton.rms_norm refuses: a float64 product for a float32 x_hat."""
    return weight_dtype == torch.float64 and x_dtype != torch.float64


@pytest.mark.parametrize("eps", [None, 1e-5])
@pytest.mark.parametrize("weight_dtype", [*ALL_FLOATS, None], ids=str)
@pytest.mark.parametrize("x_dtype", ALL_FLOATS, ids=str)
def test_mixed_dtypes_follow_torch_rms_norm(rms_backend: str, x_dtype, weight_dtype, eps) -> None:
    """torch.nn.functional.rms_norm's dtype rule, on every input dtype x weight dtype: the
    output has the input's dtype and torch's values (to a few units of the output's last
    place: the sums differ in order), the gradients have the dtypes of x and weight and torch's
    values. lnorm.triton refuses a float64 weight with a narrower input, with a clear error."""
    if rms_backend == "numpy" and torch.bfloat16 in (x_dtype, weight_dtype):
        pytest.skip("NumPy has no bfloat16")
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 64, generator=generator) * 3 + 1).to(x_dtype)
    weight = (
        None
        if weight_dtype is None
        else (torch.randn(64, generator=generator) + 1).to(weight_dtype)
    )
    dy = torch.randn(6, 64, generator=generator).to(x_dtype)
    if rms_backend == "triton" and triton_cannot(x_dtype, weight_dtype):
        with pytest.raises(TypeError, match="cannot form x_hat \\* weight in float64"):
            RMS_NORMS[rms_backend](x, 64, weight, eps)
        return
    expected = F.rms_norm(x, (64,), weight, eps)
    y = RMS_NORMS[rms_backend](x, 64, weight, eps)
    assert y.dtype == expected.dtype == x_dtype and y.shape == x.shape

    # Tolerances: a few units of the result's last place, plus, for the gradients, 16 units of
    # the compute dtype (float32, or float64 for a float64 input) times the size of the terms
    # the gradient is computed from (as in test_gradients_match_float64_autograd).
    compute_eps = torch.finfo(torch.float64 if x_dtype == torch.float64 else torch.float32).eps
    x_hat = F.rms_norm(x.double(), (64,), eps=resolved_eps(x, eps))
    rstd = (x_hat.abs().amax(-1) / x.double().abs().amax(-1)).max()
    g = dy.double() * (1 if weight is None else weight.double())
    scales = {
        "y": 0.0,
        "dx": float(rstd * g.abs().max()),
        "dweight": float((dy.double() * x_hat).abs().sum(0).max()),
    }

    def close(actual: torch.Tensor, reference: torch.Tensor, name: str) -> None:
        assert actual.dtype == reference.dtype, name
        last_place = 4 * torch.finfo(reference.dtype).eps * float(reference.double().abs().max())
        atol = last_place + 16 * compute_eps * scales[name]
        torch.testing.assert_close(
            actual.double(), reference.double(), rtol=0, atol=atol, msg=name
        )

    close(y, expected, "y")
    expected_grads = torch_rms_norm_backward(dy, x, 64, weight, eps)
    grads = RMS_NORM_BACKWARDS[rms_backend](dy, x, 64, weight, eps)
    for name, actual, reference in zip(("dx", "dweight"), grads, expected_grads):
        if reference is None:
            assert actual is None, name
        else:
            close(actual, reference, name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_eps_none_is_the_machine_epsilon_of_the_compute_dtype(rms_backend: str, dtype) -> None:
    if dtype not in DTYPES[rms_backend]:
        pytest.skip("NumPy has no bfloat16")
    # Rows small enough (mean of squares about eps) that the value of eps shows in the output.
    scale = 3e-4 if dtype != torch.float64 else 1e-8
    x = (torch.randn(8, 64, generator=torch.Generator().manual_seed(0)) * scale).to(dtype)
    ours = RMS_NORMS[rms_backend](x, 64)
    torch.testing.assert_close(ours, F.rms_norm(x, (64,)))
    own_dtype_eps = F.rms_norm(x.double(), (64,), eps=torch.finfo(dtype).eps).to(dtype)
    if dtype in (torch.float16, torch.bfloat16):  # not the input dtype's own, much larger, eps
        assert not torch.allclose(ours, own_dtype_eps, rtol=0.1)


def test_input_is_not_modified(rms_backend: str) -> None:
    for dtype in DTYPES[rms_backend]:
        x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0)).to(dtype) + 3
        before = x.clone()
        RMS_NORMS[rms_backend](x, 5, torch.full((5,), 2.0, dtype=dtype))
        assert torch.equal(x, before)


def test_non_contiguous_input(torch_backend_name: str) -> None:
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(1)).t()
    torch.testing.assert_close(RMS_NORMS[torch_backend_name](x, (7,)), F.rms_norm(x, (7,)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_stay_in_their_row_as_in_torch(rms_backend: str, bad: float) -> None:
    # An inf makes its row's rstd 0: the other elements of the row come out 0, the inf NaN.
    x = torch.tensor([[1.0, 2.0, 4.0], [1.0, bad, 3.0], [0.5, -1.0, 2.0]])
    y, expected = RMS_NORMS[rms_backend](x, 3), F.rms_norm(x, (3,))
    torch.testing.assert_close(y, expected, equal_nan=True)
    assert torch.isnan(y[1, 1]) and torch.isfinite(y[[0, 2]]).all()


@pytest.mark.parametrize(
    "shape, normalized_shape", [((0, 4), (4,)), ((3, 0), (0,)), ((2, 0, 5), (5,)), ((0,), (0,))]
)
def test_empty_inputs_give_empty_outputs(rms_backend: str, shape, normalized_shape) -> None:
    for dtype in DTYPES[rms_backend]:
        y = RMS_NORMS[rms_backend](torch.empty(shape, dtype=dtype), normalized_shape)
        assert y.shape == shape and y.dtype == dtype


def test_one_element_rows_are_their_sign_times_weight(rms_backend: str) -> None:
    x = torch.tensor([[3.0], [-1e3], [0.0]])
    y = RMS_NORMS[rms_backend](x, 1, torch.tensor([2.0]), 0.0)
    assert torch.equal(y[:2], torch.tensor([[2.0], [-2.0]]))
    assert torch.isnan(y[2, 0]) and torch.isnan(F.rms_norm(x, (1,), eps=0.0)[2, 0])  # 0/0


def test_zero_rows_normalize_to_zero(rms_backend: str) -> None:
    assert torch.equal(RMS_NORMS[rms_backend](torch.zeros(2, 64), 64), torch.zeros(2, 64))


def test_an_offset_passes_straight_through(rms_backend: str) -> None:
    # No centring: a row 1e4 + N(0, 1) comes out as nearly constant 1, its spread squeezed to 1e-4.
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(2)) + 1e4
    y = RMS_NORMS[rms_backend](x, 256)
    assert (y - 1).abs().max() < 1e-3 and y.std(dim=-1).max() < 2e-4


# ---------------------------------------------------------------------------- bad input

X = torch.zeros(2, 3, 4)


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        ((X, (5,)), {}, ValueError, r"normalized_shape=\(5,\) must match the trailing dimensions"),
        ((X, ()), {}, ValueError, r"at least one dimension"),
        ((X, 4.0), {}, TypeError, r"normalized_shape must be an int or a sequence of ints"),
        (
            (X, (4,), torch.ones(5)),
            {},
            ValueError,
            r"weight must have shape normalized_shape=\(4,\)",
        ),
        (
            (X.long(), (4,)),
            {},
            TypeError,
            r"rms_norm needs a floating-point input .* got dtype int64",
        ),
        (
            (X, (4,), torch.ones(4).long()),
            {},
            TypeError,
            r"rms_norm needs a floating-point weight .* got dtype int64",
        ),
        ((X, (4,)), {"eps": -1e-5}, ValueError, r"eps must be finite and >= 0"),
        ((X, (4,)), {"eps": float("nan")}, ValueError, r"eps must be finite"),
        ((X, (4,)), {"eps": "1e-5"}, TypeError, r"eps must be a real number"),
    ],
)
def test_bad_input_raises_a_clear_error(rms_backend: str, args, kwargs, error, message) -> None:
    if rms_backend == "numpy" and torch.bfloat16 in [getattr(a, "dtype", None) for a in args]:
        pytest.skip("NumPy has no bfloat16")
    with pytest.raises(error, match=message):
        RMS_NORMS[rms_backend](*args, **kwargs)


def test_torch_backends_reject_non_tensors_and_other_devices(torch_backend_name: str) -> None:
    rms_norm = RMS_NORMS[torch_backend_name]
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        rms_norm([[1.0, 2.0]], 2)
    with pytest.raises(TypeError, match="weight must be a torch.Tensor or None, got list"):
        rms_norm(X, 4, [1.0] * 4)
    with pytest.raises(RuntimeError, match=r"weight is on meta but the input is on cpu"):
        rms_norm(X, 4, torch.ones(4, device="meta"))


def test_numpy_backward_rejects_a_mismatched_dy() -> None:
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"dy must have the shape of x, \(2, 4\), got \(2, 3\)"):
        lnorm.numpy.rms_norm_backward(np.zeros((2, 3), np.float32), x, 4)
    with pytest.raises(TypeError, match="dy must have the dtype of x, float32, got float64"):
        lnorm.numpy.rms_norm_backward(np.zeros((2, 4)), x, 4)


# ---------------------------------------------------------------------------- backward


@pytest.mark.parametrize("backend_name", sorted(RMS_NORM_BACKWARDS))
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_gradients_match_float64_autograd(backend_name: str, data: st.DataObject) -> None:
    case = data.draw(rms_norm_cases(DTYPES[backend_name]))
    x, weight = case["x"], case["weight"]
    dy = torch.from_numpy(
        np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).normal(size=x.shape)
    ).to(x.dtype)
    grads = RMS_NORM_BACKWARDS[backend_name](dy, **case)
    eps = resolved_eps(x, case["eps"])
    wide = None if weight is None else weight.double()
    expected = torch_rms_norm_backward(
        dy.double(), x.double(), case["normalized_shape"], wide, eps
    )
    # The error of each gradient scales with the numbers it is computed from (as for LayerNorm):
    # dx with max rstd * max |dy * weight|, dweight with the sum over rows of |dy * x_hat|.
    rows = x.double().reshape(-1, int(np.prod(_shape_tuple(case["normalized_shape"]))))
    if rows.numel() == 0:
        scales = (0.0, 0.0)
    else:
        x_hat, rstd = moments.rms_normalize(rows, eps)
        g = dy.double().reshape(rows.shape) * (
            1 if weight is None else weight.double().reshape(-1)
        )
        scales = (
            float(rstd.max() * g.abs().max()),
            float((dy.double().reshape(rows.shape) * x_hat).abs().sum(dim=0).max()),
        )
    for name, actual, reference, scale, param in zip(
        ("dx", "dweight"), grads, expected, scales, (x, weight)
    ):
        if param is None:
            assert actual is None, name
            continue
        assert actual.shape == param.shape and actual.dtype == param.dtype, name
        unit = errors.machine_epsilon(actual)
        rounding = unit * errors.max_abs_error(reference, 0 * reference) + unit * float(
            torch.finfo(actual.dtype).tiny
        )
        atol = 16 * 2.0**-23 * scale + rounding
        torch.testing.assert_close(actual.double(), reference, rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("eps", [None, 1e-5])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("normalized_shape", [(5,), (2, 3), (1,)])
def test_gradcheck_in_float64(
    torch_backend_name: str, affine: bool, normalized_shape: tuple[int, ...], eps
) -> None:
    rms_norm = RMS_NORMS[torch_backend_name]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(
        3, *normalized_shape, dtype=torch.float64, generator=generator
    ).requires_grad_()
    weight = (
        torch.randn(normalized_shape, dtype=torch.float64, generator=generator).requires_grad_()
        if affine
        else None
    )
    inputs = (x, weight) if affine else (x,)
    assert torch.autograd.gradcheck(
        lambda x, w=None: rms_norm(x, normalized_shape, w, eps), inputs
    )


def test_double_backward_raises_a_clear_error(torch_backend_name: str) -> None:
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    y = RMS_NORMS[torch_backend_name](x, 4)
    (dx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        dx.sum().backward()


def test_gradients_only_for_what_requires_them_and_output_is_free_to_modify(
    torch_backend_name: str,
) -> None:
    x, weight = torch.randn(3, 4, requires_grad=True), torch.ones(4)
    y = RMS_NORMS[torch_backend_name](x, 4, weight)
    y.mul_(2)  # the output aliases nothing saved for backward
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and weight.grad is None


@pytest.mark.parametrize("backend_name", sorted(RMS_NORM_BACKWARDS))
def test_backward_edge_cases(backend_name: str) -> None:
    backward = RMS_NORM_BACKWARDS[backend_name]
    dx, dweight = backward(torch.empty(0, 4), torch.empty(0, 4), 4, torch.ones(4))
    assert dx.shape == (0, 4) and torch.equal(dweight, torch.zeros(4))
    x = torch.tensor([[1.0, 2.0, 4.0], [1.0, float("nan"), 3.0]])
    dy = torch.tensor([[0.5, -1.0, 2.0], [1.0, 1.0, 1.0]])
    dx, _ = backward(dy, x, 3)
    expected, _ = torch_rms_norm_backward(dy, x, 3)
    assert torch.isnan(dx[1]).all()
    torch.testing.assert_close(dx[0], expected[0])


def test_backward_rows_work_on_numpy_and_torch_alike() -> None:
    rng = np.random.default_rng(3)
    x, dy, weight = rng.normal(size=(5, 8)), rng.normal(size=(5, 8)), rng.normal(size=8)
    x_hat, rstd = moments.rms_normalize(x, 1e-5)
    from_numpy = gradients.rms_norm_backward_rows(dy, x_hat, rstd, weight)
    as_torch = [torch.from_numpy(a) for a in (dy, x_hat, rstd, weight)]
    from_torch = gradients.rms_norm_backward_rows(*as_torch)
    for a, b in zip(from_numpy, from_torch):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-13, atol=1e-15)


# ---------------------------------------------------------------------------- accuracy

#: float32 target, in eps x max|y_ref|. The first-order analysis (lnorm.moments.rms_normalize)
#: bounds each element by s/2 + 5.5u relative (s: the summation's bound; one more rounding for
#: the weight); on normal rows the largest error seen is under 2, so 2.5 leaves a margin.
TARGET_FLOAT32 = 2.5
#: 16-bit outputs: one rounding of an almost exact float32 value, half a unit in the last place.
#: A measured target, tighter than the derived bound (bounds.rms_norm_forward_rounded: half a
#: unit plus float32's share, 0.50125 for float16 with NumPy's s = 30), which
#: test_error_bound checks.
TARGET_HALF = 0.5 + 2.0**-10


def _backend_forward(name: str) -> Callable[..., torch.Tensor]:
    return {"torch.nn.functional": lambda x, n, w, eps: F.rms_norm(x, (n,), w, eps), **RMS_NORMS}[
        name
    ]


@pytest.mark.parametrize("eps", [None, 1e-6])
@pytest.mark.parametrize("offset", [0.0, 1e2, 1e4, 1e6])
@pytest.mark.parametrize("n", [7, 768, 4096, 65536])
def test_float32_error_within_target_and_never_worse_than_torch(
    rms_backend: str, n: int, offset: float, eps
) -> None:
    rng = np.random.default_rng(n)
    x = torch.from_numpy(rng.normal(offset, 1.0, size=(max(2, 16384 // n), n)).astype(np.float32))
    weight = torch.from_numpy(rng.normal(1.0, 0.5, size=n).astype(np.float32))
    reference = errors.reference_rms_norm(x, n, weight, eps)
    ours = errors.eps_units(RMS_NORMS[rms_backend](x, n, weight, eps), reference)
    theirs = errors.eps_units(F.rms_norm(x, (n,), weight, eps), reference)
    assert ours <= TARGET_FLOAT32 and ours <= max(theirs, TARGET_FLOAT32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [7, 4096])
def test_half_precision_error_is_one_final_rounding(rms_backend: str, dtype, n: int) -> None:
    if dtype not in DTYPES[rms_backend]:
        pytest.skip("NumPy has no bfloat16")
    rng = np.random.default_rng(n)
    x = torch.from_numpy(rng.normal(1e2, 1.0, size=(max(2, 16384 // n), n))).to(dtype)
    weight = torch.from_numpy(rng.normal(1.0, 0.5, size=n)).to(dtype)
    reference = errors.reference_rms_norm(x, n, weight)
    ours = errors.eps_units(RMS_NORMS[rms_backend](x, n, weight), reference)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = errors.eps_units(F.rms_norm(x, (n,), weight), reference)
    assert ours <= TARGET_HALF and ours <= max(theirs, TARGET_HALF)


@pytest.mark.parametrize("backend_name", sorted(RMS_NORM_BACKWARDS))
@pytest.mark.parametrize("offset", [0.0, 1e4])
@pytest.mark.parametrize("n", [16, 4096])
def test_float32_gradients_accurate(backend_name: str, offset: float, n: int) -> None:
    rng = np.random.default_rng(n)
    x = torch.from_numpy(rng.normal(offset, 1.0, size=(64, n)).astype(np.float32))
    weight = torch.from_numpy(rng.normal(1.0, 0.5, size=n).astype(np.float32))
    dy = torch.from_numpy(rng.normal(size=(64, n)).astype(np.float32))
    ours = RMS_NORM_BACKWARDS[backend_name](dy, x, n, weight)
    theirs = torch_rms_norm_backward(dy, x, n, weight)
    exact = torch_rms_norm_backward(dy.double(), x.double(), n, weight.double(), 2.0**-23)
    for actual, other, reference in zip(ours, theirs, exact):
        ours_units = errors.eps_units(actual, reference)
        assert ours_units <= TARGET_FLOAT32
        assert ours_units <= max(errors.eps_units(other, reference), TARGET_FLOAT32)


def test_mean_of_squares_has_no_cancellation_at_any_offset() -> None:
    # The statistic's relative error stays at the summation's level, whatever the mean.
    for offset in (0.0, 1e3, 1e6):
        x = np.random.default_rng(0).normal(offset, 1.0, size=(64, 4096)).astype(np.float32)
        exact = moments.mean_of_squares(x.astype(np.float64))
        relative = np.abs(moments.mean_of_squares(x) / exact - 1)
        assert relative.max() <= 64 * 2.0**-24


# ---------------------------------------------------------------------------- lnorm.triton
# What only the Triton backend has: its two kernel paths, its launches, running without a GPU.
# (Every test above runs on it too, as one of RMS_NORMS and RMS_NORM_BACKWARDS.)

needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason=NO_TRITON)


def _triton_gradients(x, weight, dy, wanted=(True, True), rms_norm=None) -> tuple:
    """The gradients asked for (``wanted``: x, weight) of ``rms_norm``
    (lnorm.triton's by default)."""
    rms_norm = rms_norm or RMS_NORMS["triton"]
    leaves = [t.clone().requires_grad_(w) for t, w in zip((x, weight), wanted)]
    y = rms_norm(leaves[0], x.shape[-1], leaves[1])
    return torch.autograd.grad(y, [t for t in leaves if t.requires_grad], dy)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 5, 16, 37])
def test_triton_both_kernel_paths_match_torch(triton_block_bytes: int, dtype, n: int) -> None:
    generator = torch.Generator().manual_seed(n)
    x = (torch.randn(6, n, generator=generator) * 2 + 3).to(dtype)
    weight = torch.rand(n, generator=generator).to(dtype)
    dy = torch.randn(6, n, generator=generator).to(dtype)
    eps = resolved_eps(x, None)
    torch.testing.assert_close(
        lnorm.triton.rms_norm(x, n, weight),
        F.rms_norm(x.double(), (n,), weight.double(), eps).to(dtype),
    )
    ours = _triton_gradients(x, weight, dy)
    reference = torch_rms_norm_backward(dy.double(), x.double(), n, weight.double(), eps)
    loose = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else {}
    for actual, expected in zip(ours, reference):
        assert actual.dtype == dtype
        torch.testing.assert_close(actual, expected.to(dtype), **loose)


@needs_triton
def test_triton_gradcheck_in_float64_on_both_paths(triton_block_bytes: int) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(2, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: lnorm.triton.rms_norm(x, (2, 5), w), (x, weight))


@needs_triton
def test_triton_a_long_row_takes_the_looped_path() -> None:
    assert lnorm.triton.rms_forward_launch(
        *(torch.empty(2, 100_000),) * 2, None, torch.empty(2), 1e-6
    ).constants["ONE_BLOCK"] is False
    x = torch.randn(2, 100_000, generator=torch.Generator().manual_seed(4)) + 1e4
    torch.testing.assert_close(
        lnorm.triton.rms_norm(x, 100_000), F.rms_norm(x.double(), (100_000,), eps=2.0**-23).float()
    )


@needs_triton
def test_triton_cpu_tensor_without_the_interpreter_says_how_to_run_it() -> None:
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    script = "import torch, lnorm.triton; lnorm.triton.rms_norm(torch.ones(2, 3), 3)"
    result = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "set the environment variable TRITON_INTERPRET=1" in result.stderr


@needs_triton
@pytest.mark.parametrize("wanted", [(True, False), (False, True), (True, True)])
def test_triton_backward_computes_only_the_gradients_asked_for(
    triton_block_bytes: int, wanted: tuple[bool, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    launched = []
    original = lnorm.triton.plan.rms_backward_launches

    def spy(*args, **kwargs):
        launches = original(*args, **kwargs)
        launched.extend((launch.name, launch.constants) for launch in launches)
        return launches

    monkeypatch.setattr(lnorm.triton.plan, "rms_backward_launches", spy)
    generator = torch.Generator().manual_seed(5)
    x, dy = (torch.randn(6, 16, dtype=torch.float64, generator=generator) for _ in range(2))
    weight = torch.rand(16, dtype=torch.float64, generator=generator)
    ours = _triton_gradients(x, weight, dy, wanted)
    theirs = _triton_gradients(
        x, weight, dy, wanted, lambda x, n, w: F.rms_norm(x, (n,), w, 2.0**-52)
    )
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
    kernel = dict(launched)["rms_backward"]
    assert (kernel["COMPUTE_DX"], kernel["COMPUTE_DWEIGHT"]) == wanted
    assert [name for name, _ in launched] == ["rms_backward"] + ["rms_column_sum"] * wanted[1]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("m, n, block_bytes", [(257, 8, None), (300, 40, 64)])
def test_triton_weight_gradient_of_many_rows(
    monkeypatch: pytest.MonkeyPatch, dtype, m: int, n: int, block_bytes: int | None
) -> None:
    if block_bytes:  # rows walked in blocks: partial sums and carries in the buffer
        monkeypatch.setattr(lnorm.triton, "MAX_BLOCK_BYTES", block_bytes)
    # many tiles per program, the last tile partial; more rows than programs
    generator = torch.Generator().manual_seed(m)
    x = (torch.randn(m, n, generator=generator) * 2 + 3).to(dtype)
    dy = (torch.randn(m, n, generator=generator) + 0.5).to(dtype)
    weight = torch.rand(n, generator=generator).to(dtype)
    (dweight,) = _triton_gradients(x, weight, dy, (False, True))
    assert dweight.dtype == dtype
    # the bound of the sum (tests/gradient_tolerances.py), and a halved or zero dweight fails it
    x64 = x.double()
    x_hat = x64 / (x64.pow(2).mean(-1, keepdim=True) + resolved_eps(x, None)).sqrt()
    terms = dy.double() * x_hat
    assert within_bounds(dweight, dy, terms)
    assert not within_bounds(dweight / 2, dy, terms)
    assert not within_bounds(torch.zeros_like(dweight), dy, terms)


@needs_triton
def test_triton_weight_gradient_error_does_not_grow_with_the_rows() -> None:
    # Rows of +-1: mean(x²) = 1 exactly, so with eps = 0 rstd = 1 and x_hat = x exactly, and every
    # term dy * x_hat = +-dy is exact: the error of dweight is the summation's alone. Per tile a
    # pairwise tree (log2 16 levels), across tiles Kahan's compensated sum (2u), across the 16
    # programs a tree (log2 16): at most 10 u sum|terms|, whatever M (a sequential sum: M u).
    m, n = 4096, 64
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2, (m, n), generator=generator).float() * 2 - 1
    dy = torch.randn(m, n, generator=generator) + 1.0
    leaf = torch.ones(n, requires_grad=True)
    (dweight,) = torch.autograd.grad(lnorm.triton.rms_norm(x, n, leaf, 0.0), leaf, dy)
    terms = dy.double() * x.double()
    u = 2.0**-24
    error_units = ((dweight.double() - terms.sum(0)).abs() / terms.abs().sum(0)).max() / u
    assert error_units <= 10 < torch.log2(torch.tensor(m)).item()


@needs_triton
def test_triton_a_strided_input_is_read_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    base = torch.randn(12, 40, dtype=torch.float64) + 5  # every other row: a row stride of 2N
    x = base[::2]
    seen = []
    original = lnorm.triton.plan.rms_forward_launch
    monkeypatch.setattr(
        lnorm.triton.plan,
        "rms_forward_launch",
        lambda rows, *a: seen.append(rows.data_ptr() == base.data_ptr() and rows.stride(0) == 80)
        or original(rows, *a),
    )
    weight = torch.rand(40, dtype=torch.float64)
    torch.testing.assert_close(
        lnorm.triton.rms_norm(x, 40, weight), F.rms_norm(x, (40,), weight, 2.0**-52)
    )
    assert seen == [True]


@needs_triton
def test_triton_bfloat16_outputs_are_rounded_to_nearest_even() -> None:
    # Rows of +-1 with eps = 0: rstd = 1 and y = +-weight exactly in float32, so the bfloat16
    # output is the rounding of the float32 weight alone, to nearest, ties to even, as torch (and a
    # GPU) round; Triton's interpreter would truncate it, were it not for lnorm.triton._rounded_to.
    generator = torch.Generator().manual_seed(6)
    weight = torch.randn(64, generator=generator) * 3
    weight[:4] = torch.tensor([1 + 2.0**-8, 1 + 3 * 2.0**-8, -(1 + 2.0**-8), -(1 + 3 * 2.0**-8)])
    x = (torch.randint(0, 2, (5, 64), generator=generator) * 2 - 1).to(torch.bfloat16)
    y = lnorm.triton.rms_norm(x, 64, weight, 0.0)
    assert torch.equal(y, (x.float() * weight).to(torch.bfloat16))
    assert torch.equal(y[0, :4].abs().float(), torch.tensor([1.0, 1 + 2.0**-6] * 2))
