"""The resumable sample stream on hand-built tars: shard order, shuffle buffer and round robin
resume sample for sample from any position, and skipped samples are never read."""
from __future__ import annotations

import io
import tarfile
from functools import partial

import pytest

from lfvila_model.data import open_shards
from lfvila_model.stream import (
    OrderedLoader,
    StreamId,
    positioned_batches,
    positioned_shuffle,
    read_shards,
    resume_filter,
    worker_shards,
)


@pytest.fixture(scope="module")
def tars(tmp_path_factory):
    """5 shards of 1..5 samples (json + txt members); keys s<shard>_<i>."""
    root = tmp_path_factory.mktemp("tars")
    urls = []
    for s in range(5):
        path = root / f"train-{s:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(s + 1):
                for ext, data in (("json", b"{}"), ("txt", f"s{s}_{i}".encode() * 100)):
                    info = tarfile.TarInfo(f"s{s}_{i}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        urls.append(str(path))
    return urls


def stream(urls, sid, bufsize, start=None, resample=False, opened=None):
    def opener(src, handler):
        for item in open_shards(src, handler):
            if opened is not None:
                opened.append(item["url"])
            yield item

    first, wanted = resume_filter(start)
    shards = worker_shards(urls, sid, shuffle=True, resample=resample, start=first)
    return positioned_shuffle(read_shards(shards, opener, lambda e: False, wanted), bufsize, sid, start)


def take(it, n):
    return [s for _, s in zip(range(n), it)]


@pytest.mark.parametrize("bufsize,resample", [(1, False), (4, False), (7, True)])
def test_resume_from_every_position_replays_the_tail(tars, bufsize, resample):
    sid = StreamId(seed=3, epoch=2, rank=0, world=1, worker=0, workers=1)
    full = take(stream(tars, sid, bufsize, resample=resample), 15 if resample else 100)
    keys = [s["__key__"] for s in full]
    if not resample:
        assert sorted(keys) == sorted(f"s{s}_{i}" for s in range(5) for i in range(s + 1))
    assert keys != sorted(keys)  # shuffled (shard order, buffer)
    for k, sample in enumerate(full):
        rest = take(stream(tars, sid, bufsize, start=sample["__position__"], resample=resample), len(full) - k - 1)
        assert [s["__key__"] for s in rest] == keys[k + 1:], k
        assert [s["__n__"] for s in rest] == list(range(k + 1, len(full)))
        assert [s["txt"] for s in rest] == [s["txt"] for s in full[k + 1:]]


def test_resume_opens_only_shards_with_pending_samples(tars):
    sid = StreamId(seed=0, epoch=0, rank=0, world=1, worker=0, workers=1)
    full = list(stream(tars, sid, bufsize=2))
    pos = full[10]["__position__"]
    opened: list[str] = []
    rest = list(stream(tars, sid, bufsize=2, start=pos, opened=opened))
    assert [s["__key__"] for s in rest] == [s["__key__"] for s in full[11:]]
    order = [u for _, u in worker_shards(tars, sid, shuffle=True, resample=False)]
    first = min([pos["shard"], *(p[0] for p in pos["pending"])])
    assert opened == order[first:] and first > 0


def test_members_of_skipped_samples_are_not_read(tars):
    read = []
    wanted = {(0, 2), (0, 3)}
    samples = list(read_shards([(0, tars[4])], partial(open_shards), lambda e: False,
                               lambda s, i: read.append((s, i)) or (s, i) in wanted))
    assert [(s["__key__"], s["__index__"]) for s in samples] == [("s4_2", 2), ("s4_3", 3)]
    assert read == [(0, i) for i in range(5)]  # each sample asked once, on its first member


def test_split_by_rank_and_worker_is_disjoint_and_complete(tars):
    seen = []
    for rank in range(2):
        for worker in range(2):
            sid = StreamId(seed=1, epoch=4, rank=rank, world=2, worker=worker, workers=2)
            seen += [u for _, u in worker_shards(tars, sid, shuffle=True, resample=False)]
    assert sorted(seen) == sorted(tars)
    a = [u for _, u in worker_shards(tars, StreamId(1, 4, 0, 1, 0, 1), shuffle=True, resample=False)]
    b = [u for _, u in worker_shards(tars, StreamId(1, 5, 0, 1, 0, 1), shuffle=True, resample=False)]
    assert a != b  # another epoch, another order


class FakeLoader:
    """What a 3-worker DataLoader may deliver: worker streams interleaved in any order."""

    def __init__(self, streams, order):
        self.streams, self.order, self.dataset = streams, order, None

    def __iter__(self):
        its = [iter(s) for s in self.streams]
        for w in self.order:
            yield next(its[w])


def worker_stream(w, n):
    samples = [{"key": f"w{w}_{i}", "position": {"w": w, "i": i}} for i in range(n)]
    return list(positioned_batches(samples, 1, True, lambda b: {"key": [s["key"] for s in b]}))


def test_ordered_loader_round_robin_independent_of_delivery_order():
    lengths = [2, 4, 3]
    streams = [[dict(b, worker=w) for b in worker_stream(w, n)] for w, n in enumerate(lengths)]
    deliveries = [[0, 1, 2] * 3 + [1, 2, 1, 1], [1, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0]]
    runs = []
    for order in deliveries:
        runs.append([b["key"][0] for b in OrderedLoader(FakeLoader(streams, order), 3)])
    assert runs[0] == runs[1] == ["w0_0", "w1_0", "w2_0", "w0_1", "w1_1", "w2_1", "w1_2", "w2_2", "w1_3"]
    batches = list(OrderedLoader(FakeLoader(streams, deliveries[0]), 3))
    for k, b in enumerate(batches):  # resume: each worker continues after its position
        pos = b["position"]
        rest_streams = []
        for w, n in enumerate(lengths):
            done = pos["workers"][w]["i"] + 1 if pos["workers"][w] else 0
            rest = [] if w in pos["ended"] else worker_stream(w, n)[done:]
            rest_streams.append([dict(x, worker=w) for x in (rest or [{"end": True}])])
        order = [w for w in range(3) for _ in rest_streams[w]]
        got = [x["key"][0] for x in OrderedLoader(FakeLoader(rest_streams, order), 3, pos)]
        assert got == runs[0][k + 1:], k
