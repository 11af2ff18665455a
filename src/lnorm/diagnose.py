"""Is my LayerNorm (or RMSNorm) right? A checker for a reader's own implementation.

    report = lnorm.diagnose.check(fn)          # fn(x, normalized_shape, weight, bias, eps)
    report = lnorm.diagnose.check(fn, "numpy") # the same on NumPy arrays
    report = lnorm.diagnose.check(module)      # an nn.Module (normalized_shape, weight, bias, eps)
    report = lnorm.diagnose.check(fn, norm="rms")  # fn(x, normalized_shape, weight, eps=None)
    report.ok, report.kinds, report.findings, report.tolerance, report.measurements
    print(report)

or ``python -m lnorm.diagnose path/to/file.py:function [--numpy] [--rms]``.

The checker calls ``fn`` on seeded inputs of its own (the *probes* below), each
built to expose one mistake, and judges every output against
:func:`lnorm.errors.reference_layer_norm` (or ``reference_rms_norm``: float64
on the exact input values, far more accurate than any float32 result). Each
mistake has a *detector*: a small function whose docstring says which
input exposes the bug, what measurement decides it, the threshold, and
why rounding error cannot reach that threshold. The detectors run in the
order of :data:`LAYER_NORM_DETECTORS`;
later ones use what earlier ones learned (a function with Bessel's correction
divides by ``sqrt(N/(N-1) var + eps)``, and the eps detectors measure against
that), so that one mistake is reported once, under its own kind.

Most detectors read the *denominator* the function divided each row by,
recovered from its output: for a row with exact centred values ``c = x - mean``
and output ``y``, the least-squares fit ``d = sum(c*c) / sum(c*y)``. Because
``sum(c) = 0``, an error ``delta`` in the function's mean, which shifts every
``y`` by the same ``delta/d``, drops out of the fit exactly; ``d`` carries only
the function's variance and eps, measured to a few float32 roundings.

The finding kinds (:data:`KINDS`) are stable strings that tests and readers
rely on. ``norm="rms"`` checks an RMSNorm with the same machinery (probes,
calls, the denominator fit, now ``d = sum(x*x) / sum(x*y)`` on the values
themselves, the report) and a list of detectors of its own,
:data:`RMS_NORM_DETECTORS`: the LayerNorm kinds that apply (same names where the
meaning is the same, explained in RMSNorm's words by :data:`RMS_KINDS`), and
``eps_default_mismatch``, ``cast_order`` and ``centres_rows``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import itertools
import math
import sys
import textwrap
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lnorm import errors

# ----------------------------------------------------------------------------------------------
# Finding kinds, findings and the report
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """What a finding kind means, how to fix it, and where the book explains it."""

    title: str
    fix: str
    chapter: str


KINDS: dict[str, Kind] = {
    "raises": Kind(
        "the function raised an exception on valid input",
        "accept every input torch.nn.functional.layer_norm accepts: any leading dimensions, "
        "weight/bias None or given, float16/bfloat16/float32 inputs, an empty batch",
        "chapter 1, LayerNorm from first principles",
    ),
    "dtype_changed": Kind(
        "the output's type, dtype or shape differs from the input's",
        "return an array of the input's type, dtype and shape: compute in float32 if you like, "
        "then convert back with .to(x.dtype) / .astype(x.dtype)",
        "chapter 7, Half precision",
    ),
    "mutates_input": Kind(
        "the function changes its input in place",
        "work on a new tensor: y = x - mean, not x -= mean (or clone the input first)",
        "chapter 1, LayerNorm from first principles",
    ),
    "wrong_axis": Kind(
        "the statistics run over other dimensions than the trailing normalized_shape",
        "reduce over the last len(normalized_shape) dimensions with keepdim=True: "
        "dim=tuple(range(-len(normalized_shape), 0))",
        "chapter 1, LayerNorm from first principles (Why normalize, and over which axis)",
    ),
    "eps_ignored": Kind(
        "a constant row gives NaN or inf: eps is not added to the variance",
        "divide by sqrt(var + eps) (or multiply by rsqrt(var + eps)): "
        "eps keeps a constant row at 0",
        "chapter 4, Where the error comes from (Why eps matters for near-constant rows)",
    ),
    "nan_spreads": Kind(
        "a NaN or inf in one row changes the output of other rows",
        "compute every statistic per row; nothing may reduce over the batch",
        "chapter 1, LayerNorm from first principles (Why normalize, and over which axis)",
    ),
    "bessel_correction": Kind(
        "the variance divides by N - 1 (Bessel's correction): the output is too small by "
        "sqrt((N-1)/N)",
        "torch.var(x, dim=-1, keepdim=True, correction=0) (or unbiased=False); "
        "np.var's default ddof=0 is right",
        "chapter 2, Is this expected behaviour?",
    ),
    "eps_outside_sqrt": Kind(
        "eps is added to the standard deviation, not to the variance: x_hat = (x - mean) / "
        "(std + eps)",
        "x_hat = (x - mean) / sqrt(var + eps), the formula of torch.nn.LayerNorm",
        "chapter 1, LayerNorm from first principles (Where eps goes)",
    ),
    "eps_mismatch": Kind(
        "eps is inside the square root, but not the eps that was passed",
        "use the eps argument (torch's default is 1e-5; Keras' LayerNormalization uses 1e-3): "
        "when porting weights, port the eps too",
        "chapter 1, LayerNorm from first principles (Where eps goes)",
    ),
    "one_pass_variance": Kind(
        "the variance is computed as E[x^2] - E[x]^2 (or another formula whose error grows "
        "with the square of the mean)",
        "subtract the mean first: var = mean((x - mean)**2); lnorm.moments.shifted_two_pass "
        "is accurate at any mean",
        "chapter 4, Where the error comes from",
    ),
    "low_precision_accumulation": Kind(
        "for 16-bit inputs the statistics are computed in 16 bits",
        "compute in float32 and round once at the end: x32 = x.float(); ...; return y.to(x.dtype)",
        "chapter 7, Half precision",
    ),
    "affine_wrong": Kind(
        "weight and bias are not applied as y = x_hat * weight + bias",
        "normalize first, then y = x_hat * weight + bias (weight multiplies, bias adds)",
        "chapter 1, LayerNorm from first principles (The affine parameters)",
    ),
    "wrong_output": Kind(
        "the output differs from LayerNorm by more than rounding error, in a way none of the "
        "specific detectors recognizes",
        "compare your formula with chapter 1's, step by step, on a small input",
        "chapter 1, LayerNorm from first principles",
    ),
    # RMSNorm only (check(fn, norm="rms")):
    "eps_default_mismatch": Kind(
        "called with eps=None, it does not use torch's default, float32's machine epsilon "
        "(2**-23 = 1.19e-7, for float16 and bfloat16 inputs too)",
        "resolve eps=None as torch.finfo(torch.float32).eps for 16- and 32-bit inputs "
        "(torch.finfo(x.dtype).eps for float64), or pass the model's eps explicitly: "
        "eps=None and a hard-coded 1e-6 differ by more than rounding",
        "chapter 10, RMSNorm (eps=None is not 1e-6)",
    ),
    "cast_order": Kind(
        "for 16-bit inputs and weight, the normalized value is rounded to 16 bits before the "
        "weight multiplies it (two roundings), where torch multiplies in float32 and rounds once",
        "multiply first, round once: (x_hat * weight.float()).to(x.dtype). Cast first is "
        "LLaMA's order: keep it if you must match a model trained with it, and then compare "
        "with torch allowing one 16-bit ulp",
        "chapter 10, RMSNorm (The cast order of a bfloat16 model)",
    ),
    "centres_rows": Kind(
        "it subtracts each row's mean: that is LayerNorm, not RMSNorm",
        "RMSNorm divides by sqrt(mean(x^2) + eps) and subtracts nothing: "
        "y = x * rsqrt(mean(x^2) + eps) * weight",
        "chapter 10, RMSNorm (From LayerNorm to RMSNorm)",
    ),
}

#: The same kinds, explained for RMSNorm where LayerNorm's words do not fit.
RMS_KINDS: dict[str, Kind] = {
    "raises": Kind(
        KINDS["raises"].title,
        "accept every input torch.nn.functional.rms_norm accepts: any leading dimensions, "
        "weight None or given, eps None or a number, float16/bfloat16/float32 inputs, "
        "an empty batch",
        "chapter 10, RMSNorm",
    ),
    "mutates_input": Kind(
        KINDS["mutates_input"].title,
        "work on a new tensor: y = x * rstd, not x *= rstd (or clone the input first)",
        "chapter 10, RMSNorm",
    ),
    "wrong_axis": Kind(
        "the mean of squares runs over other dimensions than the trailing normalized_shape",
        "x.pow(2).mean(dim=tuple(range(-len(normalized_shape), 0)), keepdim=True)",
        "chapter 1, LayerNorm from first principles (Why normalize, and over which axis)",
    ),
    "eps_ignored": Kind(
        "a row of zeros gives NaN or inf: eps is not added to the mean of squares",
        "x * rsqrt(mean(x^2) + eps): eps keeps a zero row at 0",
        "chapter 10, RMSNorm",
    ),
    "eps_outside_sqrt": Kind(
        "eps is added to the root mean square, not to the mean of squares: "
        "x / (rms + eps)",
        "x * rsqrt(mean(x^2) + eps), the formula of torch.nn.RMSNorm",
        "chapter 10, RMSNorm (From LayerNorm to RMSNorm)",
    ),
    "eps_mismatch": Kind(
        "eps is inside the square root, but not the eps that was passed",
        "use the eps argument: models hard-code 1e-6 or 1e-5 where torch's default (None) is "
        "1.19e-7; when porting weights, port the eps too",
        "chapter 10, RMSNorm (eps=None is not 1e-6)",
    ),
    "low_precision_accumulation": Kind(
        "for 16-bit inputs the mean of squares (or the scaling by it) is computed in 16 bits",
        "compute in float32 and round once at the end: x32 = x.float(); ...; "
        "return (x32 * rstd * weight.float()).to(x.dtype)",
        "chapter 10, RMSNorm (The error of the mean of squares)",
    ),
    "affine_wrong": Kind(
        "the weight is not applied as y = x_hat * weight",
        "normalize first, then multiply by the weight as it is stored: (1 + weight) is right "
        "only for a model that stores w - 1 (Gemma), not for torch.nn.RMSNorm or LLaMA",
        "chapter 10, RMSNorm (Exercises: the (1 + weight) parameterization)",
    ),
    "wrong_output": Kind(
        "the output differs from RMSNorm by more than rounding error, in a way none of the "
        "specific detectors recognizes",
        "compare your formula with chapter 10's, step by step, on a small input",
        "chapter 10, RMSNorm",
    ),
}

#: What a report says an implementation without findings computes.
NORM_NAMES = {"layer": "LayerNorm", "rms": "RMSNorm"}


def kind_info(kind: str, norm: str = "layer") -> Kind:
    """What ``kind`` means for ``norm``: RMSNorm's words where they differ, else LayerNorm's."""
    return RMS_KINDS.get(kind, KINDS[kind]) if norm == "rms" else KINDS[kind]


def resolved_eps(eps: float | None) -> float:
    """The eps a probe means: None is torch's RMSNorm default for the probes' dtypes (float16,
    bfloat16 and float32, all computed in float32), float32's machine epsilon 2**-23."""
    return 2.0**-23 if eps is None else eps


def _eps_text(eps: float | None) -> str:
    return "None" if eps is None else f"{eps:g}"


def eps_probe_name(eps: float | None) -> str:
    """The name of the eps probe called with ``eps``."""
    return f"eps={_eps_text(eps)}"


@dataclass(frozen=True)
class Finding:
    """One mistake: its ``kind`` (a key of :data:`KINDS`), what was seen, and the measurements."""

    kind: str
    message: str
    evidence: dict = field(default_factory=dict)
    #: "layer" or "rms": which norm's explanation of the kind to print.
    norm: str = "layer"

    def __str__(self) -> str:
        info = kind_info(self.kind, self.norm)
        evidence = "; ".join(f"{k} = {_fmt(v)}" for k, v in self.evidence.items())
        parts = [
            _wrap(f"[{self.kind}] {info.title}", ""),
            _wrap(f"seen: {self.message}", "  "),
            _wrap(f"evidence: {evidence}", "  ") if evidence else "",
            _wrap(f"fix: {info.fix}", "  "),
            _wrap(f"read: {info.chapter}", "  "),
        ]
        return "\n".join(part for part in parts if part)


@dataclass(frozen=True)
class Measurement:
    """A detector's deciding quantity and the threshold it is held against."""

    quantity: str
    value: float
    threshold: float
    #: True: a finding when value > threshold; False: a finding when value <= threshold.
    flags_above: bool = True

    @property
    def flagged(self) -> bool:
        return self.value > self.threshold if self.flags_above else self.value <= self.threshold

    def __str__(self) -> str:
        rule = ">" if self.flags_above else "<="
        return f"{self.quantity}: {self.value:.3g} (a finding when {rule} {self.threshold:g})"


