"""A loader worker's sample stream with a position it can resume from exactly.

    worker_shards -> read_shards -> positioned_shuffle -> (decode) -> positioned_batches
    -> OrderedLoader

Everything random is drawn from (seed, epoch, rank, worker) and the sample's ordinal in
the stream, never from an rng carried along, so a stream's state is small data:

- a worker's **position** (after the sample it last emitted): the shard ordinal and sample
  index it reads next (`shard`, `sample`), the samples waiting in its shuffle buffer, in
  buffer order (`pending`, as [shard ordinal, sample index]) and how many it emitted
  (`emitted`);
- a loader's **position**: every worker's position, which workers are exhausted, and whose
  turn is next. `OrderedLoader` serves the workers' batches in a fixed round robin (an
  exhausted worker drops out of the cycle), whatever order the DataLoader's processes
  deliver them in, so the batch order is a function of the data alone.

Resuming from a position re-opens only the shards that hold pending samples (and the one
being read); their other tar members are stepped over without being read into memory,
shards before them are not opened at all, and nothing skipped is decoded.
"""
from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import count

import torch
import webdataset as wds
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

log = logging.getLogger(__name__)

START = {"shard": 0, "sample": 0, "pending": [], "emitted": 0}


@dataclass(frozen=True)
class StreamId:
    """Who reads: the seeds of everything random in one worker's pass over one epoch."""

    seed: int
    epoch: int
    rank: int
    world: int
    worker: int
    workers: int

    def tag(self, what: str) -> str:
        return f"{self.seed}/{self.epoch}/{self.rank}/{self.worker}/{what}"


def stream_id(seed: int, epoch: int, rank: int | None = None, world: int | None = None) -> StreamId:
    """This process's StreamId; rank/world default to what wds.split_by_node would read
    (RANK/WORLD_SIZE in the environment, else torch.distributed)."""
    env_rank, env_world, _, _ = wds.utils.pytorch_worker_info()
    info = torch.utils.data.get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return StreamId(seed, epoch, env_rank if rank is None else rank,
                    env_world if world is None else (world or 1), worker, workers)


def worker_shards(urls: Sequence[str], sid: StreamId, shuffle: bool, resample: bool,
                  start: int = 0) -> Iterator[tuple[int, str]]:
    """(ordinal, url) of the shards this worker reads, from ordinal ``start``.

    resample: an endless draw with replacement, each ordinal seeded on its own (so skipping
    to ``start`` is free). Otherwise every shard once per epoch: an order shuffled from
    (seed, epoch), the same on every rank so the split stays disjoint, then split by rank
    and by worker."""
    if resample:
        for i in count(start):
            yield i, urls[random.Random(sid.tag(f"shard/{i}")).randrange(len(urls))]
        return
    order = list(urls)
    if shuffle:
        random.Random(f"{sid.seed}/{sid.epoch}/shards").shuffle(order)
    mine = order[sid.rank::sid.world][sid.worker::sid.workers]
    if not mine:
        log.warning("rank %d/%d worker %d/%d got no shards: fewer shards than readers",
                    sid.rank, sid.world, sid.worker, sid.workers)
    yield from ((i, url) for i, url in enumerate(mine) if i >= start)


class _MemberSelector:
    """tar_file_iterator's select_files: numbers the samples of one shard as their members
    go by and keeps only the members of wanted samples (the others are never read)."""

    def __init__(self, wanted: Callable[[int], bool]):
        self.wanted, self.key, self.index = wanted, None, -1
        self.kept: deque[tuple[str, int]] = deque()

    def __call__(self, fname: str) -> bool:
        key, _ = base_plus_ext(fname)
        if key is None:
            return False
        if key != self.key:
            self.key, self.index = key, self.index + 1
            if self.wanted(self.index):
                self.kept.append((key, self.index))
        return bool(self.kept) and self.kept[-1] == (key, self.index)

    def index_of(self, key: str) -> int | None:
        while self.kept:
            k, i = self.kept.popleft()
            if k == key:
                return i
        return None


def read_shards(shards: Iterable[tuple[int, str]], opener: Callable, handler: Callable[[Exception], bool],
                wanted: Callable[[int, int], bool] | None = None) -> Iterator[dict]:
    """(ordinal, url) -> tar samples tagged ``__shard__`` and ``__index__`` (their place in
    the shard). ``wanted(ordinal, index)`` false: the sample's members are stepped over."""
    for ordinal, url in shards:
        select = _MemberSelector((lambda i, o=ordinal: wanted(o, i)) if wanted else (lambda i: True))
        opened = opener([{"url": url}], handler=handler)
        members = tar_file_expander(opened, handler=handler, select_files=select)
        for sample in group_by_keys(members, handler=handler):
            index = select.index_of(sample["__key__"])
            if index is not None:
                yield dict(sample, __shard__=ordinal, __index__=index)


