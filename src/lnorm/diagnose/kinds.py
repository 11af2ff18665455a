"""The finding kinds: what each mistake means, how to fix it, where the book explains it."""

from __future__ import annotations

from dataclasses import dataclass


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
        "subtract the mean first: var = mean((x - mean)**2); lnorm.moments.corrected_two_pass "
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
    "does_not_centre": Kind(
        "its output rows keep the input rows' mean: it does not subtract the mean",
        "if it is meant as a LayerNorm, subtract each row's mean: "
        "y = (x - mean) / sqrt(var + eps)",
        "chapter 10, RMSNorm (From LayerNorm to RMSNorm)",
    ),
    "channels_first": Kind(
        "it normalizes dimension 1 (channels first, as ConvNeXt's LayerNorm on NCHW), not the "
        "trailing normalized_shape",
        "check it through the adapter that moves the channels last: "
        "diagnose.check(diagnose.channels_last(module))",
        "chapter 9, Is my LayerNorm right? (Channels first: ConvNeXt's LayerNorm)",
    ),
    "wrong_long_rows": Kind(
        "on long rows (4096 and 4097 elements) the output differs from LayerNorm by more "
        "than rounding error, though short rows are right",
        "look at the code path for long rows: several blocks per row, the masked last block "
        "of an odd length, the sums combined across blocks",
        "chapter 8, A LayerNorm kernel in Triton",
    ),
    "wrong_gradient": Kind(
        "the backward pass differs from LayerNorm's gradient by more than rounding error",
        "dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)) with g = dy * weight; "
        "dweight = sum over rows of dy * x_hat; dbias = sum over rows of dy. Do not detach "
        "the mean or rstd",
        "chapter 6, The backward pass",
    ),
    # RMSNorm only (check(fn, norm="rms")):
    "eps_default_mismatch": Kind(
        "called with eps=None, it does not use torch's default, float32's machine epsilon "
        "(2**-23 = 1.19e-7, for float16 and bfloat16 inputs too, in recent torch versions)",
        "resolve eps=None as torch.finfo(torch.float32).eps for 16- and 32-bit inputs "
        "(torch.finfo(x.dtype).eps for float64), or pass the model's eps explicitly: "
        "eps=None and a hard-coded 1e-6 differ by more than rounding. Older torch versions "
        "used torch.finfo(x.dtype).eps for 16-bit inputs (pytorch#142848, merged in January "
        "2025, changed it), as their documentation still said after",
        "chapter 10, RMSNorm (eps=None is not 1e-6)",
    ),
    "cast_order": Kind(
        "for 16-bit inputs and weight, it rounds in another order than the one named by cast= "
        "(torch's: multiply in float32, round once; LLaMA's, T5's: round x_hat to 16 bits, "
        "then multiply)",
        "a note, not a mistake: pass the order of the model you must match, "
        "check(..., cast='llama'), or multiply first, round once: "
        "(x_hat * weight.float()).to(x.dtype). The two orders differ by one 16-bit ulp",
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
    "wrong_long_rows": Kind(
        "on long rows (4096 and 4097 elements) the output differs from RMSNorm by more "
        "than rounding error, though short rows are right",
        KINDS["wrong_long_rows"].fix,
        "chapter 10, RMSNorm",
    ),
    "wrong_gradient": Kind(
        "the backward pass differs from RMSNorm's gradient by more than rounding error",
        "dx = rstd * (g - x_hat * mean(g * x_hat)) with g = dy * weight; "
        "dweight = sum over rows of dy * x_hat. Do not detach rstd",
        "chapter 10, RMSNorm",
    ),
    "channels_first": Kind(
        KINDS["channels_first"].title,
        "check it through the adapter that moves the channels last: "
        "diagnose.check(diagnose.channels_last(module), norm='rms')",
        KINDS["channels_first"].chapter,
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


def _eps_text(eps: float | None) -> str:
    return "None" if eps is None else f"{eps:g}"


def eps_probe_name(eps: float | None) -> str:
    """The name of the eps probe called with ``eps``."""
    return f"eps={_eps_text(eps)}"


#: Findings that are a different order of roundings, not a different formula: the float32 output
#: is unchanged, and 16-bit outputs differ from torch's by one 16-bit ulp at most. They are notes:
#: the report stays ok and gives the float32 tolerance.
ROUNDING_ORDER_KINDS = frozenset({"cast_order"})
