"""Calling the reader's function or module on a probe, safely, and recording what happened."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lnorm import errors
from lnorm.diagnose.modules import read_module
from lnorm.validation import rms_norm_eps

#: The dtypes the probes use, by name; bfloat16 exists only in torch.
_TORCH_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
HALF_DTYPES = ("float16", "bfloat16")

#: The orders of roundings an RMSNorm may apply its weight in, by the model family that uses it,
#: for 16-bit input and weight: "multiply" is torch's (x_hat * weight in float32, rounded once),
#: "cast" rounds x_hat to 16 bits first (LLaMA, Mistral, T5). Gemma multiplies in float32 by
#: (1 + weight): its stored weight is w - 1 (see Subject.weight_offset).
CAST_ORDERS = {"torch": "multiply", "llama": "cast", "mistral": "cast", "t5": "cast",
               "gemma": "multiply"}


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
    #: The gradient of the loss with respect to the output: the call also runs the backward.
    dy: np.ndarray | None = None
    #: A probe of another layout (channels first): its call is not judged as LayerNorm's.
    side: bool = False


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
    #: The gradients with respect to x, weight and bias (float64 values) after a backward; a
    #: sentence instead when the backward could not run.
    grads: dict[str, np.ndarray | None] = field(default_factory=dict)
    grad_error: str | None = None
    _reference: np.ndarray | None = None

    @property
    def eps(self) -> float:
        """The eps the reference uses (RMSNorm's None resolved as torch does for these dtypes)."""
        p = self.probe
        return rms_norm_eps(p.eps, "float32") if p.norm == "rms" else p.eps

    @property
    def reference(self) -> np.ndarray:
        """LayerNorm (or RMSNorm) of the probe's exact values, in float64."""
        if self._reference is None:
            p = self.probe
            with np.errstate(invalid="ignore", divide="ignore"):
                if p.norm == "rms":
                    self._reference = errors.reference_rms_norm(
                        p.x, p.normalized_shape, p.weight, self.eps
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
    arguments afterwards with copies to see whether it changed them. ``notes`` collects what
    the checker assumed or could not check, for the report.
    """

    def __init__(
        self,
        fn: Callable | torch.nn.Module,
        framework: str,
        normalized_shape: int | Sequence[int] | None = None,
        norm: str = "layer",
        eps: float | None | str = "unset",
        device: str = "cpu",
        cast: str = "torch",
    ):
        if framework not in ("torch", "numpy"):
            raise ValueError(f"framework must be 'torch' or 'numpy', got {framework!r}")
        if not callable(fn):
            raise TypeError(f"check needs a function or an nn.Module, got {type(fn).__name__}")
        if cast not in CAST_ORDERS:
            raise ValueError(f"cast must be one of {', '.join(CAST_ORDERS)}, got {cast!r}")
        if framework == "numpy" and device != "cpu":
            raise ValueError("NumPy functions run on the CPU: device= is for torch")
        self.fn = fn
        self.framework = framework
        self.norm = norm
        self.device = torch.device(device)
        try:  # a device torch cannot use is the caller's mistake, not the function's
            torch.empty(0, device=self.device)
        except (RuntimeError, AssertionError) as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"cannot run on device {device!r}: {message}") from None
        self.cast = cast
        #: Gemma stores weight - 1 and multiplies by (1 + weight): the checker hands it
        #: (weight - 1) so that its effective weight is the probe's.
        self.weight_offset = 1.0 if cast == "gemma" else 0.0
        self.is_module = isinstance(fn, torch.nn.Module)
        self.name = _name_of(fn)
        self.notes: list[str] = []
        if framework == "numpy":
            self.notes.append("backward: not checked (NumPy has no autograd)")
        if not self.is_module:
            #: Row shape of the probes; a function is also probed with other normalized_shapes.
            if normalized_shape is None:
                self.row_shape: tuple[int, ...] = (64,)
            elif isinstance(normalized_shape, int):
                self.row_shape = (normalized_shape,)
            else:
                self.row_shape = tuple(int(d) for d in normalized_shape)
            #: Whether to probe a normalized_shape of two dimensions too: not when the user
            #: named a one-dimensional one (a last-dim-only function is then what is asked for).
            self.probe_two_axes = normalized_shape is None or len(self.row_shape) > 1
            self.has_weight, self.has_bias = True, norm == "layer"
            #: The eps values probed: a function must use the one it is given. The first is the
            #: eps of every other probe; RMSNorm's None (torch's default) is probed on its own.
            defaults = (1e-5, 1e-3) if norm == "layer" else (1e-5, 1e-3, None)
            first = defaults[0] if eps == "unset" else eps
            self.eps_values: tuple[float | None, ...] = (first,) + tuple(
                e for e in defaults if e != first
            )
            self.eps_source = "passed to it as eps"
            self.half_dtypes = HALF_DTYPES if framework == "torch" else ("float16",)
            self._check_rows()
            return
        if framework != "torch":
            raise ValueError("an nn.Module is checked with framework='torch'")
        layout = read_module(fn, norm, normalized_shape, eps)
        self.row_shape = layout.row_shape
        self._check_rows()
        self.weight_name, self.bias_name = layout.weight, layout.bias
        self.has_weight, self.has_bias = layout.weight is not None, layout.bias is not None
        self.eps_values = (layout.eps,)
        self.eps_source = layout.eps_source
        self.notes += layout.notes
        self.half_dtypes = HALF_DTYPES
        #: How 16-bit inputs are run: "converted" (module.to(dtype)) or "float32 parameters".
        self.half_convention: str | None = None
        self._copies: dict[tuple[str, str], torch.nn.Module] = {}

    def _check_rows(self) -> None:
        if int(np.prod(self.row_shape)) < 2:
            raise ValueError(
                f"rows of {int(np.prod(self.row_shape))} element normalize to 0 whatever the "
                "formula: nothing to check"
            )

    # -- calling -------------------------------------------------------------------------------

    def call(self, probe: Probe) -> Call:
        record = Call(probe)
        if self.is_module and probe.dtype in HALF_DTYPES and self.half_convention is None:
            self._choose_half_convention(probe)
        args = self._arguments(probe)
        kept = [None if a is None else _copy_of(a) for a in args]
        backward = probe.dy is not None and self.framework == "torch"
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                with torch.set_grad_enabled(backward):
                    if backward:
                        for a in args:
                            if a is not None:
                                a.requires_grad_(True)
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
        if backward:
            self._backward(record, out, args)
        return record

    def _backward(self, record: Call, out: object, args: list) -> None:
        """The gradients of sum(out * dy) with respect to x and the weight and bias."""
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            record.grad_error = "its output does not require grad"
            return
        inputs = {"x": args[0]}
        if self.is_module:
            module = self._module_for(record.probe.dtype)
            for role, name in (("weight", self.weight_name), ("bias", self.bias_name)):
                if name is not None:
                    inputs[role] = module.get_parameter(name)
        else:
            inputs.update({k: a for k, a in zip(("weight", "bias"), args[1:]) if a is not None})
        dy = torch.from_numpy(record.probe.dy).to(out.dtype).to(out.device)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                grads = torch.autograd.grad(out, list(inputs.values()), dy, allow_unused=True)
        except Exception as error:  # the reader's backward may raise anything
            record.grad_error = f"its backward raised {type(error).__name__}: {error}".strip()
            return
        record.grads = {
            k: None if g is None else errors.as_numpy(g).astype(np.float64)
            for k, g in zip(inputs, grads)
        }

    def _arguments(self, probe: Probe) -> list:
        def array(values: np.ndarray | None) -> object:
            if values is None:
                return None
            if self.framework == "numpy":
                return values.astype(probe.dtype)
            return torch.from_numpy(values).to(_TORCH_DTYPES[probe.dtype]).to(self.device)

        if self.is_module:  # weight and bias go into the module's parameters instead
            return [array(probe.x), None, None]
        weight = probe.weight
        if self.weight_offset and self.has_weight:  # Gemma's stored weight is w - 1
            weight = (np.ones(probe.normalized_shape) if weight is None else weight) - 1.0
        return [array(probe.x), array(weight), array(probe.bias)]

    def _invoke(self, probe: Probe, x: object, weight: object, bias: object) -> object:
        if not self.is_module:
            if self.norm == "rms":
                return self.fn(x, probe.normalized_shape, weight, probe.eps)
            return self.fn(x, probe.normalized_shape, weight, bias, probe.eps)
        module = self._module_for(probe.dtype)
        # A module computes with its own parameters: set them to the probe's (ones and
        # zeros when the probe has none), on a copy, so the reader's module is untouched.
        with torch.no_grad():
            for name, values, default in (
                (self.weight_name, probe.weight, 1.0),
                (self.bias_name, probe.bias, 0.0),
            ):
                if name is None:
                    continue
                param = module.get_parameter(name)
                offset = self.weight_offset if name == self.weight_name else 0.0
                if values is None:
                    param.fill_(default - offset)
                else:
                    values = torch.from_numpy(values - offset).reshape(param.shape)
                    param.copy_(values)
        return module(x)

    def _module_for(self, dtype: str) -> torch.nn.Module:
        """A copy of the module on the device: for a 16-bit ``dtype`` with its floating
        parameters in ``dtype`` (``model.to(dtype)``) or in float32, as ``half_convention``
        says; for float32 and float64 in ``dtype``."""
        convention = self.half_convention if dtype in HALF_DTYPES else "converted"
        key = (dtype, convention or "converted")
        if key not in self._copies:
            target = dtype if key[1] == "converted" else "float32"
            module = copy.deepcopy(self.fn).to(_TORCH_DTYPES[target]).to(self.device)
            for p in module.parameters():
                p.requires_grad_(True)
            self._copies[key] = module
        return self._copies[key]

    def _choose_half_convention(self, probe: Probe) -> None:
        """Run a 16-bit probe both ways: the module converted, and with float32 parameters (as
        autocast and modules that compute in ``x.float()`` expect); keep one that works."""
        works = {}
        for convention in ("converted", "float32 parameters"):
            self.half_convention = convention
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = self._invoke(probe, *self._arguments(probe))
                works[convention] = isinstance(out, torch.Tensor)
            except Exception:  # noqa: BLE001 - which convention raises is what we learn here
                works[convention] = False
        if works["converted"]:
            self.half_convention = "converted"
            also = " (it runs with float32 parameters too)" if works["float32 parameters"] else ""
            self.notes.append(f"16-bit inputs: checked as module.to(dtype){also}")
        elif works["float32 parameters"]:
            self.half_convention = "float32 parameters"
            self.notes.append(
                "16-bit inputs: checked with float32 parameters (mixed precision: "
                "module.to(dtype) raises, float32 parameters with 16-bit input work)"
            )
        else:
            self.half_convention = "converted"  # both raise: reported as raises

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
    return a.detach().clone() if isinstance(a, torch.Tensor) else np.array(a, copy=True)


def _same_values(a: object, b: object) -> bool:
    return np.array_equal(errors.as_numpy(a), errors.as_numpy(b), equal_nan=True)
