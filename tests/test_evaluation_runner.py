"""End-to-end runner tests on records built here (independent of the data pipeline code)."""

import csv
import json
import math
import os

import numpy as np
import pytest

from ssl4sar_jax.constants import GLACIER, NA, OCEAN, ROCK
from ssl4sar_jax.evaluation import evaluate_records, evaluate_zone_predictions, parse_record
from ssl4sar_jax.evaluation.postprocess import front_from_zones

# The fake model reads the class back from the SAR grey value.
GREY_STEP = 60


def _zones(height, width, front_col, wave=0.0):
    zones = np.full((height, width), GLACIER, np.uint8)
    rows = np.arange(height)
    boundary = front_col + np.round(wave * np.sin(rows / 9.0)).astype(int)
    cols = np.arange(width)[None, :]
    zones[cols >= boundary[:, None]] = OCEAN
    zones[:, :15] = ROCK
    zones[:8] = NA
    return zones


def _record(stem, zones, *, sar_zones=None, bytes_text=False, with_season=True):
    height, width = zones.shape
    sar = (sar_zones if sar_zones is not None else zones).astype(np.uint8) * GREY_STEP
    glacier, date, sensor, res = stem.split("_")[:4]
    text = (lambda s: s.encode()) if bytes_text else (lambda s: s)
    record = {
        "sar": sar[..., None],
        "zones": zones,
        "front": front_from_zones(zones).astype(np.uint8),
        # left-upper, left-lower, right-lower, right-upper: the whole image.
        "bbox": np.array([[0, height], [0, 0], [width, 0], [width, height]], np.float32),
        "glacier": text(glacier),
        "date": text(date),
        "sensor": text(sensor),
        "resolution_m": np.int32(res),
        "stem": text(stem),
    }
    if with_season:
        record["season"] = text("winter")
    return record


def oracle_predict(tiles):
    """Logits of the class encoded in the SAR grey value: ``[N, h, w, 1] -> [N, h, w, 4]``."""
    classes = np.clip(np.round(tiles[..., 0] * 255.0 / GREY_STEP), 0, 3).astype(int)
    return (np.eye(4, dtype=np.float32)[classes] * 10.0).astype(np.float32)


def _records():
    return [
        _record("COL_2015-12-18_TDX_7_1_094", _zones(150, 170, 90, wave=10)),
        _record("Mapple_2008-06-02_S1_12_2_009", _zones(97, 130, 60), bytes_text=True),
        _record("COL_2011-07-01_S1_20_3_100", _zones(120, 88, 40, wave=4), with_season=False),
    ]


@pytest.mark.parametrize(
    ("stride", "mode", "tta"),
    [(32, "plain", False), (16, "gaussian", False), (16, "gaussian", True)],
)
def test_oracle_prediction_is_perfect(stride, mode, tta):
    result = evaluate_records(
        [oracle_predict],
        _records(),
        context=64,
        centre=32,
        stride=stride,
        stitch_mode=mode,
        tta=tta,
        batch_size=16,
        verbose=False,
    )
    m = result.metrics
    assert m["front/mde_m"] == 0.0
    assert m["front/missing_fronts"] == 0
    assert m["front/num_images"] == 3
    assert m["zones/iou_mean"] == pytest.approx(1.0)
    assert m["zones/f1_glacier"] == pytest.approx(1.0)
    assert [row["passes"] for row in result.per_image] == [4 if tta else 1] * 3
    assert result.per_image[2]["season"] == "summer"  # COL, July, northern hemisphere rule
    assert set(result.breakdowns["sensor"]) == {"TSX/TDX", "S1"}


