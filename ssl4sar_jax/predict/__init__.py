"""Apply trained models to georeferenced scenes: fronts as map lines, and front time series.

Entry point: ``python -m ssl4sar_jax.predict scenes|timeseries --config configs/<...>.py``
(docs/predict.md). Needs the ``geo`` extra (``pip install "ssl4sar_jax[geo]"``: shapely, pyogrio,
pyproj) on top of rasterio.
"""

try:
    import pyogrio  # noqa: F401
    import pyproj  # noqa: F401
    import shapely  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the installation
    raise ImportError(
        f"ssl4sar_jax.predict needs the geo extra ({err.name} is missing): "
        'pip install "ssl4sar_jax[geo]"'
    ) from err
