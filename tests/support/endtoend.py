"""The last legs every source must pass: a finished build -> shard -> verify -> the model's
loader, reading the manifest exactly as pandas/pyarrow give it (list columns are numpy
arrays there, never lists)."""
from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import pandas as pd


def read_metas(urls: list[str]) -> dict[str, dict]:
    """Every sample's json member, by key, read with tarfile (not our reader)."""
    metas = {}
    for url in urls:
        with tarfile.open(url) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(m).read())
                    metas[meta["key"]] = meta
    return metas


def _vocab_dir(texts: list[str], root: Path) -> Path:
    """A WordPiece vocabulary of the build's own words (no downloads)."""
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    d = root / "vocab"
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return d


def shard_verify_load(builds: list[Path], root: Path, *, multi_sentence: bool = True) -> dict:
    """Shard the builds, verify the shards, read every json back with tarfile and every
    sample of four clips or more through the model's loader. Returns what was counted."""
    from lfvila_data.executor.pool import RayTasks
    from lfvila_data.shards.verify import verify_shards
    from lfvila_data.shards.write import ShardConfig, run_shard
    from lfvila_model.data import DataConfig, load_tokenizer, make_loader

    manifest = pd.concat([pd.read_parquet(b / "manifest.parquet") for b in builds], ignore_index=True)
    assert len(manifest), "the build made no samples"
    sentences = {(r.key, c["clip_id"]): len(c["sentences"]) for r in manifest.itertuples() for c in r.clips}
    if multi_sentence:
        assert max(sentences.values()) >= 2, "no clip of these builds holds several sentences"

    out = root / "shards"
    stats = run_shard([str(b) for b in builds], str(out), ShardConfig(val_count=0, samples_per_shard=2),
                      write=RayTasks())
    assert stats["samples"] == len(manifest)
    report = verify_shards(str(out), progress=lambda line: None)
    assert report.ok, report.render()
    assert report.samples == len(manifest)

    tars = sorted(str(p) for p in out.glob("*.tar"))
    metas = read_metas(tars)
    assert set(metas) == set(manifest.key)
    for key, meta in metas.items():
        for c in meta["clips"]:
            assert len(c["sentences"]) == sentences[(key, c["clip_id"])]
            assert " ".join(s["text"] for s in c["sentences"]) == c["text"]

    tokenizer = load_tokenizer(str(_vocab_dir(list(manifest.paragraph), root)))
    cfg = DataConfig(batch_size=1, num_workers=0, shuffle_buffer=1)
    loader = make_loader(tars, cfg, train=False, tokenizer=tokenizer)
    keys = [k for batch in loader for k in batch["key"]]
    # a pretraining sample needs a window of sample_clips; a retrieval one is read whole
    long_enough = {k for k, m in metas.items()
                   if m["n_clips"] >= cfg.sample_clips or (m.get("task") == "retrieval" and m["n_clips"])}
    assert sorted(keys) == sorted(long_enough)
    assert loader.dataset.counter.kept == len(long_enough)
    return {"samples": len(manifest), "loaded": len(keys), "sentences": sum(sentences.values())}
