"""Throughput of the text stage in hours of subtitles per second: subtitle bytes → words
(`parse_subtitles`) → sentences (pysbd or pauses) → clips → samples
(`lfvila_data.text.clips.plan_subtitled_video`), plus the language check (`language_mismatch`)
on the parsed text; against, in the same run and on the same bytes, the bare library
parse (webvtt-py `from_buffer` or `srt.parse`, nothing else), so the ratio is what our
cleaning, sentence, clip and language work costs on top of parsing.

    python benchmarks/bench_text.py                  # ~45 s
    python benchmarks/bench_text.py --rounds 3       # smoke run

Input: the real subtitle files of ../shared/data/real/subtitles (YouTube automatic
captions, manual WebVTT, SRT; English, French, Spanish), each processed once per round;
medians over rounds. A file's subtitle hours are the span of its cues (last end − first
start, from the library parse). The language check is timed on the words' text (what a
caller already holds after the parse), asked the file's own language (the language in the
file name, else English), and again asked German (every long file mismatches, so the
window vote runs: the slow path). Single process, single thread; CPU = process time.
"""
from __future__ import annotations

import argparse
import io
import re
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import srt
import webvtt

from lfvila_data.plan.join import PlanConfig, group_runs
from lfvila_data.records import Clip, VideoMeta
from lfvila_data.text.clips import ClipConfig, plan_subtitled_video, sentences_to_clips
from lfvila_data.text.language import _get_identifier, language_mismatch
from lfvila_data.text.sentences import SentenceConfig, split_sentences
from lfvila_data.text.subtitles import Word, detect_kind, parse_subtitles

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "subtitles"
_LANGUAGE_IN_NAME = re.compile(r"_(en|fr|es)[_.]")
KINDS = ("YouTube auto-captions", "manual vtt", "srt")
# HD-VILA-100M: 3.3M videos, 371.5K hours (Xue et al., 2022).
HDVILA_HOURS = 371_500


@dataclass(frozen=True)
class SubtitleFile:
    name: str
    data: bytes
    fmt: str
    kind: str
    language: str
    cues: int
    hours: float
    words: tuple[Word, ...]
    text: str


def bare_parse(data: bytes, fmt: str) -> list:
    """The baseline: what a library user writes (decode, parse, list the cues)."""
    text = data.decode("utf-8-sig", errors="replace")
    if fmt == "vtt":
        return webvtt.from_buffer(io.StringIO(text)).captions
    return list(srt.parse(text, ignore_errors=True))


def _cue_span_hours(cues: list, fmt: str) -> float:
    if fmt == "vtt":
        spans = [(c.start_time.in_milliseconds() / 1000, c.end_time.in_milliseconds() / 1000) for c in cues]
    else:
        spans = [(s.start.total_seconds(), s.end.total_seconds()) for s in cues]
    return (max(e for _, e in spans) - min(s for s, _ in spans)) / 3600


def load_files(folder: Path) -> list[SubtitleFile]:
    files = []
    for path in sorted(folder.iterdir()):
        if path.suffix not in (".vtt", ".srt"):
            continue
        data, fmt = path.read_bytes(), path.suffix[1:]
        cues = bare_parse(data, fmt)
        kind = ("srt" if fmt == "srt" else
                "YouTube auto-captions" if detect_kind(data) == "auto_captions" else "manual vtt")
        match = _LANGUAGE_IN_NAME.search(path.name)
        words = tuple(parse_subtitles(data, fmt))
        files.append(SubtitleFile(path.name, data, fmt, kind, match.group(1) if match else "en",
                                  len(cues), _cue_span_hours(cues, fmt), words,
                                  " ".join(w.text for w in words)))
    return files


class Timer:
    """Wall and CPU seconds summed per (step, kind), and CPU per (step, file name)."""

    def __init__(self) -> None:
        self.wall: dict[tuple[str, str], float] = defaultdict(float)
        self.cpu: dict[tuple[str, str], float] = defaultdict(float)
        self.by_file: dict[tuple[str, str], float] = defaultdict(float)

    def run(self, step: str, f: SubtitleFile, fn, *args, **kwargs):
        w, c = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        self.wall[step, f.kind] += time.perf_counter() - w
        self.cpu[step, f.kind] += (cpu := time.process_time() - c)
        self.by_file[step, f.name] += cpu
        return out


