"""The data order of a run: the same on 1 or N processes, resumable inside an epoch.

- `EpochSampler`: the order of one pass is a permutation seeded by (seed, pass) alone (the identity
  without shuffling); rank r of N takes positions r, r+N, r+2N... of it. So the k-th batches of the N
  ranks (batch B each) hold exactly the k-th batch of one process with batch N x B, and a pass can
  start at any batch (`set_epoch(pass, start=...)`) without reading the ones before.
- `SeededItems`: each training sample's augmentation (crop scale, rotation, flip, half body) draws from
  torch's RNG seeded by (seed, pass, index), in a forked RNG so the process's own stream is untouched.
  The crops are then the same whatever the number of ranks, workers or the batch a resume starts at.
- `epoch_batches`: the batches of one epoch, cycling the loader when an epoch is longer than a pass
  (the search's fixed step counts) and starting at any step.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

PASSES_PER_EPOCH = 1000  # pass ids of epoch e are e * 1000 + 0, 1, ... (an epoch never cycles 1000 times)


def mix_seed(*values: int) -> int:
    """A 63-bit seed from a few integers (SplitMix64-style mixing: nearby inputs give unrelated seeds)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class EpochSampler(Sampler):
    """Indices of this rank's share of one pass, as (index, pass) pairs for `SeededItems`.

    `pad=True` (training) repeats the first positions so every rank gets the same count (as
    torch's DistributedSampler), so all ranks run the same number of steps; `pad=False` (evaluation)
    gives every sample exactly once over all ranks."""

    def __init__(self, length: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pad: bool = True):
        self.length, self.shuffle, self.seed = length, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Pass `epoch`, from this rank's `start`-th sample on (a resume inside the pass)."""
        self.epoch, self.start = epoch, start

    def per_rank(self) -> int:
        """Samples of a whole pass on this rank (without `start`)."""
        if self.pad:
            return math.ceil(self.length / self.world_size)
        return len(range(self.rank, self.length, self.world_size))

    def order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        if self.pad and self.length % self.world_size:
            extra = self.world_size - self.length % self.world_size
            order += (order * (extra // max(len(order), 1) + 1))[:extra]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.order()[self.start:]:
            yield index, self.epoch

    def __len__(self) -> int:
        return max(0, self.per_rank() - self.start)


class SeededItems(Dataset):
    """`dataset[index]` with torch's RNG seeded by (seed, pass, index) for that one item.

    Keys are (index, pass) pairs from `EpochSampler` or plain indices (no reseeding: evaluation
    draws nothing). The process's RNG is forked around the item, so neither the main process's stream
    (model initialisation, path sampling) nor a worker's depends on how many items it loaded."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, epoch = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.seed, epoch, index))
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:  # ann_file, primary_metric, ... of the wrapped dataset
        if name == "dataset" or name.startswith("__"):  # e.g. Subset.__getitems__ would get our keys
            raise AttributeError(name)
        return getattr(self.dataset, name)


def passes_in_epoch_step(loader: DataLoader, step: int) -> tuple[int, int]:
    """(pass within the epoch, batch within that pass) of an epoch's `step`-th batch."""
    return divmod(step, full_pass_batches(loader))


def full_pass_batches(loader: DataLoader) -> int:
    sampler = loader.sampler
    n = sampler.per_rank() if isinstance(sampler, EpochSampler) else len(sampler)
    return max(1, n // loader.batch_size if loader.drop_last else math.ceil(n / loader.batch_size))


def epoch_batches(loader: DataLoader, epoch: int, steps: int, start: int = 0) -> Iterator[Any]:
    """Batches `start`..`steps`-1 of `epoch`: pass ids epoch * PASSES_PER_EPOCH + p, each pass a new
    order, as many passes as the steps need. Needs a loader made by `nas.engine.runtime.make_loader`."""
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, EpochSampler):  # any other iterable: cycled, in its own order
        yield from itertools.islice(_cycle(loader), start, steps)
        return
    step = start
    while step < steps:
        pass_id, offset = passes_in_epoch_step(loader, step)
        sampler.set_epoch(epoch * PASSES_PER_EPOCH + pass_id, start=offset * loader.batch_size)
        produced = False
        for batch in loader:
            if step >= steps:
                return
            produced = True
            yield batch
            step += 1
        if not produced:
            raise RuntimeError("the training loader produced no batch (fewer samples than one batch?)")


def _cycle(iterable: Any) -> Iterator[Any]:
    while True:
        empty = True
        for item in iterable:
            empty = False
            yield item
        if empty:
            return
