"""Peak memory of the text stage on one big subtitle file: a generated SRT or WebVTT of
`--mb` megabytes (ordinary 3-second cues of ~12 words) parsed by `parse_subtitles` into a
list of words, streamed from the file by `iter_subtitle_words` (`--stage stream`: the words
counted, none kept), or planned end to end by `plan_subtitled_video` (`--stage plan`), in a
fresh process; the peak RSS (psutil, sampled every 10 ms by a thread) less the RSS before
the file was read.

    python benchmarks/bench_subtitle_memory.py --mb 200 --format srt --stage parse
    python benchmarks/bench_subtitle_memory.py --mb 50 --format srt --stage stream
    python benchmarks/bench_subtitle_memory.py --mb 200 --format vtt --stage plan

Issue 14 item 7 measured 3.6 GB for a 200 MB subtitle file in the driver.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil


def make_subtitles(path: Path, megabytes: float, fmt: str) -> None:
    """Cues of one sentence each until the file has `megabytes` MB."""
    line = "and then the speaker explains one more detail about the topic at hand.\n"
    with path.open("w") as f:
        if fmt == "vtt":
            f.write("WEBVTT\n\n")
        i, size = 0, 0
        while size < megabytes * 1e6:
            a, b = 3 * i, 3 * i + 2.5
            stamp = (lambda t, sep: f"{int(t // 3600):02d}:{int(t // 60 % 60):02d}:{t % 60:06.3f}"
                     .replace(".", sep))
            sep = "." if fmt == "vtt" else ","
            cue = (f"{i + 1}\n" if fmt == "srt" else "") + f"{stamp(a, sep)} --> {stamp(b, sep)}\n{line}\n"
            size += f.write(cue)
            i += 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=200)
    ap.add_argument("--format", choices=("srt", "vtt"), default="srt")
    ap.add_argument("--stage", choices=("parse", "stream", "plan"), default="parse")
    ap.add_argument("--file", type=Path, default=None, help="reuse this generated file")
    args = ap.parse_args()
    path = args.file or Path(f"/tmp/bench_subs_{args.mb:g}mb.{args.format}")
    if not path.exists():
        make_subtitles(path, args.mb, args.format)
    from lfvila_data.plan.join import PlanConfig
    from lfvila_data.text.clips import plan_subtitled_video
    from lfvila_data.text.subtitles import parse_subtitles

    proc = psutil.Process()
    base = peak = proc.memory_info().rss
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.wait(0.01):
            peak = max(peak, proc.memory_info().rss)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    started = time.monotonic()
    if args.stage == "stream":
        from lfvila_data.text.subtitles import iter_subtitle_words

        n = sum(1 for _ in iter_subtitle_words(path, args.format))
        what = "words"
    elif args.stage == "parse":
        n = len(parse_subtitles(path.read_bytes(), args.format))
        what = "words"
    else:
        samples, _ = plan_subtitled_video("v", "http://127.0.0.1/v", path.read_bytes(), args.format, "en", PlanConfig(),
                                          check_language=False)
        n, what = len(samples), "samples"
    done.set()
    t.join()
    print(f"{path.stat().st_size / 1e6:.0f} MB {args.format} {args.stage}: {n} {what}, "
          f"peak RSS +{(peak - base) / 2**20:.0f} MiB, {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
