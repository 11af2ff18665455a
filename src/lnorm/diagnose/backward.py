"""The backward pass: the reader's gradients against LayerNorm's (or RMSNorm's), in float64."""

from __future__ import annotations

import numpy as np

from lnorm.diagnose.measure import Context
from lnorm.diagnose.report import Finding
from lnorm.diagnose.subject import Call
from lnorm.gradients import layer_norm_backward_rows, rms_norm_backward_rows

#: A gradient farther than this from the reference, relative to its scale, is not rounding.
GRADIENT_TOLERANCE = 1e-3
#: Kinds only 16-bit probes reveal: the float32 path is right. With these, or the wrong_axis of
#: a two-axis normalized_shape, the backward is still checked: its probes are float32 rows of
#: the last axis, which neither touches.
HALF_ONLY_KINDS = frozenset({"low_precision_accumulation"})
BACKWARD_INDEPENDENT_KINDS = HALF_ONLY_KINDS | {"wrong_axis"}


def reference_gradients(call: Call) -> dict[str, np.ndarray]:
    """dx, dweight (and dbias) of the probe's exact values, in float64, by
    :mod:`lnorm.gradients`; also the scales the errors are measured against, and the
    mistakes' gradients that the finding names when one matches."""
    p = call.probe
    n = int(np.prod(p.normalized_shape))
    x = p.x.reshape(-1, n)
    dy = p.dy.reshape(-1, n)
    w = None if p.weight is None else p.weight.reshape(n)
    centred = x - x.mean(axis=1, keepdims=True) if p.norm == "layer" else x
    rstd = 1.0 / np.sqrt((centred * centred).mean(axis=1, keepdims=True) + call.eps)
    x_hat = centred * rstd
    g = dy if w is None else dy * w
    mean_g = g.mean(axis=1, keepdims=True)
    mean_gx = (g * x_hat).mean(axis=1, keepdims=True)
    if p.norm == "layer":
        dx, dw, db = layer_norm_backward_rows(dy, x_hat, rstd, w)
        mistakes = {
            "the mean treated as a constant (the term -mean(g) is missing)":
                rstd * (g - x_hat * mean_gx),
            "rstd treated as a constant (the term -x_hat * mean(g * x_hat) is missing)":
                rstd * (g - mean_g),
            "mean and rstd both treated as constants (dx = rstd * g)": rstd * g,
        }
    else:
        dx, dw = rms_norm_backward_rows(dy, x_hat, rstd, w)
        db = None
        mistakes = {"rstd treated as a constant (dx = rstd * g)": rstd * g}
    return {
        "x": dx, "weight": dw, "bias": db,
        "scale x": np.max(np.abs(dx)),
        "scale weight": np.max(np.abs(dy * x_hat).sum(axis=0)),
        "scale bias": np.max(np.abs(dy).sum(axis=0)),
        "dweight from x": (dy * x).sum(axis=0),
        "mistakes x": mistakes,
    }


def detect_wrong_gradient(ctx: Context) -> Finding | None:
    """``wrong_gradient``: the backward pass is not LayerNorm's (or RMSNorm's) gradient.

    Input: ordinary float32 rows (means within 2 of zero, standard deviations 0.5 to 2),
    with weight and bias, and for a function also 4 rows of 4097; the output's gradient dy
    is standard normal. The input, weight and bias require grad; torch's autograd (or the
    reader's own ``autograd.Function``) computes the gradients of sum(y * dy). Measurement:
    each gradient's largest error against the float64 reference (:mod:`lnorm.gradients` on
    the exact values), relative to max|dx| for dx and to the largest column sum of
    |dy * x_hat| (|dy|) for dweight (dbias), so that cancellation in a column sum cannot
    inflate it. Threshold: 1e-3. A correct float32 backward errs by a few u times the rows'
    condition (kappa < 5 here) in dx, and by at most (M + N) u in the column sums, below
    2.5e-4 for the 4097-element rows summed in order. Each mistake it names (the mean or
    rstd detached, x in place of x_hat in dweight) moves a gradient by about 1/sqrt(N) of
    its scale or more: 1.6e-2 at N = 4097. Stands down while the forward has a mistake,
    but for ``low_precision_accumulation`` and a ``wrong_axis`` of the two-axis
    normalized_shape only (``BACKWARD_INDEPENDENT_KINDS``).
    """
    grad_calls = [c for name, c in ctx.calls.items() if name.startswith("grad")]
    if not grad_calls:
        return None
    # A normalized_shape of two axes handled as one, or 16-bit statistics, leave the float32
    # rows of the last axis that the backward is probed with alone.
    independent = BACKWARD_INDEPENDENT_KINDS if ctx.only_two_axes_wrong else HALF_ONLY_KINDS
    if any(f.kind not in independent for f in ctx.mistakes):
        ctx.subject.notes.append("backward: not checked while the forward has findings")
        return None
    failed = next((c for c in grad_calls if c.error or c.grad_error), None)
    if failed is not None:
        why = failed.grad_error or f"with requires_grad=True the call raised {failed.error}"
        ctx.subject.notes.append(f"backward: not checked ({why})")
        return None
    worst, seen, matches = 0.0, {}, []
    for call in grad_calls:
        ref = reference_gradients(call)
        for role in ("x", "weight", "bias"):
            if ref[role] is None or (role != "x" and getattr(call.probe, role) is None):
                continue
            mine = call.grads.get(role)
            where = f"d{role} (rows of {int(np.prod(call.probe.normalized_shape))})"
            if mine is None:
                seen[where] = "no gradient at all"
                continue
            if mine.size != ref[role].size:
                seen[where] = f"shape {mine.shape}, expected {ref[role].shape}"
                continue
            mine = mine.reshape(ref[role].shape)
            error = float(np.max(np.abs(mine - ref[role]), initial=0.0)) / ref[f"scale {role}"]
            error = error if np.isfinite(error) else float("inf")
            worst = max(worst, error)
            if error > GRADIENT_TOLERANCE:
                seen[where] = error
                if role == "x":
                    matches += [k for k, v in ref["mistakes x"].items()
                                if np.max(np.abs(mine - v)) <= GRADIENT_TOLERANCE * ref["scale x"]]
                elif role == "weight":
                    close = np.max(np.abs(mine - ref["dweight from x"])) <= (
                        GRADIENT_TOLERANCE * ref["scale weight"])
                    matches += ["dweight sums dy * x, not dy * x_hat"] if close else []
    ctx.measure("wrong_gradient", "largest relative gradient error", worst, GRADIENT_TOLERANCE)
    if not seen:
        ctx.subject.notes.append("backward: checked (dx, dweight, dbias against float64)"
                                 if ctx.subject.norm == "layer"
                                 else "backward: checked (dx, dweight against float64)")
        return None
    text = "; ".join(f"{k} off by {v:.2g} of its scale" if isinstance(v, float) else f"{k}: {v}"
                     for k, v in seen.items())
    if matches:
        text += "; it matches " + " and ".join(dict.fromkeys(matches))
    return Finding("wrong_gradient", text, {"errors": seen, "matches": matches or None},
                   ctx.subject.norm)
