"""The entry point: check(fn) runs the probes and the detectors and returns a Report."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch

from lnorm.diagnose import detectors_layer as layer
from lnorm.diagnose import detectors_rms as rms
from lnorm.diagnose.backward import HALF_ONLY_KINDS, detect_wrong_gradient
from lnorm.diagnose.detectors_common import (
    detect_dtype_changed,
    detect_eps_mismatch,
    detect_eps_outside_sqrt,
    detect_mutates_input,
    detect_nan_spreads,
    detect_raises,
    detect_wrong_output,
)
from lnorm.diagnose.detectors_scope import detect_channels_first, detect_wrong_long_rows
from lnorm.diagnose.kinds import NORM_NAMES, ROUNDING_ORDER_KINDS
from lnorm.diagnose.measure import Context
from lnorm.diagnose.probes import layer_norm_probes, rms_norm_probes
from lnorm.diagnose.report import Finding, Report
from lnorm.diagnose.subject import Subject
from lnorm.diagnose.tolerance import (
    TOLERANCE_MAX_OUTPUT,
    rms_tolerance,
    tolerance,
    tolerance_scope,
)

Detector = Callable[[Context], Finding | None]

#: The LayerNorm detectors, in the order they run.
LAYER_NORM_DETECTORS: tuple[Detector, ...] = (
    detect_channels_first,
    detect_raises,
    detect_dtype_changed,
    detect_mutates_input,
    layer.detect_wrong_axis,
    layer.detect_does_not_centre,
    layer.detect_eps_ignored,
    detect_nan_spreads,
    layer.detect_bessel_correction,
    detect_eps_outside_sqrt,
    detect_eps_mismatch,
    layer.detect_one_pass_variance,
    layer.detect_low_precision_accumulation,
    layer.detect_affine_wrong,
    detect_wrong_output,
    detect_wrong_long_rows,
    detect_wrong_gradient,
)

#: The RMSNorm detectors, in the order they run.
RMS_NORM_DETECTORS: tuple[Detector, ...] = (
    detect_channels_first,
    detect_raises,
    detect_dtype_changed,
    detect_mutates_input,
    rms.detect_rms_wrong_axis,
    rms.detect_rms_eps_ignored,
    detect_nan_spreads,
    rms.detect_centres_rows,
    detect_eps_outside_sqrt,
    detect_eps_mismatch,
    rms.detect_eps_default_mismatch,
    rms.detect_rms_low_precision,
    rms.detect_rms_affine_wrong,
    rms.detect_cast_order,
    detect_wrong_output,
    detect_wrong_long_rows,
    detect_wrong_gradient,
)

_DETECTORS = {"layer": LAYER_NORM_DETECTORS, "rms": RMS_NORM_DETECTORS}
_PROBES = {"layer": layer_norm_probes, "rms": rms_norm_probes}
_TOLERANCES = {"layer": tolerance, "rms": rms_tolerance}


def check(
    fn: Callable | torch.nn.Module,
    framework: str = "torch",
    *,
    norm: str = "layer",
    half: bool = True,
    normalized_shape: int | Sequence[int] | None = None,
    eps: float | None | str = "unset",
    device: str = "cpu",
    cast: str = "torch",
    name: str | None = None,
    seed: int = 0,
) -> Report:
    """Check a LayerNorm (or RMSNorm) implementation and report every mistake found, with evidence
    and a fix.

    ``fn`` has the signature of ``torch.nn.functional.layer_norm``,
    ``fn(x, normalized_shape, weight=None, bias=None, eps=1e-5)``, on torch
    tensors (``framework="torch"``) or NumPy arrays (``framework="numpy"``); or
    it is an ``nn.Module``. A module is read as it is (:mod:`lnorm.diagnose.modules`): its
    row length from ``normalized_shape`` (or its parameters, or the argument), its eps from
    ``eps``, ``variance_epsilon``, ``epsilon``, ... (or the argument ``eps=``; without
    either it is judged against torch's 1e-5, and the report says so), its affine
    parameters under the names models give them. It runs on copies, with its parameters set
    to the probes'; 16-bit probes run it converted (``module.to(dtype)``) or, if that raises,
    with float32 parameters (mixed precision). ``half=False`` skips the float16/bfloat16
    probes, for an implementation meant for float32 only. A function's rows have
    ``normalized_shape`` elements (64 by default), beside rows of 4096 and 4097. ``device``
    runs the calls there (the references stay float64 on the CPU). Where the output requires
    grad, the backward is checked against float64 gradients. The probes are seeded with
    ``seed``: the same inputs, and the same report, on every run.

    ``norm="rms"`` checks an RMSNorm: ``fn`` has the signature of
    ``torch.nn.functional.rms_norm``, ``fn(x, normalized_shape, weight=None,
    eps=None)``, and is called with eps 1e-5, 1e-3 and None (torch's default,
    float32's machine epsilon for 16- and 32-bit inputs); or it is an ``nn.Module``.
    ``cast`` names the order its model rounds 16-bit outputs in: ``"torch"`` (multiply in
    float32, round once), ``"llama"``, ``"mistral"``, ``"t5"`` (round x_hat to 16 bits, then
    multiply) or ``"gemma"`` (float32, by 1 + weight: the stored weight is w - 1). Another
    order than the named one is a note (``cast_order``), never a mistake.
    """
    if norm not in _DETECTORS:
        raise NotImplementedError(f"check knows norm='layer' and norm='rms', got norm={norm!r}")
    subject = Subject(fn, framework, normalized_shape, norm, eps, device, cast)
    if name is not None:
        subject.name = name
    probes = _PROBES[norm](subject, half, seed)
    calls = {name: subject.call(probe) for name, probe in probes.items()}
    _refuse_signature_mismatch(subject, calls.values(), norm)
    ctx = Context(
        subject,
        {k: c for k, c in calls.items() if not c.probe.side},
        {k: c for k, c in calls.items() if c.probe.side},
    )
    for detector in _DETECTORS[norm]:
        finding = detector(ctx)
        if finding is not None:
            ctx.findings.append(dataclasses.replace(finding, norm=norm))
        if ctx.layout_wrong:  # the other probes are another layout for this module
            break
    mistakes = tuple(f for f in ctx.findings if f.kind not in ROUNDING_ORDER_KINDS)
    note_findings = tuple(f for f in ctx.findings if f.kind in ROUNDING_ORDER_KINDS)
    order_notes = [f"{f.kind}: {f.message}" for f in note_findings]
    notes = tuple(dict.fromkeys(order_notes + subject.notes + [_scope(ctx)]))
    half_only = frozenset(k for k in HALF_ONLY_KINDS if ctx.found(k))
    if any(finding.kind not in half_only for finding in mistakes):
        return Report(subject.name, framework, mistakes, None, None, ctx.measurements, norm,
                      notes=notes, half_only=half_only, note_findings=note_findings)
    rtol_atol, reason = _TOLERANCES[norm](ctx)
    tolerances = {"float32": rtol_atol}
    if not mistakes:  # 16-bit outputs: one more ulp of their own, eps_16 * max|y|
        for dtype in _probed_half_dtypes(ctx):
            atol_16 = rtol_atol[1] + float(torch.finfo(getattr(torch, dtype)).eps) * (
                TOLERANCE_MAX_OUTPUT)
            tolerances[dtype] = (rtol_atol[0], float(f"{atol_16:.2g}"))
        if len(tolerances) > 1:
            reason += (f"; a 16-bit output may differ from torch's by one ulp more, its eps x "
                       f"max|y| (|y| <= {TOLERANCE_MAX_OUTPUT:g}), as chapter 3 counts it")
    if order_notes:
        reason += "; its 16-bit outputs differ from the named cast order's by one 16-bit ulp"
    return Report(
        subject.name, framework, mistakes, rtol_atol, reason, ctx.measurements, norm,
        ctx.envelope_ratio, notes, tolerances, half_only, note_findings, tolerance_scope(norm),
    )


def _probed_half_dtypes(ctx: Context) -> list[str]:
    """The 16-bit dtypes some probe ran in, float16 first."""
    return sorted({c.probe.dtype for c in ctx.calls.values()} & {"float16", "bfloat16"},
                  reverse=False)


def _refuse_signature_mismatch(subject: Subject, calls, norm: str) -> None:
    """TypeError when every call raised a TypeError about its arguments: ``fn`` does not take
    the arguments of ``F.layer_norm`` (a factory function named instead of its product?)."""
    calls = list(calls)
    raised = [c.error for c in calls if c.error]
    if not raised or any(c.output is not None for c in calls):
        return
    if all(e.startswith("TypeError") and "argument" in e for e in raised):
        signature = ("F.rms_norm's (x, normalized_shape, weight=None, eps=None)" if norm == "rms"
                     else "F.layer_norm's (x, normalized_shape, weight=None, bias=None, eps=1e-5)")
        raise TypeError(
            f"{subject.name} cannot be called as a {NORM_NAMES[norm]} ({raised[0]}): pass an "
            f"nn.Module instance, or a function with {signature} signature"
        )


def _scope(ctx: Context) -> str:
    """What was probed, in one line: dtypes and row lengths."""
    # A fixed order (a set's order changes from run to run): float32 first, then by name.
    dtypes = sorted({c.probe.dtype for c in ctx.calls.values()}, key=lambda d: (d != "float32", d))
    lengths = sorted({int(np.prod(c.probe.normalized_shape)) for c in ctx.calls.values()})
    long = "" if max(lengths) >= 4096 else " (no long rows: a module's rows are its own)"
    device = "" if ctx.subject.device.type == "cpu" else f", on {ctx.subject.device}"
    return (f"probed: {', '.join(dtypes)} inputs, rows of {', '.join(map(str, lengths))}{long}"
            f"{device}")
