"""Per-source loaders: webdataset shards -> samples (samples.py) -> batches, resumable to the batch.

One pipeline shape for every sample kind: read tar -> group members by key -> shuffle ->
decode (`SampleDecoder`) -> collate.

Who reads what (the three names used below):
  worker   a loader process of one rank, 0..workers-1 with workers = max(1, num_workers) (with
           num_workers = 0 the training process itself is worker 0). The DataLoader takes
           batches from its processes round-robin; `next_worker` is the worker whose batch comes
           next, so a resumed loader starts the round-robin there (DataLoader process p serves
           worker (p + next_worker) % workers).
  reader   one (rank, worker) pair: reader = rank * workers + worker, of n_readers =
           world_size * workers. Each reader reads its own share of a source's shards.
  ReaderState  where one reader stands: (epoch, shard position, samples emitted from that shard)
           and its counters.

Determinism and resume. Shard i of the epoch's (seeded) permutation goes to reader
i mod n_readers; with fewer shards than readers every reader reads every shard and keeps every
n_readers-th sample (which one turns with epoch and shard, so no reader starves and nothing
hangs). Samples are shuffled inside a shard with a buffer whose RNG is seeded by (seed, source,
epoch, shard), so a `ReaderState` fully describes a reader's position. Every batch carries the
state of the reader that made it; `SourceLoader.state_dict()` keeps the last consumed one per
worker plus `next_worker`, and a loader built from that state replays the exact same batch
sequence (skipped samples are re-read but not decoded).

Robustness: a sample that fails to decode is skipped (`corrupt_samples`); a tar that cannot
be opened or breaks part-way ends that shard (`corrupt_shards`, its complete samples are
kept). A reader that finds no usable sample (nothing readable, nothing decodes, or the limits
skip everything) in n_readers consecutive epochs raises instead of spinning.
"""

from __future__ import annotations

import dataclasses
import glob
import random
import tarfile
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from model.tokenizer import FlamingoTokenizer
from model.train.config import SourceConfig
from model.train.samples import Batch, ImageSpec, Sample, SampleDecoder, SkipSample, collate

# samples: decoded and used; corrupt_samples: skipped, undecodable; corrupt_images: images of M3W
# documents dropped because they do not decode (the document stays); corrupt_shards: shard reads
# that failed to open or broke part-way (once per read: every epoch, every reader reading it);
# no_media: samples with too few images under the source's limits; epochs: passes over the shards.
COUNTERS = ("samples", "corrupt_samples", "corrupt_images", "corrupt_shards", "no_media", "epochs")


# --- shards --------------------------------------------------------------------------------


def expand_shards(urls: str | Sequence[str]) -> list[str]:
    """Brace patterns ("a-{000..009}.tar", "::"-separated lists) and local globs -> shard URLs, in order."""
    from webdataset.shardlists import expand_urls

    out: list[str] = []
    for pattern in [urls] if isinstance(urls, str) else urls:
        for url in expand_urls(str(pattern)):
            if "://" not in url and not url.startswith("pipe:") and any(c in url for c in "*?["):
                out.extend(sorted(glob.glob(url)))
            else:
                out.append(url)
    return out


def open_shard(url: str) -> BinaryIO:
    """Local path, file://, http(s)://, gs://, pipe:... through webdataset's gopen."""
    from webdataset.gopen import gopen

    return gopen(url, "rb")


def split_member(name: str) -> tuple[str, str]:
    """webdataset's key rule: KEY is everything before the first '.' of the base name."""
    directory, _, base = name.rpartition("/")
    key, _, suffix = base.partition(".")
    return (f"{directory}/{key}" if directory else key), suffix.lower()


def read_tar_samples(url: str, counters: dict[str, int]) -> Iterator[dict[str, Any]]:
    """Samples (dict suffix -> bytes, plus __key__/__url__) of one tar, members grouped by key.
    A tar that fails to open or breaks mid-way ends here, counted in `corrupt_shards`."""
    sample: dict[str, Any] | None = None
    try:
        with open_shard(url) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                key, suffix = split_member(info.name)
                if key.startswith("__") or not suffix:
                    continue
                member = tar.extractfile(info)
                if member is None:  # not a regular file after all
                    continue
                data = member.read()
                if sample is not None and sample["__key__"] != key:
                    yield sample
                    sample = None
                if sample is None:
                    sample = {"__key__": key, "__url__": url}
                sample[suffix] = data
                tar.members = []  # streaming: do not keep every TarInfo
    except Exception:  # noqa: BLE001 - any broken or unreadable shard is skipped, never fatal
        counters["corrupt_shards"] += 1
        return  # the pending sample may be incomplete: dropped with the shard's tail
    if sample is not None:
        yield sample


