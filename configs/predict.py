r"""Prediction on new scenes: ``python -m ssl4sar_jax.predict scenes --config configs/predict.py``.

Runs fine-tuned checkpoint(s) on georeferenced SAR scenes (GeoTIFF of any CRS and size, or
CaFFe-named PNGs) and writes, per scene, zones / probability / uncertainty GeoTIFFs, the front as
lines (GeoJSON in EPSG:4326, optionally GeoPackage / Shapefile in the scene CRS), an overlay PNG,
and a run summary (docs/predict.md)::

    python -m ssl4sar_jax.predict scenes --config configs/predict.py \
        --config.inputs=/data/s1_scenes --config.output_dir=runs/fronts \
        --config.checkpoints=runs/ft_seed0,runs/ft_seed1 --config.tta=True

``inputs`` and ``checkpoints`` are comma-separated lists (files, folders, globs). Variant ``demo``
predicts the synthetic georeferenced demo scenes (``python -m ssl4sar_jax.data.synthetic_geo
--out /tmp/ssl4sar_geo_demo``) with the fine-tuning demo checkpoint (``/tmp/ft_demo``).
"""

import ml_collections

from ssl4sar_jax.config_lib import load_sibling

common = load_sibling(__file__, "common")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config of variant ``arg`` (``paper`` or ``demo``, see the module docstring)."""
    variant = arg or "paper"
    if variant not in ("paper", "demo"):
        raise ValueError(f"unknown predict variant {variant!r}: paper | demo")
    c = ml_collections.ConfigDict()
    c.name = f"predict_{variant}"
    c.command = "scenes"
    c.num_cpu_devices = 0
    # Inputs and outputs.
    c.inputs = ""  # comma-separated files, folders (*.tif, *.tiff, *.png) or globs
    c.output_dir = ""
    c.overwrite = False  # False: scenes whose outputs exist are skipped (resume)
    c.process_index = 0  # this process's share of the sorted inputs: [index::count]
    c.process_count = 1
    c.fail_fast = False  # True: stop at the first failed scene (else record it and go on)
    # Models: run workdirs (the model from their config.json), step dirs or .npz (config.model).
    c.checkpoints = ""  # comma-separated; several = ensemble (mean of probabilities)
    c.which = "best"  # for run workdirs: "best" or "latest"
    c.model = common.model("paper")  # img_size = the context tile side
    # Reading.
    c.band = 0  # 0: the file must be single-band; N: read band N (1-based)
    c.input_scale = "auto"  # auto | uint8 | db | linear (power); see docs/predict.md
    c.db_range = (-27.0, 5.0)  # dB mapped to 1..255 for float inputs; () = 2-98 % stretch
    c.pixel_spacing_m = 0.0  # > 0: override the spacing read from the CRS / file name
    # Resampling: predict at this spacing (metres), then resample back; 0 = the scene grid.
    c.model_pixel_spacing_m = 0.0
    c.resampling = "auto"  # of the SAR: auto = average when coarsening, else bilinear
    c.train_spacing_range_m = (6.0, 20.0)  # CaFFe training spacings; warn far outside
    c.spacing_tolerance = 1.5  # warn below lo / tol or above hi * tol
    # Inference (the evaluation protocol: stride-128 Gaussian stitching of 512 tiles).
    c.centre_size = 0  # 0 = half the context tile (config.model.img_size)
    c.stride = 0  # 0 = centre / 2
    c.stitch_mode = "gaussian"
    c.tta = False  # 4 rotations
    c.batch_size = 8
    c.progress_every_s = 10.0
    # Post-processing and outputs.
    c.length_rule = "tyrion"
    c.roi = ""  # polygon vector file: front pixels outside it are dropped
    c.vector_formats = "geojson"  # comma-separated: geojson (EPSG:4326), gpkg, shp; "" = none
    c.min_branch_px = 3
    c.uncertainty_dtype = "uint8"  # uint8 (value / 250, nodata 255) or float32 (nodata NaN)
    c.write_overlay = True
    if variant == "demo":
        c.num_cpu_devices = 2
        c.model = common.model("tiny", img_size=128)
        c.checkpoints = "/tmp/ft_demo"
        c.inputs = "/tmp/ssl4sar_geo_demo/scenes"
        c.output_dir = "/tmp/ssl4sar_predict_demo"
        c.centre_size = 64
        c.stride = 32
        c.batch_size = 16
        c.progress_every_s = 2.0
    return c
