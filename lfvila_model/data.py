"""The shard loader: LF-VILA training batches from lfvila WebDataset shards
(`shards/README.md`), as a chain of small webdataset steps:

    shard list -> split by node -> split by worker -> open -> tar members -> samples
    -> shuffle buffer (train) -> decode + augment + tokenize -> batch -> round robin over workers

A sample is one long-form video (4..max_clips clips, 3 fps, 240 px) in memory; only the
32 frames of one 4-clip window are decoded from it, straight from the mp4 bytes, so the
loader never touches per-clip files or full-resolution sources.

Sharding across processes: the shard list is split by rank (RANK/WORLD_SIZE from the
environment, else torch.distributed, as `wds.split_by_node` reads them - Ray Train sets up
both - or an explicit rank) and then by DataLoader worker, so with `resample=False` every
sample is read exactly once per epoch across all ranks and workers. A rank or worker whose
split is empty (fewer shards than world_size x num_workers) yields nothing and logs a
warning; ranks then see different numbers of batches, which stalls collective ops in DDP,
so train with `resample=True` (each rank and worker draws shards at random with
replacement, an endless stream; bound it by steps) or with at least world_size x
num_workers shards of similar size, and evaluate on rank 0 or tolerate uneven ends.

Exact resume: the shard order, shuffle and augmentations are drawn from (seed, epoch, rank,
worker) and each sample's ordinal, and every batch carries the loader's `position` after
it; `make_loader(..., epoch=e, resume=position)` continues sample for sample, re-reading
only the samples that sat in the shuffle buffers and decoding nothing twice
(`lfvila_model.stream`).

Bad samples (missing members, unreadable json, fewer clips than the window, undecodable
video) and unreadable shards are skipped and counted by reason in a per-worker
`SkipCounter`, logged periodically; they are never fatal.
"""
from __future__ import annotations

import io
import itertools
import json
import logging
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from glob import glob
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
import webdataset as wds

from lfvila_model.stream import (
    OrderedLoader,
    positioned_batches,
    positioned_shuffle,
    read_shards,
    resume_filter,
    stream_id,
    worker_shards,
)

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Box = tuple[int, int, int, int]  # top, left, height, width in source pixels


@dataclass(frozen=True)
class DataConfig:
    """What the loader produces and how it reads; defaults follow LF-VILA (REFERENCE.md).

    ratio=None: torchvision's (3/4, 4/3) aspect jitter, centred on the output's aspect
    (5:3) instead of on a square, so crops are not squashed on average.
    drop_last: keep False to see every sample; set True when training with losses that
    all_gather equal-sized batches across ranks."""

    sample_clips: int = 4
    frames_per_clip: int = 8
    size: tuple[int, int] = (192, 320)
    scale: tuple[float, float] = (0.8, 1.0)
    ratio: tuple[float, float] | None = None
    flip: bool = True
    max_tokens: int = 50
    shuffle_buffer: int = 500
    batch_size: int = 8
    num_workers: int = 4
    seed: int = 0
    resample: bool = False
    tokenizer: str = "bert-base-uncased"
    drop_last: bool = False
    decode_threads: int = 1   # decord threads per sample; DataLoader workers give the parallelism
    log_every: int = 1000     # samples between skip-counter log lines, per worker
    retrieval_sentences: int = 4  # a retrieval sample's sentences merged to this many (Condensed Movies: 1)
    split: str | None = None  # keep only samples whose json `split` is this (benchmark shards)
    qa: bool = False  # QA shards: one multiple-choice example per question (lfvila_model.qa)
    qa_subtitles: int = 6  # ... with the subtitle lines merged to this many sentences (How2QA: 6)

    def __post_init__(self) -> None:
        if self.sample_clips < 1 or self.frames_per_clip < 1:
            raise ValueError("sample_clips and frames_per_clip must be >= 1")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if self.batch_size < 1 or self.num_workers < 0:
            raise ValueError("batch_size must be >= 1 and num_workers >= 0")
        if self.retrieval_sentences < 1:
            raise ValueError("retrieval_sentences must be >= 1")

    @property
    def crop_ratio(self) -> tuple[float, float]:
        """Aspect (w/h) range of training crops."""
        if self.ratio is not None:
            return self.ratio
        r = self.size[1] / self.size[0]
        return (r * 3 / 4, r * 4 / 3)


