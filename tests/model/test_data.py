"""The shard loader: window, frame and crop helpers alone, then real shards made by our
own pipeline (demo corpus -> build -> shard) read back through `make_loader`."""
from __future__ import annotations

import io
import json
import random
import re
import tarfile
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
import torch

from lfvila_data.demo import COLOURS
from lfvila_model.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataConfig,
    SampleDecoder,
    SkipCounter,
    center_crop_box,
    choose_window,
    collate,
    crop_resize_normalize,
    expand_shards,
    frame_indices,
    frame_times,
    make_loader,
    random_resized_crop_box,
)
from tests.support.endtoend import read_metas

# ---------------------------------------------------------------- pure helpers

@pytest.mark.parametrize("n,k", [(4, 4), (5, 4), (6, 4), (12, 4), (7, 1), (9, 3)])
def test_choose_window_reaches_every_window_in_training(n, k):
    rng = random.Random(0)
    seen = Counter(choose_window(n, k, rng, train=True) for _ in range(400 * (n - k + 1)))
    assert set(seen) == set(range(n - k + 1))   # the last window included
    assert min(seen.values()) > 200              # roughly uniform
    assert choose_window(n, k, random.Random(1), train=False) == 0


def test_choose_window_too_short():
    assert choose_window(3, 4, random.Random(0), train=True) is None
    assert choose_window(0, 4, random.Random(0), train=False) is None


def test_frame_times_evenly_spaced_strictly_inside():
    ts = frame_times(2.0, 6.0, 8)
    assert all(2.0 < t < 6.0 for t in ts)
    steps = [b - a for a, b in pairwise(ts)]
    assert steps == pytest.approx([0.5] * 7) and ts[0] - 2.0 == pytest.approx(6.0 - ts[-1])


def test_frame_indices_inside_each_clip_and_ordered():
    clips = [{"start": 4.5 * i, "end": 4.5 * i + 4.0} for i in range(6)]
    fps = 3.0
    idx = frame_indices(clips, 2, 4, 8, fps, n_frames=80)
    assert len(idx) == 32 and idx == sorted(idx)
    for j, clip in enumerate(clips[2:6]):
        part = idx[8 * j:8 * j + 8]
        assert all(clip["start"] <= i / fps < clip["end"] for i in part), (clip, part)
    # evenly spaced: at a high frame rate the steps are equal up to rounding
    fine = frame_indices(clips, 0, 1, 8, 1000.0, n_frames=10**6)
    gaps = [b - a for a, b in pairwise(fine)]
    assert max(gaps) - min(gaps) <= 1
    # clamped to the video, and a 1-frame clip repeats its frame
    assert frame_indices([{"start": 0.0, "end": 100.0}], 0, 1, 4, 3.0, n_frames=10)[-1] == 9
    assert set(frame_indices([{"start": 1.0, "end": 1.2}], 0, 1, 8, 3.0, 100)) == {3}
    with pytest.raises(ValueError):
        frame_indices(clips, 3, 4, 8, fps, 80)


@pytest.mark.parametrize("h,w,ratio", [(240, 320, None), (240, 426, None), (720, 1280, None),
                                        (360, 640, None), (100, 100, (3 / 4, 4 / 3))])
def test_random_resized_crop_box_in_bounds_and_scale(h, w, ratio):
    rng = random.Random(0)
    cfg = DataConfig(ratio=ratio)
    ratio, fallbacks = cfg.crop_ratio, 0
    for _ in range(300):
        top, left, ch, cw = random_resized_crop_box(h, w, cfg.scale, ratio, rng)
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0
        frac = ch * cw / (h * w)
        if (top, left, ch, cw) == center_crop_box(h, w, min(max(w / h, ratio[0]), ratio[1])):
            fallbacks += 1
            continue
        assert cfg.scale[0] - 0.02 <= frac <= cfg.scale[1] + 1e-9
        assert ratio[0] * 0.97 <= cw / ch <= ratio[1] * 1.03
    assert fallbacks < 150


def test_center_crop_box_keeps_output_aspect():
    assert center_crop_box(240, 320, 320 / 192) == (24, 0, 192, 320)
    assert center_crop_box(240, 426, 320 / 192) == (0, 13, 240, 400)


def test_expand_shards_forms(tmp_path):
    """The one shard-pattern expander (the loader's and lfvila-train's): a directory is its
    split's shards, patterns expand in order, remote URLs and missing paths pass through."""
    for name in ("train-000000.tar", "train-000001.tar", "val-000000.tar", "train-000000.json"):
        (tmp_path / name).write_text("")
    d = str(tmp_path)
    train = [f"{d}/train-000000.tar", f"{d}/train-000001.tar"]
    assert expand_shards(d, "train") == train and expand_shards(d, "val") == [f"{d}/val-000000.tar"]
    assert expand_shards(f"{d}/train-{{000000..000001}}.tar") == train
    assert expand_shards(f"{d}/train-*.tar") == train
    assert expand_shards(f"{d}/val-*.tar,{d}/train-*.tar") == [f"{d}/val-000000.tar", *train]
    assert expand_shards(["s3://b/x-{0..1}.tar", f"{d}/nope.tar"]) == ["s3://b/x-0.tar", "s3://b/x-1.tar",
                                                                     f"{d}/nope.tar"]
    with pytest.raises(ValueError, match="no shards match"):
        expand_shards(f"{d}/test-*.tar")
    with pytest.raises(ValueError, match="no shards match"):
        expand_shards(d, "test")  # a directory without that split


