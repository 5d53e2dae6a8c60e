"""ssl4sar_jax: SSL4SAR (Gourmelon et al., IEEE TGRS 2025) in JAX/Flax NNX.

Importing the package is cheap: it imports neither TFDS nor Pillow nor JAX. It only arranges
for the TFDS builders ``caffe`` and ``ssl4sar`` to be registered (`ssl4sar_jax.builders.register`)
once ``tensorflow_datasets`` is imported, so that::

    import ssl4sar_jax
    import tensorflow_datasets as tfds
    tfds.load("caffe", split="train")        # or tfds.data_source("caffe", split="train")

works in either import order.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

_TFDS = "tensorflow_datasets"


def _register_builders() -> None:
    if "ssl4sar_jax.builders" in sys.modules:
        return  # imported (or being imported): its import registers the builders
    from ssl4sar_jax import builders

    builders.register()


class _RegisterAfterTfdsImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow_datasets`` through the other finders and registers our builders as
    soon as its module has executed (a one-shot post-import hook; removes itself)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TFDS:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register_builders()

        loader.exec_module = exec_then_register
        return spec


if _TFDS in sys.modules:
    _register_builders()
elif not any(isinstance(f, _RegisterAfterTfdsImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTfdsImport())
