"""grain pipelines: batch format, determinism, process sharding and iterator resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from ssl4sar_jax import data
from ssl4sar_jax.data import pipeline

FT = data.FinetuneSamplerConfig(context_size=64, centre_size=32, samples_per_epoch=24)
PT = data.PretrainSamplerConfig(crop_size=32, samples_per_epoch=16)
DUMMY = Path(__file__).parents[1] / "ssl4sar_jax" / "builders"


def _caffe_records(n=6, seed=0):
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        h, w = 40 + 7 * i, 50 + 3 * i
        zones = rng.integers(0, 4, size=(h, w), dtype=np.uint8)
        sar = (zones * 60 + 10 + i).astype(np.uint8)[..., None]
        records.append({"sar": sar, "zones": zones})
    return records


def _ssl4sar_records(n=4, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        sar = rng.integers(0, 256, size=(30 + i, 36, 1), dtype=np.uint8)
        out.append({"sar": sar, "optical": np.repeat(sar, 14, axis=-1)})
    return out


def _ft(records, **kw):
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    kw.setdefault("num_threads", 0)
    return data.make_finetune_iterator(records, global_batch_size=4, seed=7, sampler=FT, **kw)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _equal(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_finetune_batch_format():
    (batch,) = _take(_ft(_caffe_records()), 1)
    assert set(batch) == {"sar", "zones"}
    assert batch["sar"].shape == (4, 64, 64, 1) and batch["sar"].dtype == np.float32
    assert batch["zones"].shape == (4, 64, 64) and batch["zones"].dtype == np.int32
    assert 0.0 <= batch["sar"].min() and batch["sar"].max() <= 1.0
    assert set(np.unique(batch["zones"])) <= {0, 1, 2, 3}


def test_finetune_labels_stay_aligned_without_intensity_augmentation():
    cfg = dataclasses.replace(
        FT, prob_rezoom=0.0, prob_mix_up=0.0, prob_speckle=0.0, prob_brightness=0.0, prob_gamma=0.0
    )
    records = _caffe_records()
    it = data.make_finetune_iterator(
        records, global_batch_size=4, seed=1, sampler=cfg, process_index=0, process_count=1
    )
    for batch in _take(it, 3):
        sar = np.round(batch["sar"][..., 0] * 255).astype(int)
        offset = sar - (batch["zones"] * 60 + 10)  # the record index i, constant per sample
        assert all(len(np.unique(o)) == 1 for o in offset)


def test_pretrain_batch_format_and_mask():
    it = data.make_pretrain_iterator(
        _ssl4sar_records(),
        global_batch_size=2,
        seed=0,
        sampler=PT,
        process_index=0,
        process_count=1,
        num_threads=0,
    )
    batch = next(it)
    assert set(batch) == {"sar", "optical", "mim_mask"}
    assert batch["sar"].shape == (2, 32, 32, 1) and batch["sar"].dtype == np.float32
    assert batch["optical"].shape == (2, 32, 32, 14) and batch["optical"].dtype == np.float32
    assert batch["mim_mask"].shape == (2, 8, 8) and batch["mim_mask"].dtype == bool
    assert (batch["mim_mask"].sum(axis=(1, 2)) == 64 - int(64 * 0.7)).all()
    assert not batch["mim_mask"][:, 0, 0].any()
    np.testing.assert_array_equal(batch["optical"][..., 3], batch["sar"][..., 0])


def test_determinism_threads_and_seeds():
    records = _caffe_records()
    a = _take(_ft(records), 4)
    b = _take(_ft(records, num_threads=2), 4)
    assert _equal(a, b)  # same batches whatever the number of read threads
    c = _take(
        data.make_finetune_iterator(
            records,
            global_batch_size=4,
            seed=8,
            sampler=FT,
            process_index=0,
            process_count=1,
            num_threads=0,
        ),
        1,
    )
    assert not np.array_equal(a[0]["sar"], c[0]["sar"])


def test_processes_split_the_global_batch_and_the_epoch():
    records = _caffe_records(6)
    cfg = dataclasses.replace(FT, samples_per_epoch=6)

    def batches(process_count, process_index, n=3):
        it = data.make_finetune_iterator(
            records,
            global_batch_size=6,
            seed=0,
            sampler=cfg,
            process_index=process_index,
            process_count=process_count,
            num_threads=0,
            record_ids=True,
        )
        return _take(it, n)

    single = batches(1, 0)
    for count in (2, 3):
        parts = [batches(count, p) for p in range(count)]
        assert parts[0][0]["sar"].shape[0] == 6 // count
        for step in range(3):
            # The processes' rows concatenate to the single-process global batch.
            joined = {k: np.concatenate([part[step][k] for part in parts]) for k in single[step]}
            assert _equal([joined], [single[step]])
            # One epoch per step: disjoint per-process record sets that cover the split.
            ids = [set(part[step]["record_index"].tolist()) for part in parts]
            assert sum(len(x) for x in ids) == 6 and set().union(*ids) == set(range(6))
    with pytest.raises(ValueError, match="multiple of the process count"):
        data.make_finetune_iterator(
            records, global_batch_size=3, seed=0, process_index=0, process_count=2
        )


def test_iterator_resume_from_state():
    records = _caffe_records()
    it = _ft(records)
    _take(it, 3)
    state = it.get_state()
    json.dumps(state)  # serialisable for checkpoints
    expected = _take(it, 3)
    resumed = _ft(records, num_threads=2)
    resumed.set_state(state)
    assert _equal(_take(resumed, 3), expected)


def test_epochs_visit_every_image_equally_and_finite_length():
    records = _caffe_records(6)
    for i, rec in enumerate(records):
        rec["sar"] = np.full_like(rec["sar"], 10 * i)
    cfg = dataclasses.replace(
        FT, prob_mix_up=0.0, prob_speckle=0.0, prob_brightness=0.0, prob_gamma=0.0
    )
    it = data.make_finetune_iterator(
        records,
        global_batch_size=4,
        seed=3,
        sampler=cfg,
        num_epochs=2,
        process_index=0,
        process_count=1,
        num_threads=0,
    )
    batches = list(it)
    assert len(batches) == 2 * 24 // 4
    ids = [int(round(s.max() * 255)) // 10 for b in batches for s in b["sar"]]
    assert np.bincount(ids).tolist() == [8] * 6  # 48 samples over 6 images


def test_prepare_and_config_driven_iterator(tmp_path, monkeypatch):
    assert not data.is_prepared("caffe", pipeline_dummy_config(), str(tmp_path))
    sources = data.prepare(
        "caffe", pipeline_dummy_config(), str(tmp_path), str(DUMMY / "caffe" / "dummy_data")
    )
    assert data.is_prepared("caffe", pipeline_dummy_config(), str(tmp_path))
    assert {k: len(v) for k, v in sources.items()} == {"train": 9, "validation": 1, "test": 4}
    cfg = data.default_data_config("finetune")
    assert cfg.sampler.context_size == 512 and cfg.sampler.samples_per_epoch == 40000
    cfg.config = pipeline_dummy_config()
    cfg.data_dir = str(tmp_path)
    cfg.manual_dir = str(DUMMY / "caffe" / "dummy_data")
    cfg.sampler.context_size = 32
    cfg.sampler.centre_size = 16
    it = data.make_train_iterator(
        cfg, global_batch_size=2, seed=0, process_index=0, process_count=1
    )
    batch = next(it)
    assert batch["sar"].shape == (2, 32, 32, 1) and batch["zones"].shape == (2, 32, 32)
    pcfg = data.default_data_config("pretrain")
    assert pcfg.sampler.mask_ratio == 0.3 and pcfg.name == "ssl4sar"
    with pytest.raises(ValueError, match="Unknown dataset"):
        data.prepare("imagenet", "full", str(tmp_path))


def pipeline_dummy_config():
    from ssl4sar_jax.builders.caffe.caffe_dataset_builder import CaffeConfig

    return CaffeConfig(name="dummy", description="dummy_data", check_counts=False)


def test_record_cache_is_bounded():
    records = _caffe_records(6)
    cache = pipeline._RecordCache(records, 2, ("sar", "zones"))
    for i in range(6):
        cache[i]
    assert len(cache._data) == 2


def test_worker_processes_give_identical_batches_and_resume():
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # grain workers read absl flags (main.py runs under app.run)
    records = _caffe_records()
    expected = _take(_ft(records), 5)
    it = _ft(records, num_workers=2)
    assert _equal(_take(it, 3), expected[:3])
    state = it.get_state()
    resumed = _ft(records, num_workers=2)
    resumed.set_state(state)
    assert _equal(_take(resumed, 2), expected[3:])