# ---------------------------------------------------------------- real shards

def cfg_for(**kw) -> DataConfig:
    return DataConfig(**{"batch_size": 2, "num_workers": 0, "shuffle_buffer": 4, **kw})


def keys_of(loader) -> list[str]:
    return [k for b in loader for k in b["key"]]


def test_batch_shapes_and_dtypes(shards, tokenizer):
    metas = read_metas(shards)
    assert len(metas) == 6 and {m["n_clips"] for m in metas.values()} == {4, 6}
    loader = make_loader(shards, cfg_for(), train=True, tokenizer=tokenizer)
    batches = list(loader)
    assert sorted(k for b in batches for k in b["key"]) == sorted(metas)
    b = batches[0]
    assert b["video"].shape == (2, 32, 3, 192, 320) and b["video"].dtype == torch.float32
    assert b["input_ids"].shape == (2, 4, 50) and b["input_ids"].dtype == torch.long
    assert b["attention_mask"].shape == (2, 4, 50) and b["attention_mask"].dtype == torch.long
    assert torch.isfinite(b["video"]).all() and b["video"].abs().max() < 3
    assert (b["input_ids"][:, :, 0] == tokenizer.cls_token_id).all()
    assert loader.dataset.counter.kept == 6 and loader.dataset.counter.skipped == 0


def test_eval_is_deterministic(shards, tokenizer):
    cfg = cfg_for()
    a = list(make_loader(shards, cfg, train=False, tokenizer=tokenizer))
    b = list(make_loader(shards, cfg, train=False, tokenizer=tokenizer))
    assert [x["key"] for x in a] == [x["key"] for x in b]
    for x, y in zip(a, b):
        assert torch.equal(x["video"], y["video"]) and torch.equal(x["input_ids"], y["input_ids"])


def clip_colour(frames: torch.Tensor) -> str:
    """Nearest named demo colour to the mean of normalised frames (T×3×H×W)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    rgb = (frames * std + mean).mean(dim=(0, 2, 3)) * 255
    ref = {name: torch.tensor([int(h[2:4], 16), int(h[4:6], 16), int(h[6:8], 16)], dtype=torch.float)
           for name, h in COLOURS.items()}
    return min(ref, key=lambda n: float((ref[n] - rgb).norm()))


def test_frames_come_from_the_right_clips(shards, tokenizer):
    """Each demo clip is painted the colour its sentence names: in eval (window 0) the
    mean colour of each clip's 8 frames must match that clip's colour word."""
    metas = read_metas(shards)
    checked = 0
    for batch in make_loader(shards, cfg_for(), train=False, tokenizer=tokenizer):
        for video, key in zip(batch["video"], batch["key"]):
            for j, clip in enumerate(metas[key]["clips"][:4]):
                word = next(c for c in COLOURS if re.search(rf"\b{c}\b", clip["text"]))
                assert clip_colour(video[8 * j:8 * j + 8]) == word, (key, j, clip["text"])
                checked += 1
    assert checked == 24


def test_train_batches_hold_exactly_the_sampled_frames(shards, tokenizer):
    """For fixed decode seeds, the batch holds, bit for bit, what the straightforward way
    gives: decord's get_batch of the window's frame numbers, the box and flip drawn from
    the same rng in the same order, crop + resize + normalise per sample, then stacked -
    so the faster path (uint8 until collate, normalised into the batch) changes no value."""
    import decord

    cfg = cfg_for(batch_size=3)
    samples = []
    for url in expand_shards(shards):
        with tarfile.open(url) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        for name, data in members.items():
            if name.endswith(".json"):
                key = name[:-5]
                samples.append({"__key__": key, "__seed__": f"seed/{key}", "json": data,
                                "mp4": members[key + ".mp4"]})
    counter = SkipCounter(log_every=0)
    batch = collate(list(SampleDecoder(cfg, True, tokenizer, counter)(samples[:3])))
    assert counter.kept == 3
    for sample, video in zip(samples[:3], batch["video"], strict=True):
        meta, rng = json.loads(sample["json"]), random.Random(sample["__seed__"])
        start = choose_window(len(meta["clips"]), 4, rng, train=True)
        vr = decord.VideoReader(io.BytesIO(sample["mp4"]), ctx=decord.cpu(0))
        frames = torch.from_numpy(vr.get_batch(frame_indices(meta["clips"], start, 4, 8, float(meta["fps"]),
                                                             len(vr))).asnumpy())
        box = random_resized_crop_box(*frames.shape[1:3], cfg.scale, cfg.crop_ratio, rng)
        want = crop_resize_normalize(frames, box, cfg.size, rng.random() < 0.5)
        assert video.dtype == torch.float32 and torch.equal(video, want)


def test_training_windows_follow_the_clips(shards, tokenizer):
    """In training the window start varies over the sample, and the frames still match
    the sentences of the window that was tokenized."""
    metas = read_metas(shards)
    six = [u for u in shards if next(iter(read_metas([u]).values()))["n_clips"] == 6]
    starts = set()
    for seed in range(4):
        cfg = cfg_for(batch_size=1, seed=seed)
        for batch in make_loader(six, cfg, train=True, tokenizer=tokenizer):
            texts = [c["text"] for c in metas[batch["key"][0]]["clips"]]
            ids = batch["input_ids"][0]
            s = next(s for s in range(3) if torch.equal(tokenizer(
                texts[s:s + 4], padding="max_length", truncation=True, max_length=50,
                return_tensors="pt")["input_ids"], ids))
            starts.add(s)
            for j in range(4):
                word = next(c for c in COLOURS if re.search(rf"\b{c}\b", texts[s + j]))
                assert clip_colour(batch["video"][0, 8 * j:8 * j + 8]) == word
    assert len(starts) >= 2


def test_too_few_clips_are_skipped_and_counted(shards, tokenizer):
    loader = make_loader(shards, cfg_for(sample_clips=5), train=False, tokenizer=tokenizer)
    keys = keys_of(loader)
    metas = read_metas(shards)
    assert sorted(keys) == sorted(k for k, m in metas.items() if m["n_clips"] >= 5)
    assert loader.dataset.counter.skipped_by_reason == {"too_few_clips": 3}
    b = next(iter(make_loader(shards, cfg_for(sample_clips=5, frames_per_clip=2), train=False,
                              tokenizer=tokenizer)))
    assert b["video"].shape[1] == 10 and b["input_ids"].shape[1] == 5


def rewrite_shard(src: str, dst: Path, edit) -> None:
    """Copy a shard, passing each member (name, bytes) through edit (None drops it)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin.getmembers():
            got = edit(m.name, tin.extractfile(m).read())
            if got is not None:
                info = tarfile.TarInfo(m.name)
                info.size = len(got)
                tout.addfile(info, io.BytesIO(got))