@dataclass(frozen=True)
class Report:
    """What :func:`check` found for one implementation."""

    name: str
    framework: str
    findings: tuple[Finding, ...]
    #: ``(rtol, atol)`` for comparing the implementation's float32 output with torch's, or None
    #: when there are findings (a wrong formula is not rounding error), unless every finding is
    #: an order of roundings that leaves float32 outputs alone (``ROUNDING_ORDER_KINDS``).
    #: See :func:`tolerance`.
    tolerance: tuple[float, float] | None
    #: How the tolerance was derived, in one sentence (None with the tolerance).
    tolerance_reason: str | None = None
    #: The deciding measurement of each numerical detector that ran, by kind.
    measurements: dict[str, Measurement] = field(default_factory=dict)
    #: "layer" (LayerNorm) or "rms" (RMSNorm): what the implementation was checked as.
    norm: str = "layer"
    #: The function's largest measured float32 error on the checker's rows, divided by the
    #: measured envelope of its class (None with the tolerance). At most 1: the tolerance uses
    #: the class's envelope as it is; above 1, the envelope is scaled up by a power of 2.
    envelope_ratio: float | None = None

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.findings

    @property
    def kinds(self) -> list[str]:
        """The kinds found, in the order the detectors run."""
        return [finding.kind for finding in self.findings]

    def __str__(self) -> str:
        head = f"{self.name} ({self.framework}): "
        if self.ok:
            lines = [head + f"no findings: on every probe it behaves as {NORM_NAMES[self.norm]}."]
        else:
            count = len(self.findings)
            lines = [head + f"{count} finding{'s' if count > 1 else ''}"]
            lines += [str(finding) for finding in self.findings]
        if self.tolerance is None:
            lines.append(
                "tolerance: none until the findings are fixed (they are not rounding error)"
            )
        else:
            rtol, atol = self.tolerance
            lines.append(
                _wrap(
                    "tolerance: compare its float32 output with torch's by "
                    f"torch.testing.assert_close(mine, theirs, rtol={rtol:g}, atol={atol:.1e}), "
                    f"tolerances by keyword: {self.tolerance_reason}.",
                    "",
                )
            )
        return "\n".join(lines)


def _wrap(text: str, indent: str) -> str:
    """``text`` wrapped to 88 columns, its first line indented by ``indent``, the rest by 4 more."""
    return textwrap.fill(
        text, 88, initial_indent=indent, subsequent_indent=indent + "    ", break_on_hyphens=False
    )


def _fmt(value: object) -> str:
    """Evidence for printing: floats to 3 significant digits, containers element by element."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


# ----------------------------------------------------------------------------------------------
# Calling the reader's function
# ----------------------------------------------------------------------------------------------

#: The dtypes the probes use, by name; bfloat16 exists only in torch.
_TORCH_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def _rounded(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` rounded to ``dtype`` (to nearest), returned as exact float64."""
    if dtype == "bfloat16":
        return torch.from_numpy(np.asarray(values, np.float64)).to(torch.bfloat16).double().numpy()
    return np.asarray(values, np.float64).astype(dtype).astype(np.float64)


@dataclass
class Probe:
    """One input for the function: exact values (float64) of an input of ``dtype``."""

    name: str
    x: np.ndarray
    normalized_shape: tuple[int, ...]
    dtype: str = "float32"
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    #: None (RMSNorm only) means torch's default, float32's machine epsilon for these probes.
    eps: float | None = 1e-5
    norm: str = "layer"


@dataclass
class Call:
    """What happened when the function was called on one probe."""

    probe: Probe
    #: The output as float64 values, when it is an array of the input's shape; else None.
    output: np.ndarray | None = None
    #: The output's type, dtype and shape in words, and whether they are the input's.
    returned: str = ""
    same_type_dtype_shape: bool = False
    #: "ExceptionType: message" when the call raised.
    error: str | None = None
    #: The arguments (x, weight, bias) whose values the call changed.
    mutated: tuple[str, ...] = ()
    _reference: np.ndarray | None = None

    @property
    def reference(self) -> np.ndarray:
        """LayerNorm of the probe's exact values, in float64."""
        if self._reference is None:
            p = self.probe
            with np.errstate(invalid="ignore", divide="ignore"):
                if p.norm == "rms":
                    self._reference = errors.reference_rms_norm(
                        p.x, p.normalized_shape, p.weight, resolved_eps(p.eps)
                    )
                else:
                    self._reference = errors.reference_layer_norm(
                        p.x, p.normalized_shape, p.weight, p.bias, p.eps
                    )
        return self._reference


class Subject:
    """The implementation under test: a function or an ``nn.Module``, in torch or NumPy.

    ``call`` hands the function fresh arrays built from a probe (never the arrays the
    checker keeps as references), catches what it raises, and compares its
    arguments afterwards with copies to see whether it changed them.
    """

    def __init__(
        self,
        fn: Callable | torch.nn.Module,
        framework: str,
        normalized_shape: int | Sequence[int] | None = None,
        norm: str = "layer",
    ):
        if framework not in ("torch", "numpy"):
            raise ValueError(f"framework must be 'torch' or 'numpy', got {framework!r}")
        if not callable(fn):
            raise TypeError(f"check needs a function or an nn.Module, got {type(fn).__name__}")
        self.fn = fn
        self.framework = framework
        self.norm = norm
        self.is_module = isinstance(fn, torch.nn.Module)
        self.name = _name_of(fn)
        if not self.is_module:
            #: Row shape of the probes; a function is also probed with other normalized_shapes.
            self.row_shape: tuple[int, ...] = (64,)
            self.has_weight, self.has_bias = True, norm == "layer"
            #: The eps values probed: a function must use the one it is given. The first is the
            #: eps of every other probe; RMSNorm's None (torch's default) is probed on its own.
            self.eps_values: tuple[float | None, ...] = (
                (1e-5, 1e-3) if norm == "layer" else (1e-5, 1e-3, None)
            )
            self.half_dtypes = ("float16", "bfloat16") if framework == "torch" else ("float16",)
            return
        if framework != "torch":
            raise ValueError("an nn.Module is checked with framework='torch'")
        self.has_weight = isinstance(getattr(fn, "weight", None), torch.Tensor)
        self.has_bias = norm == "layer" and isinstance(getattr(fn, "bias", None), torch.Tensor)
        shape = normalized_shape or getattr(fn, "normalized_shape", None)
        if shape is None and self.has_weight:
            shape = tuple(fn.weight.shape)
        if shape is None:
            raise ValueError(
                f"{self.name} has no normalized_shape or weight attribute: "
                "pass normalized_shape= to check"
            )
        self.row_shape = (shape,) if isinstance(shape, int) else tuple(int(d) for d in shape)
        if int(np.prod(self.row_shape)) < 2:
            raise ValueError(
                f"rows of {int(np.prod(self.row_shape))} element normalize to 0 whatever the "
                "formula: nothing to check"
            )
        if norm == "rms":  # torch.nn.RMSNorm's eps (None by default), or Hugging Face's name
            eps = getattr(fn, "eps", getattr(fn, "variance_epsilon", None))
        else:
            eps = getattr(fn, "eps", 1e-5)
        self.eps_values = (None if eps is None else float(eps),)
        self.half_dtypes = ("float16", "bfloat16")
        self._copies: dict[str, torch.nn.Module] = {}

    def call(self, probe: Probe) -> Call:
        record = Call(probe)
        args = self._arguments(probe)
        kept = [None if a is None else _copy_of(a) for a in args]
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"), torch.no_grad():
                warnings.simplefilter("ignore")
                out = self._invoke(probe, *args)
        except Exception as error:  # a reader's function may raise anything: that is a finding
            record.error = f"{type(error).__name__}: {error}".strip()
            return record
        finally:
            record.mutated = tuple(
                name
                for name, a, k in zip(("x", "weight", "bias"), args, kept)
                if a is not None and not _same_values(a, k)
            )
        record.returned, record.same_type_dtype_shape, record.output = self._inspect(out, probe)
        return record

    def _arguments(self, probe: Probe) -> list:
        def array(values: np.ndarray | None) -> object:
            if values is None:
                return None
            if self.framework == "numpy":
                return values.astype(probe.dtype)
            return torch.from_numpy(values).to(_TORCH_DTYPES[probe.dtype])

        if self.is_module:  # weight and bias go into the module's parameters instead
            return [array(probe.x), None, None]
        return [array(probe.x), array(probe.weight), array(probe.bias)]

    def _invoke(self, probe: Probe, x: object, weight: object, bias: object) -> object:
        if not self.is_module:
            if self.norm == "rms":
                return self.fn(x, probe.normalized_shape, weight, probe.eps)
            return self.fn(x, probe.normalized_shape, weight, bias, probe.eps)
        module = self._module_for(probe.dtype)
        # A module computes with its own parameters: set them to the probe's (ones and
        # zeros when the probe has none), on a copy, so the reader's module is untouched.
        affine = (("weight", probe.weight, 1.0), ("bias", probe.bias, 0.0))
        for name, values, default in affine[: 2 if self.norm == "layer" else 1]:
            param = getattr(module, name, None)
            if isinstance(param, torch.Tensor):
                if values is None:
                    param.fill_(default)
                else:
                    param.copy_(torch.from_numpy(values).reshape(param.shape))
        return module(x)

    def _module_for(self, dtype: str) -> torch.nn.Module:
        """A copy of the module, floating parameters in ``dtype``, as ``model.to(dtype)`` makes."""
        if dtype not in self._copies:
            self._copies[dtype] = copy.deepcopy(self.fn).to(_TORCH_DTYPES[dtype])
        return self._copies[dtype]

    def _inspect(self, out: object, probe: Probe) -> tuple[str, bool, np.ndarray | None]:
        expected_type = torch.Tensor if self.framework == "torch" else np.ndarray
        if not isinstance(out, (torch.Tensor, np.ndarray)):
            return f"a {type(out).__name__}", False, None
        dtype = str(out.dtype).removeprefix("torch.")
        shape = tuple(out.shape)
        returned = f"{type(out).__module__.split('.')[0]} {dtype} array of shape {shape}"
        same = isinstance(out, expected_type) and dtype == probe.dtype and shape == probe.x.shape
        values = errors.as_numpy(out).astype(np.float64) if shape == probe.x.shape else None
        return returned, same, values


def _name_of(fn: object) -> str:
    if isinstance(fn, torch.nn.Module):
        return type(fn).__name__
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}.{name}" if module and module not in ("__main__", "builtins") else name


def _copy_of(a: object) -> object:
    return a.clone() if isinstance(a, torch.Tensor) else np.array(a, copy=True)


def _same_values(a: object, b: object) -> bool:
    return np.array_equal(errors.as_numpy(a), errors.as_numpy(b), equal_nan=True)


# ----------------------------------------------------------------------------------------------
# The probes: seeded inputs, each built to expose one mistake
# ----------------------------------------------------------------------------------------------

#: Offsets of the mean, in standard deviations, for the one-pass detector.
OFFSETS = (1.0, 4.0, 16.0, 64.0, 256.0, 1024.0)
#: The offsets whose errors are fitted (from 16 on, linear growth is well above the rounding floor).
FITTED_OFFSETS = (16.0, 64.0, 256.0, 1024.0)
#: Rows per offset: the largest error of 32 rows is close to the largest the rounding can make.
ROWS_PER_OFFSET = 32
#: Standard deviations of the eps probe's rows: 2**-24 ... 64, so that for any eps from 1e-14 to
#: 1 some rows have eps changing sqrt(var + eps) by a resolvable fraction, and the rows with
#: standard deviation 1, 8 and 64 (eps at most 1e-3 of the variance) show Bessel's factor alone.
EPS_PROBE_STDS = tuple(2.0**k for k in range(-24, 7))
#: The eps probe's rows that the Bessel detector reads.
BESSEL_STDS = (1.0, 8.0, 64.0)
#: Mean offset (in standard deviations) of the 16-bit accuracy probe.
HALF_OFFSET = 128.0


def _standard_rows(rng: np.random.Generator, rows: int, row_shape: tuple[int, ...]) -> np.ndarray:
    """Rows with mean exactly 0 and biased standard deviation exactly 1 (in float64)."""
    z = rng.standard_normal((rows, int(np.prod(row_shape))))
    z -= z.mean(axis=1, keepdims=True)
    z /= np.sqrt((z * z).mean(axis=1, keepdims=True))
    return z.reshape((rows, *row_shape))


def _scaled(z: np.ndarray, scales: np.ndarray, offsets: np.ndarray | float = 0.0) -> np.ndarray:
    """Row k of ``z`` times ``scales[k]`` plus ``offsets[k]``."""
    shape = (-1,) + (1,) * (z.ndim - 1)
    return z * np.reshape(scales, shape) + np.reshape(offsets, shape)


