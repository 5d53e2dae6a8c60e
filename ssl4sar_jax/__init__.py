"""ssl4sar_jax: SSL4SAR (Gourmelon et al., IEEE TGRS 2025) in JAX/Flax NNX.

Importing the package registers the TFDS builders ``caffe`` and ``ssl4sar``
(see ``datasets/``), so ``tfds.data_source("caffe", ...)`` works afterwards.
"""

__version__ = "0.1.0"

from ssl4sar_jax.builders import register_all as _register_builders  # noqa: E402

_register_builders()