def test_corrupt_and_incomplete_samples_are_skipped(shards, tokenizer, tmp_path):
    bad = [tmp_path / f"bad-{i}.tar" for i in range(4)]
    rewrite_shard(shards[0], bad[0], lambda n, b: b"\x00not an mp4" * 500 if n.endswith(".mp4") else b)
    rewrite_shard(shards[1], bad[1], lambda n, b: b[:len(b) // 2] if n.endswith(".mp4") else b)
    rewrite_shard(shards[2], bad[2], lambda n, b: None if n.endswith(".json") else b)
    rewrite_shard(shards[3], bad[3], lambda n, b: b"{not json" if n.endswith(".json") else b)
    urls = [str(p) for p in bad] + shards[4:] + [str(tmp_path / "missing.tar")]
    loader = make_loader(urls, cfg_for(), train=True, tokenizer=tokenizer)
    keys = keys_of(loader)
    assert sorted(keys) == sorted(read_metas(shards[4:]))
    c = loader.dataset.counter.skipped_by_reason
    assert c == {"decode_error": 2, "missing_member": 1, "bad_json": 1, "shard_error": 1}, c


@pytest.mark.parametrize("mode", ["env", "explicit"])
def test_two_ranks_two_workers_read_each_sample_once(shards, tokenizer, monkeypatch, mode):
    cfg = cfg_for(num_workers=2, resample=False)
    keys: list[str] = []
    for rank in range(2):
        if mode == "env":  # what wds.split_by_node reads before torch.distributed
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", "2")
            loader = make_loader(shards, cfg, train=True, tokenizer=tokenizer)
        else:
            loader = make_loader(shards, cfg, train=True, tokenizer=tokenizer, rank=rank, world_size=2)
        got = keys_of(loader)
        assert got, rank
        keys += got
    assert len(keys) == len(set(keys)) and set(keys) == set(read_metas(shards))


def test_resampled_stream_is_endless(shards, tokenizer):
    loader = make_loader(shards, cfg_for(resample=True, batch_size=1), train=True, tokenizer=tokenizer)
    it = iter(loader)
    keys = [next(it)["key"][0] for _ in range(9)]   # more than the 6 samples there are
    assert set(keys) <= set(read_metas(shards))


def test_remote_urls_go_through_fsspec(shards, tokenizer):
    """s3://, gs://... are opened with fsspec; its in-memory filesystem stands in here."""
    import fsspec

    fs = fsspec.filesystem("memory")
    for i, url in enumerate(shards[:2]):
        fs.pipe(f"/lfvila-test/s-{i:06d}.tar", Path(url).read_bytes())
    loader = make_loader("memory://lfvila-test/s-{000000..000001}.tar", cfg_for(), train=False,
                         tokenizer=tokenizer)
    assert sorted(keys_of(loader)) == sorted(read_metas(shards[:2]))