def test_one_pixel_shift_gives_resolution_as_mde(tmp_path):
    true = _zones(150, 120, 61)  # 142 px of front >= 125 px (6 m)
    shifted = _zones(150, 120, 60)  # predicted ocean starts one column earlier
    records = [_record("Mapple_2010-01-05_TSX_6_1_001", true, sar_zones=shifted)]
    out_dir = str(tmp_path / "eval")
    result = evaluate_records(
        oracle_predict,
        records,
        context=64,
        centre=32,
        stride=16,
        tta=True,
        batch_size=64,
        out_dir=out_dir,
        verbose=False,
    )
    # Straight vertical fronts one column apart: every distance is 1 px = 6 m.
    assert result.metrics["front/mde_m"] == pytest.approx(6.0)
    assert result.metrics["zones/iou_glacier"] < 1.0
    for name in ("metrics.json", "per_image.csv", "summary.png"):
        assert os.path.getsize(os.path.join(out_dir, name)) > 0
    stem = "Mapple_2010-01-05_TSX_6_1_001"
    assert os.path.exists(os.path.join(out_dir, "overlays", f"{stem}.png"))
    assert os.path.exists(os.path.join(out_dir, "uncertainty", f"{stem}.png"))
    with open(os.path.join(out_dir, "metrics.json")) as f:
        saved = json.load(f)
    assert saved["metrics"]["front/mde_m"] == pytest.approx(6.0)
    assert saved["breakdowns"]["glacier"]["Mapple"]["mde_m"] == pytest.approx(6.0)
    with open(os.path.join(out_dir, "per_image.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["stem"] == stem
    assert not [p for p in os.listdir(out_dir) if p.startswith(".tmp_")]


def test_no_predicted_front_is_counted_missing():
    def all_glacier(tiles):
        logits = np.zeros((*tiles.shape[:3], 4), np.float32)
        logits[..., GLACIER] = 1.0
        return logits

    result = evaluate_records(
        all_glacier, _records()[:2], context=32, centre=16, stride=16, verbose=False
    )
    assert math.isnan(result.metrics["front/mde_m"])
    assert result.metrics["front/missing_fronts"] == 2


def test_saved_predictions_path_matches():
    records = _records()
    preds = [r["zones"] for r in records]
    result = evaluate_zone_predictions(preds, records, verbose=False)
    assert result.metrics["front/mde_m"] == 0.0
    with pytest.raises(ValueError, match="more predictions|More predictions"):
        evaluate_zone_predictions(preds + preds[:1], records, verbose=False)


def test_worker_processes_give_the_same_rows_in_order():
    records = _records()
    shifted = [_zones(150, 170, 97, wave=10), _zones(97, 130, 52), _zones(120, 88, 44, wave=4)]
    one = evaluate_zone_predictions(shifted, records, verbose=False)
    two = evaluate_zone_predictions(shifted, records, verbose=False, num_workers=2)
    assert all(row["mde_m"] > 0 for row in one.per_image)  # real work, not perfect maps
    assert one.per_image == two.per_image and one.metrics == two.metrics
    with pytest.raises(ValueError, match="num_workers"):
        evaluate_zone_predictions(shifted, records, verbose=False, num_workers=0)


def test_packed_worker_payload_round_trips_exactly():
    """The one-byte zones + bit-packed front a worker receives unpack to the same maps."""
    from ssl4sar_jax.evaluation.runner import _PackedImage

    rng = np.random.default_rng(0)
    for height, width in ((1, 1), (3, 5), (97, 130), (150, 171)):  # sizes not multiples of 8
        zones = rng.integers(0, 4, (height, width)).astype(np.uint8)
        front = rng.random((height, width)) < 0.2
        record = _record("COL_2015-12-18_TDX_7_1_094", zones)
        record["front"] = front.astype(np.uint8)
        image = parse_record(record, allow_empty_true_front=True)
        for pred in (rng.integers(0, 4, (height, width)), zones.copy()):  # int64 and uint8
            packed = _PackedImage.pack(image, pred)
            assert packed is not None and packed.image.zones is None
            unpacked, pred_back = packed.unpack()
            np.testing.assert_array_equal(unpacked.zones, image.zones)
            np.testing.assert_array_equal(unpacked.front, image.front)
            assert unpacked.front.dtype == bool and unpacked.zones.dtype == np.uint8
            np.testing.assert_array_equal(pred_back, pred)
            assert unpacked.stem == image.stem and unpacked.bbox is image.bbox
    # Ids outside 0..3 or floats are not packed (they would be corrupted), they fail in the worker.
    assert _PackedImage.pack(image, np.full(image.zones.shape, 4)) is None
    assert _PackedImage.pack(image, np.full(image.zones.shape, -1)) is None
    assert _PackedImage.pack(image, image.zones.astype(np.float32)) is None


def test_worker_processes_reject_bad_class_ids_like_one_process():
    records = _records()
    preds = [r["zones"].astype(np.int64) for r in records]
    preds[1] = preds[1].copy()
    preds[1][5, 5] = 7
    for workers in (1, 2):
        with pytest.raises(ValueError, match="class ids"):
            evaluate_zone_predictions(preds, records, verbose=False, num_workers=workers)


def test_mismatched_prediction_shape_names_image():
    records = _records()[:1]
    with pytest.raises(ValueError, match="COL_2015-12-18_TDX_7_1_094: prediction shape"):
        evaluate_zone_predictions([np.zeros((10, 10), np.uint8)], records, verbose=False)


def test_empty_true_front_raises_unless_allowed():
    record = _records()[1]
    record["front"] = np.zeros_like(record["front"])
    with pytest.raises(ValueError, match="Mapple_2008-06-02_S1_12_2_009: the ground-truth front"):
        parse_record(record)
    result = evaluate_zone_predictions(
        [record["zones"]], [record], allow_empty_true_front=True, verbose=False
    )
    assert result.metrics["front/missing_fronts"] == 1


@pytest.mark.parametrize(("key", "value"), [("glacier", "Helheim"), ("sensor", "LANDSAT")])
def test_unknown_metadata_is_kept_not_refused(key, value):
    # Own data: any glacier or sensor token is carried into the rows and breakdowns (issue 14).
    record = _records()[0]
    record[key] = value
    assert getattr(parse_record(record), key) == value
    result = evaluate_zone_predictions([record["zones"]], [record], verbose=False)
    breakdown = "glacier" if key == "glacier" else "sensor"
    assert value in result.breakdowns[breakdown]


def test_metadata_parsed_from_stem_when_missing():
    record = _records()[0]
    for key in ("glacier", "sensor", "resolution_m", "date", "season"):
        del record[key]
    image = parse_record(record)
    assert (image.glacier, image.sensor, image.resolution_m) == ("COL", "TDX", 7)
    assert image.season == "winter"  # December, north
    assert image.pixel_spacing_m == 7.0  # no override: the name's spacing
    record["stem"] = "XYZ_2015-12-18_TDX_7_1_094"
    image = parse_record(record)
    assert image.glacier == "XYZ" and image.season == "unknown"  # hemisphere not known
    record["stem"] = "_2015-12-18_TDX_7_1_094"
    with pytest.raises(ValueError, match="_2015-12-18_TDX_7_1_094: no glacier"):
        parse_record(record)


def test_pixel_spacing_override_drives_mde_and_reports_pixels():
    record = _records()[0]
    pred = np.roll(record["zones"], 2, axis=1)  # the front moves by 2 columns
    base = evaluate_zone_predictions([pred], [record], verbose=False).metrics
    record["pixel_spacing_m"] = 35.0  # 5x the name's 7 m
    over = evaluate_zone_predictions([pred], [record], verbose=False).metrics
    assert base["front/mde_m"] == pytest.approx(base["front/mde_px"] * 7.0)
    assert over["front/mde_m"] == pytest.approx(over["front/mde_px"] * 35.0)
    assert over["front/mde_m"] != pytest.approx(base["front/mde_m"])
    record["pixel_spacing_m"] = -1.0
    with pytest.raises(ValueError, match="pixel_spacing_m must be positive"):
        parse_record(record)


def test_label_shape_mismatch_names_image():
    record = _records()[0]
    record["front"] = record["front"][:-1]
    with pytest.raises(ValueError, match="COL_2015-12-18_TDX_7_1_094: shapes differ"):
        parse_record(record)


def test_outputs_respect_the_umask_and_front_lines_scale_with_the_image(tmp_path):
    from ssl4sar_jax.evaluation import report

    old = os.umask(0o022)
    try:
        report.write_json(str(tmp_path / "m.json"), {"a": 1})
        report.atomic_save_png(str(tmp_path / "p.png"), np.zeros((4, 4), np.uint8))
    finally:
        os.umask(old)
    for name in ("m.json", "p.png"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644
    # 1 px for a 256-px image whatever its pixel spacing; thicker for large scenes.
    assert report.front_line_width((256, 256)) == 1
    assert report.front_line_width((4500, 3000)) == 17
    front = np.zeros((256, 256), bool)
    front[100, 50:150] = True
    picture = report.overlay_picture(
        np.zeros((256, 256), np.uint8), np.zeros((256, 256), np.uint8),
        np.zeros((256, 256), np.uint8), front, np.zeros_like(front), 7.0,
    )  # fmt: skip
    red = np.all(picture == report.PRED_FRONT_COLOUR, axis=-1)
    assert red[:, :256].sum(axis=0).max() == 1  # one pixel thick in the SAR panel