def _clips_and_samples(words_sentences, f: SubtitleFile, plan: PlanConfig):
    """The rest of `plan_subtitled_video` after the sentences: clips, runs, samples."""
    clips = sentences_to_clips(words_sentences, "bench", ClipConfig())
    meta = VideoMeta("bench", "https://x/bench", tuple(Clip(c.clip_id, c.k, c.start, c.end) for c in clips))
    return group_runs(meta, {c.clip_id: c.text for c in clips}, plan)


def _language_of_words(words: tuple[Word, ...], language: str) -> str | None:
    """The check as the stage would run it: on the text of the words it already parsed."""
    return language_mismatch(" ".join(w.text for w in words), language)


def one_round(files: list[SubtitleFile], plan: PlanConfig) -> Timer:
    t = Timer()
    for f in files:
        t.run("baseline: library parse", f, bare_parse, f.data, f.fmt)
        t.run("plan_subtitled_video", f, plan_subtitled_video, "bench", "https://x/bench",
              f.data, f.fmt, f.language, plan)
        t.run("language (asked own)", f, _language_of_words, f.words, f.language)
        words = t.run("split: parse", f, parse_subtitles, f.data, f.fmt)
        sentences = t.run("split: sentences", f, split_sentences, words, SentenceConfig())
        t.run("split: clips + samples", f, _clips_and_samples, sentences, f, plan)
        t.run("language (asked 'de')", f, language_mismatch, f.text, "de")
    return t


def print_per_file(files: list[SubtitleFile], rounds: list[Timer]) -> None:
    """Each file's parse (library vs ours) and sentence split, medians over rounds: where
    the per-word costs of pysbd and of pause splitting come from."""
    def med(step: str, name: str) -> float:
        return statistics.median(r.by_file[step, name] for r in rounds)

    print(f"\n{'per file (CPU, medians)':<52}{'kind':<23}{'words':>7}{'lib parse ms':>13}"
          f"{'our parse ms':>13}{'sentences ms':>13}{'µs/word':>9}")
    for f in files:
        sent = med("split: sentences", f.name)
        print(f"{f.name[:51]:<52}{f.kind:<23}{len(f.words):>7}"
              f"{med('baseline: library parse', f.name) * 1e3:>13.1f}"
              f"{med('split: parse', f.name) * 1e3:>13.1f}{sent * 1e3:>13.1f}"
              f"{sent / max(1, len(f.words)) * 1e6:>9.1f}")


