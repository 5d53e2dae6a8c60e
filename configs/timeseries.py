r"""Front time series by the box method: ``python -m ssl4sar_jax.predict timeseries``.

Reads front lines (GeoJSON, GeoPackage or Shapefile; one file per date, the date from an
attribute or the file name) and a box polygon across the fjord, and writes per date the glacier
area inside the box, its change since the first date (km^2) and the width-averaged terminus
change (km, positive = advance), computed in an equal-area projection, plus a plot::

    python -m ssl4sar_jax.predict timeseries --config configs/timeseries.py \
        --config.fronts="runs/fronts/*/*_front.geojson" --config.box=box.gpkg \
        --config.output_dir=runs/series

Variant ``demo`` reads the synthetic series of ``python -m ssl4sar_jax.data.synthetic_geo``.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config of variant ``arg`` (``default`` or ``demo``)."""
    variant = arg or "default"
    if variant not in ("default", "demo"):
        raise ValueError(f"unknown timeseries variant {variant!r}: default | demo")
    c = ml_collections.ConfigDict()
    c.name = f"timeseries_{variant}"
    c.command = "timeseries"
    c.fronts = ""  # comma-separated files, folders (*.geojson, *.gpkg, *.shp) or globs
    c.box = ""  # polygon vector file (one polygon)
    c.output_dir = ""
    c.date_field = "date"  # attribute holding the date; else the file name (YYYY-MM-DD/YYYYMMDD)
    # Which side of a front is glacier: "" = the line orientation (glacier on the left, as the
    # predictor writes them) or "x,y" = a point on the glacier in the box CRS.
    c.glacier_point = ""
    c.box_width_m = 0.0  # 0 = box extent across the mean flow direction
    c.basemap = ""  # optional GeoTIFF shown under the fronts
    if variant == "demo":
        c.fronts = "/tmp/ssl4sar_geo_demo/series/*_front.geojson"
        c.box = "/tmp/ssl4sar_geo_demo/series/box.gpkg"
        c.output_dir = "/tmp/ssl4sar_series_demo"
    return c