# ---------------------------------------------------------------- pure helpers

def choose_window(n_clips: int, k: int, rng: random.Random, train: bool) -> int | None:
    """First clip of the k-clip window: uniform over all n_clips-k+1 windows (the last
    included, unlike the reference sampler) in training, 0 in eval; None if too short."""
    if n_clips < k:
        return None
    return rng.randrange(n_clips - k + 1) if train else 0


def frame_times(start: float, end: float, n: int) -> list[float]:
    """n instants evenly spaced strictly inside [start, end): the centres of n equal parts,
    so no frame sits on a boundary shared with the neighbouring clip."""
    step = (end - start) / n
    return [start + (i + 0.5) * step for i in range(n)]


def frame_indices(clips: Sequence[Mapping[str, Any]], window_start: int, k: int,
                  frames_per_clip: int, fps: float, n_frames: int) -> list[int]:
    """Frame numbers of the window, clip by clip, in time order. An instant t maps to
    round(t*fps), kept within the frames whose timestamps lie in the clip (so rounding never
    borrows a frame from the pause or the next clip) and within the video."""
    window = clips[window_start:window_start + k]
    if len(window) < k:
        raise ValueError(f"window {window_start}+{k} exceeds {len(clips)} clips")
    out: list[int] = []
    for clip in window:
        start, end = float(clip["start"]), float(clip["end"])
        lo, hi = math.ceil(start * fps - 1e-6), math.ceil(end * fps - 1e-6) - 1
        for t in frame_times(start, end, frames_per_clip):
            i = math.floor(t * fps + 0.5)
            if lo <= hi:
                i = min(max(i, lo), hi)
            out.append(min(max(i, 0), n_frames - 1))
    return out


def spread_frames(n_frames: int, n: int, rng: random.Random, train: bool) -> list[int]:
    """n frame numbers spread evenly over a whole video (the paper's retrieval protocol):
    first to last frame in eval; in training the first frame is drawn from the first
    interval (n_frames // (n-1) frames) and the last from the last one, as the release does."""
    if n_frames < 1:
        raise ValueError("the video has no frames")
    start, end = 0, n_frames - 1
    if train:
        interval = n_frames // (n - 1) if n > 1 else n_frames - 1
        start = rng.randint(0, min(interval, n_frames - 1))
        end = rng.randint(max(start, n_frames - 1 - interval), n_frames - 1)
    if n == 1:
        return [start]
    return [int(start + i * (end - start) / (n - 1)) for i in range(n)]


def merge_sentences(texts: Sequence[str], limit: int) -> list[str]:
    """At most ``limit`` sentences, in order: while there are more, join (with a space) the
    adjacent pair whose lengths in characters sum least, the leftmost such pair on a tie -
    the release's rule for fitting a paragraph of many captions into its sentence slots."""
    texts = list(texts)
    while len(texts) > limit:
        pair = [len(a) + len(b) for a, b in itertools.pairwise(texts)]
        i = pair.index(min(pair))
        texts[i:i + 2] = [f"{texts[i]} {texts[i + 1]}"]
    return texts


def random_resized_crop_box(h: int, w: int, scale: tuple[float, float],
                            ratio: tuple[float, float], rng: random.Random) -> Box:
    """torchvision's RandomResizedCrop geometry (area fraction in scale, log-uniform aspect
    in ratio, 10 tries, then the largest centred box in the ratio range), drawn from our
    rng so one box can be shared by all frames of a sample."""
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, h - ch), rng.randint(0, w - cw), ch, cw
    aspect = min(max(w / h, ratio[0]), ratio[1])
    return center_crop_box(h, w, aspect)


