"""Constants shared by the whole project (defined once, imported everywhere).

Zone ids follow CaFFe (PNG value -> class id): 0 -> NA, 64 -> rock, 127 -> glacier,
254 -> ocean and ice melange. TYRION's training logs swap the names of ids 0 and 1;
we use the correct CaFFe names.
"""

from __future__ import annotations

NA = 0
ROCK = 1
GLACIER = 2
OCEAN = 3
NUM_ZONE_CLASSES = 4
ZONE_NAMES: tuple[str, ...] = ("na", "rock", "glacier", "ocean")
# PNG grey value of each zone class in the CaFFe `zones` masks.
ZONE_PNG_VALUES: tuple[int, ...] = (0, 64, 127, 254)
FRONT_PNG_VALUE = 255

# CaFFe glaciers (file-name tokens) and their split.
TRAIN_GLACIERS: tuple[str, ...] = ("Crane", "DBE", "JAC", "Jorum", "SI")
TEST_GLACIERS: tuple[str, ...] = ("COL", "Mapple")
GLACIERS: tuple[str, ...] = TRAIN_GLACIERS + TEST_GLACIERS
NORTHERN_GLACIERS: frozenset[str] = frozenset({"COL", "JAC"})
SENSORS: tuple[str, ...] = ("RSAT", "S1", "ENVISAT", "ERS", "PALSAR", "TSX", "TDX")
# Pixel spacings (metres) that occur in CaFFe file names.
RESOLUTIONS_M: tuple[int, ...] = (20, 17, 12, 7, 6)

# Sentinel-2 raster bands (1-based) read for the optical target, in reference order:
# B1..B12 with B8A (bands 1..12), then WVP (14) and SCL (15); band 13 (AOT) is skipped.
OPTICAL_BAND_INDICES: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 15)
OPTICAL_BAND_NAMES: tuple[str, ...] = (
    "B1",
    "B2",
    "B3",
    "B4",
    "B5",
    "B6",
    "B7",
    "B8",
    "B8A",
    "B9",
    "B11",
    "B12",
    "WVP",
    "SCL",
)
NUM_OPTICAL_BANDS = 14


SEASONS: tuple[str, ...] = ("winter", "summer", "unknown")

# The fields of a CaFFe file stem, in order: <Glacier>_<YYYY-MM-DD>_<Sensor>_<Res>_<Quality>_<Orbit>.
STEM_FIELDS: tuple[str, ...] = (
    "glacier",
    "date",
    "sensor",
    "resolution_m",
    "quality_factor",
    "orbit",
)


def stem_fields(stem: str) -> dict[str, str]:
    """The ``_``-separated fields of a CaFFe-style stem by name, as many as it has (unchecked).

    `ssl4sar_jax.data.caffe_files.parse_stem` validates a whole stem; evaluation uses this to
    fill metadata a record does not carry.
    """
    return dict(zip(STEM_FIELDS, stem.split("_"), strict=False))


def season_of(glacier: str, month: int, hemisphere: str | None = None) -> str:
    """Season by the CaFFe hemisphere rule.

    Northern hemisphere: winter = September to March; southern: winter = April to August.

    Args:
        glacier: glacier token (e.g. ``"COL"``); the CaFFe glaciers know their hemisphere.
        month: Month 1..12 of the acquisition date.
        hemisphere: ``"north"`` or ``"south"`` for any other glacier (own data); None leaves the
            season of an unknown glacier ``"unknown"``.

    Returns:
        ``"winter"``, ``"summer"`` or ``"unknown"``.

    Raises:
        ValueError: for a month outside 1..12 or a bad hemisphere.
    """
    if not 1 <= month <= 12:
        raise ValueError(f"Month must be in 1..12, got {month}")
    if hemisphere not in (None, "north", "south"):
        raise ValueError(f"hemisphere must be 'north' or 'south', got {hemisphere!r}")
    if glacier in GLACIERS:
        hemisphere = "north" if glacier in NORTHERN_GLACIERS else "south"
    if hemisphere is None:
        return "unknown"
    if hemisphere == "north":
        winter = month in (1, 2, 3, 9, 10, 11, 12)
    else:
        winter = 4 <= month <= 8
    return "winter" if winter else "summer"
