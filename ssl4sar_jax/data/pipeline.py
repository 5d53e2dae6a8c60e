"""grain input pipelines: fine-tuning and pretraining samplers over TFDS data sources.

Design (samplers of Nora-Go/TYRION ``CaFFe/dataset_hook.py:RandomPatchDataset`` and
``CaFFe/dataset_unlabeled.py``, made deterministic and resumable for grain):

* A pipeline is ``grain.MapDataset.range(n).map(sampler).batch(b).to_iter_dataset()``. The
  global stream does not depend on the number of processes: global sample ``g`` (row
  ``g % B`` of global batch ``g // B``) is a pure function of ``(seed, g)`` — its random generator
  is ``np.random.default_rng([seed, 0, g])`` and its image is entry ``g % E`` of a per-epoch
  permutation of the ``E = samples_per_epoch`` samples seeded by ``(seed, epoch)``. So every
  global batch is a function of ``(seed, step)`` only: independent of threads, restarts and of
  how many processes share the batch (a run may resume on another cluster size).
* Process ``p`` of ``P`` yields rows ``[p * b, (p + 1) * b)`` of every global batch
  (``b = B / P``, the rows ``jax.make_array_from_process_local_data`` expects from it), so within
  an epoch the processes read disjoint sets of images whose union is the split (when
  ``samples_per_epoch`` equals the number of records), as PyTorch's ``DistributedSampler`` does.
* The iterator is a grain ``DatasetIterator``: ``get_state()`` returns a small JSON-able dict
  (the number of batches consumed, the same on every process) and ``set_state(state)`` resumes
  exactly (the training loop checkpoints it per process).
* Records are the TFDS records of docs/interfaces.md (or any sequence of dicts with the same
  keys). Output batches are exactly the documented training batches.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from ssl4sar_jax.data import transforms
from ssl4sar_jax.data.transforms import FinetuneSamplerConfig, PretrainSamplerConfig

Record = Mapping[str, Any]
Batch = dict[str, np.ndarray]
# Length of an "infinite" pipeline (grain MapDatasets have a length); never reached in practice.
_INFINITE = 2**40
# Stream id in the per-sample seeds: 0 keeps single-process streams identical to the per-process
# streams of earlier versions (process 0 of 1), so published demo numbers stay reproducible.
_STREAM = 0


def _process_info(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return process_index, process_count


class _RecordCache:
    """Thread-safe LRU of decoded records (decoding a large PNG per sample would dominate)."""

    def __init__(self, source: Sequence[Record], size: int, keys: tuple[str, ...]):
        self._source, self._size, self._keys = source, size, keys
        self._data: collections.OrderedDict[int, dict] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self):  # picklable for grain worker processes (locks and cache dropped)
        return {"source": self._source, "size": self._size, "keys": self._keys}

    def __setstate__(self, state):
        self.__init__(state["source"], state["size"], state["keys"])

    def __getitem__(self, index: int) -> dict:
        with self._lock:
            if index in self._data:
                self._data.move_to_end(index)
                return self._data[index]
        record = self._source[index]
        value = {k: np.asarray(record[k]) for k in self._keys}
        if self._size > 0:
            with self._lock:
                self._data[index] = value
                while len(self._data) > self._size:
                    self._data.popitem(last=False)
        return value


class _IndexSampler:
    """Maps local element index -> (record index, rng), deterministic and process-count invariant.

    Args:
        num_records: Records in the split.
        samples_per_epoch: Global samples per epoch ``E`` (sample ``g`` uses image
            ``perm_epoch[g % E] % num_records``, the reference's ``names[i % N]``).
        seed: Pipeline seed.
        global_batch: Global batch size ``B``.
        rows: ``(start, stop)`` rows of every global batch this process yields.
    """

    def __init__(
        self,
        num_records: int,
        samples_per_epoch: int,
        seed: int,
        global_batch: int,
        rows: tuple[int, int],
    ):
        if num_records <= 0:
            raise ValueError("The data source is empty")
        self.num_records = num_records
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.global_batch = global_batch
        self.rows = rows
        self._perms: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __getstate__(self):  # picklable for grain worker processes
        return {k: v for k, v in self.__dict__.items() if k not in ("_perms", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._perms, self._lock = {}, threading.Lock()

    def _permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            perm = self._perms.get(epoch)
            if perm is None:
                rng = np.random.default_rng([self.seed, _STREAM, epoch, 7])
                perm = rng.permutation(self.samples_per_epoch)
                self._perms = {epoch: perm}  # keep only the current epoch
            return perm

    def global_index(self, index: int) -> int:
        """Global sample index of this process's element ``index``."""
        start, stop = self.rows
        step, row = divmod(int(index), stop - start)
        return step * self.global_batch + start + row

    def random_record(self, rng: np.random.Generator) -> int:
        """A uniformly drawn record index (e.g. a mix-up partner)."""
        return int(rng.integers(self.num_records))

    def __call__(self, index: int) -> tuple[int, np.random.Generator]:
        sample = self.global_index(index)
        epoch, pos = divmod(sample, self.samples_per_epoch)
        record = int(self._permutation(epoch)[pos]) % self.num_records
        return record, np.random.default_rng([self.seed, _STREAM, sample])


class FinetuneSample:
    """grain map: element index -> ``{"sar": float32 [C,C,1], "zones": int32 [C,C]}``."""

    def __init__(self, records: _RecordCache, sampler: _IndexSampler, cfg: FinetuneSamplerConfig):
        self.records, self.sampler, self.cfg = records, sampler, cfg

    def _context(self, record_index: int, rng: np.random.Generator):
        rec = self.records[record_index]
        sar = rec["sar"][..., 0] if rec["sar"].ndim == 3 else rec["sar"]
        return transforms.random_context(sar, rec["zones"], rng, self.cfg)

    def __call__(self, index: int) -> Batch:
        record_index, rng = self.sampler(index)
        sar, zones = self._context(record_index, rng)
        if rng.random() < self.cfg.prob_mix_up:
            weight = rng.uniform(*self.cfg.mix_up_range)
            other = self.sampler.random_record(rng)
            other_sar, _ = self._context(other, rng)
            sar = transforms.mix_up_ocean(sar, zones, other_sar, weight)
        sar = transforms.ocrodeg(sar, rng, self.cfg)
        sar, zones = transforms.flips((sar, zones), rng, self.cfg)
        return {
            "sar": (sar.astype(np.float32) / 255.0)[..., None],
            "zones": zones.astype(np.int32),
        }


class PretrainSample:
    """grain map: element index -> ``{"sar", "optical", "mim_mask"}`` (see docs/interfaces.md)."""

    def __init__(self, records: _RecordCache, sampler: _IndexSampler, cfg: PretrainSamplerConfig):
        self.records, self.sampler, self.cfg = records, sampler, cfg

    def __call__(self, index: int) -> Batch:
        record_index, rng = self.sampler(index)
        rec = self.records[record_index]
        sar = rec["sar"][..., 0] if rec["sar"].ndim == 3 else rec["sar"]
        sar, optical = transforms.pretrain_crop(sar, rec["optical"], rng, self.cfg)
        grid = self.cfg.crop_size // self.cfg.mask_patch_size
        mask = transforms.token_mask(
            rng, (grid, grid), self.cfg.mask_ratio, self.cfg.mask_first_token
        )
        return {
            "sar": (sar.astype(np.float32) / 255.0)[..., None],
            "optical": optical.astype(np.float32) / 255.0,
            "mim_mask": mask,
        }


class _WithRecordIndex:
    """grain map wrapper adding ``"record_index"`` (int64, the record of the split) to a sample."""

    def __init__(self, sample: Callable[[int], Batch], sampler: _IndexSampler):
        self.sample, self.sampler = sample, sampler

    def __call__(self, index: int) -> Batch:
        out = self.sample(index)
        out["record_index"] = np.int64(self.sampler(index)[0])
        return out


def _build(
    source: Sequence[Record],
    make_map: Callable[[_RecordCache, _IndexSampler], Callable[[int], Batch]],
    keys: tuple[str, ...],
    *,
    global_batch_size: int,
    seed: int,
    samples_per_epoch: int,
    num_epochs: int | None,
    process_index: int | None,
    process_count: int | None,
    num_threads: int,
    prefetch_buffer_size: int,
    record_cache_size: int,
    num_workers: int,
    record_ids: bool = False,
) -> grain.DatasetIterator:
    p, n_proc = _process_info(process_index, process_count)
    if global_batch_size <= 0 or global_batch_size % n_proc:
        raise ValueError(
            f"global_batch_size {global_batch_size} must be a positive multiple of the "
            f"process count {n_proc}"
        )
    if len(source) == 0:
        raise ValueError("The data source is empty")
    local_batch = global_batch_size // n_proc
    epoch = max(global_batch_size, samples_per_epoch)
    rows = (p * local_batch, (p + 1) * local_batch)
    sampler = _IndexSampler(len(source), epoch, seed, global_batch_size, rows)
    records = _RecordCache(source, record_cache_size, keys)
    # Local elements: this process's rows of every global batch (whole batches per epoch).
    total = (
        _INFINITE if num_epochs is None else (epoch * num_epochs // global_batch_size) * local_batch
    )
    sample = make_map(records, sampler)
    if record_ids:
        sample = _WithRecordIndex(sample, sampler)
    ds = grain.MapDataset.range(total).map(sample)
    ds = ds.batch(local_batch, drop_remainder=True)
    read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    iter_ds = ds.to_iter_dataset(read)
    if num_workers > 0:
        # Worker processes produce whole batches round-robin: same batches, same state semantics.
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(iter_ds)


def make_finetune_iterator(
    source: Sequence[Record],
    *,
    global_batch_size: int,
    seed: int,
    sampler: FinetuneSamplerConfig | None = None,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 2,
    prefetch_buffer_size: int = 8,
    record_cache_size: int = 64,
    num_workers: int = 0,
    record_ids: bool = False,
) -> grain.DatasetIterator:
    """Fine-tuning batches from CaFFe records (random context + reference augmentations).

    Args:
        source: CaFFe records (``sar`` uint8 [H, W, 1], ``zones`` uint8 [H, W]), e.g.
            ``prepare("caffe", ...)["train"]``.
        global_batch_size: batch over all processes; process ``p`` yields rows
            ``[p * b, (p + 1) * b)`` of it, ``b = global // process_count``.
        seed: pipeline seed.
        sampler: augmentation and size settings (default: the paper's 512/256 recipe).
        num_epochs: None = infinite; otherwise ``samples_per_epoch * num_epochs`` samples.
        process_index: defaults to ``jax.process_index()``.
        process_count: defaults to ``jax.process_count()``.
        num_threads: grain read threads (0 = sample in the calling thread).
        prefetch_buffer_size: elements prefetched by grain.
        record_cache_size: decoded records kept in memory (LRU).
        num_workers: grain worker processes (0 = none). Needs absl flags parsed (run under
            ``absl.app.run``) and a ``__main__`` guard; batches are identical to num_workers=0.
        record_ids: also yield ``"record_index"`` int64 ``[B]``, the split's record of each
            sample (to audit sharding and epochs).

    Returns:
        A grain iterator of ``{"sar": float32 [B, C, C, 1] in [0, 1], "zones": int32 [B, C, C]}``
        with ``get_state()`` / ``set_state()``.
    """
    cfg = sampler or FinetuneSamplerConfig()
    return _build(
        source,
        lambda records, idx: FinetuneSample(records, idx, cfg),
        ("sar", "zones"),
        global_batch_size=global_batch_size,
        seed=seed,
        samples_per_epoch=cfg.samples_per_epoch,
        num_epochs=num_epochs,
        process_index=process_index,
        process_count=process_count,
        num_threads=num_threads,
        prefetch_buffer_size=prefetch_buffer_size,
        record_cache_size=record_cache_size,
        num_workers=num_workers,
        record_ids=record_ids,
    )


def make_pretrain_iterator(
    source: Sequence[Record],
    *,
    global_batch_size: int,
    seed: int,
    sampler: PretrainSamplerConfig | None = None,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 2,
    prefetch_buffer_size: int = 8,
    record_cache_size: int = 16,
    num_workers: int = 0,
    record_ids: bool = False,
) -> grain.DatasetIterator:
    """Pretraining batches from SSL4SAR records (crop, random-resized crop, flip, token mask).

    Args: as `make_finetune_iterator`, with SSL4SAR records (``sar`` uint8 [H, W, 1], ``optical``
    uint8 [H, W, 14]).

    Returns:
        A grain iterator of ``{"sar": float32 [B, C, C, 1], "optical": float32 [B, C, C, 14],
        "mim_mask": bool [B, C / 4, C / 4]}`` with ``get_state()`` / ``set_state()``.
    """
    cfg = sampler or PretrainSamplerConfig()
    return _build(
        source,
        lambda records, idx: PretrainSample(records, idx, cfg),
        ("sar", "optical"),
        global_batch_size=global_batch_size,
        seed=seed,
        samples_per_epoch=cfg.samples_per_epoch,
        num_epochs=num_epochs,
        process_index=process_index,
        process_count=process_count,
        num_threads=num_threads,
        prefetch_buffer_size=prefetch_buffer_size,
        record_cache_size=record_cache_size,
        num_workers=num_workers,
        record_ids=record_ids,
    )