def center_crop_box(h: int, w: int, aspect: float) -> Box:
    """The largest centred box of the given aspect (w/h): resize-to-cover + centre crop."""
    if w / h > aspect:
        ch, cw = h, max(1, min(w, round(h * aspect)))
    else:
        ch, cw = max(1, min(h, round(w / aspect))), w
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def crop_resize(frames: torch.Tensor, box: Box, size: tuple[int, int], flip: bool) -> torch.Tensor:
    """uint8 T×H×W×3 -> uint8 T×3×size, contiguous. Crops and resizes in uint8
    channels-last, where torch's antialiased bilinear path is ~10x faster than on float
    NCHW; the float conversion is left to `normalize`, once per batch in `collate`."""
    top, left, ch, cw = box
    x = frames[:, top:top + ch, left:left + cw].permute(0, 3, 1, 2)  # a channels-last view
    if (ch, cw) != tuple(size):
        x = F.interpolate(x.contiguous(memory_format=torch.channels_last), size=size,
                          mode="bilinear", align_corners=False, antialias=True)
    if flip:
        x = x.flip(-1)
    return x.contiguous()  # uint8 NCHW first: a strided float copy is ~2x slower


def normalize(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (...)×3×H×W -> float, ImageNet-normalised, written into ``out`` if given (a
    batch's slot, so a batch is converted in one pass with no extra copy to stack it)."""
    out = x.float() if out is None else out.copy_(x)
    return out.sub_(_MEAN_255).div_(_STD_255)


def crop_resize_normalize(frames: torch.Tensor, box: Box, size: tuple[int, int],
                          flip: bool) -> torch.Tensor:
    """uint8 T×H×W×3 -> float T×3×size, ImageNet-normalised (`crop_resize` + `normalize`)."""
    return normalize(crop_resize(frames, box, size, flip))


_MEAN_255 = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
_STD_255 = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255


def expand_shards(shards: str | Sequence[str], split: str | None = None) -> list[str]:
    """Shard URLs from brace patterns (`train-{000000..000009}.tar`), local globs, local
    paths, remote URLs (s3://, gs://, http://), comma lists and, given a ``split``, shard
    directories (their `<split>-*.tar`), in the given order."""
    import braceexpand

    items = shards.split(",") if isinstance(shards, str) else list(shards)
    urls: list[str] = []
    for item in items:
        if split is not None and os.path.isdir(item):
            urls += sorted(glob(os.path.join(item, f"{split}-*.tar")))
            continue
        for url in braceexpand.braceexpand(item):
            if not urlparse(url).scheme and any(c in url for c in "*?["):
                urls += sorted(glob(url))
            else:
                urls.append(url)
    if not urls:
        raise ValueError(f"no shards match {shards!r}")
    return urls


# ---------------------------------------------------------------- failures as data

@dataclass
class SkipCounter:
    """Per-worker tally of skipped samples by reason (each worker holds its own copy of the
    pipeline, hence of this counter); the first skip of a reason is logged with its
    message, then a summary every `log_every` samples and at the end of each pass."""

    log_every: int = 1000
    seen: int = 0
    kept: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, key: str, message: str = "") -> None:
        first = reason not in self.skipped_by_reason
        self.skipped_by_reason[reason] = self.skipped_by_reason.get(reason, 0) + 1
        if first:  # a sample of another split is selection, not a fault
            (log.debug if reason == "other_split" else log.warning)("skipping %s: %s %s", key, reason, message[:300])

    def on_error(self, reason: str, exn: Exception) -> bool:
        """A webdataset handler (`handler=`) that counts and continues."""
        self.skip(reason, str(exn.args[-1]) if exn.args else "?", repr(exn)[:300])
        return True

    def tick(self) -> None:
        self.seen += 1
        if self.log_every and self.seen % self.log_every == 0:
            self.report()

    def report(self) -> None:
        if self.seen:
            log.info("loader worker %s: %d seen, %d kept, skipped %s",
                     wds.utils.pytorch_worker_info()[2:], self.seen, self.kept,
                     self.skipped_by_reason)

    @property
    def skipped(self) -> int:
        return sum(self.skipped_by_reason.values())


class SkipSample(Exception):
    """An expected, per-sample failure; `reason` is from a closed set."""

    REASONS = ("missing_member", "bad_json", "too_few_clips", "decode_error", "other_split", "no_question")

    def __init__(self, reason: str, message: str = ""):
        assert reason in self.REASONS, reason
        super().__init__(reason, message)
        self.reason, self.message = reason, message


# ---------------------------------------------------------------- pipeline steps

def open_shards(src: Iterable[dict], handler: Callable[[Exception], bool]) -> Iterator[dict]:
    """url -> url + stream. Local paths and pipe:/http(s): through wds.gopen; any other
    scheme (s3://, gs://, ...) through fsspec, whose credentials come from the usual
    environment (AWS_*, ~/.aws)."""
    for sample in src:
        url = sample["url"]
        try:
            scheme = urlparse(url).scheme
            if scheme in ("", "file", "pipe", "http", "https"):
                stream = wds.gopen(url, "rb")
            else:
                import fsspec
                stream = fsspec.open(url, "rb").open()
            yield dict(sample, stream=stream)
        except Exception as exn:  # noqa: BLE001 - a missing or unreachable shard is data, not a crash
            exn.args = exn.args + (url,)
            if not handler(exn):
                break


class SampleDecoder:
    """The decode step: json -> window -> frame indices -> decode only those frames from
    the in-memory mp4 -> one crop box and flip for the whole sample -> tokenized clip
    sentences. Holds the tokenizer and the skip counter."""

    def __init__(self, cfg: DataConfig, train: bool, tokenizer: Any, counter: SkipCounter):
        self.cfg, self.train, self.tokenizer, self.counter = cfg, train, tokenizer, counter

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        try:
            for sample in src:
                self.counter.tick()
                rng = random.Random(sample.get("__seed__", sample.get("__key__", "")))  # one per sample
                try:
                    out = self.decode(sample, rng)
                except SkipSample as s:
                    self.counter.skip(s.reason, sample.get("__key__", "?"), s.message)
                    continue
                self.counter.kept += 1
                for item in out if isinstance(out, list) else [out]:  # QA: an example per question
                    item["position"] = sample.get("__position__")
                    yield item
        finally:
            self.counter.report()

    def decode(self, sample: Mapping[str, Any], rng: random.Random) -> dict | list[dict]:
        """One sample (a list of examples with ``qa``), or SkipSample."""
        cfg, k = self.cfg, self.cfg.sample_clips
        if "mp4" not in sample or "json" not in sample:
            raise SkipSample("missing_member", f"has {sorted(x for x in sample if not x.startswith('__'))}")
        try:
            meta = json.loads(sample["json"])
            clips, fps = meta["clips"], float(meta["fps"])
            texts = [str(c["text"]) for c in clips]
        except (ValueError, KeyError, TypeError) as exn:
            raise SkipSample("bad_json", repr(exn)) from None
        if cfg.split is not None and meta.get("split") != cfg.split:
            raise SkipSample("other_split", f"{meta.get('split')!r} is not {cfg.split!r}")
        if cfg.qa:
            from lfvila_model.qa import question_examples
            return question_examples(self, sample, meta, rng)
        if meta.get("task") == "retrieval":  # the whole video, all its sentences merged to a few
            if not texts:
                raise SkipSample("too_few_clips", "no sentence")
            frames = self.read_frames(sample["mp4"], clips, None, fps, rng)
            texts, start, k = merge_sentences(texts, cfg.retrieval_sentences), 0, cfg.retrieval_sentences
        else:
            start = choose_window(len(clips), k, rng, self.train)
            if start is None:
                raise SkipSample("too_few_clips", f"{len(clips)} < {k}")
            frames = self.read_frames(sample["mp4"], clips, start, fps)
        tok = self.tokenizer(texts[start:start + k], padding="max_length", truncation=True,
                             max_length=cfg.max_tokens, return_tensors="pt")
        pad = k - len(tok["input_ids"])  # a retrieval paragraph shorter than its slots: empty sentences
        return {"video": self.augment(frames, rng),
                "input_ids": F.pad(tok["input_ids"].long(), (0, 0, 0, pad)),
                "attention_mask": F.pad(tok["attention_mask"].long(), (0, 0, 0, pad)),
                "key": sample.get("__key__", "")}

    def augment(self, frames: torch.Tensor, rng: random.Random) -> torch.Tensor:
        """T×H×W×3 uint8 -> uint8 T×3×size: one random crop and flip for all frames in
        training, the centre crop in evaluation. Still uint8: `collate` normalises the
        whole batch into its float tensor, which saves a float copy of every sample."""
        cfg, (_, h, w, _) = self.cfg, frames.shape
        if self.train:
            box = random_resized_crop_box(h, w, cfg.scale, cfg.crop_ratio, rng)
            flip = cfg.flip and rng.random() < 0.5
        else:
            box, flip = center_crop_box(h, w, cfg.size[1] / cfg.size[0]), False
        return crop_resize(frames, box, cfg.size, flip)

    def read_frames(self, mp4: bytes, clips: Sequence[Mapping[str, Any]], start: int | None,
                    fps: float, rng: random.Random | None = None) -> torch.Tensor:
        """T×H×W×3 uint8 of the window's frames (start None: frames spread over the whole
        video, `spread_frames`), decoded from the bytes in memory."""
        import decord

        cfg = self.cfg
        try:
            vr = decord.VideoReader(io.BytesIO(mp4), ctx=decord.cpu(0), num_threads=cfg.decode_threads)
            if start is None:
                idx = spread_frames(len(vr), cfg.sample_clips * cfg.frames_per_clip, rng, self.train)
            else:
                idx = frame_indices(clips, start, cfg.sample_clips, cfg.frames_per_clip, fps, len(vr))
            frames = torch.from_numpy(vr.get_batch(idx).asnumpy())
        except (decord.DECORDError, RuntimeError, ValueError, KeyError, TypeError, OSError) as exn:
            raise SkipSample("decode_error", repr(exn)[:300]) from None
        if frames.ndim != 4 or frames.shape[0] != len(idx) or frames.shape[-1] != 3:
            raise SkipSample("decode_error", f"got frames of shape {tuple(frames.shape)}")
        return frames


def collate(samples: list[dict]) -> dict:
    """Stack a list of decoded samples into one batch; their uint8 videos are converted
    and normalised straight into the batch's float tensor (`normalize`)."""
    video = torch.empty((len(samples), *samples[0]["video"].shape), dtype=torch.float32)
    for i, s in enumerate(samples):
        normalize(s["video"], out=video[i])
    batch = {"video": video,
             "input_ids": torch.stack([s["input_ids"] for s in samples]),
             "attention_mask": torch.stack([s["attention_mask"] for s in samples]),
             "key": [s["key"] for s in samples]}
    if "label" in samples[0]:  # QA examples: the right candidate's index, the frames in the question's span
        batch["label"] = torch.tensor([s["label"] for s in samples])
        batch["span_labels"] = torch.stack([s["span_labels"] for s in samples])
        batch["span_weights"] = torch.stack([s["span_weights"] for s in samples])
    return batch


# ---------------------------------------------------------------- assembly

def load_tokenizer(name_or_path: str) -> Any:
    """A fast tokenizer from a hub name or a local directory; a directory holding only a
    vocab.txt is read as BERT's WordPiece (LF-VILA uses bert-base-uncased's vocabulary)."""
    from transformers import AutoTokenizer, BertTokenizerFast

    if os.path.isdir(name_or_path) and not any(
            os.path.exists(os.path.join(name_or_path, f)) for f in ("tokenizer_config.json", "tokenizer.json")):
        return BertTokenizerFast.from_pretrained(name_or_path)
    return AutoTokenizer.from_pretrained(name_or_path, use_fast=True)


class WorkerStream:
    """The pipeline's source, run in each DataLoader worker: this worker's shards, read and
    shuffled, every sample tagged with its decode seed and the stream position after it."""

    def __init__(self, urls: list[str], cfg: DataConfig, train: bool, handler: Callable,
                 rank: int | None, world_size: int | None, epoch: int, resume: dict | None):
        self.urls, self.cfg, self.train, self.handler = urls, cfg, train, handler
        self.rank, self.world_size, self.epoch, self.resume = rank, world_size, epoch, resume
        self.passes = 0

    def __call__(self) -> Iterator[dict]:
        sid = stream_id(self.cfg.seed, self.epoch + self.passes, self.rank, self.world_size)
        resume = self.resume if self.passes == 0 else None  # a second pass is the next epoch
        self.passes += 1
        start = None
        if resume is not None:
            if sid.worker in resume["ended"]:
                return
            start = resume["workers"][sid.worker]
        first, wanted = resume_filter(start)
        shards = worker_shards(self.urls, sid, shuffle=self.train, resample=self.train and self.cfg.resample,
                               start=first)
        bufsize = self.cfg.shuffle_buffer if self.train else 1
        for sample in positioned_shuffle(read_shards(shards, open_shards, self.handler, wanted), bufsize, sid, start):
            sample["__seed__"] = sid.tag(f"decode/{sample['__n__']}")
            yield sample


def make_pipeline(shards: str | Sequence[str], cfg: DataConfig, train: bool,
                  tokenizer: Any = None, *, rank: int | None = None,
                  world_size: int | None = None, epoch: int = 0,
                  resume: dict | None = None) -> wds.DataPipeline:
    """The whole chain as a wds.DataPipeline yielding batches (then one end marker per
    worker: read it through make_loader). rank/world_size override what wds.split_by_node
    would read (RANK/WORLD_SIZE env, else torch.distributed); epoch seeds the shard order,
    shuffle and augmentations; resume is a loader position. `.counter` is the SkipCounter
    of this process (of num_workers=0 loaders)."""
    counter = SkipCounter(log_every=cfg.log_every)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
    on_shard_error = partial(counter.on_error, "shard_error")
    pipeline = wds.DataPipeline(
        WorkerStream(expand_shards(shards), cfg, train, on_shard_error, rank, world_size, epoch, resume),
        SampleDecoder(cfg, train, tokenizer, counter),
        partial(positioned_batches, batch_size=cfg.batch_size, partial=not cfg.drop_last, collate=collate))
    pipeline.counter = counter
    return pipeline


def make_loader(shards: str | Sequence[str], cfg: DataConfig, train: bool,
                tokenizer: Any = None, *, rank: int | None = None,
                world_size: int | None = None, epoch: int = 0,
                resume: dict | None = None) -> OrderedLoader:
    """An iterable of batches dict(video B×T×3×H×W float, input_ids B×k×L, attention_mask
    B×k×L, key list[str], position dict), served in a fixed round robin over the
    DataLoader workers. ``resume``: a batch's ``position`` (same shards, config, epoch,
    rank and num_workers) to continue right after that batch. Workers are persistent:
    iterating again is the next epoch's pass."""
    workers = max(1, cfg.num_workers)
    if resume is not None and resume.get("num_workers") != workers:
        raise ValueError(f"position of a {resume.get('num_workers')}-worker loader, this one has {workers}")
    if cfg.num_workers > 0:
        # the tokenizer's own thread pool is not fork-safe; the workers are the parallelism
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    pipeline = make_pipeline(shards, cfg, train, tokenizer, rank=rank, world_size=world_size,
                             epoch=epoch, resume=resume)
    loader = torch.utils.data.DataLoader(
        pipeline, batch_size=None, num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
        prefetch_factor=2 if cfg.num_workers > 0 else None,
        # its own generator: starting a loader must not draw from the training RNG (dropout)
        generator=torch.Generator().manual_seed(cfg.seed))
    return OrderedLoader(loader, cfg.num_workers, resume)
