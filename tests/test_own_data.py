"""Your own data from the command line: CaFFe-layout folders with unknown glaciers, held-out
glaciers and pixel-spacing overrides; manual_dir errors; zip extraction without TensorFlow."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from train_helpers import MICRO_ARGS, REPO, cache_env, run_main, smoke_args

from ssl4sar_jax import data
from ssl4sar_jax.data import caffe_files, ssl4sar_files
from ssl4sar_jax.evaluation import evaluate_zone_predictions

DUMMY = Path(REPO) / "ssl4sar_jax" / "builders"


def own_caffe_folder(root: Path) -> Path:
    """The CaFFe dummy tree with glacier JAC renamed to Helheim (unknown to CaFFe)."""
    out = root / "data_raw"
    shutil.copytree(DUMMY / "caffe" / "dummy_data" / "data_raw", out)
    for path in sorted(out.rglob("JAC_*")):
        path.rename(path.with_name(path.name.replace("JAC_", "Helheim_")))
    return out


OWN_OPTIONS = dict(test_glaciers="DBE", pixel_spacing_m="30", northern_glaciers="Helheim")


def test_cli_prepares_and_trains_own_folder(tmp_path, compilation_cache):
    folder = own_caffe_folder(tmp_path / "mine")
    tfds_dir, workdir = tmp_path / "tfds", tmp_path / "run"
    result = run_main(
        smoke_args(
            workdir,
            "--config.data.config=folder",
            f"--config.data.manual_dir={folder}",
            "--config.data.test_glaciers=DBE",
            "--config.data.pixel_spacing_m=30",
            "--config.data.northern_glaciers=Helheim",
            f"--config.data.data_dir={tfds_dir}",
            "--config.total_steps=2",
            "--config.val.every_steps=2",
            *MICRO_ARGS,
        ),
        env_extra=cache_env(compilation_cache),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("are not CaFFe's") == 1  # the unknown glacier, warned once
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/front/mde_m" in r][-1]
    assert val["step"] == 2 and "val/front/mde_px" in val
    if val["val/front/num_images_with_front"]:
        assert val["val/front/mde_m"] == pytest.approx(30 * val["val/front/mde_px"])

    # The same options open the prepared dataset (no rebuild); other options are another one.
    assert data.is_prepared("caffe", "folder", str(tfds_dir), str(folder), **OWN_OPTIONS)
    other = dict(OWN_OPTIONS, pixel_spacing_m="60")
    assert not data.is_prepared("caffe", "folder", str(tfds_dir), str(folder), **other)
    sources = data.prepare("caffe", "folder", str(tfds_dir), str(folder), **OWN_OPTIONS)
    glaciers = {
        split: sorted({r["glacier"].decode() for r in src}) for split, src in sources.items()
    }
    assert "DBE" in glaciers["test"] and "DBE" not in glaciers["train"] + glaciers["validation"]
    assert "Helheim" in glaciers["train"] + glaciers["validation"]
    test = [sources["test"][i] for i in range(len(sources["test"]))]
    assert {float(r["pixel_spacing_m"]) for r in test} == {30.0}
    assert {r["resolution_m"] for r in test} >= {7, 20}  # the names' nominal spacings are kept

    # MDE in metres follows the override; pixels are reported too; breakdowns know DBE.
    preds = [np.roll(r["zones"], 2, axis=1) for r in test]
    result = evaluate_zone_predictions(preds, test, allow_empty_true_front=True, verbose=False)
    metrics = result.metrics
    assert metrics["front/num_images_with_front"] > 0
    assert metrics["front/mde_m"] == pytest.approx(30 * metrics["front/mde_px"])
    assert "DBE" in result.breakdowns["glacier"]
    nominal = data.prepare(
        "caffe", "folder", str(tmp_path / "tfds2"), str(folder), test_glaciers="DBE"
    )
    test_nominal = [nominal["test"][i] for i in range(len(nominal["test"]))]
    assert all(float(r["pixel_spacing_m"]) == r["resolution_m"] for r in test_nominal)
    nominal_metrics = evaluate_zone_predictions(
        preds, test_nominal, allow_empty_true_front=True, verbose=False
    ).metrics
    assert nominal_metrics["front/mde_m"] != pytest.approx(metrics["front/mde_m"])


def test_pixel_spacing_csv_by_stem_and_glacier(tmp_path):
    folder = own_caffe_folder(tmp_path / "mine")
    csv = tmp_path / "spacing.csv"
    csv.write_text(
        "key,pixel_spacing_m\nHelheim,33.5\nCOL_2015-11-05_TDX_7_2_405,11\n"
        + "".join(f"{g},50\n" for g in ("COL", "Mapple", "Crane", "DBE", "Jorum", "SI"))
    )
    sources = data.prepare(
        "caffe", "folder", str(tmp_path / "tfds"), str(folder), pixel_spacing_m=str(csv)
    )
    spacing = {
        r["stem"].decode(): float(r["pixel_spacing_m"]) for src in sources.values() for r in src
    }
    assert spacing["COL_2015-11-05_TDX_7_2_405"] == 11.0  # a stem's entry beats its glacier's
    assert {v for k, v in spacing.items() if k.startswith("Helheim")} == {33.5}
    csv.write_text("key,pixel_spacing_m\nHelheim,33.5\n")  # other glaciers not covered
    with pytest.raises(caffe_files.CaffeDataError, match="no entry for 12 image"):
        data.prepare(
            "caffe", "folder", str(tmp_path / "tfds3"), str(folder), pixel_spacing_m=str(csv)
        )


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize(
    ("content", "found"),
    [((), "nothing (empty folder)"), (("caffe.zip",), "found caffe.zip")],
)
def test_empty_or_misnamed_manual_dir_fails_fast_without_network(
    tmp_path, monkeypatch, content, found
):
    _no_network(monkeypatch)
    manual = tmp_path / "manual"
    manual.mkdir()
    for name in content:
        (manual / name).write_bytes(b"PK\x05\x06" + b"\0" * 18)
    cfg = data.data_config("caffe", config="full", data_dir=str(tmp_path / "tfds"))
    cfg.manual_dir = str(manual)
    start = time.perf_counter()
    with pytest.raises(caffe_files.CaffeDataError) as err:
        data.open_sources(cfg)
    assert time.perf_counter() - start < 1.0
    message = str(err.value)
    assert found in message and "data_raw.zip" in message
    assert message.count(str(manual)) == 1  # the problem is listed once
    assert message.count("--config.data.config=folder") == 1  # followed by one hint
    assert not (tmp_path / "tfds" / "downloads").exists()  # nothing downloaded or half-written
    cfg.config = "folder"
    with pytest.raises(caffe_files.CaffeDataError, match=re.escape(found)):
        data.open_sources(cfg)


def test_cli_reports_manual_dir_problem_once(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    result = run_main(
        smoke_args(
            tmp_path / "run",
            "--config.data.config=full",
            f"--config.data.manual_dir={manual}",
            f"--config.data.data_dir={tmp_path / 'tfds'}",
        ),
        timeout=300,
    )
    assert result.returncode != 0
    assert "CaffeDataError" in result.stderr
    assert result.stderr.count("nothing (empty folder)") == 1, result.stderr[-3000:]
    assert "FileNotFoundError" not in result.stderr


def test_options_outside_folder_config_are_refused(tmp_path):
    cfg = data.data_config("caffe", config="synthetic", data_dir=str(tmp_path))
    cfg.test_glaciers = "SI"
    with pytest.raises(ValueError, match="config=folder"):
        data.open_sources(cfg)


ZIP_WITHOUT_TF = """
import importlib.util
import sys

