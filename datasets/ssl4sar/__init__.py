"""TFDS builder folder for SSL4SAR (installed as ``ssl4sar_jax.builders.ssl4sar``).

Importing ``ssl4sar_jax`` registers the builder; this file deliberately imports nothing, so that
test discovery cannot register the builder a second time under another module name.
"""