def _axis_test_input(
    rng: np.random.Generator, batch_shape: tuple[int, ...], row_shape: tuple[int, ...]
) -> np.ndarray:
    """An input whose every axis carries its own offsets and spreads.

    Each leading index has its own offset and spread, and each trailing
    position an offset of its own: normalizing over any wrong set of axes leaves
    group means of order one and group variances that differ from one.
    """
    shape = (*batch_shape, *row_shape)
    x = rng.standard_normal(shape) * rng.uniform(0.5, 2.0, (*batch_shape,) + (1,) * len(row_shape))
    for axis, size in enumerate(shape):
        offsets_shape = [1] * len(shape)
        offsets_shape[axis] = size
        x = x + rng.uniform(-2.0, 2.0, offsets_shape)
    return x


def layer_norm_probes(subject: Subject, half: bool, seed: int = 0) -> dict[str, Probe]:
    """Every probe the LayerNorm detectors read, by name (seeded: the same inputs on every run).

    Each detector's docstring says which probes it reads and why they expose its mistake.
    """
    rng = np.random.default_rng(seed)
    rows = subject.row_shape
    n = int(np.prod(rows))
    eps = subject.eps_values[0]
    probes: list[Probe] = []

    def add(name: str, x: np.ndarray, dtype: str = "float32", **arguments) -> None:
        shape = arguments.pop("normalized_shape", rows)
        arguments.setdefault("eps", eps)
        probes.append(Probe(name, _rounded(x, dtype), shape, dtype, **arguments))

    # Ordinary rows: means within 2 of zero, standard deviations 0.5 to 2 (|mean| <= 4 std),
    # with a weight of either sign and a bias.
    basic = _rounded(
        _scaled(_standard_rows(rng, 16, rows), rng.uniform(0.5, 2, 16), rng.uniform(-2, 2, 16)),
        "float32",
    )
    weight = _rounded(rng.uniform(0.5, 2.0, rows) * rng.choice([-1.0, 1.0], rows), "float32")
    bias = _rounded(rng.uniform(-1.0, 1.0, rows), "float32")
    w = weight if subject.has_weight else None
    b = bias if subject.has_bias else None
    add("basic", basic, weight=w, bias=b)
    add("plain", basic)
    if w is not None or b is not None:
        add("affine_first", basic * (1.0 if w is None else w) + (0.0 if b is None else b))

    add("rows_axes", _axis_test_input(rng, (12,), rows))
    add("batch_axes", _axis_test_input(rng, (3, 5), rows))
    if not subject.is_module:  # a normalized_shape of two dimensions
        add("two_axes", _axis_test_input(rng, (3,), (5, 16)), normalized_shape=(5, 16))

    # Constant rows whose sums and sums of squares are exact in float32 (any algorithm gets
    # variance 0 exactly), and two ordinary rows.
    constants = np.array([0.0, 1.0, -2.5, 1024.0]).reshape(4, *(1,) * len(rows))
    add("constant", np.concatenate([constants * np.ones((4, *rows)), _standard_rows(rng, 2, rows)]))

    nan = _standard_rows(rng, 6, (n,))
    nan[1, 3], nan[4, 0] = np.nan, np.inf
    add("nan", nan.reshape(6, *rows))

    eps_rows = _scaled(_standard_rows(rng, len(EPS_PROBE_STDS), rows), np.array(EPS_PROBE_STDS))
    for value in subject.eps_values:
        add(eps_probe_name(value), eps_rows, eps=value)

    # Each row's mean is its nominal offset times a random factor in [0.8, 1.25]: not a round
    # number, so that a computed mean carries a rounding error.
    count = ROWS_PER_OFFSET * len(OFFSETS)
    means = np.repeat(OFFSETS, ROWS_PER_OFFSET) * rng.uniform(0.8, 1.25, count)
    add("offsets", _scaled(_standard_rows(rng, count, rows), np.ones(count), means))

    add("empty", np.zeros((0, *rows)))

    if half:
        # The same 16-bit values, computed as they are and converted to float32. No weight or
        # bias: the affine step may round in 16 bits, which is not what is measured here.
        for dtype in subject.half_dtypes:
            means = HALF_OFFSET * rng.uniform(0.8, 1.25, 32)
            x16 = _rounded(_scaled(_standard_rows(rng, 32, rows), np.ones(32), means), dtype)
            for work in (dtype, "float32"):
                add(f"{dtype}:{work}", x16, work)
        # Standard deviation 300: every row has an element at least 300 from its mean, whose
        # square overflows float16 (65504); harmless in float32.
        x_big = _rounded(_scaled(_standard_rows(rng, 8, rows), np.full(8, 300.0), 100.0), "float16")
        for work in ("float16", "float32"):
            add(f"float16 overflow:{work}", x_big, work)
    return {probe.name: probe for probe in probes}


# ----------------------------------------------------------------------------------------------
# Measurements shared by the detectors
# ----------------------------------------------------------------------------------------------


def row_statistics(
    x: np.ndarray, rows: int, centre: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Exact (float64) centred values and biased standard deviation of each row of ``x``.

    With ``centre=False`` (RMSNorm): the values as they are and each row's root mean square.
    """
    flat = np.asarray(x, np.float64).reshape(rows, -1)
    centred = flat - flat.mean(axis=1, keepdims=True) if centre else flat
    return centred, np.sqrt((centred * centred).mean(axis=1))


def fitted_denominator(
    x: np.ndarray, y: np.ndarray, centre: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the exact standard deviation, and the denominator ``d`` the function divided by.

    ``d = sum(c*c) / sum(c*y)`` with the exact centred values ``c``: the
    least-squares fit of ``y = c / d``. An error in the function's mean shifts
    every ``y`` of the row by the same amount, which ``sum(c) = 0`` cancels
    exactly; ``d`` is therefore the function's ``sqrt(var + eps)``, as it
    computed it, to a few roundings of its output. With ``centre=False``
    (RMSNorm) the fit uses the values themselves, ``d = sum(x*x) / sum(x*y)``,
    and returns each row's root mean square in place of the standard deviation.
    """
    rows = x.shape[0]
    centred, std = row_statistics(x, rows, centre)
    flat_y = np.asarray(y, np.float64).reshape(rows, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = (centred * centred).sum(axis=1) / (centred * flat_y).sum(axis=1)
    return std, d


@dataclass(frozen=True)
class Denominator:
    """What a function divides a row by, as learned by the detectors: the correct
    ``sqrt(var + eps)`` by default, with Bessel's factor and eps as measured."""

    n: int
    bessel: bool = False
    eps: float = 1e-5
    eps_outside: bool = False

    def __call__(self, std: np.ndarray) -> np.ndarray:
        effective = std * math.sqrt(self.n / (self.n - 1)) if self.bessel else std
        return effective + self.eps if self.eps_outside else np.sqrt(effective**2 + self.eps)


def growth_exponent(offsets: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log(value) against log(offset): 1 for linear growth, 2 quadratic."""
    offsets, values = np.asarray(offsets, float), np.asarray(values, float)
    keep = np.isfinite(values)
    if keep.sum() < 2:
        return float("nan")
    floor = 2.0**-40  # an error of exactly zero is at the floor, not minus infinity
    return float(np.polyfit(np.log(offsets[keep]), np.log(np.maximum(values[keep], floor)), 1)[0])


@dataclass
class Context:
    """The calls of one check, and what the detectors have found and learned so far."""

    subject: Subject
    calls: dict[str, Call]
    findings: list[Finding] = field(default_factory=list)
    #: Set by detect_wrong_axis when plain 2-d rows are normalized over the wrong axes: the row
    #: detectors' measurements would then be meaningless, and they stand down.
    rows_unreliable: bool = False
    #: What the function divides by, per eps, as measured (see Denominator).
    denominators: dict[float, Denominator] = field(default_factory=dict)
    #: The deciding measurement of each numerical detector that ran.
    measurements: dict[str, Measurement] = field(default_factory=dict)
    #: The eps fits, once computed (see _eps_fits).
    eps_fits: dict[float, dict] | None = None
    #: Set by the tolerance: the function's measured error over its class's envelope.
    envelope_ratio: float | None = None

    def measure(self, kind: str, *args) -> Measurement:
        """Record a detector's deciding measurement (the arguments of :class:`Measurement`)."""
        self.measurements[kind] = Measurement(*args)
        return self.measurements[kind]

    def output(self, probe: str) -> np.ndarray | None:
        """The output of a probe, or None when the call raised or returned something unusable."""
        call = self.calls.get(probe)
        return None if call is None else call.output

    def found(self, kind: str) -> bool:
        return any(f.kind == kind for f in self.findings)

    @property
    def n(self) -> int:
        return int(np.prod(self.subject.row_shape))

    @property
    def eps(self) -> float:
        return self.subject.eps_values[0]

    def denominator(self, eps: float) -> Denominator:
        return self.denominators.get(eps, Denominator(self.n, self.found("bessel_correction"), eps))


# ----------------------------------------------------------------------------------------------
# The detectors, in the order they run
# ----------------------------------------------------------------------------------------------


def detect_raises(ctx: Context) -> Finding | None:
    """``raises``: the function raised on a valid input.

    Input: every probe (all are valid input for ``torch.nn.functional.layer_norm``).
    Measurement: whether the call raised. No threshold, no rounding involved.
    Every detector that needs the output of a probe that raised stands down for
    that probe, so a crash is reported once, here.
    """
    failed = [c for c in ctx.calls.values() if c.error is not None]
    if not failed:
        return None
    first = failed[0]
    return Finding(
        "raises",
        f"{len(failed)} of {len(ctx.calls)} calls raised; the first, on input {first.probe.name!r} "
        f"of shape {first.probe.x.shape} ({first.probe.dtype}), raised {first.error}",
        {
            "inputs": [f"{c.probe.name} {c.probe.x.shape} {c.probe.dtype}" for c in failed],
            "first error": first.error,
        },
    )


def detect_dtype_changed(ctx: Context) -> Finding | None:
    """``dtype_changed``: the output is not an array of the input's type, dtype and shape.

    Input: every probe, float32 and 16-bit. Measurement: type, dtype and shape of
    the output. No threshold, no rounding involved. An output of the right shape
    but another dtype is still judged by the other detectors (by its values).
    """
    wrong = [c for c in ctx.calls.values() if c.error is None and not c.same_type_dtype_shape]
    if not wrong:
        return None
    first = wrong[0]
    return Finding(
        "dtype_changed",
        f"for a {first.probe.dtype} input of shape {first.probe.x.shape} "
        f"it returned {first.returned}",
        {"inputs": sorted({f"{c.probe.dtype} -> {c.returned}" for c in wrong})},
    )


def detect_mutates_input(ctx: Context) -> Finding | None:
    """``mutates_input``: the function changed the values of an argument.

    Input: every probe; the function gets fresh copies of the checker's arrays.
    Measurement: the argument after the call against a copy taken before it,
    bit for bit (NaN equal to NaN). No threshold, no rounding involved.
    """
    changed = sorted({name for c in ctx.calls.values() for name in c.mutated})
    if not changed:
        return None
    return Finding(
        "mutates_input",
        f"after the call, {' and '.join(changed)} no longer held the values passed in",
        {"arguments changed": changed},
    )


#: |mean of a group| / rms(output) below this means the group was centred.
ZERO_MEAN = 1e-3
#: A group's variance within this range means the group was scaled to unit variance.
UNIT_VARIANCE = (0.8, 1.25)


def normalization_axes(
    y: np.ndarray, trailing: tuple[int, ...]
) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """The axes ``y`` was centred over, and the axes it was scaled over, as far as they show.

    A LayerNorm over axes A leaves every A-group of its output with mean 0 and
    (biased) variance ``var/(var + eps)``, close to 1; so does every superset
    of A, and no other set does when the input has offsets and spreads along
    every axis. Returns the smallest set with mean 0 (None if there is none,
    or if it is not unique), and, when that set is ``trailing``, the smallest
    set containing it with variance 1 (None if there is none).
    """
    subsets = [s for r in range(1, y.ndim + 1) for s in itertools.combinations(range(y.ndim), r)]
    scale = math.sqrt(float(np.mean(y * y))) or 1.0

    def centred(axes: tuple[int, ...]) -> bool:
        return bool(np.all(np.abs(y.mean(axis=axes, keepdims=True)) <= ZERO_MEAN * scale))

    def unit(axes: tuple[int, ...]) -> bool:
        var = ((y - y.mean(axis=axes, keepdims=True)) ** 2).mean(axis=axes)
        return bool(np.all((var >= UNIT_VARIANCE[0]) & (var <= UNIT_VARIANCE[1])))

    zero_mean = [a for a in subsets if centred(a)]
    minimal = [a for a in zero_mean if not any(set(b) < set(a) for b in zero_mean)]
    centred_over = minimal[0] if len(minimal) == 1 else None
    if centred_over != trailing:
        return centred_over, None
    scaled = [a for a in subsets if set(trailing) <= set(a) and unit(a)]
    return centred_over, (scaled[0] if scaled else None)


def detect_wrong_axis(ctx: Context) -> Finding | None:
    """``wrong_axis``: the statistics run over other axes than the trailing ``normalized_shape``.

    Input: plain 2-d rows (``rows_axes``), a 3-d input (``batch_axes``) and, for
    a function, a 3-d input with a two-dimensional ``normalized_shape``
    (``two_axes``); every axis of each carries its own offsets and spreads.
    Measurement: the smallest set of axes over which the output has mean 0;
    when that is the trailing dimensions, the smallest set containing them
    over which it has variance 1 (:func:`normalization_axes`). Both must be
    exactly the trailing dimensions. Thresholds: |group mean| <= 1e-3 rms(y),
    and group variance in [0.8, 1.25]. Rounding leaves means of at most
    (N + 2) u kappa to first order, below 1e-5 on the probes' rows (chapter 9),
    and a wrong axis leaves means of
    order one; Bessel's correction (variance (N-1)/N >= 0.94 for the probes'
    N >= 16), a wrong eps (the probes' rows have var >= 0.25) or rounding move
    the variance by far less than 20%. When the plain 2-d rows are normalized
    over wrong axes, every later measurement on rows is meaningless and those
    detectors stand down (a NaN spreading across rows through batch
    statistics is then this finding, not ``nan_spreads``).
    """
    wrong, largest_mean = {}, 0.0
    for probe in ("rows_axes", "batch_axes", "two_axes"):
        y = ctx.output(probe)
        if y is None:
            continue
        shape = ctx.calls[probe].probe.normalized_shape
        trailing = tuple(range(y.ndim - len(shape), y.ndim))
        scale = math.sqrt(float(np.mean(y * y))) or 1.0
        largest_mean = max(largest_mean, float(np.max(np.abs(y.mean(axis=trailing)))) / scale)
        centred_over, scaled_over = normalization_axes(y, trailing)
        if centred_over is not None and centred_over != trailing:
            wrong[probe] = (y.shape, shape, trailing, f"centred over axes {centred_over}")
        elif centred_over == trailing and scaled_over not in (None, trailing):
            wrong[probe] = (y.shape, shape, trailing, f"scaled over axes {scaled_over}")
    ctx.measure(
        "wrong_axis", "largest |mean over the trailing axes| / rms(y)", largest_mean, ZERO_MEAN
    )
    return _wrong_axis_finding(ctx, wrong)


def _wrong_axis_finding(
    ctx: Context, wrong: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], str]]
) -> Finding | None:
    """The ``wrong_axis`` finding, from each probe normalized over wrong axes: its output
    shape, normalized_shape, trailing axes and what was seen (None when there is none).

    When the plain 2-d rows are among them, the detectors on rows stand down.
    """
    if not wrong:
        return None
    ctx.rows_unreliable = "rows_axes" in wrong
    x_shape, shape, trailing, what = next(iter(wrong.values()))
    norm = ctx.subject.norm
    return Finding(
        "wrong_axis",
        f"for an input of shape {x_shape} with normalized_shape={shape} it is {what}; "
        f"{NORM_NAMES[norm]} normalizes over the trailing axes {trailing}",
        {name: f"{w[3]}, input shape {w[0]}" for name, w in wrong.items()},
        norm,
    )


