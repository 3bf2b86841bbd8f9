"""`lfvila-data browse`: the page renderer alone (escaping, one image per clip, times), then
a real build and its shards browsed and the pages opened in headless Chromium, where every
thumbnail must load; and the `stats` report linking the page."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from lfvila_data.shards.browse import (
    ClipCard,
    SampleCard,
    clip_middles,
    extract_thumbnails,
    fmt_time,
    pick,
    render_page,
    thumbnail_command,
    write_browse,
)
from tests.support.media import decode_times, make_timecoded_video

EVIL = '<script>alert("x")</script> & <img src=x onerror=alert(1)>'


class _Page(HTMLParser):
    """What a browser would see: tags with their attributes, and the text."""

    def __init__(self, page: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag]


def card(key: str, texts: list[str], images: list[str | None]) -> SampleCard:
    clips = tuple(ClipCard(t, 4.5 * i, 4.5 * i + 4.0, 60.0 + 4.5 * i, 64.0 + 4.5 * i, img)
                  for i, (t, img) in enumerate(zip(texts, images)))
    return SampleCard(key, "vid", " ".join(texts), 17.7, "subtitles", "en", "videos/vi/x.mp4", clips)


def test_page_escapes_text_and_shows_one_image_per_clip_with_times():
    samples = [card("vid_00001_00003", ["Hello.", EVIL, "Bye & <b>."],
                    ["thumbs/0000_00.jpg", "thumbs/0000_01.jpg", None]),
               card('k"><x', ["a", "b"], ["thumbs/0001_00.jpg", 'thumbs/0001_01.jpg"onload="x'])]
    page = render_page(samples, "title <t>", "note & more")
    parsed = _Page(page)
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>." not in page
    assert [t for t, _ in parsed.tags].count("script") == 1  # only the page's own
    assert not [a for _, a in parsed.tags if "onerror" in a or "onload" in a]
    # one <img> per clip that has a frame, in clip order, relative paths as given
    assert [a["src"] for a in parsed.all("img")] == [
        "thumbs/0000_00.jpg", "thumbs/0000_01.jpg", "thumbs/0001_00.jpg", 'thumbs/0001_01.jpg"onload="x']
    text = "".join(parsed.text)
    assert EVIL in text and "Bye & <b>." in text and 'k"><x' in text and "title <t>" in text
    assert text.count("no frame") == 1
    # each clip's times in the file and in the source, in clip order
    times = re.findall(r"(\d)\. (\d:\d\d\.\d)–(\d:\d\d\.\d) \(source (\d:\d\d\.\d)–(\d:\d\d\.\d)\)", text)
    assert times == [("1", "0:00.0", "0:04.0", "1:00.0", "1:04.0"),
                     ("2", "0:04.5", "0:08.5", "1:04.5", "1:08.5"),
                     ("3", "0:09.0", "0:13.0", "1:09.0", "1:13.0"),
                     ("1", "0:00.0", "0:04.0", "1:00.0", "1:04.0"),
                     ("2", "0:04.5", "0:08.5", "1:04.5", "1:08.5")]
    assert "Hello. " + EVIL in text  # the paragraph
    assert [a.get("id") for _, a in parsed.tags if a.get("id")] == ["broken"]


def test_helpers():
    assert [fmt_time(t) for t in (0, 4.04, 59.96, 61.5, 3725.25, None)] == [
        "0:00.0", "0:04.0", "1:00.0", "1:01.5", "1:02:05.2", "?"]
    meta = {"fps": 3.0, "duration": 10.0,
            "clips": [{"start": 0.0, "end": 4.0}, {"start": 9.0, "end": 11.2}]}
    assert clip_middles(meta) == pytest.approx([2.0, 10.0 - 1 / 3])
    assert pick(100, 5, 7) == pick(100, 5, 7) == sorted(pick(100, 5, 7))
    assert pick(100, 5, 7) != pick(100, 5, 8) and pick(3, 10, 0) == [0, 1, 2]
    cmd = thumbnail_command(Path("/v/a b.mp4"), [1.0, 2.5], [Path("/o/0.jpg"), Path("/o/1.jpg")])
    assert cmd.count("-i") == 2 and cmd.count("-protocol_whitelist") == 2
    assert cmd[cmd.index("-ss") + 1] == "1.000" and "file:/v/a b.mp4" in cmd
    assert cmd[-1] == "file:/o/1.jpg" and cmd.count("-frames:v") == 2


def test_drawn_rows_come_from_their_row_groups(tmp_path):
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lfvila_data.shards.browse import _picked_rows

    table = pa.table({"key": [f"k{i:03d}" for i in range(100)],
                      "clips": [[{"text": f"t{i}", "start": 0.0, "end": 1.0}] for i in range(100)]})
    pq.write_table(table, tmp_path / "manifest.parquet", row_group_size=7)
    fs, root = fsspec.core.url_to_fs(str(tmp_path))
    rows, total = _picked_rows(fs, root, 12, 5)
    assert total == 100 and list(rows.key) == [f"k{i:03d}" for i in pick(100, 12, 5)]
    assert [c[0]["text"] for c in rows.clips] == [f"t{i}" for i in pick(100, 12, 5)]
    rows, total = _picked_rows(fs, root, 500, 0)
    assert total == len(rows) == 100


def test_thumbnails_show_the_frame_at_the_time_asked(tmp_path):
    """The pixels of the time-coded video say which instant each JPEG shows: the first
    frame at or after the time (3 fps: within a third of a second)."""
    video = make_timecoded_video(tmp_path / "v.mp4", 12, width=160, height=120, fps=3, audio=False)
    times = [1.1, 5.6, 9.0, 11.6]
    outs = [tmp_path / f"{i}.jpg" for i in range(len(times))]
    assert extract_thumbnails(video, times, outs) == [True] * 4
    for t, out in zip(times, outs):
        (shown,) = decode_times(out)
        assert t - 0.25 <= shown <= t + 1 / 3, (t, shown)
    (tmp_path / "bad.mp4").write_bytes(b"not a video" * 100)
    assert extract_thumbnails(tmp_path / "bad.mp4", [1.0], [tmp_path / "bad.jpg"]) == [False]


# ---------------------------------------------------------------------------------------
# a real build and its shards, in a real browser


def chromium() -> str:
    """The browser, or a skip outside CI (in CI a missing browser is a failure)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is missing in CI: setup.sh installs it (apt-get install chromium)")
    pytest.skip("chromium is not installed (bash setup.sh installs it); CI runs this test")


