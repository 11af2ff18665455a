"""Calling the reader's function or module on a probe, safely, and recording what happened."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lnorm import errors
from lnorm.validation import rms_norm_eps


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
                        p.x, p.normalized_shape, p.weight, rms_norm_eps(p.eps, "float32")
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