def detect_eps_ignored(ctx: Context) -> Finding | None:
    """``eps_ignored``: a constant row gives NaN or inf.

    Input: constant rows (0, 1, -2.5, 1024: their sums and sums of squares are
    exact in float32, so every algorithm, one-pass included, gets variance 0
    exactly) among ordinary rows. Measurement: whether those rows' outputs are
    finite. LayerNorm gives 0/sqrt(0 + eps) = 0 there; only a denominator
    without eps gives 0/0. No rounding involved.
    """
    y = ctx.output("constant")
    if y is None or ctx.rows_unreliable:
        return None
    bad = ~np.isfinite(y.reshape(y.shape[0], -1)[:4]).all(axis=1)
    if not bad.any():
        return None
    return Finding(
        "eps_ignored",
        f"{int(bad.sum())} of 4 constant rows came out as NaN or inf: the denominator is 0 "
        "for them, "
        "so eps is missing from it",
        {"constant rows": [0.0, 1.0, -2.5, 1024.0], "finite output": [bool(not b) for b in bad]},
    )


def detect_nan_spreads(ctx: Context) -> Finding | None:
    """``nan_spreads``: a NaN or inf in one row makes other rows' outputs non-finite.

    Input: six ordinary rows, one holding a NaN and one an inf. Measurement:
    whether the four clean rows' outputs are finite. No rounding involved.
    Stands down when ``wrong_axis`` found batch statistics on plain rows,
    which spread NaN for the same reason.
    """
    y = ctx.output("nan")
    if y is None or ctx.rows_unreliable:
        return None
    clean = [0, 2, 3, 5]
    bad = [r for r in clean if not np.isfinite(y[r]).all()]
    if not bad:
        return None
    return Finding(
        "nan_spreads",
        f"with a NaN in row 1 and an inf in row 4, the clean rows {bad} (of {clean}) "
        "came out non-finite",
        {"clean rows with non-finite output": bad},
    )


#: Bessel's correction is recognized when (d²/(var+eps) - 1)(N - 1) is within 10% of 1.
BESSEL_TOLERANCE = 0.1


def detect_bessel_correction(ctx: Context) -> Finding | None:
    """``bessel_correction``: the variance divides by N - 1.

    Input: the eps probe's rows with mean 0 and standard deviation 1, 8 and
    64 (eps is then at most 1e-3 of the variance). Measurement: the fitted
    denominator ``d`` of each row (:func:`fitted_denominator`) against the
    correct ``sqrt(var + eps)``: with Bessel's correction
    ``d**2/(var + eps) - 1`` is ``1/(N - 1)`` at every standard deviation.
    Threshold: that quantity times N - 1 within 10% of 1 in all three rows. A
    wrong eps changes it in proportion to 1/var, by a factor of 4096 across
    the three rows, so it cannot match all three; rounding changes ``d**2``
    by at most (N + 8) u to first order on these rows (mean 0), under 10% of
    1/(N - 1) for rows of up to 1,000 elements summed in order; pairwise
    sums (growth factor s = log2 N) give (s + 8) u, which covers rows of up to
    65,536 elements. Measured on 64-element rows: about 1e-7 (chapter 9).
    """
    probe = f"eps={ctx.eps:g}"
    y = ctx.output(probe)
    if y is None or ctx.rows_unreliable:
        return None
    rows = [EPS_PROBE_STDS.index(s) for s in BESSEL_STDS]
    std, d = fitted_denominator(ctx.calls[probe].probe.x[rows], y[rows])
    if not np.all(np.isfinite(d)):
        return None
    n = ctx.n
    excess = (d**2 / (std**2 + ctx.eps) - 1.0) * (n - 1)
    measured = ctx.measure(
        "bessel_correction",
        "largest |(d^2/(var + eps) - 1)(N - 1) - 1|",
        float(np.max(np.abs(excess - 1.0))),
        BESSEL_TOLERANCE,
        False,
    )
    if not measured.flagged:
        return None
    factor = float(np.median(np.sqrt(std**2 + ctx.eps) / d))
    return Finding(
        "bessel_correction",
        f"every row's output is too small by the factor {factor:.5f} = sqrt((N-1)/N) with N = {n}",
        {"N": n, "measured factor": factor, "sqrt((N-1)/N)": math.sqrt((n - 1) / n)},
    )


#: The fitted denominator may differ from the expected one by this fraction before eps is suspected.
EPS_DEVIATION = 1e-3
#: Rows where eps changes the denominator by less than this fraction cannot resolve eps.
EPS_RESOLVABLE = 1e-3


def eps_fit(ctx: Context, eps: float) -> dict | None:
    """Where and how large the function's eps is, from the ``eps=...`` probe's rows.

    With ``s`` the row's standard deviation (times sqrt(N/(N-1)) when Bessel's
    correction was found) and ``d`` the fitted denominator, eps inside the
    square root makes ``d**2 - s**2`` the same in every row, eps outside makes
    ``d - s`` the same. Among the rows where eps changes ``d`` by at least 1e-3
    (so that either difference is known to 1e-4 relative), the estimates of the
    right model agree to within 5% (rounding leaves them within 1e-4) while
    those of the wrong one spread over a factor above 20 (about 30 for eps
    inside and 1500 for eps outside on the probe's rows, whose standard
    deviations span 2**30; chapter 9 measures them). Returns the verdict:
    ``correct``, ``inside`` or ``outside`` with the estimate, ``zero`` (no row
    resolves any eps), or ``unexplained``; None when the probe has no output.
    """
    probe = eps_probe_name(eps)
    y = ctx.output(probe)
    if y is None or ctx.rows_unreliable:
        return None
    std, d = fitted_denominator(ctx.calls[probe].probe.x, y, ctx.subject.norm == "layer")
    if not np.all(np.isfinite(d) & (d > 0)):
        return {"verdict": "unexplained", "eps passed": eps}
    expected = Denominator(ctx.n, ctx.found("bessel_correction"), resolved_eps(eps))
    deviation = float(np.max(np.abs(d / expected(std) - 1.0)))
    if eps == ctx.eps or eps is None:  # the eps of the other probes, and RMSNorm's default
        statistic = "var" if ctx.subject.norm == "layer" else "mean(x^2)"
        key, value = ("eps", "eps") if eps == ctx.eps else ("eps=None", "2**-23")
        ctx.measure(key, f"largest |d / sqrt({statistic} + {value}) - 1|", deviation, EPS_DEVIATION)
    if deviation <= EPS_DEVIATION:
        return {"verdict": "correct", "eps passed": eps}
    s = std * math.sqrt(ctx.n / (ctx.n - 1)) if expected.bessel else std  # what it takes as std
    resolvable = d / s - 1.0 >= EPS_RESOLVABLE
    result = {"eps passed": eps, "largest relative deviation": deviation}
    if resolvable.sum() < 3:
        return {**result, "verdict": "zero", "estimated eps": 0.0}
    inside, outside = (d**2 - s**2)[resolvable], (d - s)[resolvable]
    spread = lambda v: float(v.max() / v.min()) if v.min() > 0 else float("inf")  # noqa: E731
    if spread(inside) <= 1.05 < spread(outside):
        return {**result, "verdict": "inside", "estimated eps": float(np.median(inside))}
    if spread(outside) <= 1.05 < spread(inside):
        return {**result, "verdict": "outside", "estimated eps": float(np.median(outside))}
    return {**result, "verdict": "unexplained"}


def _eps_fits(ctx: Context) -> dict[float, dict]:
    """:func:`eps_fit` for each eps probed (computed once per check, shared by two detectors)."""
    if ctx.eps_fits is not None:
        return ctx.eps_fits
    fits = {eps: eps_fit(ctx, eps) for eps in ctx.subject.eps_values}
    for eps, fit in fits.items():  # what the function divides by, for the detectors after these
        if fit and fit["verdict"] in ("inside", "outside", "zero"):
            ctx.denominators[eps] = Denominator(
                ctx.n,
                ctx.found("bessel_correction"),
                fit["estimated eps"],
                fit["verdict"] == "outside",
            )
    ctx.eps_fits = {eps: fit for eps, fit in fits.items() if fit is not None}
    return ctx.eps_fits


def detect_eps_outside_sqrt(ctx: Context) -> Finding | None:
    """``eps_outside_sqrt``: the denominator is ``std + eps``, not ``sqrt(var + eps)``.

    Input: rows with mean 0 and standard deviations 2**-24 ... 64, called with
    each eps of :attr:`Subject.eps_values`. Measurement and threshold:
    :func:`eps_fit` (``d - std`` the same in every row that resolves eps, to
    5%, while ``d**2 - std**2`` is not). Rounding moves ``d`` by at most
    (N/2 + 4) u relative to first order (2.1e-6 for N = 64, chapter 9), so
    neither model's estimates can be made to spread, or to agree, by rounding
    in rows where eps changes ``d`` by 1e-3 or more.
    """
    outside = {eps: fit for eps, fit in _eps_fits(ctx).items() if fit["verdict"] == "outside"}
    if not outside:
        return None
    eps, fit = next(iter(outside.items()))
    spread = "std" if ctx.subject.norm == "layer" else "rms"
    return Finding(
        "eps_outside_sqrt",
        f"called with eps={_eps_text(eps)}, it divides by {spread} + {fit['estimated eps']:.3g}",
        {"eps passed": eps, f"estimated eps (added to {spread})": fit["estimated eps"]},
        ctx.subject.norm,
    )


