"""Generated test media whose pixels encode source time, so cut boundaries can be
checked by decoding frames.

Every frame is one flat colour: luma encodes the quarter-second within a 7.5 s block and
blue-difference chroma encodes the block, so (Y, Cb) -> time to 0.25 s over 225 s."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

STEP = 7
BASE = 20
LEVELS = 30
QUARTERS_PER_BLOCK = LEVELS  # 30 quarter-seconds = 7.5 s per block


def make_timecoded_video(path: Path, duration: float, *, width: int = 320, height: int = 240,
                         fps: float = 25, codec: str = "h264", audio: bool = True,
                         gop: int | None = None) -> Path:
    """Encode a time-coded video with ffmpeg lavfi sources (h264/mp4 or vp9/webm)."""
    vf = (f"geq=lum='{BASE}+{STEP}*mod(floor(T*4),{LEVELS})'"
          f":cb='{BASE}+{STEP}*mod(floor(T*4/{QUARTERS_PER_BLOCK}),{LEVELS})':cr=128")
    cmd = ["ffmpeg", "-nostdin", "-y", "-v", "error",
           "-f", "lavfi", "-i", f"color=c=black:s=32x32:r={fps}:d={duration}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={duration}"]
    # geq is per-pixel and slow: draw at 32x32, then scale the flat colour up.
    cmd += ["-vf", f"format=yuv420p,{vf},scale={width}:{height}:flags=neighbor,setsar=1",
            "-pix_fmt", "yuv420p"]
    if codec == "h264":
        cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-movflags", "+faststart"]
    elif codec == "vp9":
        cmd += ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k"]
    else:
        raise ValueError(codec)
    cmd += ["-g", str(gop or int(fps * 2))]
    if audio:
        cmd += ["-c:a", "aac" if codec == "h264" else "libopus", "-shortest"]
    cmd.append(str(path))
    subprocess.run(cmd, check=True)
    return path


def decode_times(path: Path) -> list[float]:
    """Source time (start of its quarter-second) shown by every frame of a video."""
    out = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-vf", "scale=16:16",
         "-pix_fmt", "yuv444p", "-f", "rawvideo", "-"],
        check=True, capture_output=True).stdout
    frames = np.frombuffer(out, dtype=np.uint8).reshape(-1, 3, 16, 16)
    y = frames[:, 0, 4:12, 4:12].mean(axis=(1, 2))
    cb = frames[:, 1, 4:12, 4:12].mean(axis=(1, 2))
    q = np.clip(np.rint((y - BASE) / STEP), 0, LEVELS - 1)
    b = np.clip(np.rint((cb - BASE) / STEP), 0, LEVELS - 1)
    return [float(v) / 4 for v in (b * QUARTERS_PER_BLOCK + q)]