def _median(rounds: list[Timer], attr: str, step: str, kinds=KINDS) -> float:
    return statistics.median(sum(getattr(r, attr)[step, k] for k in kinds) for r in rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR if DEFAULT_DIR.is_dir()
                    else Path("/work/shared/data/real/subtitles"))
    ap.add_argument("--rounds", type=int, default=5, help="passes over all files (median)")
    ap.add_argument("--build-hours", type=float, default=HDVILA_HOURS,
                    help="subtitle hours of the build to extrapolate to (HD-VILA: 371,500 h)")
    args = ap.parse_args()

    t = time.perf_counter()
    _get_identifier()
    load_s = time.perf_counter() - t
    files = load_files(args.dir)
    plan = PlanConfig()
    print(f"{len(files)} files from {args.dir}; language model loaded in {load_s:.2f} s (once per process)\n")
    print(f"{'file':<52}{'kind':<23}{'lang':>5}{'cues':>6}{'words':>7}{'sub h':>8}{'KB':>7}{'samples':>8}")
    for f in files:
        n = len(plan_subtitled_video("bench", "https://x/bench", f.data, f.fmt, f.language, plan)[0])
        print(f"{f.name[:51]:<52}{f.kind:<23}{f.language:>5}{f.cues:>6}{len(f.words):>7}"
              f"{f.hours:>8.3f}{len(f.data) / 1000:>7.1f}{n:>8}")
    hours = {k: sum(f.hours for f in files if f.kind == k) for k in KINDS}
    total_h = sum(hours.values())
    print(f"{'total':<52}{'':<23}{'':>5}{sum(f.cues for f in files):>6}"
          f"{sum(len(f.words) for f in files):>7}{total_h:>8.3f}{sum(len(f.data) for f in files) / 1000:>7.1f}")

    one_round(files, plan)  # warm-up: pysbd rules, regex caches, first-call imports
    rounds = [one_round(files, plan) for _ in range(args.rounds)]

    def med(step: str, kinds=KINDS, attr: str = "cpu") -> float:
        return _median(rounds, attr, step, kinds)

    base_w, base_c = med("baseline: library parse", attr="wall"), med("baseline: library parse")
    plan_w, plan_c = med("plan_subtitled_video", attr="wall"), med("plan_subtitled_video")
    lang_w, lang_c = med("language (asked own)", attr="wall"), med("language (asked own)")
    print(f"\n{args.rounds} rounds of {total_h:.3f} subtitle hours each, medians per round, one thread")
    print(f"{'method':<40}{'wall ms':>9}{'CPU ms':>9}{'sub-h/s':>9}{'sub-h/CPU-s':>13}"
          f"{'× baseline CPU':>16}{'× wall':>8}")
    for name, w, c in (("baseline: library parse only", base_w, base_c),
                       ("ours: plan_subtitled_video", plan_w, plan_c),
                       ("ours: plan_subtitled_video + language", plan_w + lang_w, plan_c + lang_c)):
        print(f"{name:<40}{w * 1e3:>9.1f}{c * 1e3:>9.1f}{total_h / w:>9.2f}{total_h / c:>13.2f}"
              f"{c / base_c:>16.2f}{w / base_w:>8.2f}")

    print(f"\n{'by kind (CPU)':<23}{'files':>6}{'sub h':>8}{'baseline h/s':>14}{'ours h/s':>10}"
          f"{'ours+lang h/s':>15}{'× baseline':>12}")
    for k in KINDS:
        b, o = med("baseline: library parse", (k,)), med("plan_subtitled_video", (k,))
        ol = o + med("language (asked own)", (k,))
        print(f"{k:<23}{sum(f.kind == k for f in files):>6}{hours[k]:>8.3f}{hours[k] / b:>14.2f}"
              f"{hours[k] / o:>10.2f}{hours[k] / ol:>15.2f}{ol / b:>12.2f}")

    steps = ["split: parse", "split: sentences", "split: clips + samples", "language (asked own)"]
    split = {s: med(s) for s in steps + ["language (asked 'de')"]}
    split_total = sum(split[s] for s in steps)
    print(f"\n{'stage split (CPU)':<32}{'ms/round':>10}{'share':>8}{'sub-h/s':>10}{'CPU-s per 1000 h':>18}")
    for s in steps + ["language (asked 'de')"]:
        share = f"{split[s] / split_total:>8.0%}" if s in steps else f"{'':>8}"
        print(f"{s:<32}{split[s] * 1e3:>10.1f}{share}{total_h / split[s]:>10.2f}{split[s] / total_h * 1000:>18.1f}")
    print(f"{'sum of the 4 steps':<32}{split_total * 1e3:>10.1f}{'100%':>8}{total_h / split_total:>10.2f}"
          f"{split_total / total_h * 1000:>18.1f}")
    print(f"(plan_subtitled_video alone: {plan_c * 1e3:.1f} CPU ms; the split re-times its parts one by one)")
    print_per_file(files, rounds)

    per_1000h = (plan_c + lang_c) / total_h * 1000
    build_cpu_h = per_1000h * args.build_hours / 1000 / 3600
    print(f"\nCPU-seconds per 1000 subtitle hours: ours+language {per_1000h:.1f}, "
          f"baseline parse {base_c / total_h * 1000:.1f}")
    print(f"For {args.build_hours:,.0f} subtitle hours (HD-VILA's 3.3M videos): {build_cpu_h:.1f} CPU-hours "
          f"for the text stage (+ {load_s:.1f} s model load per worker process)")

if __name__ == "__main__":
    main()
