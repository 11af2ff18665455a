"""The entry point: check(fn) runs the probes and the detectors and returns a Report."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from lnorm.diagnose.detectors_layer import LAYER_NORM_DETECTORS
from lnorm.diagnose.detectors_rms import RMS_NORM_DETECTORS
from lnorm.diagnose.measure import Context
from lnorm.diagnose.probes import layer_norm_probes, rms_norm_probes
from lnorm.diagnose.report import Report
from lnorm.diagnose.subject import Subject
from lnorm.diagnose.tolerance import rms_tolerance, tolerance


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
