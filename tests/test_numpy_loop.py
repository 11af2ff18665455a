"""lnorm.numpy's blocked loop: faster, and bit for bit the result it gave before.

The loop was rewritten for speed (the input is read where it is instead of copied first, the
squares are formed in one product, the means are taken into preallocated buffers). None of that
may change a bit of the output: these tests compare it with the loop as it was, built from
``moments.standardize`` (which the torch backend still uses), and with digests of that loop's
outputs recorded before the rewrite. They also check the ``out=`` extension.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import lnorm.numpy
from lnorm import moments


def loop_as_it_was(x, normalized_shape, weight=None, bias=None, eps=1e-5) -> np.ndarray:
    """lnorm.numpy.layer_norm before the rewrite, verbatim but for the argument checks."""
    x, weight, bias, row_length, work_dtype, eps = lnorm.numpy._checked(
        x, normalized_shape, weight, bias, eps
    )
    if x.size == 0:
        return np.empty_like(x)
    rows = x.reshape(-1, row_length)
    weight = None if weight is None else weight.reshape(-1).astype(work_dtype)
    bias = None if bias is None else bias.reshape(-1).astype(work_dtype)
    y = np.empty(rows.shape, dtype=x.dtype)
    row_bytes = row_length * np.dtype(work_dtype).itemsize
    block_rows = min(rows.shape[0], max(1, lnorm.numpy.BLOCK_BYTES // row_bytes))
    squares = np.empty((block_rows, row_length), dtype=work_dtype)
    work = None if y.dtype == work_dtype else np.empty_like(squares)
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
                y[start:stop] = block
    return y.reshape(x.shape)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def inputs(seed: int, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 200))
    n = int(rng.choice([1, 2, 7, 64, 100, 768, 1000, 4096]))
    mean = float(rng.choice([0.0, 3.0, 1e4, -300.0]))
    x = rng.normal(mean, float(rng.choice([1.0, 1e-3])), (m, n)).astype(dtype)
    if seed % 4 == 0:
        x[0] = 1.5  # a constant row
    if seed % 5 == 0 and m > 2:
        x[1, 0], x[2, -1] = np.inf, np.nan  # rows that give NaN
    return x, rng.random(n).astype(dtype), rng.normal(0.0, 1.0, n).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("seed", range(12))
def test_bit_identical_to_the_loop_as_it_was(seed: int, dtype: str) -> None:
    x, weight, bias = inputs(seed, dtype)
    n = x.shape[-1]
    mixed = (weight.astype(np.float32), bias.astype(np.float32))  # 16-bit x, float32 parameters
    parameter_sets = [(), (weight,), (weight, bias), (None, bias)] + [mixed] * (dtype == "float16")
    for rows in (x, x[:, ::-1], np.asfortranarray(x)):  # contiguous, strided, column-major
        for parameters in parameter_sets:
            for eps in (1e-5, 0.0):
                expected = loop_as_it_was(rows, n, *parameters, eps=eps)
                assert same_bits(lnorm.numpy.layer_norm(rows, n, *parameters, eps=eps), expected)


@pytest.mark.parametrize("block_bytes", [1, 4096, 1 << 16])
def test_bit_identical_whatever_the_block_size(monkeypatch, block_bytes: int) -> None:
    # Rows are independent: the block size changes the number of calls, never a result.
    x = np.random.default_rng(7).normal(50.0, 2.0, (37, 300)).astype(np.float32)
    expected = loop_as_it_was(x, 300)
    monkeypatch.setattr(lnorm.numpy, "BLOCK_BYTES", block_bytes)
    assert same_bits(lnorm.numpy.layer_norm(x, 300), expected)
    in_3d = lnorm.numpy.layer_norm(x.reshape(37, 3, 100), (3, 100))
    assert same_bits(in_3d, expected.reshape(37, 3, 100))


#: (seed, shape, dtype, mean): sha256 digests (first 16 hex digits) of layer_norm(x, N, w, b)
#: computed with lnorm.numpy as it was before the rewrite (commit c928caf), NumPy 2.4.6.
RECORDED = {
    (0, (64, 768), "float32", 3.0): "a296c4b5e5f9536a",
    (1, (8, 4096), "float32", 1e4): "5ef25c7f45646ac8",
    (2, (300, 100), "float64", -50.0): "d016e3bd04409194",
    (3, (33, 1000), "float16", 2.0): "033a30abde1c5728",
    (4, (5, 7, 96), "float32", 0.0): "d7cd163ec9f72d3e",
}


@pytest.mark.parametrize("case", list(RECORDED), ids=str)
def test_outputs_recorded_before_the_rewrite(case) -> None:
    seed, shape, dtype, mean = case
    rng = np.random.default_rng(seed)
    x = rng.normal(mean, 1.0, shape).astype(dtype)
    n = shape[-1]
    weight, bias = rng.random(n).astype(dtype), rng.normal(0, 1, n).astype(dtype)
    y = lnorm.numpy.layer_norm(x, n, weight, bias)
    assert hashlib.sha256(y.tobytes()).hexdigest()[:16] == RECORDED[case]


def test_standardize_block_is_moments_standardize_bit_for_bit() -> None:
    x = np.random.default_rng(3).normal(1e3, 1.0, (16, 512)).astype(np.float32)
    out, squares, stats = np.empty_like(x), np.empty_like(x), np.empty((16, 1), np.float32)
    lnorm.numpy.standardize_block(x, 1e-5, out, squares, stats)
    x_hat, rstd = moments.standardize(x, 1e-5)
    assert same_bits(out, x_hat) and same_bits(stats, rstd)
    # the row mean into a buffer is NumPy's mean, bit for bit, for any row length
    for n in (1, 3, 129, 1000):
        rows = np.random.default_rng(n).normal(0.3, 1.0, (4, n)).astype(np.float32)
        mean = lnorm.numpy._row_mean(rows, np.empty((4, 1), np.float32))
        assert same_bits(mean, rows.mean(axis=-1, keepdims=True))


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_out_receives_the_same_bits_and_is_returned(dtype: str) -> None:
    x, weight, bias = inputs(1, dtype)
    x = np.ascontiguousarray(x)
    n = x.shape[-1]
    expected = lnorm.numpy.layer_norm(x, n, weight, bias)
    out = np.full_like(x, 7)
    assert lnorm.numpy.layer_norm(x, n, weight, bias, out=out) is out
    assert same_bits(out, expected)
    in_place = x.copy()  # out may be the input itself
    assert lnorm.numpy.layer_norm(in_place, n, weight, bias, out=in_place) is in_place
    assert same_bits(in_place, expected)
    empty = np.empty((0, n), dtype)
    assert lnorm.numpy.layer_norm(empty, n, out=empty) is empty


def test_out_is_keyword_only_and_checked() -> None:
    x = np.ones((4, 8), np.float32)
    with pytest.raises(TypeError):
        lnorm.numpy.layer_norm(x, 8, None, None, 1e-5, np.empty_like(x))  # positional
    with pytest.raises(ValueError, match="shape"):
        lnorm.numpy.layer_norm(x, 8, out=np.empty((4, 9), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        lnorm.numpy.layer_norm(x, 8, out=np.empty((4, 8), np.float64))
    with pytest.raises(TypeError, match="ndarray"):
        lnorm.numpy.layer_norm(x, 8, out=[[0.0] * 8] * 4)
    with pytest.raises(ValueError, match="contiguous"):
        lnorm.numpy.layer_norm(x, 8, out=np.empty((8, 4), np.float32).T)
    read_only = np.empty_like(x)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        lnorm.numpy.layer_norm(x, 8, out=read_only)
    both = np.ones((5, 8), np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        lnorm.numpy.layer_norm(both[:4], 8, out=both[1:])
    assert np.array_equal(x, np.ones((4, 8), np.float32))  # nothing was written to x


@pytest.mark.parametrize("block_bytes", [4096, 1 << 20])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("with_weight", [False, True])
def test_rms_norm_blocked_is_the_unblocked_formula_bit_for_bit(
    monkeypatch, block_bytes: int, dtype: str, with_weight: bool
) -> None:
    """rms_norm's blocked loop (squares and x_hat formed in one product each, into its buffers)
    gives the bits of the plain formula: widen to the working dtype, square, mean, x * rstd."""
    monkeypatch.setattr(lnorm.numpy, "BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(7)
    x = rng.normal(2.0, 3.0, size=(300, 96)).astype(dtype)
    weight = rng.uniform(0.5, 1.5, 96).astype(dtype) if with_weight else None
    work = np.float64 if dtype == "float64" else np.float32
    x_hat, _ = moments.rms_normalize(x.astype(work), float(np.finfo(work).eps))
    expected = (x_hat if weight is None else x_hat * weight.astype(work)).astype(dtype)
    assert np.array_equal(lnorm.numpy.rms_norm(x, 96, weight), expected)