def detect_eps_mismatch(ctx: Context) -> Finding | None:
    """``eps_mismatch``: eps is inside the square root, but not the eps passed in.

    Input: as for ``eps_outside_sqrt``; a function is called with eps = 1e-5
    and 1e-3, so that a hard-coded eps shows whatever its value (a module
    with its own eps attribute only with that). Measurement: the fitted
    denominators deviate from ``sqrt(var + eps)`` by more than 1e-3 in some
    row, and ``d**2 - var`` is the same in every row that resolves eps
    (:func:`eps_fit`): that common value is the eps it uses. Rounding moves
    ``d`` by at most (N/2 + 4) u relative (2.1e-6 for N = 64), far below 1e-3.
    A function that uses no eps at all is reported as ``eps_ignored`` when its
    constant rows give NaN, not here.
    """
    wrong = {}
    for eps, fit in _eps_fits(ctx).items():
        no_eps = fit["verdict"] == "zero" and not ctx.found("eps_ignored")
        if fit["verdict"] == "inside" or no_eps:
            wrong[eps] = fit["estimated eps"]
    # RMSNorm's eps=None is eps_default_mismatch's, unless an eps passed explicitly is ignored too
    # (a hard-coded eps): then it is evidence for this finding.
    if not any(eps is not None for eps in wrong):
        return None
    eps, used = next((e, u) for e, u in wrong.items() if e is not None)
    used_text = f"{used:.3g}" if used > 0 else "no eps at all"
    return Finding(
        "eps_mismatch",
        f"called with eps={eps:g}, it uses {used_text} inside the square root",
        {"eps passed -> eps used": {_eps_text(k): v for k, v in wrong.items()}},
        ctx.subject.norm,
    )


#: Growth exponent above which the variance's error is taken to grow with the square of the mean.
ONE_PASS_EXPONENT = 1.5


def detect_one_pass_variance(ctx: Context) -> Finding | None:
    """``one_pass_variance``: the variance's error grows with the square of the mean.

    Input: rows with standard deviation 1 and mean 1, 4, 16, 64, 256, 1024
    (plain float32, weight and bias absent). Measurement: for each mean, the largest
    relative error of the fitted denominator ``d`` (:func:`fitted_denominator`,
    which the mean's own rounding error does not reach) against what the
    function is known to divide by (Bessel, eps as measured), and the growth
    exponent of that error against the mean, fitted over the means 16 to
    1024. Threshold: exponent above 1.5. The relative error of E[x²] - E[x]² is
    at least u·kappa² (rounding E[x²]) and at most N·u·kappa² to first order
    (exponent 2, chapter 4); a two-pass variance has an error that does not
    grow (exponent 0) and Welford's or a pairwise merge one that grows
    linearly (exponent 1). The exponent is the least-squares slope over four
    means a factor of 4 apart, so rounding noise at the floor fakes a slope of
    1.5 only if its values spread at least 4**3.75 = 181-fold (the two lower
    at the floor's least, the two upper at its largest); chapter 9 measures
    the floor's spread of correct implementations (below 20-fold, asserted).
    The decision is the exponent, not a level:
    a correct float32 LayerNorm's output error does grow linearly with the
    mean (chapter 4); that is rounding, and it is not flagged. A row whose
    output is no longer finite counts as an infinite error at that mean.
    """
    y = ctx.output("offsets")
    if y is None or ctx.rows_unreliable:
        return None
    call = ctx.calls["offsets"]
    std, d = fitted_denominator(call.probe.x, y)
    relative = np.abs(d / ctx.denominator(ctx.eps)(std) - 1.0)
    relative[~np.isfinite(relative)] = np.inf
    per_offset = relative.reshape(len(OFFSETS), -1).max(axis=1)
    fitted = [per_offset[OFFSETS.index(o)] for o in FITTED_OFFSETS]
    exponent = growth_exponent(FITTED_OFFSETS, fitted)
    ctx.measure(
        "one_pass_variance", "growth exponent of d's error", exponent, ONE_PASS_EXPONENT
    )
    if not (exponent > ONE_PASS_EXPONENT or (np.isnan(exponent) and np.isinf(fitted[-1]))):
        return None
    first, last = int(FITTED_OFFSETS[0]), int(FITTED_OFFSETS[-1])
    return Finding(
        "one_pass_variance",
        f"the relative error of its denominator d = sqrt(var + eps) grows like "
        f"mean^{exponent:.1f}, from "
        f"{fitted[0]:.1e} at mean {first} to {fitted[-1]:.1e} at mean {last} (std 1): "
        "cancellation in E[x^2] - E[x]^2",
        {
            "mean offsets": [int(o) for o in OFFSETS],
            "relative error of d": [float(v) for v in per_offset],
            "output error, eps32 x max|y|": _output_errors(call),
            f"growth exponent (means {first}-{last})": exponent,
        },
    )


def _output_errors(call: Call) -> list[float]:
    """The output error of the offsets probe at each mean, in float32 eps times max|y|."""
    y = call.output.reshape(len(OFFSETS), -1)
    reference = call.reference.reshape(len(OFFSETS), -1)
    eps32 = float(np.finfo(np.float32).eps)
    result = []
    for mine, exact in zip(y, reference):
        error = np.max(np.abs(mine - exact)) if np.all(np.isfinite(mine)) else np.inf
        result.append(float(error / (eps32 * np.max(np.abs(exact)))))
    return result


#: 16-bit outputs more than this many 16-bit eps (times max|y|) from the float32 path's are flagged.
HALF_UNITS = 4.0


#: The 16-bit probes: name -> (storage dtype, what their rows are).
HALF_PROBES = {
    "float16": ("float16", "means 102 to 160, std 1"),
    "bfloat16": ("bfloat16", "means 102 to 160, std 1"),
    "float16 overflow": ("float16", "std 300: squared deviations above 65504"),
}


def detect_low_precision_accumulation(ctx: Context) -> Finding | None:
    """``low_precision_accumulation``: for 16-bit inputs the statistics are computed in 16 bits.

    Input: float16 (and, in torch, bfloat16) rows with standard deviation 1
    and means between 102 and 160, and float16 rows with standard deviation
    300 (every row has an element at least 300 from its mean), no weight or
    bias, each called once as they are and once converted to float32 (the
    same values). Measurement: the largest distance between the 16-bit
    output and the float32 output rounded to 16 bits, in units of the 16-bit
    eps times max|y|, and whether the 16-bit output is finite where the
    float32 one is. Threshold: 4 units, or any overflow. Computing in float32
    and rounding once gives at most 1 unit: both outputs round float32 results
    that differ by float32 rounding, 2**-13 of a float16 unit, so they differ
    by at most one 16-bit spacing. Rounding the mean to 16 bits alone moves
    it by up to half a 16-bit spacing at the mean, the same in every output
    of the row, and by an amount spread evenly over that range: in 16-bit eps
    times max|y|, up to 64/max|y| units for means of 128 and above and
    32/max|y| below. A standardized row of 64 has max|y| <= sqrt(63) < 8, so
    a row with mean >= 128 exceeds 4 units with probability above 1/2. The
    means are uniform on [102, 160], 5/9 of them >= 128: each row exceeds 4
    units with probability above 5/18, and all 32 rows stay below with
    probability under (13/18)**32 < 1e-4 (chapter 9). Squares of deviations beyond 256
    overflow float16 (65504). Comparing the function with itself makes the
    measurement blind to every other mistake, which both paths share.
    """
    seen, largest, measured = {}, 0.0, False
    for name, (storage, rows) in HALF_PROBES.items():
        low, high = ctx.calls.get(f"{name}:{storage}"), ctx.calls.get(f"{name}:float32")
        if low is None or high is None or low.output is None or high.output is None:
            continue
        rounded = _rounded(high.output, storage)
        finite = np.isfinite(rounded)
        if not finite.any():
            continue
        eps16 = 2.0**-7 if storage == "bfloat16" else 2.0**-10
        with np.errstate(invalid="ignore"):
            gap = np.abs(low.output[finite] - rounded[finite])
        units = float(np.max(gap)) / (eps16 * float(np.max(np.abs(rounded[finite])) or 1.0))
        largest, measured = max(largest, units), True
        if not np.all(np.isfinite(gap)):
            seen[f"{name} ({rows})"] = "inf or NaN where float32 is finite"
        elif units > HALF_UNITS:
            seen[f"{name} ({rows})"] = units
    if not seen:
        if measured:
            ctx.measure(
                "low_precision_accumulation",
                "16-bit output vs float32 output rounded, 16-bit eps x max|y|",
                largest,
                HALF_UNITS,
            )
        return None
    return Finding(
        "low_precision_accumulation",
        "its 16-bit outputs differ from its own float32 computation, rounded to 16 bits, by "
        + "; ".join(
            f"{v if isinstance(v, str) else f'{v:.0f} units'} on {k} rows" for k, v in seen.items()
        )
        + ". Rounding alone makes at most 1 unit of 16-bit eps x max|y|",
        {"16-bit eps x max|y|, by input": seen},
    )


#: Normwise distance (fraction of max|y|) within which an affine candidate is taken to match.
AFFINE_MATCH = 1e-4


def detect_affine_wrong(ctx: Context) -> Finding | None:
    """``affine_wrong``: weight and bias are not applied as ``x_hat * weight + bias``.

    Input: the same rows with weight (entries of either sign, 0.5 <= |w| <= 2)
    and bias (|b| <= 1), without them, and without them on ``x*weight + bias``.
    Measurement: the output with weight and bias against candidates built
    from the function's own plain output ``p``: ``p*w + b`` (correct), ``p``,
    ``p*w``, ``p + b``, ``p*b + w`` (swapped), ``(p + b)*w``, and the plain
    output for ``x*w + b`` (applied before normalizing). Threshold: a candidate
    matches within 1e-4 max|y|. Candidates differ by order one, rounding by a
    few u max|y| (at most 4u = 2.4e-7 with |w| <= 2, chapter 9); using the
    function's own plain output makes the test blind to every mistake in the
    normalization itself.
    """
    mine, plain = ctx.output("basic"), ctx.output("plain")
    call = ctx.calls["basic"]
    if mine is None or plain is None or (call.probe.weight is None and call.probe.bias is None):
        return None
    w = call.probe.weight if call.probe.weight is not None else np.ones(ctx.subject.row_shape)
    b = call.probe.bias if call.probe.bias is not None else np.zeros(ctx.subject.row_shape)
    candidates = {
        "correct": plain * w + b,
        "weight and bias ignored": plain,
        "bias ignored": plain * w,
        "weight ignored": plain + b,
        "weight and bias swapped": plain * b + w,
        "bias added before the weight multiplies": (plain + b) * w,
    }
    if ctx.output("affine_first") is not None:
        candidates["weight and bias applied before normalizing"] = ctx.output("affine_first")
    scale = float(np.max(np.abs(mine[np.isfinite(mine)]), initial=0.0)) or 1.0
    with np.errstate(invalid="ignore"):
        distance = {k: float(np.max(np.abs(mine - c))) / scale for k, c in candidates.items()}
    measured = ctx.measure(
        "affine_wrong", "distance to x_hat*w + b / max|y|", distance["correct"], AFFINE_MATCH
    )
    if not measured.flagged:
        return None
    matches = [k for k, v in distance.items() if v <= AFFINE_MATCH]
    what = matches[0] if matches else "applied in some other way"
    return Finding(
        "affine_wrong",
        f"weight and bias: {what}",
        {
            "distance to x_hat*w + b, fraction of max|y|": distance["correct"],
            "matches": matches[0] if matches else None,
        },
    )


#: Output errors above this many float32 eps x max|y| on ordinary rows are not rounding.
WRONG_OUTPUT_UNITS = 64.0


def detect_wrong_output(ctx: Context) -> Finding | None:
    """``wrong_output``: the output is wrong, and no detector above says why.

    Input: the ordinary rows with weight and bias (means within 2 of zero and
    standard deviations 0.5 to 2, so |mean| <= 4 std and condition numbers
    kappa <= sqrt(17) < 5). Measurement: the error against the float64
    reference in float32 eps times max|y|. Threshold: 64. A correct float32
    LayerNorm stays within chapter 3's measured envelope 2 + kappa/2 < 5 here.
    Runs only when nothing else was found, so that a mistake already named is
    not reported twice.
    """
    if ctx.findings:
        return None
    call = ctx.calls["basic"]
    if call.output is None:
        return None
    y = call.output
    units = (
        errors.eps_units(y.astype(np.float32), call.reference)
        if np.all(np.isfinite(y))
        else float("inf")
    )
    if not ctx.measure("wrong_output", "error / (eps32 max|y|)", units, WRONG_OUTPUT_UNITS).flagged:
        return None
    return Finding(
        "wrong_output",
        f"on ordinary rows its output is off by {units:.3g} float32 eps x max|y|; "
        "a correct float32 LayerNorm was measured below 5 on these rows (chapter 3)",
        {"error, eps32 x max|y|": units, "max abs error": errors.max_abs_error(y, call.reference)},
        ctx.subject.norm,
    )


