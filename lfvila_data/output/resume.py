"""What a rerun needs of the journal, read without holding it.

A rerun skips the videos the journal records as finished whose sample files are still
the ones it wrote, and hands the others their journaled file stamps and fetched bytes.
Reading every payload into a dict (as before) held the whole journal as Python objects,
tens of GB at LF-VILA-8M's 8.5M samples. Here the journal is streamed one file at a time
(`iter_journal`) and only this is kept:
- the ids of the videos to skip, as one Arrow string array;
- per sample file of those videos, 24 bytes: a 64-bit digest of (path, size, stamp), its
  folder's number and its video's number, checked folder by folder against one listing
  each (one `ls` per folder, as before, also on object stores);
- stamps and fetched bytes of the videos to redo only (the work left, not the journal)."""
from __future__ import annotations

from array import array
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from lfvila_data.media.task import file_stamp
from lfvila_data.output.write import DONE, FAILED, Journal, OutputDir, iter_journal

# ids gathered as Python strings before they become one Arrow chunk
ID_CHUNK = 65_536


@dataclass
class Resume:
    """A rerun's view of the journal: which videos to skip, and for the others what the
    earlier runs left (their sample files' stamps, the bytes they fetched)."""

    skip: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))  # sorted ids
    journaled: int = 0  # videos in the journal
    stamps: dict[str, dict[str, str]] = field(default_factory=dict)  # videos to redo only
    fetched: dict[str, int] = field(default_factory=dict)  # videos to redo only


def is_finished(status: str, payload: dict, retry_failed: bool) -> bool:
    """A video a rerun skips: done, and failed unless --retry-failed (which also retries
    done videos that lost samples or clips)."""
    return (status == DONE and not (retry_failed and payload["failures"])
            or status == FAILED and not retry_failed)


def _digest(path: str, size: int, stamp: str | None) -> int:
    # Python's hash: one process computes both sides (journal and listing), and a 64-bit
    # collision between one folder's files is out of reach
    return hash((path, int(size), stamp))


class _Files:
    """The journaled sample files of the videos that may be skipped, 24 bytes each."""

    def __init__(self) -> None:
        self.digest, self.folder, self.video = array("q"), array("i"), array("i")
        self.folders: dict[str, int] = {}

    def add(self, out: OutputDir, video: int, payload: dict) -> None:
        stamps = payload.get("stamps", {})
        for row in payload["rows"]:
            rel = row["video"]
            folder = rel.rsplit("/", 1)[0]
            self.folder.append(self.folders.setdefault(folder, len(self.folders)))
            self.digest.append(_digest(out.path(rel), row["bytes"], stamps.get(rel)))
            self.video.append(video)

    def changed(self, out: OutputDir, videos: int) -> np.ndarray:
        """Per video, whether one of its files is gone or differs from what was journaled
        (size, or size and mtime/ETag): one listing per folder, nothing read."""
        changed = np.zeros(videos, dtype=bool)
        folder = np.frombuffer(self.folder, dtype=np.int32)
        order = np.argsort(folder, kind="stable")
        bounds = np.searchsorted(folder[order], np.arange(len(self.folders) + 1))
        digest, video = np.frombuffer(self.digest, dtype=np.int64), np.frombuffer(self.video, dtype=np.int32)
        for name, code in self.folders.items():
            sel = order[bounds[code]:bounds[code + 1]]
            try:
                infos = out.fs.ls(out.path(name), detail=True, refresh=True)
            except FileNotFoundError:
                infos = []
            listed = [_digest(i["name"].rstrip("/"), i["size"], s)
                      for i in infos for s in (file_stamp(i), None)]
            gone = ~np.isin(digest[sel], np.array(listed, dtype=np.int64))
            changed[video[sel[gone]]] = True
        return changed


def read_resume(out: OutputDir, retry_failed: bool, dir: str = Journal.DIR) -> Resume:
    """Stream the journal once (twice when a skipped video's file changed, for its stamps)
    into what the rerun needs."""
    files, chunks, ids = _Files(), [], []
    resume = Resume()

    def keep(vid: str, payload: dict) -> None:
        if payload.get("stamps"):
            resume.stamps[vid] = payload["stamps"]
        if payload.get("fetched_bytes"):
            resume.fetched[vid] = payload["fetched_bytes"]

    for vid, status, payload in iter_journal(out, dir):
        resume.journaled += 1
        if not is_finished(status, payload, retry_failed):
            keep(vid, payload)
            continue
        files.add(out, len(chunks) * ID_CHUNK + len(ids), payload)
        ids.append(vid)
        if len(ids) == ID_CHUNK:
            chunks.append(pa.array(ids, pa.string()))
            ids = []
    candidates = pa.chunked_array(chunks + [pa.array(ids, pa.string())], pa.string()).combine_chunks()
    del chunks, ids
    changed = files.changed(out, len(candidates))
    del files
    if changed.any():
        again = set(candidates.filter(pa.array(changed)).to_pylist())
        for vid, _status, payload in iter_journal(out, dir):
            if vid in again:
                keep(vid, payload)
    resume.skip = candidates.filter(pa.array(~changed)).sort()
    return resume
