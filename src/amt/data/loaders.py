"""Three ways to read a cache (see `amt.data.cache`) into batch-contract dicts.

- `CachedDataset(folder, mode="disk")`: each item is read with positioned file reads (`os.pread`);
  nothing is mapped, so it suits many DataLoader workers over a network file system.
- `CachedDataset(folder, mode="memmap")`: items are slices of memory-mapped arrays (page cache).
- `CachedDataset(folder, mode="ram")`: everything read into host memory once.
- `GPUCachedDataset(folder, device)`: the whole cache as tensors on `device` (images uint8);
  `.batches(...)` indexes it with device index tensors, so the training loop moves no data
  between host and device; normalisation runs on the device. `shard_bytes` says what a rank's
  shard would occupy before anything is copied, and `max_bytes` refuses a shard over a budget
  (`amt.training.data` plans the budget from `free_device_memory`).
- `Prefetcher(iterable)`: reads batches ahead in a background thread (the host-memory fallback
  when a cache does not fit on the device).

Both take (rank, world_size) and then serve only samples `rank::world_size`. Rows the cache
build skipped (bad files, listed in its meta.json) are left out; `meta` lists the served samples
of all ranks in order.
Batch keys and shapes follow docs/architecture.md ("Batch contract") plus `index`, `image_id`.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from amt.data.cache import IMAGES_FILE, LABEL_SPECS, LABELS_DIR, CacheArrays, open_cache
from amt.data.transforms import normalize_images

MODES = ("disk", "memmap", "ram")


class _RowReader:
    """Reads row i of a raw or .npy array file with one `os.pread` (no mapping, fork-safe)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype, offset: int) -> None:
        self.path, self.shape, self.dtype, self.offset = path, shape, np.dtype(dtype), offset
        self.row_bytes = int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize
        self._fd: int | None = None
        self._pid = -1

    @classmethod
    def for_npy(cls, path: Path) -> _RowReader:
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            if fortran:
                raise ValueError(f"{path}: Fortran-ordered arrays are not supported in a cache")
            return cls(path, tuple(shape[1:]), dtype, f.tell())

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` as one (len(rows), *shape) array, each read into it with one `os.preadv`."""
        out = np.empty((len(rows), *self.shape), dtype=self.dtype)
        fd = self._open()
        for j, i in enumerate(rows):
            if (
                os.preadv(fd, [memoryview(out[j : j + 1]).cast("B")], self.offset + int(i) * self.row_bytes)
                != self.row_bytes
            ):
                raise IndexError(f"{self.path}: row {i} is beyond the end of the file")
        return out

    def _open(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, i: int) -> np.ndarray:
        buf = os.pread(self._open(), self.row_bytes, self.offset + i * self.row_bytes)
        if len(buf) != self.row_bytes:
            raise IndexError(f"{self.path}: row {i} is beyond the end of the file")
        return np.frombuffer(buf, dtype=self.dtype).reshape(self.shape)


def _sample_tensors(image: np.ndarray, labels: dict[str, np.ndarray], normalize: bool) -> dict[str, Any]:
    img = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # (3, S, S) uint8
    out: dict[str, Any] = {"image": normalize_images(img[None])[0] if normalize else img}
    for key, value in labels.items():
        out[key] = torch.from_numpy(np.array(value))
    out["image_id"] = out["index"].clone()
    return out


class CachedDataset(Dataset):
    """Map-style dataset over a cache folder; item i is a sample dict of the batch contract.

    mode: "disk" | "memmap" | "ram". normalize=True gives float32 ImageNet-normalised CHW images;
    False gives uint8 CHW so the normalisation (and `BatchAugment`) can run on the device.
    rank/world_size: this process serves samples rank, rank + world_size, ...
    """

    def __init__(
        self, folder: str | Path, mode: str = "memmap", normalize: bool = True, rank: int = 0, world_size: int = 1
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"{folder}: mode {mode!r} is not one of {MODES}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        cache = open_cache(folder, mmap=mode != "ram")
        self.folder, self.mode, self.normalize = Path(folder), mode, normalize
        self.meta = [cache.meta[r] for r in cache.rows]  # the samples (skipped rows left out), in order
        self.size = int(cache.images.shape[1])
        self._positions = np.arange(len(cache.rows))[rank::world_size]  # into self.meta
        self.indices = cache.rows[self._positions]  # cache rows served by this rank
        self.skipped = len(cache) - len(cache.rows)  # rows the build skipped (bad files)
        self._cache: CacheArrays | None = None
        self._readers: dict[str, _RowReader] = {}
        if mode == "disk":
            self._readers["image"] = _RowReader(self.folder / IMAGES_FILE, (self.size, self.size, 3), np.uint8, 0)
            for key in LABEL_SPECS:
                self._readers[key] = _RowReader.for_npy(self.folder / LABELS_DIR / f"{key}.npy")
        else:
            self._cache = cache

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict[str, Any]:
        i = int(self.indices[item])
        if self._cache is None:
            image = self._readers["image"].read(i)
            labels = {key: self._readers[key].read(i) for key in LABEL_SPECS}
        else:
            image = self._cache.images[i]
            labels = {key: arr[i] for key, arr in self._cache.labels.items()}
        sample = _sample_tensors(image, labels, self.normalize)
        sample["meta"] = self.meta[int(self._positions[item])]
        return sample

    def __getitems__(self, items: list[int]) -> list[dict[str, Any]]:
        """Samples `items` (torch's DataLoader batched fetch), read as one batch: one fancy-index
        per array (memmap, ram) or one positioned read per row straight into the batch array
        (disk). The per-sample dicts equal `__getitem__`'s; they are views of one batch, which
        `collate` returns without stacking again."""
        rows = np.asarray([int(self.indices[i]) for i in items], dtype=np.int64)
        if self._cache is None:
            images = self._readers["image"].read_rows(rows)
            labels = {key: self._readers[key].read_rows(rows) for key in LABEL_SPECS}
        else:
            images = np.asarray(self._cache.images[rows])
            labels = {key: np.asarray(arr[rows]) for key, arr in self._cache.labels.items()}
        imgs = torch.from_numpy(images).permute(0, 3, 1, 2)  # (B, 3, S, S) uint8
        batch: dict[str, Any] = {"image": normalize_images(imgs) if self.normalize else imgs.contiguous()}
        batch.update({key: torch.from_numpy(value) for key, value in labels.items()})
        batch["image_id"] = batch["index"].clone()
        batch["meta"] = [self.meta[int(self._positions[item])] for item in items]
        return _BatchSamples(batch)


class _BatchSamples(Sequence):
    """Per-sample dicts that are views of one batch dict (`.batch`), from `__getitems__`; made
    only when asked for (`collate` takes `.batch` as it is)."""

    def __init__(self, batch: dict[str, Any]) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch["meta"])

    def __getitem__(self, j: int) -> dict[str, Any]:  # type: ignore[override]
        if not -len(self) <= j < len(self):
            raise IndexError(j)
        return {key: value[j] for key, value in self.batch.items()}


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """List of sample dicts -> batch dict: tensors stacked on a new first axis, `meta` a list.

    Stacks through numpy: on CPU, `np.stack` copies uint8 images several times faster than
    `torch.stack` does.
    """
    if isinstance(samples, _BatchSamples):  # read as one batch already (`CachedDataset.__getitems__`)
        return dict(samples.batch)
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.from_numpy(np.stack([v.numpy() for v in values]))
        else:
            batch[key] = values
    return batch


def make_loader(
    dataset: CachedDataset,
    batch_size: int,
    shuffle: bool = True,
    num_workers: int = 0,
    drop_last: bool = False,
    generator: torch.Generator | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over a CachedDataset with `collate` and persistent workers when num_workers > 0."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def batch_to_device(batch: dict[str, Any], device: torch.device | str, non_blocking: bool = True) -> dict[str, Any]:
    """Move every tensor of a batch dict to `device` (lists such as `meta` stay on the host)."""
    return {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _to_device_in_blocks(
    array: np.ndarray, device: torch.device, rows: np.ndarray, block_bytes: int = 1 << 28
) -> torch.Tensor:
    """Copy `array[rows]` of a (possibly memory-mapped) array to `device` a block of rows at a time,
    so host memory never holds more than one block (~256 MiB) beyond the page cache."""
    out = torch.empty(
        (len(rows), *array.shape[1:]), dtype=torch.from_numpy(np.empty(0, array.dtype)).dtype, device=device
    )
    row_bytes = max(1, array[:1].nbytes)
    step = max(1, block_bytes // row_bytes)
    for start in range(0, len(rows), step):
        out[start : start + step] = torch.from_numpy(np.asarray(array[rows[start : start + step]]))
    return out


class CacheBudgetError(MemoryError):
    """A rank's cache shard does not fit in the device-memory budget it was given."""


def free_device_memory(device: torch.device | str) -> int:
    """Bytes free on `device`: the CUDA allocator's view for a GPU, available host memory for
    the CPU (tests monkeypatch this to inject a memory limit)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))


def _row_bytes(array: np.ndarray) -> int:
    return int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize


class GPUCachedDataset:
    """A rank's shard of a cache resident on `device`: images (n, S, S, 3) uint8, labels as tensors.

    `.batches()` yields batch dicts built by indexing with device index tensors; the shuffle
    permutation is drawn once per epoch, so the loop does no host-device copies. Per-sample
    `meta` is left out unless `with_meta=True` (that one needs the indices on the host).
    max_bytes: CacheBudgetError (before anything is copied) when the shard needs more.
    """

    def __init__(
        self,
        folder: str | Path,
        device: torch.device | str,
        rank: int = 0,
        world_size: int = 1,
        normalize: bool = True,
        max_bytes: int | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        cache = open_cache(folder, mmap=True)
        self.device = torch.device(device)
        self.normalize = normalize
        self.meta = [cache.meta[r] for r in cache.rows]
        self.rank, self.world_size = rank, world_size
        self._positions = np.arange(len(cache.rows))[rank::world_size]  # into self.meta
        keep = cache.rows[self._positions]
        need = self._bytes(cache, len(keep))
        if max_bytes is not None and need > max_bytes:
            raise CacheBudgetError(
                f"{folder}: rank {rank}'s cache shard needs {need / 1e9:.3f} GB on {self.device}, over the budget "
                f"of {max_bytes / 1e9:.3f} GB (data.gpu_cache_max_gb)"
            )
        self.images = _to_device_in_blocks(cache.images, self.device, keep)  # (n, S, S, 3)
        self.labels = {k: _to_device_in_blocks(v, self.device, keep) for k, v in cache.labels.items()}

    @staticmethod
    def _bytes(cache: CacheArrays, rows: int) -> int:
        return rows * (_row_bytes(cache.images) + sum(_row_bytes(v) for v in cache.labels.values()))

    @classmethod
    def shard_bytes(cls, folder: str | Path, rank: int = 0, world_size: int = 1) -> int:
        """Bytes the shard `rank::world_size` of the cache `folder` occupies once placed (nothing is read)."""
        cache = open_cache(folder, mmap=True)
        return cls._bytes(cache, len(range(rank, len(cache.rows), world_size)))

    @property
    def nbytes(self) -> int:
        """Bytes this dataset's tensors occupy on its device."""
        tensors = [self.images, *self.labels.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def get(self, idx: torch.Tensor, with_meta: bool = False) -> dict[str, Any]:
        """Batch dict for local indices `idx` (B,) int64 on any device."""
        idx = idx.to(self.device)
        images = self.images[idx].permute(0, 3, 1, 2)  # gather whole rows, then view as CHW
        batch: dict[str, Any] = {"image": normalize_images(images) if self.normalize else images}
        for key, value in self.labels.items():
            batch[key] = value[idx]
        batch["image_id"] = batch["index"]
        if with_meta:
            batch["meta"] = [self.meta[int(self._positions[i])] for i in idx.tolist()]
        return batch

    def batches(
        self,
        batch_size: int,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        with_meta: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """One epoch of batches. Shuffling uses `generator` on its own device, then moves the
        permutation to the data's device once."""
        n = len(self)
        if shuffle:
            gen_device = generator.device if generator is not None else torch.device("cpu")
            order = torch.randperm(n, generator=generator, device=gen_device).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield self.get(order[start : start + batch_size], with_meta=with_meta)


class _Failure:
    """An error of the prefetch thread, carried to the consumer."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class Prefetcher:
    """Iterates `iterable` with up to `depth` items read ahead by a background thread, so a
    batch is read (and pinned, by a DataLoader with pin_memory=True) while the previous one
    trains. The items and their order are those of `iterable`; its errors are raised here."""

    _END = object()

    def __init__(self, iterable: Iterable[Any], depth: int = 2) -> None:
        self.iterable, self.depth = iterable, depth

    def __iter__(self) -> Iterator[Any]:
        items: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()
        # a new thread starts on CUDA device 0: pin (and start a DataLoader's pin thread) for the consumer's
        # device, not a context and pinned memory on GPU 0 from every rank
        cuda_device = torch.cuda.current_device() if torch.cuda.is_initialized() else None

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    items.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            if cuda_device is not None:
                torch.cuda.set_device(cuda_device)
            try:
                for item in self.iterable:
                    if not put(item):
                        return
                put(self._END)
            except Exception as exc:  # noqa: BLE001 (any error is handed to the consumer and raised there)
                put(_Failure(exc))

        thread = threading.Thread(target=produce, name="amt-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = items.get()
                if item is self._END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            stop.set()
            thread.join(timeout=5)
