"""Reading an ``nn.Module`` as it is: its eps, its affine parameters, its row length.

Models name things their own way: BERT's TF-style LayerNorm stores eps as
``variance_epsilon`` and its parameters as ``weight``/``bias``; the Annotated
Transformer's as ``eps`` and ``a_2``/``b_2``; others ``gamma``/``beta``, ``g``/``b``
or ``scale``/``shift``. The checker reads them where they are and says what it
assumed where it found nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: Attribute names that hold a normalization's eps, in the order they are looked up.
EPS_ATTRIBUTES = (
    "eps",
    "variance_epsilon",
    "epsilon",
    "eps_",
    "var_eps",
    "norm_eps",
    "layer_norm_eps",
    "layer_norm_epsilon",
    "rms_norm_eps",
)
#: Parameter names (the last part of a dotted name) that multiply, and that add.
MULTIPLIED_NAMES = ("weight", "a_2", "gamma", "g", "scale", "alpha")
ADDED_NAMES = ("bias", "b_2", "beta", "b", "shift", "offset")


@dataclass
class ModuleLayout:
    """What the checker learned about a module before calling it."""

    row_shape: tuple[int, ...]
    #: Dotted names of the parameter that multiplies and the one that adds (None: absent).
    weight: str | None
    bias: str | None
    eps: float | None
    #: Where the eps came from, in words ("its attribute variance_epsilon", ...).
    eps_source: str
    notes: list[str] = field(default_factory=list)


def find_eps(module: torch.nn.Module) -> tuple[str, float | None] | None:
    """``(attribute, value)`` of the first eps attribute of the module or a submodule."""
    for sub_name, sub in module.named_modules():
        for name in EPS_ATTRIBUTES:
            value = getattr(sub, name, "absent")
            if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
                dotted = f"{sub_name}.{name}" if sub_name else name
                return dotted, None if value is None else float(value)
    return None


def row_parameters(module: torch.nn.Module, n: int) -> list[str]:
    """Dotted names of the module's parameters with ``n`` elements (one per row position)."""
    return [name for name, p in module.named_parameters() if p.ndim >= 1 and p.numel() == n]


def affine_parameters(
    module: torch.nn.Module, n: int, norm: str
) -> tuple[str | None, str | None, str | None]:
    """``(weight, bias, note)``: the parameters that multiply and add, by their names.

    A parameter named like a weight (:data:`MULTIPLIED_NAMES`) multiplies, one named like a bias
    (:data:`ADDED_NAMES`) adds; an RMSNorm's single parameter of the row's size multiplies.
    Parameters of the row's size with other names are not guessed at: the note says that the
    affine step was not checked.
    """
    names = row_parameters(module, n)
    last = {name: name.rsplit(".", 1)[-1] for name in names}
    weight = next((k for k in names if last[k] in MULTIPLIED_NAMES), None)
    bias = next((k for k in names if last[k] in ADDED_NAMES), None) if norm == "layer" else None
    if norm == "rms" and weight is None and len(names) == 1:
        weight = names[0]
    unknown = [k for k in names if k not in (weight, bias)]
    note = None
    if unknown:
        note = (
            f"affine not checked: parameter{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)} not recognised as weight or bias; they keep their values"
        )
    return weight, bias, note


def read_module(
    module: torch.nn.Module,
    norm: str,
    normalized_shape: int | tuple[int, ...] | None,
    eps: float | None | str,
) -> ModuleLayout:
    """The row shape, affine parameters and eps of ``module``; ``eps="unset"`` reads it.

    ValueError when the row shape cannot be found (no ``normalized_shape`` attribute, no
    parameter to take it from, none passed).
    """
    shape = normalized_shape or getattr(module, "normalized_shape", None)
    if shape is None:
        weights = [p for p in module.parameters() if p.ndim >= 1]
        if len(weights) >= 1 and all(p.shape == weights[0].shape for p in weights):
            shape = tuple(weights[0].shape)
    if shape is None:
        raise ValueError(
            f"{type(module).__name__} has no normalized_shape attribute and no parameter to "
            "read the row length from: pass normalized_shape="
        )
    row_shape = (shape,) if isinstance(shape, int) else tuple(int(d) for d in shape)
    n = 1
    for d in row_shape:
        n *= d
    weight, bias, affine_note = affine_parameters(module, n, norm)
    notes = [affine_note] if affine_note else []
    renamed = [p for p, usual in ((weight, "weight"), (bias, "bias")) if p and p != usual]
    if renamed and not affine_note:
        roles = [f"{weight} multiplies"] if weight else []
        roles += [f"{bias} adds"] if bias else []
        notes.append(f"affine parameters: {' and '.join(roles)}")
    if eps != "unset":
        return ModuleLayout(row_shape, weight, bias, eps, "passed as eps=", notes)
    found = find_eps(module)
    if found is not None and (found[1] is not None or norm == "rms"):  # None: RMSNorm's default
        return ModuleLayout(row_shape, weight, bias, found[1], f"its attribute {found[0]}", notes)
    if norm == "rms":
        default, said = None, "torch's default (eps=None: 2**-23 for 16- and 32-bit inputs)"
    else:
        default, said = 1e-5, "1e-5"
    notes.append(f"no eps attribute: judged against {said}; pass eps=")
    return ModuleLayout(row_shape, weight, bias, default, "assumed (no eps attribute)", notes)


class ChannelsLast(torch.nn.Module):
    """A channels-first norm (it normalizes dim 1 of NCHW, as ConvNeXt's) seen channels-last.

    ``forward(x)`` takes rows of C channels, ``x[..., C]``, hands the module an input of shape
    (M, C, 1, 1), and moves the channels back last: ``inner(x4.movedim(-1, 1)).movedim(1, -1)``
    with ``x4 = x.reshape(-1, 1, 1, C)``. The checker then finds the module's parameters and
    eps through ``inner``.
    """

    def __init__(self, inner: torch.nn.Module, channels: int | None = None):
        super().__init__()
        self.inner = inner
        found = getattr(inner, "normalized_shape", None) or channels
        if found is None:
            found = next(p.shape[0] for p in inner.parameters() if p.ndim == 1)
        self.normalized_shape = (found,) if isinstance(found, int) else tuple(found)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = self.normalized_shape[-1]
        x4 = x.reshape(-1, 1, 1, channels)
        return self.inner(x4.movedim(-1, 1)).movedim(1, -1).reshape(x.shape)


def channels_last(module: torch.nn.Module, channels: int | None = None) -> ChannelsLast:
    """The adapter that lets :func:`lnorm.diagnose.check` check a channels-first norm."""
    return ChannelsLast(module, channels)
