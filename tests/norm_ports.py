"""Ports, written here, of the normalization modules that widely used model code ships.

Each class keeps the original's attribute names and order of roundings, since that is what
lnorm.diagnose must read: BERT's TF-style LayerNorm (eps as ``variance_epsilon``), the Annotated
Transformer's (``a_2``, ``b_2``, ``std + eps``), a float32-parameter LayerNorm fed 16-bit
activations, LLaMA's, T5's and Gemma's RMSNorms with their cast orders, and ConvNeXt's
channels-first LayerNorm. The diagnose tests import them from here.
"""

from __future__ import annotations

import torch


class BertLayerNorm(torch.nn.Module):
    """BERT's TF-style LayerNorm: eps inside the square root, stored as ``variance_epsilon``."""

    def __init__(self, hidden_size: int, eps: float = 1e-12):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(hidden_size))
        self.bias = torch.nn.Parameter(torch.zeros(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(-1, keepdim=True)
        s = (x - u).pow(2).mean(-1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.variance_epsilon)
        return self.weight * x + self.bias


class AnnotatedLayerNorm(torch.nn.Module):
    """The Annotated Transformer's LayerNorm: ``a_2 * (x - mean) / (std + eps) + b_2``, with
    torch's std (Bessel's correction) and eps added to it."""

    def __init__(self, features: int, eps: float = 1e-6):
        super().__init__()
        self.a_2 = torch.nn.Parameter(torch.ones(features))
        self.b_2 = torch.nn.Parameter(torch.zeros(features))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True)
        return self.a_2 * (x - mean) / (std + self.eps) + self.b_2


class Fp32LayerNorm(torch.nn.LayerNorm):
    """Mixed precision as speech and translation models ship it: float32 parameters, the
    16-bit input normalized in float32, the output in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class LlamaRMSNorm(torch.nn.Module):
    """The RMSNorm of Hugging Face's LLaMA (and Mistral), as it is written there: eps in
    ``variance_epsilon``, normalized in float32, cast to the input's dtype, then multiplied by
    the weight."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class T5LayerNorm(LlamaRMSNorm):
    """T5's RMSNorm (named LayerNorm there): LLaMA's attributes; a 16-bit weight's dtype first,
    then the product."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        if self.weight.dtype in [torch.float16, torch.bfloat16]:
            hidden_states = hidden_states.to(self.weight.dtype)
        return self.weight * hidden_states


class GemmaRMSNorm(torch.nn.Module):
    """Gemma's RMSNorm: the weight is stored as w - 1 and applied as (1 + weight) in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        output = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (output * (1.0 + self.weight.float())).type_as(x)


class ConvNeXtLayerNorm(torch.nn.Module):
    """ConvNeXt's LayerNorm with data_format="channels_first": it normalizes dim 1 of NCHW."""

    def __init__(self, normalized_shape: int, eps: float = 1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(normalized_shape))
        self.bias = torch.nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.normalized_shape = (normalized_shape,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]
