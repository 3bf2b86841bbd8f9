"""The bytes fetched for a video count whatever happens to its samples after (issue 15
item 4): here the output disk is full when the video's cut writes its first file."""
from __future__ import annotations

import pytest

from lfvila_data.media.fetch import INF, Fetched, Section
from lfvila_data.media.task import FetchOutcome, TaskContext, VideoJob, cut_video
from lfvila_data.records import Clip, FailureCode, PlannedSample, sample_key
from tests.support.media import make_timecoded_video
from tests.support.tmpfs import small_tmpfs


@pytest.fixture
def full_disk(tmp_path):
    """A 16 KiB tmpfs with no byte left."""
    with small_tmpfs(tmp_path / "out", "16k") as mnt:
        with pytest.raises(OSError), open(mnt / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        yield mnt


def test_a_full_output_keeps_the_bytes_the_video_fetched(tmp_path, full_disk):
    video = make_timecoded_video(tmp_path / "v.mp4", 4, width=64, height=48, audio=False)
    # clips to 8 s of a 4 s video: the cut first records the video's end (a small file)
    clips = tuple(Clip(f"c{k}", k, 2.0 * k, 2.0 * k + 2, "text") for k in range(4))
    sample = PlannedSample(sample_key("v", 0, 3), "v", "http://example.com/v.mp4", 0.0, 8.0, clips)
    job = VideoJob("v", sample.url, (sample,), min_clips=1)
    fetched = Fetched([Section(str(video), 0.0, INF)], 0, local=True)
    result = cut_video(FetchOutcome(job, None, fetched=fetched, fetched_bytes=12_345),
                       TaskContext(output=str(full_disk)))
    assert [f["code"] for f in result.failures] == [FailureCode.OUTPUT_FULL.value], result.failures
    assert result.fetched_bytes == 12_345
