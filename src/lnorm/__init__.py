"""lnorm: LayerNorm, precisely.

One module per backend, each with the signature of
``torch.nn.functional.layer_norm``:

- :mod:`lnorm.numpy`: the readable NumPy reference;
- :mod:`lnorm.torch`: the same algorithm in torch operations.

Shared numerics live in their own modules: :mod:`lnorm.moments` (mean and
variance algorithms) and :mod:`lnorm.validation` (argument checks).
Import the backend you need: ``from lnorm.numpy import layer_norm``.
"""

__version__ = "0.1.0"