assert importlib.util.find_spec("tensorflow") is None  # a base install
from ssl4sar_jax import data

src = data.prepare("caffe", "folder", sys.argv[1], sys.argv[2], test_glaciers="SI")
print("SPLITS", {k: len(v) for k, v in src.items()})
print("TENSORFLOW", "tensorflow" in sys.modules)
"""


def site_without_tensorflow(tmp_path: Path) -> Path:
    """A copy (symlinks) of this interpreter's site-packages without TensorFlow."""
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    out = tmp_path / "site_without_tf"
    out.mkdir()
    for entry in site.iterdir():
        name = entry.name.lower()
        if name == "tensorflow" or name.startswith(("tensorflow-", "tensorflow_cpu")):
            continue
        if entry.suffix == ".pth":  # editable installs: this test runs the worktree's code
            continue
        (out / entry.name).symlink_to(entry)
    return out


def test_zip_extraction_without_tensorflow(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    source = DUMMY / "caffe" / "dummy_data"
    with zipfile.ZipFile(manual / "data_raw.zip", "w") as zf:
        for path in sorted((source / "data_raw").rglob("*")):
            zf.write(path, path.relative_to(source))
    site = site_without_tensorflow(tmp_path)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + str(site), PYTHONNOUSERSITE="1")
    result = subprocess.run(
        [sys.executable, "-S", "-c", ZIP_WITHOUT_TF, str(tmp_path / "tfds"), str(manual)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TENSORFLOW False" in result.stdout
    assert "SPLITS {'train': 7, 'validation': 1, 'test': 6}" in result.stdout, result.stdout
    extracted = list((tmp_path / "tfds" / "downloads" / "extracted").iterdir())
    assert len(extracted) == 1 and not extracted[0].name.startswith(".")


def test_ssl4sar_empty_validation_folder_fails_at_prepare(tmp_path):
    root = tmp_path / "ssl4sar"
    shutil.copytree(DUMMY / "ssl4sar" / "dummy_data", root)
    for path in (root / "unlabeled_data_raw_val").iterdir():
        path.unlink()
    with pytest.raises(ssl4sar_files.SSL4SARDataError, match="unlabeled_data_raw_val: no usable"):
        data.prepare("ssl4sar", "folder", str(tmp_path / "tfds"), str(root))
    with pytest.raises(ssl4sar_files.SSL4SARDataError, match="unlabeled_data_raw_val: no usable"):
        data.prepare("ssl4sar", "full", str(tmp_path / "tfds"), str(root))
    # Validation glaciers taken from the training folder instead.
    sources = data.prepare(
        "ssl4sar", "folder", str(tmp_path / "tfds"), str(root), val_glaciers="Helheim"
    )
    assert {r["glacier"].decode() for r in sources["validation"]} == {"Helheim"}
    assert {r["glacier"].decode() for r in sources["train"]} == {"Kangerlussuaq"}


def test_count_problems_end_with_the_subset_hint(tmp_path):
    manual = tmp_path / "subset"
    shutil.copytree(DUMMY / "caffe" / "dummy_data" / "data_raw", manual / "data_raw")
    cfg = data.data_config("caffe", config="full", data_dir=str(tmp_path / "tfds"))
    cfg.manual_dir = str(manual)
    with pytest.raises(caffe_files.CaffeDataError) as err:
        data.open_sources(cfg)
    message = str(err.value)
    assert "expected 559 images, found 10" in message
    assert message.count("expected 559 images") == 1
    assert message.rstrip().endswith(
        "To prepare your own subset: --config.data.config=folder --config.data.manual_dir=<folder>"
    )
    # The hinted command works on the same folder.
    cfg.config = "folder"
    assert {k: len(v) for k, v in data.open_sources(cfg).items()} == {
        "train": 9,
        "validation": 1,
        "test": 4,
    }


def test_an_unknown_glacier_trains_and_is_evaluated_with_its_own_breakdown(
    tmp_path, compilation_cache
):
    # Helheim (not a CaFFe glacier) is the whole validation split: the training run's
    # validation scores it, and every breakdown names it.
    folder = own_caffe_folder(tmp_path / "mine")
    workdir = tmp_path / "run"
    result = run_main(
        smoke_args(
            workdir,
            "--config.data.config=folder",
            f"--config.data.manual_dir={folder}",
            "--config.data.test_glaciers=DBE",
            "--config.data.val_glaciers=Helheim",
            "--config.data.northern_glaciers=Helheim",
            f"--config.data.data_dir={tmp_path / 'tfds'}",
            "--config.total_steps=2",
            "--config.val.every_steps=2",
            "--config.val.write_pictures_every=1",
            *MICRO_ARGS,
        ),
        env_extra=cache_env(compilation_cache),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((workdir / "val" / "step_000002" / "metrics.json").read_text())
    breakdowns = saved["breakdowns"]
    assert set(breakdowns["glacier"]) == {"Helheim"}
    assert breakdowns["glacier"]["Helheim"]["num_images"] == 2
    # The season comes from the hemisphere given for the new glacier (not "unknown").
    assert {k.split("/")[1] for k in breakdowns["glacier_season"]} <= {"winter", "summer"}
    assert all(k.startswith("Helheim/") for k in breakdowns["glacier_sensor"])
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/front/num_images" in r][-1]
    assert val["step"] == 2 and val["val/front/num_images"] == 2