#: The LayerNorm detectors, in the order they run.
LAYER_NORM_DETECTORS: tuple[Callable[[Context], Finding | None], ...] = (
    detect_raises,
    detect_dtype_changed,
    detect_mutates_input,
    detect_wrong_axis,
    detect_eps_ignored,
    detect_nan_spreads,
    detect_bessel_correction,
    detect_eps_outside_sqrt,
    detect_eps_mismatch,
    detect_one_pass_variance,
    detect_low_precision_accumulation,
    detect_affine_wrong,
    detect_wrong_output,
)

# ----------------------------------------------------------------------------------------------
# The tolerance
# ----------------------------------------------------------------------------------------------

#: The tolerance holds for rows whose mean is at most this many standard deviations from zero,
TOLERANCE_MEAN_STDS = 16.0
#: so for condition numbers kappa = sqrt(1 + mean**2/var) up to sqrt(257) = 16.03,
TOLERANCE_KAPPA = math.sqrt(1.0 + TOLERANCE_MEAN_STDS**2)
#: ... and for outputs of at most this magnitude (rows of unit-scale data, weight of order one).
TOLERANCE_MAX_OUTPUT = 5.0


def tolerance(ctx: Context) -> tuple[tuple[float, float], str]:
    """``(rtol, atol)`` for comparing the function's float32 output with torch's, and why.

    Chapters 3 and 4 measure these envelopes (they are not derived bounds): a
    float32 LayerNorm that subtracts a rounded mean once stays within
    ``2 + kappa/2`` float32 eps times max|y| (torch's kernel is one); one that
    removes the mean's rounding error (lnorm) within 2. Two implementations
    may differ by the sum of their envelopes. The function's class
    is measured: its output error on the offsets probe either grows with the
    mean (growth exponent over the means 16-1024 of 0.5 or more) or does not.
    The tolerance is stated for rows with |mean| <= 16 std (kappa <= sqrt(257)
    = 16.03) and outputs up to 5 in
    magnitude: ``atol = (E_fn + E_torch) eps32 * 5``, with rtol = 0 because the
    error of LayerNorm is absolute: every element of a row carries the row's
    rounding error, small elements included. Scale atol with max|y|/5 and
    kappa for other data. If the function's measured error exceeds its class's
    envelope at some mean, its envelope is scaled up by a power of 2 to cover it.
    """
    eps32 = float(np.finfo(np.float32).eps)
    torch_bound = 2.0 + TOLERANCE_KAPPA / 2
    call = ctx.calls.get("offsets")
    if call is None or call.output is None:
        fn_bound, how = torch_bound, "its error was not measured; assumed as large as torch's"
    else:
        measured = _output_errors(call)
        fitted = [measured[OFFSETS.index(o)] for o in FITTED_OFFSETS]
        exponent = growth_exponent(FITTED_OFFSETS, fitted)
        grows = exponent >= 0.5
        bound = lambda kappa: 2.0 + kappa / 2 if grows else 2.0  # noqa: E731
        # Checked where the tolerance is meant to hold; the rows' means reach 1.25 x nominal.
        excess = max(
            m / bound(1.25 * o + 1) for m, o in zip(measured, OFFSETS) if o <= TOLERANCE_MEAN_STDS
        )
        ctx.envelope_ratio = excess
        if not math.isfinite(excess):  # no bound holds; the torch-class bound, flagged in words
            excess, how_much = 1.0, " (its error at small means is not finite)"
        else:
            how_much = ""
        fn_bound = bound(TOLERANCE_KAPPA) * 2.0 ** max(0, math.ceil(math.log2(max(excess, 1e-9))))
        how = (
            "its float32 error grows with the rows' mean, like torch's"
            if grows
            else "its float32 error does not grow with the rows' mean"
        ) + how_much
    atol = (fn_bound + torch_bound) * eps32 * TOLERANCE_MAX_OUTPUT
    reason = (
        f"{how}; the envelope of that class ({fn_bound:.4g}; its error on the checker's rows "
        f"stays within it) plus torch's (2 + kappa/2 = {torch_bound:.4g}), envelopes "
        "measured in chapters 3 and 4, in float32 eps x max|y|, for rows with "
        f"|mean| <= {TOLERANCE_MEAN_STDS:g} std (kappa <= {TOLERANCE_KAPPA:.4g}) "
        f"and |y| <= {TOLERANCE_MAX_OUTPUT:g}"
    )
    return (0.0, float(f"{atol:.2g}")), reason


# ----------------------------------------------------------------------------------------------
# RMSNorm: its probes and detectors
# ----------------------------------------------------------------------------------------------

#: Root mean squares of the 16-bit eps=None probe's rows: 16-bit eps (2**-10, 2**-7) is at
#: least the rows' mean square, float32's 2**-23 at most 2**-13 of it.
RMS_HALF_EPS_RMS = (2.0**-5, 2.0**-6, 2.0**-7)


def _rms_axis_test_input(
    rng: np.random.Generator, batch_shape: tuple[int, ...], row_shape: tuple[int, ...]
) -> np.ndarray:
    """An input whose every axis scales its positions alternately by 1/2 and 2.

    RMSNorm over axes A leaves every A-group of its output with mean square
    ``ms/(ms + eps)``, close to 1, and so does every superset of A. Over any
    other set, some group holds only positions scaled by 1/2 along an axis
    that the set does not reduce, against 2 for others: its mean square is
    near (1/4)/2.125 = 0.12 of the average, far from 1 whatever the draw.
    """
    shape = (*batch_shape, *row_shape)
    x = rng.standard_normal(shape)
    for axis, size in enumerate(shape):
        scales_shape = [1] * len(shape)
        scales_shape[axis] = size
        x = x * np.where(np.arange(size) % 2 == 0, 0.5, 2.0).reshape(scales_shape)
    return x


def rms_norm_probes(subject: Subject, half: bool, seed: int = 0) -> dict[str, Probe]:
    """Every probe the RMSNorm detectors read, by name (seeded: the same inputs on every run).

    Each detector's docstring says which probes it reads and why they expose its mistake.
    """
    rng = np.random.default_rng(seed)
    rows = subject.row_shape
    eps = subject.eps_values[0]
    probes: list[Probe] = []

    def add(name: str, x: np.ndarray, dtype: str = "float32", **arguments) -> None:
        shape = arguments.pop("normalized_shape", rows)
        arguments.setdefault("eps", eps)
        probes.append(Probe(name, _rounded(x, dtype), shape, dtype, norm="rms", **arguments))

    # Ordinary rows: means within 2 of zero, standard deviations 0.5 to 2 (|mean| <= 4 std),
    # with a weight of either sign.
    basic = _rounded(
        _scaled(_standard_rows(rng, 16, rows), rng.uniform(0.5, 2, 16), rng.uniform(-2, 2, 16)),
        "float32",
    )
    weight = _rounded(rng.uniform(0.5, 2.0, rows) * rng.choice([-1.0, 1.0], rows), "float32")
    w = weight if subject.has_weight else None
    add("basic", basic, weight=w)
    add("plain", basic)
    if w is not None:
        add("affine_first", basic * w)

    add("rows_axes", _rms_axis_test_input(rng, (12,), rows))
    add("batch_axes", _rms_axis_test_input(rng, (3, 5), rows))
    if not subject.is_module:  # a normalized_shape of two dimensions
        add("two_axes", _rms_axis_test_input(rng, (3,), (5, 16)), normalized_shape=(5, 16))

    # Two rows of zeros (mean square exactly 0 by any algorithm) and two ordinary rows.
    add("constant", np.concatenate([np.zeros((2, *rows)), _standard_rows(rng, 2, rows)]))

    nan = _standard_rows(rng, 6, (int(np.prod(rows)),))
    nan[1, 3], nan[4, 0] = np.nan, np.inf
    add("nan", nan.reshape(6, *rows))

    # Rows of mean 0 and root mean square 2**-24 ... 64 (see EPS_PROBE_STDS).
    eps_rows = _scaled(_standard_rows(rng, len(EPS_PROBE_STDS), rows), np.array(EPS_PROBE_STDS))
    for value in subject.eps_values:
        add(eps_probe_name(value), eps_rows, eps=value)

    # Rows whose mean is 1 to 2 standard deviations from zero, of either sign.
    means = rng.uniform(1.0, 2.0, 16) * rng.choice([-1.0, 1.0], 16)
    add("offset_rows", _scaled(_standard_rows(rng, 16, rows), np.ones(16), means))

    add("empty", np.zeros((0, *rows)))

    if half:
        for dtype in subject.half_dtypes:
            # The same 16-bit values computed as they are and converted to float32, without
            # weight; then with a weight in the same 16-bit dtype, as a model.to(dtype) has.
            z = _standard_rows(rng, 32, rows)
            x16 = _rounded(_scaled(z, rng.uniform(0.5, 2, 32), rng.uniform(-1, 1, 32)), dtype)
            for work in (dtype, "float32"):
                add(f"{dtype}:{work}", x16, work)
            w16 = _rounded(rng.uniform(0.5, 2.0, rows) * rng.choice([-1.0, 1.0], rows), dtype)
            add(f"{dtype} weight:{dtype}", x16, dtype, weight=w16 if subject.has_weight else None)
            if None in subject.eps_values:
                small = np.repeat(RMS_HALF_EPS_RMS, 4)
                x_small = _scaled(_standard_rows(rng, len(small), rows), small)
                add(f"{dtype} eps=None:{dtype}", x_small, dtype, eps=None)
        # Root mean square 300: every row has an element at least 300 in magnitude, whose square
        # overflows float16 (65504); harmless in float32.
        x_big = _rounded(_scaled(_standard_rows(rng, 8, rows), np.full(8, 300.0)), "float16")
        for work in ("float16", "float32"):
            add(f"float16 overflow:{work}", x_big, work)
    return {probe.name: probe for probe in probes}


#: Groups whose mean squares are all within this range of their median were scaled alike.
UNIT_MEAN_SQUARE = (0.8, 1.25)


def rms_normalization_axes(y: np.ndarray, trailing: tuple[int, ...]) -> tuple[bool, tuple | None]:
    """Whether the output is scaled alike over exactly ``trailing`` and no smaller set.

    A set of axes is *scaled alike* when the mean squares of all its groups lie
    in [0.8, 1.25] times their median: 1 for RMSNorm, or any common factor (a
    module's weight filled with ones is its identity only if the module
    multiplies by the weight; Gemma's multiplies by 1 + weight, 2). Returns
    ``(right, smallest)``: ``right`` when ``trailing`` is scaled alike and no
    non-empty strict subset of it is; ``smallest`` the first smallest set that
    is (None if there is none).
    """
    subsets = [s for r in range(1, y.ndim + 1) for s in itertools.combinations(range(y.ndim), r)]

    def unit(axes: tuple[int, ...]) -> bool:
        ms = (y * y).mean(axis=axes)
        ms = ms / (np.median(ms) or 1.0)
        return bool(np.all((ms >= UNIT_MEAN_SQUARE[0]) & (ms <= UNIT_MEAN_SQUARE[1])))

    units = [a for a in subsets if unit(a)]
    smallest = next((a for a in units if not any(set(b) < set(a) for b in units)), None)
    right = trailing in units and not any(set(a) < set(trailing) for a in units)
    return right, smallest


def detect_rms_wrong_axis(ctx: Context) -> Finding | None:
    """``wrong_axis`` (RMSNorm): the mean of squares runs over other axes than the trailing ones.

    Input: plain 2-d rows (``rows_axes``), a 3-d input (``batch_axes``) and, for
    a function, a 3-d input with a two-dimensional ``normalized_shape``
    (``two_axes``); along every axis the positions are scaled alternately by
    1/2 and 2 (:func:`_rms_axis_test_input`). Measurement: the sets of axes
    over which every group of the output has the same mean square
    (:func:`rms_normalization_axes`); the trailing dimensions must be one, and
    no smaller set. Threshold: every group's mean square within [0.8, 1.25]
    times their median. A correct output has ``ms/(ms + eps)`` over the
    trailing axes, within 1e-3 of 1 for the probes' rows (mean square at least
    0.02) and any eps up to 1e-5, plus float32 rounding; a wrong set leaves
    groups near 0.12 of the others (a factor of 16 between the 1/2- and
    2-scaled positions). When the plain 2-d rows are normalized over wrong
    axes, the detectors on rows stand down.
    """
    wrong, largest = {}, 0.0
    for probe in ("rows_axes", "batch_axes", "two_axes"):
        y = ctx.output(probe)
        if y is None:
            continue
        shape = ctx.calls[probe].probe.normalized_shape
        trailing = tuple(range(y.ndim - len(shape), y.ndim))
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            ms = (y * y).mean(axis=trailing)
            largest = max(largest, float(np.max(np.abs(ms / np.median(ms) - 1.0))))
            right, smallest = rms_normalization_axes(y, trailing)
        if not right:
            what = f"scaled over axes {smallest}" if smallest else "scaled over no set of axes"
            wrong[probe] = (y.shape, shape, trailing, what)
    ctx.measure(
        "wrong_axis",
        "largest |mean(y^2) over the trailing axes / their median - 1|",
        largest,
        1 - UNIT_MEAN_SQUARE[0],
    )
    return _wrong_axis_finding(ctx, wrong)