# --- one reader's stream -------------------------------------------------------------------


@dataclass
class ReaderState:
    """Where one reader stands: skip `offset` samples of shard `shard` in `epoch`; its counters."""

    epoch: int = 0
    shard: int = 0
    offset: int = 0
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "shard": self.shard, "offset": self.offset, "counters": dict(self.counters)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReaderState:
        counters = dict.fromkeys(COUNTERS, 0)
        counters.update(d["counters"])
        return cls(int(d["epoch"]), int(d["shard"]), int(d["offset"]), counters)


def reader_shards(shards: Sequence[str], epoch: int, reader: int, n_readers: int, seed: str,
                  shuffle: bool) -> tuple[list[str], bool]:
    """This reader's shards for an epoch, and whether it must split them by sample instead."""
    order = list(shards)
    if shuffle:
        random.Random(f"{seed}/shards/{epoch}").shuffle(order)
    if len(order) >= n_readers:
        return order[reader::n_readers], False
    return order, True


def shuffled(samples: Iterator[dict[str, Any]], buffer: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """Seeded buffer shuffle; drains in random order at the end of the shard."""
    if buffer <= 1:
        yield from samples
        return
    buf: list[dict[str, Any]] = []
    for s in samples:
        buf.append(s)
        if len(buf) >= buffer:
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
    while buf:
        i = rng.randrange(len(buf))
        buf[i], buf[-1] = buf[-1], buf[i]
        yield buf.pop()


class SourceStream(IterableDataset):
    """Batches of one source for one rank; inside a DataLoader process it serves that process's worker."""

    def __init__(self, cfg: SourceConfig, tokenizer: FlamingoTokenizer, image: ImageSpec, *, seed: int,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 states: dict[int, ReaderState] | None = None, next_worker: int = 0, infinite: bool = True,
                 shuffle: bool = True) -> None:
        super().__init__()
        self.cfg, self.tok = cfg, tokenizer
        self.decoder = SampleDecoder(cfg, tokenizer, image)
        self.shards = expand_shards(cfg.urls)
        if not self.shards:
            raise FileNotFoundError(f"source {cfg.name}: no shards match {cfg.urls}")
        self.seed = f"{seed}/{cfg.name}"
        self.rank, self.world_size, self.workers = rank, world_size, max(1, num_workers)
        self.states, self.next_worker = dict(states or {}), next_worker
        self.infinite, self.shuffle = infinite, shuffle

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker = ((info.id if info is not None else 0) + self.next_worker) % self.workers
        state = dataclasses.replace(self.states.get(worker, ReaderState()))
        state.counters = dict(state.counters)
        return self.batches(worker, state)

    def raw(self, worker: int, state: ReaderState, used: list[bool]) -> Iterator[dict[str, Any]]:
        """Raw samples of this worker's reader from `state` on; `state` is advanced in place per
        sample. The consumer sets `used[0]` when a sample gave something to train on: an epoch
        without one (nothing readable, or nothing decodes, or the limits skip everything) counts
        as empty."""
        n_readers = self.world_size * self.workers
        reader = self.rank * self.workers + worker
        empty_epochs = 0
        while True:
            mine, by_sample = reader_shards(self.shards, state.epoch, reader, n_readers, self.seed,
                                            self.shuffle and self.cfg.shuffle_shards)
            used[0] = False
            whole_epoch = state.shard == 0 and state.offset == 0  # a resumed epoch's tail may be empty
            while state.shard < len(mine):
                url = mine[state.shard]
                rng = random.Random(f"{self.seed}/{state.epoch}/{url}")
                samples = read_tar_samples(url, state.counters)
                if by_sample:
                    turn = state.epoch + state.shard
                    samples = (s for i, s in enumerate(samples) if (i + turn) % n_readers == reader)
                emitted = 0
                buffer = self.cfg.shuffle_buffer if self.shuffle else 0
                for sample in shuffled(samples, buffer, rng):
                    emitted += 1
                    if emitted <= state.offset:
                        continue  # resuming: already consumed before the checkpoint
                    state.offset = emitted
                    yield sample
                state.shard, state.offset = state.shard + 1, 0
            state.epoch, state.shard, state.offset = state.epoch + 1, 0, 0
            state.counters["epochs"] += 1
            if not self.infinite:
                return
            empty_epochs = 0 if used[0] or not whole_epoch else empty_epochs + 1
            if empty_epochs >= n_readers:
                raise RuntimeError(
                    f"source {self.cfg.name}: rank {self.rank} worker {worker} found no usable sample in "
                    f"{empty_epochs} epochs over {len(self.shards)} shards ({state.counters})")

    def batches(self, worker: int, state: ReaderState) -> Iterator[Batch]:
        pending: list[Sample] = []
        group: list[Sample] = []  # pairs/video: the chunks of the sequence being packed
        pack = self.cfg.samples_per_sequence if self.cfg.kind != "m3w" else 0
        used = [False]
        for raw in self.raw(worker, state, used):
            rng = random.Random(f"{self.seed}/{state.epoch}/{raw['__key__']}")
            try:
                sample = self.decoder(raw, rng)
            except SkipSample:
                state.counters["no_media"] += 1
                continue
            except Exception:  # noqa: BLE001 - a corrupt sample is counted and skipped
                state.counters["corrupt_samples"] += 1
                continue
            used[0] = True
            state.counters["samples"] += 1
            state.counters["corrupt_images"] += sample.corrupt_images
            if pack:
                group.append(sample)
                if len(group) < pack:
                    continue
                sample, group = self.decoder.join(group), []
            pending.append(sample)
            if len(pending) == self.cfg.batch_size:
                yield self._emit(pending, worker, state)
                pending = []
        if group:
            pending.append(self.decoder.join(group))
        if pending:  # finite (evaluation) streams only: the last, smaller batch
            yield self._emit(pending, worker, state)

    def _emit(self, samples: list[Sample], worker: int, state: ReaderState) -> Batch:
        batch = collate(samples, self.tok, self.cfg.name)
        batch.state = {"worker": worker, "reader": state.to_dict()}
        return batch


class SourceLoader:
    """One source's batches for this rank, through `num_workers` DataLoader processes.

    Workers are visited round-robin, so the batch sequence is a pure function of the reader
    states and `next_worker`; both are in `state_dict()`. `wait_s` sums the time spent waiting
    for batches (data starvation)."""

    def __init__(self, cfg: SourceConfig, tokenizer: FlamingoTokenizer, image: ImageSpec, *, seed: int,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 state: dict[str, Any] | None = None, infinite: bool = True, shuffle: bool = True) -> None:
        self.cfg, self.num_workers = cfg, num_workers
        self.workers = max(1, num_workers)
        self.readers = {w: ReaderState() for w in range(self.workers)}  # by worker
        self.next_worker, self.consumed = 0, 0
        if state is not None:
            if int(state["workers"]) != self.workers:
                raise ValueError(f"source {cfg.name}: loader state has {state['workers']} workers, config {self.workers}")
            self.readers = {int(w): ReaderState.from_dict(s) for w, s in state["readers"].items()}
            self.next_worker = int(state["next_worker"])
        self.dataset = SourceStream(cfg, tokenizer, image, seed=seed, rank=rank, world_size=world_size,
                                    num_workers=num_workers, states=self.readers, next_worker=self.next_worker,
                                    infinite=infinite, shuffle=shuffle)
        self.loader = DataLoader(self.dataset, batch_size=None, num_workers=num_workers,
                                 prefetch_factor=4 if num_workers else None, persistent_workers=False,
                                 generator=torch.Generator().manual_seed(seed))  # never draws from the global RNG
        self._it: Iterator[Batch] | None = None
        self.wait_s = 0.0

    def __iter__(self) -> SourceLoader:
        return self

    def __next__(self) -> Batch:
        if self._it is None:
            self._it = iter(self.loader)
        t0 = time.perf_counter()
        batch = next(self._it)
        self.wait_s += time.perf_counter() - t0
        self.readers[batch.state["worker"]] = ReaderState.from_dict(batch.state["reader"])
        self.consumed += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "next_worker": (self.next_worker + self.consumed) % self.workers,
                "readers": {str(w): s.to_dict() for w, s in self.readers.items()}}

    def counters(self) -> dict[str, int]:
        total = dict.fromkeys(COUNTERS, 0)
        for s in self.readers.values():
            for k, v in s.counters.items():
                total[k] = total.get(k, 0) + v
        return total

    def close(self) -> None:
        self._it = None  # DataLoader workers exit when their iterator is dropped


def eval_batches(cfg: SourceConfig, tokenizer: FlamingoTokenizer, image: ImageSpec, *, seed: int,
                 n_batches: int, rank: int = 0, world_size: int = 1) -> list[Batch]:
    """The first `n_batches` batches of a held-out set, in shard order (same every evaluation)."""
    stream = SourceStream(cfg, tokenizer, image, seed=seed, rank=rank, world_size=world_size,
                          infinite=False, shuffle=False)
    out: list[Batch] = []
    for batch in stream:
        out.append(batch)
        if len(out) >= n_batches:
            break
    return out
