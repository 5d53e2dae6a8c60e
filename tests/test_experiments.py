"""The experiment scripts run end to end on toy sizes (``--quick``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import pretraining_benefit  # noqa: E402


def test_pretraining_benefit_quick(tmp_path, data_dir, compilation_cache):
    out = tmp_path / "ptb"
    args = ["--workdir", str(out), "--quick", "--seeds", "0", "1", "--labelled", "3"]
    results = pretraining_benefit.main([*args, "--data-dir", data_dir, "--cpu-devices", "0"])
    runs = results["finetune"]
    assert sorted((r["arm"], r["seed"]) for r in runs) == [
        (arm, s) for arm in sorted(pretraining_benefit.ARMS) for s in (0, 1)
    ]
    for r in runs:
        assert r["step"] == 2 and "val/zones/iou_mean" in r
    # The pretrained arms really started from the pretraining runs (the translation head is the
    # pretraining run's only parameter the segmenter does not use).
    info = json.loads((out / "finetune_opt_translator_n3_seed0" / "run_info.json").read_text())
    assert info["init_report"]["loaded"] > 0 and info["init_report"]["missing"] == 0
    assert "translate/kernel" in info["init_unexpected"]
    table = (out / "results.md").read_text()
    for arm in pretraining_benefit.ARMS:
        assert f"| {arm} | 3 |" in table
    assert "Mann–Whitney" in table
    # The diagnostic of what each pretraining learned: its val L1 beside a constant image's.
    for arm in pretraining_benefit.ARMS[1:]:
        constant = results["pretrain"][arm]["constant"]
        assert 0 < constant["l1_band_median"] < 1 and 0 < constant["l1_band_mean"] < 1
        assert f"| {arm} | 2 | {results['pretrain'][arm]['val/loss']:.4f} |" in table
    assert (out / "results.png").stat().st_size > 5_000
    # A second start reuses every finished run.
    again = pretraining_benefit.main([*args, "--data-dir", data_dir, "--cpu-devices", "0"])
    assert again["wall_time_s"] < results["wall_time_s"]
    assert again["runs_wall_time_s"] == results["runs_wall_time_s"]  # the reused runs' own times


def test_real_sar_runs_on_any_caffe_layout_folder(tmp_path, compilation_cache):
    from experiments import real_sar
    from ssl4sar_jax.data import synthetic

    spec = synthetic.SyntheticCaffeSpec(
        seed=5, count_scale=0.0, min_per_glacier=2, min_size=64, max_size=96, base_size=80
    )
    data_raw = synthetic.generate_caffe(tmp_path / "caffe", spec)
    out = tmp_path / "real"
    args = ["--data-raw", str(data_raw), "--workdir", str(out), "--steps", "2"]
    args += ["--context", "32", "--centre", "16", "--class-balance", "0.5", "--cpu-devices", "0"]
    from ssl4sar_jax import train_lib

    get_task = train_lib.get_task
    report = real_sar.main([*args, "--set", "val.batch_size=8", "--overlays", "1"])
    assert train_lib.get_task is get_task  # the in-memory task does not leak into later runs
    # The class weights come from the training split's labels (not the test glaciers').
    from ssl4sar_jax import losses
    from ssl4sar_jax.data.caffe_files import split_indices

    train_all = real_sar.read_records(data_raw, "train", 50.0)
    train_idx, _ = split_indices(len(train_all))
    expected = losses.class_balance_weights([train_all[i]["zones"] for i in train_idx])
    weights = report["config_overrides"]["loss.class_weights"]
    assert tuple(weights) == expected and len(set(weights)) > 1
    assert set(report["rows"]) == {"majority class", "positional prior", "model"}
    model = report["rows"]["model"]
    assert model["num_images"] > 0 and 0 <= model["iou_mean"] <= 1
    assert json.loads((out / "real_sar.json").read_text())["rows"]["model"] == model
    table = (out / "real_sar.md").read_text()
    assert table.count("\n") == 5 and "| positional prior |" in table
    assert list((out / "test").rglob("*.png"))  # test overlays of the last checkpoint
    again = real_sar.main([*args, "--report-only"])
    assert again["rows"]["model"] == model  # a finished run is reported, not retrained