def detect_rms_eps_ignored(ctx: Context) -> Finding | None:
    """``eps_ignored`` (RMSNorm): a row of zeros gives NaN or inf.

    Input: two rows of zeros among two ordinary rows. Measurement: whether the
    zero rows' outputs are finite. RMSNorm gives 0 * rsqrt(0 + eps) = 0; only a
    denominator without eps gives 0/0. No rounding involved.
    """
    y = ctx.output("constant")
    if y is None or ctx.rows_unreliable:
        return None
    bad = ~np.isfinite(y.reshape(y.shape[0], -1)[:2]).all(axis=1)
    if not bad.any():
        return None
    return Finding(
        "eps_ignored",
        f"{int(bad.sum())} of 2 rows of zeros came out as NaN or inf: their mean square is 0, "
        "so eps is missing from the denominator",
        {"rows of zeros with non-finite output": int(bad.sum())},
        "rms",
    )


#: Row mean of the output / row mean of RMSNorm's, at most this: the rows were centred.
CENTRED_FRACTION = 0.1


def detect_centres_rows(ctx: Context) -> Finding | None:
    """``centres_rows``: the function subtracts each row's mean (a LayerNorm).

    Input: rows of standard deviation 1 whose means are 1 to 2 of either sign
    (``offset_rows``, no weight). Measurement: the largest ratio, over the
    rows, of the output row's mean to the exact RMSNorm's, which is
    ``mean/sqrt(mean^2 + 1) >= 0.7`` in magnitude. Threshold: 0.1. RMSNorm,
    with any eps up to 1e-3 and 16-bit rounding, gives a ratio within 1e-2 of
    1; a function that centres gives its rounding, below 1e-6.
    """
    y = ctx.output("offset_rows")
    if y is None or ctx.rows_unreliable:
        return None
    call = ctx.calls["offset_rows"]
    rows = y.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = y.reshape(rows, -1).mean(axis=1) / call.reference.reshape(rows, -1).mean(axis=1)
    largest = float(np.max(np.abs(ratio))) if np.all(np.isfinite(ratio)) else float("inf")
    if not ctx.measure(
        "centres_rows", "largest row mean(y) / row mean(RMSNorm)", largest, CENTRED_FRACTION, False
    ).flagged:
        return None
    return Finding(
        "centres_rows",
        f"on rows whose means are 1 to 2 standard deviations from zero, its output rows have "
        f"means at most {largest:.2g} of RMSNorm's (which are at least 0.7): it subtracts the "
        "mean",
        {"largest output row mean / RMSNorm row mean": largest},
        "rms",
    )


#: 16-bit eps=None estimates above this are a 16-bit format's own eps (2**-10, 2**-7).
HALF_EPS_THRESHOLD = 2.0**-13


def _half_eps_estimates(ctx: Context) -> dict[str, float]:
    """The eps each 16-bit eps=None probe's rows show: median of ``d**2 - mean(x^2)``."""
    estimates = {}
    for dtype in ctx.subject.half_dtypes:
        call = ctx.calls.get(f"{dtype} eps=None:{dtype}")
        if call is None or call.output is None:
            continue
        rms, d = fitted_denominator(call.probe.x, call.output, centre=False)
        with np.errstate(invalid="ignore"):
            estimates[dtype] = float(np.median(d**2 - rms**2))
    return estimates


def detect_eps_default_mismatch(ctx: Context) -> Finding | None:
    """``eps_default_mismatch``: called with eps=None, it does not use float32's machine epsilon.

    Inputs: the float32 eps probe called with eps=None (rows of root mean
    square 2**-24 ... 64), and for 16-bit inputs rows of root mean square
    2**-5, 2**-6 and 2**-7 in float16 (and bfloat16) called with eps=None.
    Measurements: in float32, :func:`eps_fit` against ``sqrt(mean(x^2) + 2**-23)``
    (rows deviate by more than 1e-3 and ``d**2 - mean(x^2)`` agrees to 5% across
    the rows that resolve eps: that is the eps used); in 16 bits, the median of
    ``d**2 - mean(x^2)``. Threshold for 16 bits: 2**-13. The 16-bit output
    rounds ``d`` by at most 2**-8 (bfloat16), so the estimate is off by at most
    2**-7 of ``mean(x^2) + eps``: 2**-17 for the rows of mean square up to 2**-10
    when eps is 2**-23, 16 times below the threshold, which in turn is 8 times
    below float16's 2**-10 and 64 times below bfloat16's 2**-7 (the eps of a
    function that resolves None by ``torch.finfo(x.dtype)``). Reported only
    when an eps passed explicitly is used: a hard-coded eps is ``eps_mismatch``,
    with the eps=None case in its evidence.
    """
    if ctx.found("eps_mismatch") or ctx.found("eps_outside_sqrt") or ctx.rows_unreliable:
        return None
    seen = {}
    fit = _eps_fits(ctx).get(None)
    if fit is not None and fit["verdict"] in ("inside", "zero") and not ctx.found("eps_ignored"):
        seen["float32"] = fit["estimated eps"]
    estimates = _half_eps_estimates(ctx)
    if estimates:
        ctx.measure(
            "eps_default_mismatch",
            "eps estimated for 16-bit inputs called with eps=None",
            max(estimates.values()),
            HALF_EPS_THRESHOLD,
        )
    seen.update({k: v for k, v in estimates.items() if v > HALF_EPS_THRESHOLD})
    if not seen:
        return None
    used = "; ".join(f"{v:.3g} for {k} inputs" for k, v in seen.items())
    called = "called with eps=None"
    if ctx.subject.is_module:
        called = "with eps=None (its eps attribute, or torch's default where it has none)"
    return Finding(
        "eps_default_mismatch",
        f"{called} it uses {used}; torch.nn.functional.rms_norm uses "
        f"{2.0**-23:.3g} (float32's machine epsilon) for float16, bfloat16 and float32 inputs",
        {"eps used with eps=None, by input dtype": seen, "torch's": 2.0**-23},
        "rms",
    )


#: More than this fraction of 16-bit outputs differing from the float32 path's rounded: a finding.
HALF_DIFFER_FRACTION = 0.05


def _as_dtype_bits(values: np.ndarray, dtype: str) -> torch.Tensor:
    """``values`` rounded to the 16-bit ``dtype``, as ordered integers (neighbours differ by 1)."""
    bits = torch.from_numpy(np.asarray(values, np.float64)).to(_TORCH_DTYPES[dtype])
    bits = bits.view(torch.int16).to(torch.int64)
    return torch.where(bits < 0, -(2**15) - bits, bits)


def ulp_distance(a: np.ndarray, b: np.ndarray, dtype: str) -> np.ndarray:
    """How many 16-bit numbers of ``dtype`` apart ``a`` and ``b`` are, once rounded to it."""
    return (_as_dtype_bits(a, dtype) - _as_dtype_bits(b, dtype)).abs().numpy()


def _ulps(count: int) -> str:
    return f"{count} ulp" if count == 1 else f"{count} ulps"


def _differ(a: np.ndarray, b: np.ndarray, dtype: str) -> tuple[float, int]:
    """Fraction of elements of ``a`` and ``b`` that differ once rounded to ``dtype``, and the
    largest distance in units in the last place (a non-finite mismatch counts as different)."""
    ra, rb = _rounded(a, dtype), _rounded(b, dtype)
    finite = np.isfinite(ra) & np.isfinite(rb)
    mismatch = ~finite & ~((ra == rb) | (np.isnan(ra) & np.isnan(rb)))
    distance = ulp_distance(np.where(finite, ra, 0.0), np.where(finite, rb, 0.0), dtype)
    different = (distance > 0) | mismatch
    return float(different.mean()) if different.size else 0.0, int(distance.max(initial=0))


#: The RMSNorm 16-bit probes: name -> (storage dtype, what their rows are).
RMS_HALF_PROBES = {
    "float16": ("float16", "rms about 1"),
    "bfloat16": ("bfloat16", "rms about 1"),
    "float16 overflow": ("float16", "rms 300: squares above 65504"),
}


def detect_rms_low_precision(ctx: Context) -> Finding | None:
    """``low_precision_accumulation`` (RMSNorm): for 16-bit inputs it computes in 16 bits.

    Input: float16 (and, in torch, bfloat16) rows of root mean square 1/2 to 2,
    and float16 rows of root mean square 300 (squares beyond 65504 overflow
    float16), without weight, each called as they are and converted to float32
    (the same values). Measurement: the fraction of the 16-bit outputs that
    differ from the float32 outputs rounded to 16 bits, and by how many ulps.
    Threshold: 5%. Computing in float32 and rounding once gives the same
    float32 values on both paths, so the same 16-bit outputs; a function whose
    two paths sum in different orders flips a rounding only where its float32
    values fall within a few 2**-24 of a 16-bit rounding boundary, a fraction
    of about 2**-12 of float16 outputs and 2**-15 of bfloat16 ones. A mean of
    squares rounded to 16 bits (or an rstd, or the product x * rstd) moves
    every output by a fraction of an ulp that differs from row to row: 18% to
    51% of the outputs differ, by 1 or 2 ulps, for the 16-bit RMSNorms of
    tests/test_diagnose_rms.py in torch and NumPy (eight seeds), 3.7 times the
    threshold at least; overflowed squares give zeros, 100%.
    Comparing the function with itself makes it blind to every other mistake;
    the outputs are both rounded to 16 bits, so a float32 output is not
    mistaken for a 16-bit computation (that is ``dtype_changed``).
    """
    seen, largest, measured = {}, 0.0, False
    for name, (storage, rows) in RMS_HALF_PROBES.items():
        low, high = ctx.calls.get(f"{name}:{storage}"), ctx.calls.get(f"{name}:float32")
        if low is None or high is None or low.output is None or high.output is None:
            continue
        fraction, ulps = _differ(low.output, high.output, storage)
        largest, measured = max(largest, fraction), True
        if fraction > HALF_DIFFER_FRACTION:
            seen[f"{name} ({rows})"] = {"outputs differing": fraction, "largest ulps": ulps}
    if measured:
        ctx.measure(
            "low_precision_accumulation",
            "fraction of 16-bit outputs differing from its float32 output rounded",
            largest,
            HALF_DIFFER_FRACTION,
        )
    if not seen:
        return None
    return Finding(
        "low_precision_accumulation",
        "its 16-bit outputs differ from its own float32 computation, rounded to 16 bits, in "
        + "; ".join(
            f"{v['outputs differing']:.0%} of the outputs (by up to {_ulps(v['largest ulps'])}) on "
            f"{k} rows"
            for k, v in seen.items()
        )
        + ". Computing in float32 and rounding once gives identical outputs",
        {"by input": seen},
        "rms",
    )


def detect_rms_affine_wrong(ctx: Context) -> Finding | None:
    """``affine_wrong`` (RMSNorm): the weight is not applied as ``x_hat * weight``.

    Input: the same rows with a weight (entries of either sign, 0.5 <= |w| <=
    2), without it, and without it on ``x * weight``. Measurement: the output
    with weight against candidates built from the function's own plain
    output ``p``: ``p*w`` (correct), ``p`` (weight ignored), ``p*(1 + w)``
    (Gemma's parameterization, where ``w`` stores weight - 1), and the plain
    output for ``x * w`` (applied before normalizing). Threshold: a candidate
    matches within 1e-4 max|y|. The candidates differ by order one, rounding
    by a few u max|y| (at most 4u = 2.4e-7 with |w| <= 2). A module's plain
    output is computed with its weight filled with ones, which a (1 + weight)
    module multiplies by 2: its candidate is then ``p*(1 + w)/2``.
    """
    mine, plain = ctx.output("basic"), ctx.output("plain")
    call = ctx.calls["basic"]
    if mine is None or plain is None or call.probe.weight is None:
        return None
    w = call.probe.weight
    plain_one_plus = 2.0 if ctx.subject.is_module else 1.0  # 1 + the weight of the plain probe
    candidates = {
        "correct": plain * w,
        "the weight ignored": plain,
        "the weight applied as (1 + weight)": plain * (1.0 + w) / plain_one_plus,
    }
    if ctx.output("affine_first") is not None:
        candidates["the weight applied before normalizing"] = ctx.output("affine_first")
    scale = float(np.max(np.abs(mine[np.isfinite(mine)]), initial=0.0)) or 1.0
    with np.errstate(invalid="ignore"):
        distance = {k: float(np.max(np.abs(mine - c))) / scale for k, c in candidates.items()}
    if not ctx.measure(
        "affine_wrong", "distance to x_hat*w / max|y|", distance["correct"], AFFINE_MATCH
    ).flagged:
        return None
    matches = [k for k, v in distance.items() if v <= AFFINE_MATCH]
    what = matches[0] if matches else "the weight applied in some other way"
    note = (
        " (right only where the stored weight is w - 1, as in Gemma; torch.nn.RMSNorm and "
        "LLaMA multiply by the weight itself)"
        if what == "the weight applied as (1 + weight)"
        else ""
    )
    return Finding(
        "affine_wrong",
        f"{what}{note}",
        {"distance to x_hat*w, fraction of max|y|": distance["correct"], "matches": what},
        "rms",
    )


