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
    """

    seed: int = 0
    # 0.4 of the real counts: 224 training images, so the official 10 % validation split holds
    # 23 images (the demo's validation set); sides of 160-352 px keep it quick to build.
    count_scale: float = 0.4
    min_per_glacier: int = 4
    min_size: int = 160
    max_size: int = 352
    base_size: int = 176

    def glacier_counts(self) -> dict[str, int]:
        return {
            g: max(self.min_per_glacier, round(self.count_scale * sum(c.values())))
            for g, c in CAFFE_SENSOR_COUNTS.items()
        }


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