def open_in_chromium(page: Path, tmp_path: Path, screenshot: Path | None = None) -> dict:
    """Load the page in headless Chromium; the counts its script left on <body>."""
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=10000"]
    res = subprocess.run([*base, "--dump-dom", page.resolve().as_uri()], capture_output=True,
                         timeout=120, text=True)
    body = re.search(r"<body([^>]*)>", res.stdout)
    assert body, res.stderr[-2000:]
    if screenshot:
        subprocess.run([*base, "--window-size=1200,900", f"--screenshot={screenshot}",
                        page.resolve().as_uri()], capture_output=True, timeout=120)
    return {k: int(v) for k, v in re.findall(r'data-(\w+)="(\d+)"', body.group(1))}


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_module):
    """A demo-corpus build (3 videos, samples of 4-6 clips) and its shards."""
    from lfvila_data.build import BuildConfig, run_build
    from lfvila_data.demo import make_corpus
    from lfvila_data.executor.pool import RayTasks
    from lfvila_data.localserver import MediaServer
    from lfvila_data.media.fetch import FetchConfig
    from lfvila_data.media.task import TaskContext
    from lfvila_data.plan.join import PlanConfig
    from lfvila_data.shards.write import ShardConfig, run_shard

    root = tmp_path_factory.mktemp("browse")
    build = root / "build"
    with MediaServer(root / "www") as srv:
        meta, text = make_corpus(root, srv.url("").rstrip("/"), videos=3, clips=10, seed=0)
        run_build(BuildConfig(metadata=(str(meta),), text=(str(text),), output=str(build),
                              plan=PlanConfig(max_clips=6),
                              task=TaskContext(output=str(build), fetch=FetchConfig(retries=2, backoff=0.1))))
    shards = root / "shards"
    run_shard([str(build)], str(shards), ShardConfig(val_count=2, samples_per_shard=2), write=RayTasks())
    return build, shards


