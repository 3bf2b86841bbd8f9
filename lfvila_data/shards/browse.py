"""`lfvila-data browse`: a static page of random samples of a build or shard directory, to
check by eye that each clip's text goes with its footage.

Each sample is a filmstrip: one small JPEG per clip, taken by ffmpeg from the sample file
at the clip's middle, with the clip's times and text under it, then the paragraph and the
key. A build directory is read through its manifest and `videos/`; a shard directory
through its manifest's byte offsets into the tars (the build may be long gone). The page
links its thumbnails by relative paths, so the folder can be copied anywhere, and it
escapes every text, since subtitles are untrusted input."""
from __future__ import annotations

import html
import json
import os
import random
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lfvila_data.inputs import InputError
from lfvila_data.media.cut import INPUT_GUARD
from lfvila_data.output import manifest as tables
from lfvila_data.shards.stats import _kind
from lfvila_data.shards.write import sample_json

THUMB_HEIGHT = 96  # px: a 32-clip sample's strip stays a few screens wide
THUMB_DIR = "thumbs"
PAGE = "index.html"
DEFAULT_DIR = "browse"  # under the build or shard directory; `stats` links it from there
FFMPEG_TIMEOUT = 120.0


@dataclass(frozen=True)
class ClipCard:
    """One clip under its thumbnail: times relative to the sample file's first frame."""

    text: str
    start: float
    end: float
    source_start: float | None
    source_end: float | None
    image: str | None  # path relative to the page; None when no frame could be taken


@dataclass(frozen=True)
class SampleCard:
    """One sample on the page."""

    key: str
    video_id: str
    paragraph: str
    duration: float
    text_source: str | None
    language: str | None
    where: str  # the sample file, or shard and split
    clips: tuple[ClipCard, ...]


@dataclass(frozen=True)
class BrowseResult:
    page: Path
    samples: int
    images: int
    missing_images: int


# ---------------------------------------------------------------------------------------
# the page (pure)


