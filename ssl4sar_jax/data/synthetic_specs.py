"""Settings of the synthetic data generators (light module: imported by the TFDS builders).

The generators themselves live in `ssl4sar_jax.data.synthetic`.
"""

from __future__ import annotations

import dataclasses

from ssl4sar_jax.data.caffe_files import CAFFE_SENSOR_COUNTS


@dataclasses.dataclass(frozen=True)
class SyntheticCaffeSpec:
    """Knobs of the synthetic CaFFe generator.

    Attributes:
        seed: master seed; everything is a deterministic function of it.
        count_scale: fraction of the real per-glacier image counts to generate.
        min_per_glacier: lower bound of images per glacier.
        min_size: smallest image side (px).
        max_size: largest image side (px).
        base_size: image side (px) at 20 m pixel spacing before per-glacier aspect jitter.
        scene_extent_m: width (m) of the area each image stands for, along its longer side.
            The images are CaFFe scenes scaled down (hundreds of pixels instead of the
            archive's ~1,400 on average), so their effective pixel spacing is
            ``scene_extent_m / max(H, W)`` (tens of metres), not the sensor's spacing in the
            file name; it is written to ``data_raw/pixel_spacing.csv`` and drives the 750 m
            front-length rule and the MDE in metres, as it would for real scenes resampled
            to that size.
    """

    seed: int = 0
    # 0.4 of the real counts: 224 training images, so the official 10 % validation split holds
    # 23 images (the demo's validation set); sides of 160-352 px keep it quick to build.
    count_scale: float = 0.4
    min_per_glacier: int = 4
    min_size: int = 160
    max_size: int = 352
    base_size: int = 176
    # The archive's mean image (~2.05 Mpx, i.e. ~1,430 px a side) at its typical 7-20 m spacing
    # covers roughly 10-30 km; 15 km gives 43-94 m per pixel at 160-352 px.
    scene_extent_m: float = 15_000.0

    def glacier_counts(self) -> dict[str, int]:
        return {
            g: max(self.min_per_glacier, round(self.count_scale * sum(c.values())))
            for g, c in CAFFE_SENSOR_COUNTS.items()
        }


SPACING_TABLE = "pixel_spacing.csv"  # in data_raw/: stem -> effective pixel spacing (m)


def effective_spacing_m(spec: SyntheticCaffeSpec, shape: tuple[int, int]) -> float:
    """Effective pixel spacing (m) of a synthetic image of ``shape`` ``(H, W)``."""
    return float(spec.scene_extent_m) / max(shape)


# Arctic glaciers used by the synthetic SSL4SAR config (hyphen-free tokens for the file grammar).
SSL4SAR_SYNTHETIC_GLACIERS: tuple[str, ...] = ("Helheim", "Kangerlussuaq", "Petermann", "Zachariae")


@dataclasses.dataclass(frozen=True)
class SyntheticSSL4SARSpec:
    """Knobs of the synthetic SSL4SAR generator.

    Attributes:
        seed: master seed.
        glaciers: glacier names (one Sentinel-2 GeoTIFF each).
        images_per_glacier: Sentinel-1 scenes per glacier (a time series).
        val_per_glacier: how many of them go to ``unlabeled_data_raw_val``.
        size: ``(H, W)`` of every scene (S1 and S2 share the grid).
        pixel_m: pixel spacing written into the GeoTIFF transform.
    """

    seed: int = 0
    glaciers: tuple[str, ...] = SSL4SAR_SYNTHETIC_GLACIERS
    images_per_glacier: int = 6
    val_per_glacier: int = 1
    size: tuple[int, int] = (256, 288)
    pixel_m: float = 40.0