def check_page(page: Path, manifest: pd.DataFrame, samples: int) -> _Page:
    parsed = _Page(page.read_text(encoding="utf-8"))
    keys = [t for t in parsed.text if t in set(manifest.key)]
    assert len(keys) == samples
    n_clips = int(manifest.set_index("key").loc[keys, "n_clips"].sum())
    srcs = [a["src"] for a in parsed.all("img")]
    assert len(srcs) == n_clips  # one frame per clip, none missing
    for src in srcs:  # relative, inside the page's folder, real JPEGs
        assert not src.startswith("/") and ".." not in src
        assert (page.parent / src).read_bytes()[:2] == b"\xff\xd8"
    return parsed


def shown_colour(jpeg: Path) -> str:
    """The demo colour a thumbnail shows (the median pixel: the moving box and noise aside)."""
    from lfvila_data.demo import COLOURS

    raw = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(jpeg), "-vf", "scale=8:8",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True,
                         capture_output=True).stdout
    rgb = np.median(np.frombuffer(raw, np.uint8).reshape(-1, 3), axis=0)
    return min(COLOURS, key=lambda c: np.abs(rgb - np.array(
        [int(COLOURS[c][i:i + 2], 16) for i in (2, 4, 6)])).sum())


def test_frames_go_with_their_text(built, tmp_path):
    """Alignment, the point of the page: under each demo frame is the sentence naming the
    colour that frame shows, for the build and for the shards."""
    from lfvila_data.demo import COLOURS

    build, shards = built
    for d, out in ((build, tmp_path / "b"), (shards, tmp_path / "s")):
        page = write_browse(str(d), str(out), samples=2, seed=3).page.read_text()
        pairs = re.findall(r'<img src="([^"]+)" alt="clip \d+"><figcaption><div class="t">'
                           r'[^<]*</div>([^<]*)</figcaption>', page)
        assert len(pairs) >= 8
        for src, text in pairs:
            named = next(c for c in COLOURS if re.search(rf"\b{c}\b", text))
            assert shown_colour(out / src) == named, (d, src, text)


def test_browse_build_and_shards_in_chromium(built, tmp_path):
    from lfvila_data.cli import app

    build, shards = built
    m = pd.read_parquet(build / "manifest")
    result = write_browse(str(build), samples=3, seed=1)
    assert result.page == build / "browse" / "index.html" and result.missing_images == 0
    parsed = check_page(result.page, m, 3)
    # the build's text is under its frame: a demo clip names its colour
    assert any("Now everything is" in t or "colour" in t for t in parsed.text)

    # shards through the command line, the build moved away: only the tars are read
    hidden = build.with_name("build-moved")
    build.rename(hidden)
    try:
        got = CliRunner().invoke(app, ["browse", str(shards), "--samples", "4", "--seed", "2",
                                       "--output", str(tmp_path / "page")])
    finally:
        hidden.rename(build)
    assert got.exit_code == 0, got.output
    assert "4 samples" in got.output
    page = tmp_path / "page" / "index.html"
    check_page(page, m, 4)
    assert pick(len(m), 4, 2) == pick(len(m), 4, 2)

    # the copied folder works on its own, in a real browser: every image loads
    copy = tmp_path / "copied"
    shutil.copytree(tmp_path / "page", copy)
    for p in (copy / "index.html", result.page):
        counts = open_in_chromium(p, tmp_path)
        assert counts["images"] > 0 and counts == {"images": counts["images"],
                                                   "loaded": counts["images"], "broken": 0}
    # and a broken thumbnail is seen as broken (the check can fail)
    next((copy / "thumbs").glob("*.jpg")).write_bytes(b"not a jpeg")
    assert open_in_chromium(copy / "index.html", tmp_path)["broken"] == 1


def test_stats_links_the_browse_page(built, tmp_path):
    from lfvila_data.shards.stats import write_report

    _, shards = built
    page = shards / "browse" / "index.html"
    if page.exists():
        shutil.rmtree(page.parent)
    report = write_report(str(shards), str(tmp_path / "r1"))
    html = (tmp_path / "r1" / "index.html").read_text()
    assert report["browse"] is None and f"lfvila-data browse {shards}" in html
    write_browse(str(shards), samples=2)
    report = write_report(str(shards))
    links = [a["href"] for a in _Page((shards / "report" / "index.html").read_text()).all("a")]
    assert links == ["../browse/index.html"] and report["browse"] == "../browse/index.html"
    assert ((shards / "report" / links[0]).resolve()) == page.resolve()