def fmt_time(t: float | None) -> str:
    """h:mm:ss.s or m:ss.s: readable at a glance and exact to a tenth of a 3 fps frame."""
    if t is None:
        return "?"
    tenths = round(max(t, 0.0) * 10)
    h, rest = divmod(tenths, 36000)
    m, rest = divmod(rest, 600)
    s = f"{m:02d}:{rest / 10:04.1f}" if h else f"{m}:{rest / 10:04.1f}"
    return f"{h}:{s}" if h else s


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:0.8em 1em;margin:1em 0}
h2{font-size:1.05em;margin:0 0 0.3em;font-family:ui-monospace,monospace}
.meta{color:#666;font-size:0.85em;margin-bottom:0.6em}
.strip{display:flex;gap:8px;overflow-x:auto;padding-bottom:6px}
figure{margin:0;flex:0 0 auto;width:180px;font-size:0.8em}
figure img{display:block;height:96px;max-width:180px;background:#000}
figure .none{height:96px;width:128px;background:#eee;color:#888;display:flex;align-items:center;
justify-content:center}
.t{font-family:ui-monospace,monospace;color:#555;margin:0.3em 0 0.15em}
.p{margin:0.7em 0 0;line-height:1.4}"""

# Sets data-images / data-loaded / data-broken on <body> once every image has loaded or
# failed, so a person (and a headless-browser test) can tell a broken page at a glance.
_SCRIPT = """window.addEventListener("load",function(){var ok=0,bad=0;
for(var i=0;i<document.images.length;i++){var im=document.images[i];
if(im.complete&&im.naturalWidth>0){ok++}else{bad++}}
var b=document.body;b.dataset.images=document.images.length;b.dataset.loaded=ok;
b.dataset.broken=bad;if(bad){document.getElementById("broken").textContent=
bad+" thumbnail(s) did not load."}});"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _clip_html(c: ClipCard, n: int) -> str:
    image = (f'<img src="{_e(c.image)}" alt="clip {n}">' if c.image
             else '<div class="none">no frame</div>')
    source = (f" (source {fmt_time(c.source_start)}–{fmt_time(c.source_end)})"
              if c.source_start is not None else "")
    return (f"<figure>{image}<figcaption><div class=\"t\">{n}. {fmt_time(c.start)}–"
            f"{fmt_time(c.end)}{_e(source)}</div>{_e(c.text)}</figcaption></figure>")


def _sample_html(s: SampleCard) -> str:
    meta = [f"{len(s.clips)} clips", f"{s.duration:.1f} s", f"video {s.video_id}",
            f"text: {s.text_source or 'metadata'}" + (f" ({s.language})" if s.language else ""),
            s.where]
    strip = "".join(_clip_html(c, i + 1) for i, c in enumerate(s.clips))
    return (f"<section><h2>{_e(s.key)}</h2><div class=\"meta\">{_e(' · '.join(meta))}</div>"
            f"<div class=\"strip\">{strip}</div><p class=\"p\">{_e(s.paragraph)}</p></section>")


def render_page(samples: list[SampleCard], title: str, note: str = "") -> str:
    """The whole page: no external resources, every text escaped."""
    head = (f"<h1>{_e(title)}</h1><p>{_e(note)}</p><p id=\"broken\" style=\"color:#b00\"></p>")
    body = "".join(_sample_html(s) for s in samples) or "<p>No samples.</p>"
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style>"
            f"<script>{_SCRIPT}</script></head><body>{head}{body}</body></html>\n")


# ---------------------------------------------------------------------------------------
# thumbnails (ffmpeg)


def clip_middles(meta: dict) -> list[float]:
    """Each clip's middle in the sample file's time, kept inside the file (the last clip
    may end a frame past its last frame)."""
    fps = float(meta.get("fps") or 0) or 3.0
    last = max(0.0, float(meta.get("duration") or 0) - 1.0 / fps)
    return [min(max((c["start"] + c["end"]) / 2, 0.0), last) for c in meta["clips"]]


def thumbnail_command(video: Path, times: list[float], outs: list[Path],
                      height: int = THUMB_HEIGHT) -> list[str]:
    """One ffmpeg run for a sample: the file opened once per time (an accurate seek each),
    one small JPEG per time. Inputs are guarded like the cut's: a shard's mp4 is data."""
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y"]
    for t in times:
        cmd += [*INPUT_GUARD, "-ss", f"{t:.3f}", "-i", f"file:{video}"]
    for i, out in enumerate(outs):
        cmd += ["-map", f"{i}:v:0", "-frames:v", "1", "-vf", f"scale=-2:{height}",
                "-q:v", "5", "-update", "1", f"file:{out}"]
    return cmd


def extract_thumbnails(video: Path, times: list[float], outs: list[Path]) -> list[bool]:
    """Write the thumbnails; which ones exist afterwards (a corrupt file gives none)."""
    if times:
        try:
            subprocess.run(thumbnail_command(video, times, outs), capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=FFMPEG_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    return [o.is_file() and o.stat().st_size > 0 for o in outs]


# ---------------------------------------------------------------------------------------
# reading samples


def pick(n_total: int, n: int, seed: int) -> list[int]:
    """n row numbers drawn with the seed, in manifest order (the same seed, the same page)."""
    return sorted(random.Random(seed).sample(range(n_total), min(n, n_total)))


def _picked_rows(fs, root: str, n: int, seed: int) -> tuple[pd.DataFrame, int]:
    """The drawn manifest rows (as pandas gives them) and the number of rows. Only the row
    groups holding drawn rows are read: a build manifest of millions of samples carries
    every clip's text."""
    files = tables.parquet_files(fs, root, "manifest")
    metas = []
    for path in files:
        with fs.open(path, "rb") as f:
            metas.append(pq.ParquetFile(f).metadata)
    total = sum(m.num_rows for m in metas)
    picked, parts, first = pick(total, n, seed), [], 0
    for path, meta in zip(files, metas):
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            for g in range(pf.num_row_groups):
                size = meta.row_group(g).num_rows
                local = [i - first for i in picked if first <= i < first + size]
                if local:
                    parts.append(pf.read_row_group(g).take(local))
                first += size
    table = pa.concat_tables(parts) if parts else tables.read_schema(fs, files).empty_table()
    return table.to_pandas(), total


def _build_samples(fs, root: str, rows: pd.DataFrame) -> Iterator[tuple[dict, str, bytes | str, str]]:
    """(json as in a shard, paragraph, local mp4 path or its bytes, file) of each build row."""
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    for row in rows.to_dict("records"):
        path = f"{root}/{row['video']}"
        if not fs.exists(path):
            raise InputError(f"{path} is missing: the build's videos/ must be next to its manifest")
        video = path if local else fs.cat_file(path)
        yield sample_json(row), str(row.get("paragraph") or ""), video, str(row["video"])


def _shard_samples(fs, root: str, rows: pd.DataFrame) -> Iterator[tuple[dict, str, bytes, str]]:
    """(json, paragraph, mp4 bytes, shard) of each row, read from the tar at the row's offset."""
    for shard, part in rows.groupby("shard", sort=True):
        with fs.open(f"{root}/{shard}", "rb") as f:
            for row in part.sort_values("offset").to_dict("records"):
                f.seek(int(row["offset"]))
                members: dict[str, bytes] = {}
                with tarfile.open(fileobj=f, mode="r:") as tf:
                    for _ in range(3):
                        m = tf.next()
                        if m is None or not m.name.startswith(f"{row['key']}."):
                            break
                        members[m.name[len(row["key"]) + 1:]] = tf.extractfile(m).read()
                if set(members) != {"mp4", "json", "txt"}:
                    raise InputError(f"{shard} at offset {row['offset']} does not hold the three "
                                     f"members of {row['key']}: run lfvila-data verify")
                yield (json.loads(members["json"]), members["txt"].decode("utf-8", "replace"),
                       members["mp4"], f"{row.get('split', '')} {shard}".strip())


def _card(meta: dict, paragraph: str, where: str, images: list[str | None]) -> SampleCard:
    clips = tuple(ClipCard(str(c.get("text", "")), float(c["start"]), float(c["end"]),
                           c.get("source_start"), c.get("source_end"), img)
                  for c, img in zip(meta["clips"], images))
    return SampleCard(str(meta.get("key", "")), str(meta.get("video_id", "")), paragraph,
                      float(meta.get("duration") or 0), meta.get("text_source"),
                      meta.get("language"), where, clips)


def _thumbs(video: str | bytes, meta: dict, out: Path, n: int) -> list[str | None]:
    names = [f"{THUMB_DIR}/{n:04d}_{j:02d}.jpg" for j in range(len(meta["clips"]))]
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(video, bytes):
            path = Path(tmp) / "sample.mp4"
            path.write_bytes(video)
        else:
            path = Path(video)
        ok = extract_thumbnails(path.absolute(), clip_middles(meta), [out / p for p in names])
    return [p if good else None for p, good in zip(names, ok)]


def write_browse(directory: str, out_dir: str | None = None, samples: int = 20,
                 seed: int = 0) -> BrowseResult:
    """Write OUT/index.html and OUT/thumbs/ (default DIR/browse) for `samples` random samples."""
    if samples < 1:
        raise InputError(f"--samples must be at least 1, got {samples}")
    fs, root = fsspec.core.url_to_fs(directory.rstrip("/"))
    kind = _kind(fs, root)
    if out_dir is None and "://" in directory:
        raise InputError(f"{directory} is not a local directory: give --output for the page")
    out = Path(out_dir) if out_dir else Path(root) / DEFAULT_DIR
    (out / THUMB_DIR).mkdir(parents=True, exist_ok=True)
    for old in (out / THUMB_DIR).glob("*.jpg"):  # another seed's thumbnails
        old.unlink()
    rows, total = _picked_rows(fs, root, samples, seed)
    read = _build_samples if kind == "build" else _shard_samples
    cards = [_card(meta, paragraph, where, _thumbs(video, meta, out, n))
             for n, (meta, paragraph, video, where) in enumerate(read(fs, root, rows))]
    note = (f"{len(cards)} of {total:,} samples of the {kind} directory "
            f"{directory}, drawn with seed {seed}; one frame per clip, at the clip's middle.")
    page = out / PAGE
    tmp = page.with_name(f".{PAGE}.tmp")
    tmp.write_text(render_page(cards, f"lfvila samples: {os.path.basename(root)}", note),
                   encoding="utf-8")
    tmp.replace(page)
    images = sum(1 for c in cards for clip in c.clips if clip.image)
    return BrowseResult(page, len(cards), images, sum(len(c.clips) for c in cards) - images)