#: Fraction of outputs differing from multiply-first above which cast-first is suspected ...
CAST_ORDER_FRACTION = 0.10
#: ... provided the outputs match cast-first except for at most this fraction.
CAST_FIRST_MATCH = 0.02


def detect_cast_order(ctx: Context) -> Finding | None:
    """``cast_order``: for 16-bit input and weight, it rounds ``x_hat`` to 16 bits, then multiplies.

    Input: float16 (and, in torch, bfloat16) rows of root mean square 1/2 to 2
    with a weight of the same 16-bit dtype (0.5 <= |w| <= 2, either sign), as a
    model converted with ``.to(dtype)`` has. Measurement: from the function's
    own float32 output ``p`` without weight (the same values), torch's order
    ``round16(p * w)`` (multiply in float32, round once) and the cast-first
    order ``round16(round16(p) * w)``; the fraction of the function's outputs
    that differ from each. Threshold: more than 10% differ from multiply-first
    and at most 2% from cast-first. The two orders differ in a quarter of the
    outputs, each by one ulp (chapter 10 predicts 26% and measures 20% to 32%);
    a function that multiplies first differs from multiply-first only where
    its 16-bit path's float32 values differ from its float32 path's, a
    fraction below 2**-12 (see ``low_precision_accumulation``). Stands down
    when the statistics are already in 16 bits (which also rounds before the
    weight) or the weight is applied wrongly.
    """
    if ctx.found("low_precision_accumulation") or ctx.found("affine_wrong"):
        return None
    seen, largest = {}, 0.0
    for dtype in ctx.subject.half_dtypes:
        mine, plain = ctx.calls.get(f"{dtype} weight:{dtype}"), ctx.calls.get(f"{dtype}:float32")
        if mine is None or plain is None or mine.output is None or plain.output is None:
            continue
        if mine.probe.weight is None:
            continue
        p = torch.from_numpy(plain.output).float()
        w = torch.from_numpy(mine.probe.weight).float()
        half = _TORCH_DTYPES[dtype]
        multiply_first = (p * w).to(half).double().numpy()
        cast_first = (p.to(half).float() * w).to(half).double().numpy()
        differ_multiply, ulps = _differ(mine.output, multiply_first, dtype)
        differ_cast, _ = _differ(mine.output, cast_first, dtype)
        largest = max(largest, differ_multiply)
        if differ_multiply > CAST_ORDER_FRACTION and differ_cast <= CAST_FIRST_MATCH:
            seen[dtype] = {
                "outputs differing from multiply-first": differ_multiply,
                "largest ulps": ulps,
                "outputs differing from cast-first": differ_cast,
            }
    ctx.measure(
        "cast_order",
        "fraction of 16-bit outputs differing from round16(x_hat * weight)",
        largest,
        CAST_ORDER_FRACTION,
    )
    if not seen:
        return None
    dtype = "bfloat16" if "bfloat16" in seen else next(iter(seen))  # a bfloat16 model's case first
    v = seen[dtype]
    return Finding(
        "cast_order",
        f"with {dtype} input and weight, {v['outputs differing from multiply-first']:.0%} of its "
        f"outputs differ from torch's order (multiply in float32, round once), by up to "
        f"{_ulps(v['largest ulps'])}; they match round16(round16(x_hat) * weight) "
        f"(differing in {v['outputs differing from cast-first']:.1%})",
        {"by dtype": seen},
        "rms",
    )


#: The RMSNorm detectors, in the order they run.
RMS_NORM_DETECTORS: tuple[Callable[[Context], Finding | None], ...] = (
    detect_raises,
    detect_dtype_changed,
    detect_mutates_input,
    detect_rms_wrong_axis,
    detect_rms_eps_ignored,
    detect_nan_spreads,
    detect_centres_rows,
    detect_eps_outside_sqrt,
    detect_eps_mismatch,
    detect_eps_default_mismatch,
    detect_rms_low_precision,
    detect_rms_affine_wrong,
    detect_cast_order,
    detect_wrong_output,
)

#: A float32 RMSNorm's measured error envelope in float32 eps x max|y|, not a derived bound:
#: chapter 10 measures torch and lnorm within it (N = 4096, |mean| <= 1e6) and asserts so; the
#: first-order bound it derives, (s + 11)/4, is 10.25 for NumPy's sums of 4096 terms.
RMS_TOLERANCE_BOUND = 2.5


def rms_tolerance(ctx: Context) -> tuple[tuple[float, float], str]:
    """``(rtol, atol)`` for comparing the function's float32 RMSNorm output with torch's, and why.

    Chapter 10: a float32 RMSNorm has no cancellation; its measured error stays
    within 2.5 float32 eps times max|y| (torch's kernel and lnorm's, measured at
    N = 4096 and |mean| <= 1e6). Two implementations may differ by the sum of
    their envelopes; the function's envelope is 2.5 unless its measured error on
    the ordinary and offset rows is larger, then that scaled up to a power of
    two. ``atol = (E_fn + E_torch) eps32 * 5`` for outputs up to 5 in magnitude,
    ``rtol = 0`` as for LayerNorm (scale atol with max|y|/5).
    """
    eps32 = float(np.finfo(np.float32).eps)
    measured = [
        errors.eps_units(c.output.astype(np.float32), c.reference)
        for c in (ctx.calls.get("basic"), ctx.calls.get("offset_rows"))
        if c is not None and c.output is not None and np.all(np.isfinite(c.output))
    ]
    excess = max(measured, default=0.0) / RMS_TOLERANCE_BOUND
    ctx.envelope_ratio = excess
    fn_bound = RMS_TOLERANCE_BOUND * 2.0 ** max(0, math.ceil(math.log2(max(excess, 1e-9))))
    atol = (fn_bound + RMS_TOLERANCE_BOUND) * eps32 * TOLERANCE_MAX_OUTPUT
    eps = ctx.eps
    reason = (
        f"its measured float32 error is {max(measured, default=float('nan')):.2g} float32 eps x "
        f"max|y|; the measured envelope of a float32 RMSNorm ({fn_bound:g}"
        + (", scaled up to cover it" if fn_bound > RMS_TOLERANCE_BOUND else "")
        + f") plus torch's ({RMS_TOLERANCE_BOUND:g}) for outputs "
        f"|y| <= {TOLERANCE_MAX_OUTPUT:g}, at any mean (RMSNorm has no cancellation), with the "
        f"same eps on both sides (it used {_eps_text(eps)}"
        + (", torch's default" if eps is None else "")
        + ")"
    )
    return (0.0, float(f"{atol:.2g}")), reason


# ----------------------------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------------------------

_DETECTORS = {"layer": LAYER_NORM_DETECTORS, "rms": RMS_NORM_DETECTORS}
_PROBES = {"layer": layer_norm_probes, "rms": rms_norm_probes}
_TOLERANCES = {"layer": tolerance, "rms": rms_tolerance}

#: Findings that are a different order of roundings, not a different formula: the float32 output
#: is unchanged, and 16-bit outputs differ from torch's by one 16-bit ulp at most, so the report
#: still gives the float32 tolerance.
ROUNDING_ORDER_KINDS = frozenset({"cast_order"})


def check(
    fn: Callable | torch.nn.Module,
    framework: str = "torch",
    *,
    norm: str = "layer",
    half: bool = True,
    normalized_shape: int | Sequence[int] | None = None,
    name: str | None = None,
    seed: int = 0,
) -> Report:
    """Check a LayerNorm (or RMSNorm) implementation and report every mistake found, with evidence
    and a fix.

    ``fn`` has the signature of ``torch.nn.functional.layer_norm``,
    ``fn(x, normalized_shape, weight=None, bias=None, eps=1e-5)``, on torch
    tensors (``framework="torch"``) or NumPy arrays (``framework="numpy"``); or
    it is an ``nn.Module`` whose ``normalized_shape`` (or ``weight``'s shape, or
    the ``normalized_shape`` argument), ``weight``, ``bias`` and ``eps``
    attributes are used where it has them (it is run on copies, as
    ``module.to(dtype)``, with its weight and bias set to the probes'; without
    an eps attribute it is judged against torch's 1e-5). ``half=False`` skips
    the float16/bfloat16 probes, for an implementation meant for float32 only.
    The reader's arrays are never the checker's references: ``fn`` gets copies.
    The probes are seeded with ``seed``: the same inputs, and the same report, on every run.

    ``norm="rms"`` checks an RMSNorm: ``fn`` has the signature of
    ``torch.nn.functional.rms_norm``, ``fn(x, normalized_shape, weight=None,
    eps=None)``, and is called with eps 1e-5, 1e-3 and None (torch's default,
    float32's machine epsilon for 16- and 32-bit inputs); or it is an
    ``nn.Module`` (``torch.nn.RMSNorm``, a model's class) whose ``weight`` and
    ``eps`` (or Hugging Face's ``variance_epsilon``; None when it has neither)
    are used. Its detectors are :data:`RMS_NORM_DETECTORS`.
    """
    if norm not in _DETECTORS:
        raise NotImplementedError(f"check knows norm='layer' and norm='rms', got norm={norm!r}")
    subject = Subject(fn, framework, normalized_shape, norm)
    if name is not None:
        subject.name = name
    probes = _PROBES[norm](subject, half, seed)
    ctx = Context(subject, {name: subject.call(probe) for name, probe in probes.items()})
    for detector in _DETECTORS[norm]:
        finding = detector(ctx)
        if finding is not None:
            ctx.findings.append(dataclasses.replace(finding, norm=norm))
    findings = tuple(ctx.findings)
    if any(finding.kind not in ROUNDING_ORDER_KINDS for finding in findings):
        return Report(subject.name, framework, findings, None, None, ctx.measurements, norm)
    rtol_atol, reason = _TOLERANCES[norm](ctx)
    if findings:
        reason += "; its 16-bit outputs differ from torch's by one 16-bit ulp (the cast order)"
    return Report(
        subject.name, framework, findings, rtol_atol, reason, ctx.measurements, norm,
        ctx.envelope_ratio,
    )


def load(target: str) -> Callable:
    """The object named by ``path/to/file.py:name``; ValueError if there is none."""
    path, _, attribute = target.rpartition(":")
    if not path or not attribute:
        raise ValueError(f"expected path/to/file.py:function, got {target!r}")
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    if spec is None or spec.loader is None or not Path(path).is_file():
        raise ValueError(f"cannot load {path!r} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    found = getattr(module, attribute, None)
    if found is None:
        raise ValueError(f"{path} has no attribute {attribute!r}")
    if isinstance(found, type):
        raise ValueError(f"{attribute} is a class: name a function, or an nn.Module instance")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: exit status 0 without findings, 1 with, 2 for a usage error."""
    parser = argparse.ArgumentParser(
        prog="python -m lnorm.diagnose",
        description="Check a LayerNorm implementation with the signature of "
        "torch.nn.functional.layer_norm (or, with --rms, an RMSNorm with the signature of "
        "torch.nn.functional.rms_norm), or an nn.Module instance, and report its mistakes. "
        "Exit status: 0 without findings, 1 with findings, 2 for a usage error.",
    )
    parser.add_argument("target", help="path/to/file.py:function (or :module_instance)")
    parser.add_argument("--numpy", action="store_true", help="the function takes NumPy arrays")
    parser.add_argument("--no-half", action="store_true", help="skip the float16/bfloat16 probes")
    parser.add_argument(
        "--rms",
        action="store_true",
        help="check an RMSNorm: fn(x, normalized_shape, weight=None, eps=None)",
    )
    args = parser.parse_args(argv)
    try:
        fn = load(args.target)
    except ValueError as error:
        parser.error(str(error))
    report = check(
        fn,
        "numpy" if args.numpy else "torch",
        norm="rms" if args.rms else "layer",
        half=not args.no_half,
        name=args.target,
    )
    print(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
