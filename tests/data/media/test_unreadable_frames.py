"""A video whose frames ffmpeg refuses for good (20000x20000: over its image size limit) is
a permanent not_a_video row, not a transient "ffmpeg exited with code 1" retried on every
run (issue 14, item 3)."""
from __future__ import annotations

import re
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from lfvila_data.localserver import MediaServer
from lfvila_data.media.fetch import FetchConfig, Fetcher, FetchError
from lfvila_data.records import FailureCode


def make_huge_frame_video(path: Path, size: int = 20000) -> Path:
    """A 4 s PNG-in-Matroska video (52 KB) whose container and every frame declare
    size x size pixels: 256x256 frames with the two-byte size fields rewritten in place
    (Matroska PixelWidth/PixelHeight, PNG IHDR with its CRC), so no frame is ever made."""
    src = path.with_name("small-" + path.name)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=s=256x256:r=5:d=4",
                    "-c:v", "png", str(src)], check=True)
    data = bytearray(src.read_bytes())
    for m in re.finditer(rb"IHDR", bytes(data)):
        i = m.start()
        if struct.unpack(">II", data[i + 4:i + 12]) == (256, 256):
            data[i + 4:i + 12] = struct.pack(">II", size, size)
            data[i + 17:i + 21] = struct.pack(">I", zlib.crc32(bytes(data[i:i + 17])) & 0xFFFFFFFF)
    big = struct.pack(">H", size)
    out = bytes(data).replace(b"\xb0\x82\x01\x00", b"\xb0\x82" + big).replace(b"\xba\x82\x01\x00", b"\xba\x82" + big)
    path.write_bytes(out)
    return path


def test_frames_ffmpeg_refuses_are_a_permanent_not_a_video(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    make_huge_frame_video(www / "huge.mkv")
    with MediaServer(www) as srv:
        with pytest.raises(FetchError) as e:
            Fetcher(FetchConfig(retries=2, backoff=0.05, allow_private_addresses=True), tmp_path / "w")(
                "v", srv.url("huge.mkv"), [(0.5, 2.5)])
        assert srv.requests["huge.mkv"] <= 3  # not retried: the same bytes give the same refusal
    assert e.value.permanent and e.value.code is FailureCode.NOT_A_VIDEO, e.value.reason
    assert "no usable size" in e.value.reason