def positioned_shuffle(samples: Iterable[dict], bufsize: int, sid: StreamId,
                       start: dict | None = None) -> Iterator[dict]:
    """A shuffle buffer (filled to ``bufsize`` before each pick; 1 = no shuffle) whose pick n
    is seeded by (stream, n). Each sample leaves tagged ``__n__`` and ``__position__``, the
    stream's position right after it. ``start``: a position to resume from; ``samples`` must
    then yield its pending samples before any new one (read_shards with resume_filter does)."""
    pos = start or START
    n = pos["emitted"]
    cursor = (pos["shard"], pos["sample"])
    src = iter(samples)
    buf: list[dict] = []
    lookahead: list[dict] = []
    if pos["pending"]:
        want = [tuple(p) for p in pos["pending"]]
        found: dict[tuple[int, int], dict] = {}
        for sample in src:
            at = (sample["__shard__"], sample["__index__"])
            if at >= cursor:
                lookahead.append(sample)
                break
            found[at] = sample
        buf = [found[p] for p in want if p in found]
        if len(buf) < len(want):
            log.warning("resume: %d of %d buffered samples could not be read again",
                        len(want) - len(buf), len(want))

    def pull() -> dict | None:
        if lookahead:
            return lookahead.pop()
        return next(src, None)

    exhausted = False
    while True:
        while not exhausted and len(buf) < max(1, bufsize):
            sample = pull()
            if sample is None:
                exhausted = True
            else:
                buf.append(sample)
                cursor = (sample["__shard__"], sample["__index__"] + 1)
        if not buf:
            return
        k = 0 if len(buf) == 1 else random.Random(sid.tag(f"shuffle/{n}")).randrange(len(buf))
        buf[k], buf[-1] = buf[-1], buf[k]
        sample = buf.pop()
        n += 1
        sample["__n__"] = n - 1
        sample["__position__"] = {"shard": cursor[0], "sample": cursor[1], "emitted": n,
                                  "pending": [(s["__shard__"], s["__index__"]) for s in buf]}
        yield sample


def resume_filter(start: dict | None) -> tuple[int, Callable[[int, int], bool] | None]:
    """First shard ordinal to open and read_shards' ``wanted`` for a resumed stream: the
    pending samples, and everything from the read position on."""
    if not start:
        return 0, None
    cursor = (start["shard"], start["sample"])
    pending = {tuple(p) for p in start["pending"]}
    first = min([cursor[0], *(p[0] for p in pending)])
    return first, lambda s, i: (s, i) >= cursor or (s, i) in pending


def positioned_batches(samples: Iterable[dict], batch_size: int, partial: bool,
                       collate: Callable[[list[dict]], dict]) -> Iterator[dict]:
    """Batches tagged with the worker id and the worker's position after their last sample,
    then one end marker (so the consumer knows when this worker is exhausted)."""
    info = torch.utils.data.get_worker_info()
    worker = info.id if info is not None else 0
    batch: list[dict] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == batch_size:
            yield dict(collate(batch), position=batch[-1]["position"], worker=worker)
            batch = []
    if batch and partial:
        yield dict(collate(batch), position=batch[-1]["position"], worker=worker)
    yield {"end": True, "worker": worker}


class OrderedLoader:
    """The DataLoader's batches in a fixed round robin over its workers (exhausted workers
    drop out), each tagged ``position``: where this loader stands after it, which
    ``make_loader(..., resume=position)`` continues from."""

    def __init__(self, loader: torch.utils.data.DataLoader, num_workers: int, start: dict | None = None):
        self.loader, self.num_workers, self.start = loader, max(1, num_workers), start
        self.dataset = loader.dataset

    def __iter__(self) -> Iterator[dict]:
        w = self.num_workers
        start, self.start = self.start, None  # a second pass starts afresh
        turn = start["next"] if start else 0
        ended = set(start["ended"]) if start else set()
        positions = list(start["workers"]) if start else [None] * w
        queues = [deque() for _ in range(w)]
        it = iter(self.loader)
        while len(ended) < w:
            if turn in ended:
                turn = (turn + 1) % w
                continue
            while not queues[turn]:
                item = next(it, None)
                if item is None:  # the loader ended without a worker's marker: nothing more comes
                    return
                queues[item["worker"]].append(item)
            item = queues[turn].popleft()
            if item.get("end"):
                ended.add(turn)
                turn = (turn + 1) % w
                continue
            positions[turn] = item["position"]
            turn = (turn + 1) % w
            batch = {k: v for k, v in item.items() if k not in ("worker", "position")}
            batch["position"] = {"num_workers": w, "next": turn, "ended": sorted(ended),
                                 "workers": list(positions)}
            yield batch
