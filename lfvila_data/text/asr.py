"""Speech recognition as a text source: Whisper (transformers) on a pool of workers.

Each actor holds one `WhisperTranscriber`, which loads the processor and model once and
turns a job (a video and the source spans to transcribe) into time-stamped `Word`s in
source seconds. Audio is streamed by ffmpeg (`audio.stream_audio`) in windows of at most
30 s — Whisper's input size — read ahead on a thread while the model works, and
`batch_size` windows go through one `generate` call.

Word times come from Whisper's cross-attention: the decoded text is run once more through
the decoder, the attention of the model's alignment heads (`generation_config.
alignment_heads`) is normalised and median-filtered as in OpenAI's `find_alignment`, and
dynamic time warping maps every token to an audio frame (20 ms). Text is decoded without
timestamp tokens then, in one pass per window. With `timestamps="segment"` Whisper's own
segment timestamps are used instead, and a segment's words are spread over its span in
proportion to their length (the way `subtitles` spreads a cue's words).

The language, when not given, is Whisper's language token for most windows of a job's
first batch, then kept for the whole job. A window whose text is a repetition loop (it
compresses more than OpenAI's 2.4 threshold: Whisper stuck on music or noise) gives no
words. Windows are cut every 30 s without overlap, so a word spoken across a window
boundary may come out cut in two or garbled; windows of a span never reach into another
span. There is no voice-activity or no-speech detection: silence may be "transcribed".
"""
from __future__ import annotations

import json
import logging
import math
import queue
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from lfvila_data.executor.base import ActorMap, WorkerCrashed, crash_line, local_actors
from lfvila_data.inputs import require
from lfvila_data.media.audio import SAMPLE_RATE, AudioChunk, AudioError, stream_audio
from lfvila_data.media.fetch import fetch_code
from lfvila_data.media.guard import ByteMeter, GuardLimits
from lfvila_data.output.fingerprint import SPEED
from lfvila_data.records import Failure, FailureCode, Stage, error_line
from lfvila_data.text.subtitles import Word

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Whisper's encoder sees 30 s as 1500 frames.
WINDOW_SECONDS = 30.0
FRAME_SECONDS = 0.02
# Shorter windows (the last AAC frame past a span's end) hold no speech: not transcribed.
_MIN_WINDOW_SECONDS = 0.1
# A window's text compressing more than this is a repetition loop, not speech (OpenAI's
# `compression_ratio_threshold`); it yields no words.
_MAX_COMPRESSION_RATIO = 2.4
# Languages written without spaces: their words are the tokens' characters.
_NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})
# A word the alignment stretched over more than this many median word durations ends
# there (OpenAI's heuristic: DTW hangs a following pause on the word before it).
_MAX_WORD_MEDIANS = 2.0
_MAX_MEDIAN_WORD_SECONDS = 0.7
# CPU actors: torch threads per actor when the pool size is ours to choose.
_CPU_THREADS_PER_ACTOR = 8
_DTYPES = {"float16": "float16", "fp16": "float16", "half": "float16", "bfloat16": "bfloat16",
           "bf16": "bfloat16", "float32": "float32", "fp32": "float32", "float": "float32"}


class AsrModelError(Exception):
    """The Whisper model cannot be loaded or used as configured: nothing can be transcribed."""


@dataclass(frozen=True)
class AsrConfig:
    """What model transcribes how.

    `num_actors` defaults to one actor per GPU of the cluster when GPUs are used; on CPUs to
    one actor per 8 CPUs (each running 8 torch threads), at least one. More actors than
    GPUs share the GPUs (fractional `num_gpus`), which lets one actor decode audio while
    another runs the model. `dtype="auto"` is float16 on GPU and float32 on CPU.
    `max_new_tokens` is clamped to what the model's decoder can hold. Windows whose RMS level
    is below `silence_db` are skipped (None decodes everything)."""

    model: str = "openai/whisper-large-v3"
    language: str | None = None
    timestamps: str = "word"
    batch_size: int = field(default=8, metadata=SPEED)
    chunk_seconds: float = 30.0
    num_actors: int | None = field(default=None, metadata=SPEED)
    use_gpu: bool | None = field(default=None, metadata=SPEED)
    dtype: str = "auto"
    max_new_tokens: int = 440
    silence_db: float | None = -50.0  # windows quieter than this (RMS, dBFS) are not decoded

    def __post_init__(self) -> None:
        require(self.timestamps in ("word", "segment"),
                f"timestamps must be 'word' or 'segment', not {self.timestamps!r}")
        require(self.batch_size >= 1, "batch_size must be at least 1")
        require(0 < self.chunk_seconds <= WINDOW_SECONDS,
                f"chunk_seconds must be in (0, {WINDOW_SECONDS:g}] (Whisper's window)")
        require(self.num_actors is None or self.num_actors >= 1, "num_actors must be at least 1")
        require(self.dtype == "auto" or self.dtype in _DTYPES,
                f"dtype must be 'auto' or one of {sorted(_DTYPES)}, not {self.dtype!r}")
        require(self.max_new_tokens >= 1, "max_new_tokens must be at least 1")


@dataclass(frozen=True)
class AsrJob:
    """One video to transcribe: a local path, a direct media URL, or a page URL that the
    resolver turns into one; `spans` (source seconds) limit it, None is the whole file."""

    video_id: str
    media: str
    spans: tuple[tuple[float, float], ...] | None = None


@dataclass
class AsrResult:
    """Words in source seconds, sorted, inside the transcribed spans; on failure no words
    and a `Stage.ASR` failure saying why. `fetched_bytes`: what the network sent for the
    job (the URL's resolution and the audio, through the fetch guard), failed or not."""

    video_id: str
    words: list[Word] = field(default_factory=list)
    language: str | None = None
    audio_seconds: float = 0.0
    failure: Failure | None = None
    fetched_bytes: int = 0


def _failed(job: AsrJob, reason: str, permanent: bool,
            code: FailureCode = FailureCode.TASK_CRASHED) -> AsrResult:
    """A failed result; without a code the job itself broke (a crash or a bug)."""
    return AsrResult(job.video_id, failure=Failure(job.video_id, None, Stage.ASR.value, code, reason, permanent))


def merge_spans(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted spans with overlapping or touching ones merged, so no audio is read twice."""
    out: list[tuple[float, float]] = []
    for s, e in sorted((float(s), float(e)) for s, e in spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


# ---------------------------------------------------------------------------- pure helpers

def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cheapest monotonic path through `cost` (tokens x frames) from the first cell to the
    last, as (token index, frame index) per step.

    The recurrence of OpenAI's and transformers' DTW, with ties going to the left, vectorised
    along each row: with S the row's prefix sums, c[j] - S[j] is a running minimum, so a
    row is a handful of numpy operations instead of a Python loop over frames."""
    n, m = cost.shape
    cost = cost.astype(np.float64)
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    trace = np.zeros((n + 1, m + 1), dtype=np.int8)  # 0 diagonal, 1 up, 2 left
    for i in range(1, n + 1):
        x = cost[i - 1]
        diag, up = acc[i - 1, :-1], acc[i - 1, 1:]
        from_above = np.minimum(diag, up)
        prefix = np.cumsum(x)
        reach = from_above + x - prefix     # c[j] - S[j] when coming from the row above
        best = np.minimum.accumulate(reach)  # c[j] - S[j]: the left move carries the minimum on
        acc[i, 1:] = best + prefix
        left = np.zeros(m, dtype=bool)
        left[1:] = best[:-1] <= reach[1:]
        trace[i, 1:] = np.where(left, 2, np.where(up < diag, 1, 0))
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j = n, m
    rows, cols = [], []
    while i > 0 or j > 0:
        rows.append(i - 1)
        cols.append(j - 1)
        t = trace[i, j]
        if t == 0:
            i, j = i - 1, j - 1
        elif t == 1:
            i -= 1
        else:
            j -= 1
    return np.array(rows[::-1]), np.array(cols[::-1])


def token_start_times(matrix: np.ndarray) -> np.ndarray:
    """Seconds at which each row (token) of an alignment matrix begins, by DTW."""
    rows, cols = dtw(-matrix)
    jumps = np.diff(rows, prepend=-1).astype(bool)
    return cols[jumps] * FRAME_SECONDS


def group_words(ids: list[int], decode: Callable[[list[int]], str], no_space: bool = False) -> list[list[int]]:
    """Token positions grouped into words: a word starts at a token that begins with a space
    (Whisper's byte-level BPE) or follows a bare space, or, for languages written without
    spaces, wherever the text so far decodes to whole characters. Punctuation stays on the
    word it follows."""
    groups: list[list[int]] = []
    after_space = False
    for k, t in enumerate(ids):
        if no_space:
            whole = not groups or "\ufffd" not in decode([ids[i] for i in groups[-1]])
            if whole:
                groups.append([k])
            else:
                groups[-1].append(k)
            continue
        piece = decode([t])
        if not groups or (piece.strip() and (piece[0].isspace() or after_space)):
            groups.append([k])
        else:
            groups[-1].append(k)
        after_space = not piece.strip() or piece[-1].isspace()
    return groups


def is_repetition_loop(text: str) -> bool:
    """Whisper stuck repeating itself (on music, noise, silence): the text compresses more
    than OpenAI's threshold for a failed decode."""
    data = text.encode()
    return len(data) > 0 and len(data) / len(zlib.compress(data)) > _MAX_COMPRESSION_RATIO


def spread_words(words: list[str], start: float, end: float) -> list[tuple[str, float, float]]:
    """A segment's words spread over [start, end] in proportion to their length."""
    sizes = np.array([max(1, len(w)) for w in words], dtype=np.float64)
    edges = start + (end - start) * np.concatenate([[0.0], np.cumsum(sizes)]) / sizes.sum()
    return [(w, float(a), float(b)) for w, a, b in zip(words, edges[:-1], edges[1:])]


def cap_long_words(timed: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """Shorten words lasting more than twice the median word (a limit of at most 1.4 s)."""
    if not timed:
        return timed
    median = min(_MAX_MEDIAN_WORD_SECONDS, float(np.median([e - s for _, s, e in timed])))
    limit = _MAX_WORD_MEDIANS * median
    if limit <= 0:
        return timed
    return [(w, s, min(e, s + limit)) for w, s, e in timed]


def place_words(timed: Iterable[tuple[str, float, float]], chunk: AudioChunk,
                after: float) -> list[Word]:
    """Chunk-relative (text, start, end) to source-time Words inside the chunk, in order,
    none starting before `after` (the end of the previous word); empty texts dropped."""
    hi = chunk.end
    out: list[Word] = []
    for text, s, e in timed:
        text = text.strip()
        if not text:
            continue
        start = min(max(chunk.start + s, chunk.start, after), hi)
        end = min(max(chunk.start + e, start), hi)
        out.append(Word(text, round(start, 3), round(end, 3)))
        after = end
    return out


def _median_filter(x: torch.Tensor, width: int) -> torch.Tensor:
    """Median over a window of `width` along the last axis (reflect-padded)."""
    import torch.nn.functional as F

    pad = width // 2
    if width <= 1 or x.shape[-1] <= pad:
        return x
    shape = x.shape
    padded = F.pad(x.reshape(-1, 1, shape[-1]), (pad, pad), mode="reflect").reshape(*shape[:-1], -1)
    return padded.unfold(-1, width, 1).sort()[0][..., pad]


def _prefetch(make: Callable[[], Iterator], depth: int) -> Iterator:
    """Run the iterator `make()` on a thread, up to `depth` items ahead of the consumer; its
    errors are raised here. Stopping early closes it on its own thread."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        it = make()
        try:
            for x in it:
                if not put((None, x)):
                    return
            put((done, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put((e, None))
        finally:
            close = getattr(it, "close", None)
            if close:
                close()

    thread = threading.Thread(target=work, name="asr-audio", daemon=True)
    thread.start()
    try:
        while True:
            tag, x = items.get()
            if tag is done:
                return
            if tag is not None:
                raise tag
            yield x
    finally:
        stop.set()
        thread.join(timeout=30)


# A job's media as ffmpeg reads it (a page URL's media URL, text.stage.AudioResolver), the
# bytes fetched to find it added to the meter
Resolver = Callable[[str, ByteMeter], str]

# ------------------------------------------------------------------------------- the model

def _looks_local(model: str) -> bool:
    """A filesystem path rather than a hub id (`org/name`)."""
    return model.startswith(("/", ".", "~")) or Path(model).expanduser().is_dir()


def _torch_dtype(cfg: AsrConfig, device: str):
    import torch

    if cfg.dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, _DTYPES[cfg.dtype])


def check_model(cfg: AsrConfig) -> None:
    """Fail in one clear line, before any planning, when `cfg.model` is a local path that
    holds no Whisper model (a hub id is checked when the actors load it)."""
    if not _looks_local(cfg.model):
        return
    path = Path(cfg.model).expanduser()
    if not path.is_dir():
        raise AsrModelError(f"cannot load Whisper model {cfg.model!r}: no such directory")
    try:
        kind = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError) as e:
        raise AsrModelError(f"cannot load Whisper model {cfg.model!r}: no readable config.json ({e})") from None
    if kind != "whisper":
        raise AsrModelError(f"{cfg.model!r} is a {kind!r} model, not Whisper")


def level_db(samples: np.ndarray) -> float:
    """RMS level in dBFS. Whisper invents text for silence (a known failure on long
    recordings), so silent windows are skipped instead of decoded."""
    if not len(samples):
        return -math.inf
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20 * math.log10(rms) if rms > 0 else -math.inf


class WhisperTranscriber:
    """Loads a Whisper processor and model once (`from_pretrained(cfg.model)`), then
    transcribes jobs; `device` defaults to the GPU when there is one and `cfg.use_gpu`
    allows it."""

    def __init__(self, cfg: AsrConfig, device: str | None = None):
        local = _looks_local(cfg.model)
        source = str(Path(cfg.model).expanduser()) if local else cfg.model
        if local and not Path(source).is_dir():
            raise AsrModelError(f"cannot load Whisper model {cfg.model!r}: no such directory")
        if local and not (Path(source) / "config.json").is_file():
            raise AsrModelError(f"cannot load Whisper model {cfg.model!r}: the directory holds no "
                                "config.json (not a saved model)")
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.cfg = cfg
        if device is None:
            device = "cuda" if cfg.use_gpu is not False and torch.cuda.is_available() else "cpu"
        self.device = device
        self.dtype = _torch_dtype(cfg, device)
        try:
            self.processor = WhisperProcessor.from_pretrained(source)
            self.model = WhisperForConditionalGeneration.from_pretrained(source, dtype=self.dtype)
        except Exception as e:  # noqa: BLE001 - every loading error means the same to the user
            raise AsrModelError(f"cannot load Whisper model {cfg.model!r}: {error_line(e)}") from e
        self.model.to(device).eval()
        self.tokenizer = self.processor.tokenizer
        gen = self.model.generation_config
        missing = [a for a in ("no_timestamps_token_id", "decoder_start_token_id") if getattr(gen, a, None) is None]
        if missing:
            raise AsrModelError(f"Whisper model {cfg.model!r} has an incomplete generation config "
                                f"(no {', '.join(missing)})")
        self.multilingual = bool(getattr(gen, "is_multilingual", hasattr(gen, "lang_to_id")))
        self.lang_ids = {tid: tok.strip("<|>") for tok, tid in (getattr(gen, "lang_to_id", None) or {}).items()}
        if cfg.language is not None and self.multilingual:
            if f"<|{cfg.language}|>" not in (getattr(gen, "lang_to_id", None) or {}):
                raise AsrModelError(f"Whisper model {cfg.model!r} does not know language {cfg.language!r}")
        elif cfg.language not in (None, "en"):
            raise AsrModelError(f"Whisper model {cfg.model!r} is English-only; cannot use language {cfg.language!r}")
        self.heads = [tuple(map(int, h)) for h in (getattr(gen, "alignment_heads", None) or [])]
        if cfg.timestamps == "word" and not self.heads:
            raise AsrModelError(f"Whisper model {cfg.model!r} has no alignment_heads in its generation config: "
                                "word timestamps need them (use timestamps='segment')")
        self.timestamp_begin = gen.no_timestamps_token_id + 1
        self.eot = gen.eos_token_id if isinstance(gen.eos_token_id, int) else gen.eos_token_id[0]
        self.special = set(self.tokenizer.all_special_ids)
        # the prompt (sot, language, task, notimestamps) and, when aligning, the end token
        # share the decoder's positions with the text
        self.max_new_tokens = max(1, min(cfg.max_new_tokens, self.model.config.max_target_positions - 5))
        # Whisper's generate reads max_length as new tokens after the prompt (and passing
        # max_new_tokens instead logs a warning on every call)
        gen.max_new_tokens = None
        gen.max_length = self.max_new_tokens

    # -- one job

    def transcribe(self, job: AsrJob, resolve: Resolver | None = None,
                   meter: ByteMeter | None = None) -> AsrResult:
        """Words of one job; an unreadable or unresolvable media is a failed result. The
        bytes fetched for it are the result's, and `meter`'s too: every guard of the job
        has closed (and counted) before this returns or raises, so a caller whose model
        raised still has them."""
        meter = meter if meter is not None else ByteMeter()
        result = self._transcribe(job, resolve, meter)
        result.fetched_bytes = meter.received
        return result

    def _transcribe(self, job: AsrJob, resolve: Resolver | None, meter: ByteMeter) -> AsrResult:
        try:
            media = resolve(job.media, meter) if resolve is not None else job.media
        except Exception as e:  # noqa: BLE001 - the resolver's errors are the video's
            return _failed(job, f"could not resolve the media URL: {error_line(e)}",
                           bool(getattr(e, "permanent", False)), getattr(e, "code", None) or fetch_code(str(e)))
        spans = merge_spans(job.spans) if job.spans is not None else None
        words: list[Word] = []
        language = self.cfg.language if self.cfg.language or self.multilingual else "en"
        seconds = 0.0
        try:
            # the resolver's fetch settings bound the read (text.stage.AudioResolver); closed
            # here, not when collected, so the audio's guard has counted when this returns
            with closing(self._batches(media, spans, getattr(resolve, "guard_limits", None), meter)) as batches:
                for batch in batches:
                    timed, language = self.transcribe_chunks(batch, language)
                    for chunk, items in zip(batch, timed):
                        words += place_words(items, chunk, words[-1].end if words else chunk.start)
                        seconds += chunk.duration
        except AudioError as e:
            return _failed(job, str(e), e.permanent, e.code)
        return AsrResult(job.video_id, words, language, round(seconds, 3))

    def _batches(self, media: str, spans: list[tuple[float, float]] | None,
                 guard: GuardLimits | None = None, meter: ByteMeter | None = None) -> Iterator[list[AudioChunk]]:
        read = partial(stream_audio, media, spans, chunk_seconds=self.cfg.chunk_seconds, guard=guard, meter=meter)
        batch: list[AudioChunk] = []
        with closing(_prefetch(read, depth=2 * self.cfg.batch_size)) as chunks:  # the read ends with this
            for chunk in chunks:
                batch.append(chunk)
                if len(batch) == self.cfg.batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    # -- batches of windows

    def features(self, chunks: list[AudioChunk]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel input features (padded to 30 s) and their frame mask, on the device."""
        fe = self.processor.feature_extractor
        out = fe([c.samples for c in chunks], sampling_rate=SAMPLE_RATE, return_tensors="pt",
                 return_attention_mask=True, device=self.device if self.device.startswith("cuda") else "cpu")
        return out.input_features.to(self.device, self.dtype), out.attention_mask.to(self.device)

    def transcribe_chunks(self, chunks: list[AudioChunk], language: str | None
                          ) -> tuple[list[list[tuple[str, float, float]]], str | None]:
        """(text, start, end) per word of each window, seconds from the window's start, from
        one `generate` call; with `language` None it is first detected (the language of most
        windows) and returned."""
        keep = [i for i, c in enumerate(chunks) if c.duration >= _MIN_WINDOW_SECONDS
                and (self.cfg.silence_db is None or level_db(c.samples) >= self.cfg.silence_db)]
        out: list[list[tuple[str, float, float]]] = [[] for _ in chunks]
        if keep:
            timed, language = self._transcribe_windows([chunks[i] for i in keep], language)
            for i, items in zip(keep, timed):
                out[i] = items
        return out, language

    def _transcribe_windows(self, chunks: list[AudioChunk], language: str | None):
        import torch

        feats, mask = self.features(chunks)
        word_level = self.cfg.timestamps == "word"
        with torch.inference_mode():
            # word level decodes in one pass per window: the encoder runs once, for both the
            # decoding and the alignment (segment level may re-decode the tail of a window)
            enc = self.model.model.encoder(feats) if word_level else None
            if language is None:
                ids = (self.model.detect_language(encoder_outputs=enc) if enc is not None
                       else self.model.detect_language(feats)).tolist()
                language = self.lang_ids.get(Counter(ids).most_common(1)[0][0])
            kwargs: dict = {"attention_mask": mask}
            if self.multilingual:
                kwargs.update(task="transcribe", language=language)
            if word_level:
                seqs = self.model.generate(encoder_outputs=enc, return_timestamps=False, **kwargs)
                tokens = [self._text_tokens(s.tolist()) for s in seqs]
                tokens = [[] if is_repetition_loop(self.tokenizer.decode(t)) else t for t in tokens]
                return self._align(enc.last_hidden_state, mask, tokens, language), language
            out = self.model.generate(feats, return_timestamps=True, return_segments=True, **kwargs)
        return [self._segment_words(segments, chunk.duration)
                for segments, chunk in zip(out["segments"], chunks)], language

    def _text_tokens(self, ids: list[int]) -> list[int]:
        return [t for t in ids if t < self.timestamp_begin and t not in self.special]

    def _segment_words(self, segments: list[dict], duration: float) -> list[tuple[str, float, float]]:
        text = self.tokenizer.decode([t for seg in segments for t in self._text_tokens(seg["tokens"].tolist())])
        if is_repetition_loop(text):
            return []
        timed = []
        for k, seg in enumerate(segments):
            ids = seg["tokens"].tolist()
            parts = self.tokenizer.decode(self._text_tokens(ids)).split()
            if not parts:
                continue
            start = float(seg["start"])
            closed = bool(ids) and ids[-1] >= self.timestamp_begin
            nxt = float(segments[k + 1]["start"]) if k + 1 < len(segments) else duration
            end = float(seg["end"]) if closed else nxt  # unclosed: runs to what follows
            start = min(max(0.0, start), duration)
            timed += spread_words(parts, start, min(max(end, start), duration))
        return timed

    def _prompt(self, language: str | None) -> list[int]:
        gen = self.model.generation_config
        ids = [gen.decoder_start_token_id]
        if self.multilingual:
            ids += [gen.lang_to_id[f"<|{language}|>"], gen.task_to_id["transcribe"]]
        return ids + [gen.no_timestamps_token_id]

    def _align(self, encoded: torch.Tensor, mask: torch.Tensor, tokens: list[list[int]],
               language: str | None) -> list[list[tuple[str, float, float]]]:
        """Word times from the alignment heads' cross-attention over the decoded text."""
        import torch

        prompt = self._prompt(language)
        keep = [i for i, t in enumerate(tokens) if t]
        out: list[list[tuple[str, float, float]]] = [[] for _ in tokens]
        if not keep:
            return out
        longest = max(len(tokens[i]) for i in keep)
        ids = torch.tensor([prompt + tokens[i] + [self.eot] * (longest - len(tokens[i]) + 1) for i in keep],
                           device=self.device)
        weights = self._cross_attention(encoded[keep], ids)  # (batch, heads, tokens, frames), fp32
        width = int(getattr(self.model.config, "median_filter_width", 7))
        no_space = language in _NO_SPACE_LANGUAGES
        for row, i in enumerate(keep):
            n = len(tokens[i])
            frames = max(1, int(mask[i].sum().item()) // 2)
            w = weights[row, :, : len(prompt) + n + 1, :frames].softmax(dim=-1)
            std, mean = torch.std_mean(w, dim=-2, keepdim=True, unbiased=False)
            w = _median_filter((w - mean) / std.clamp_min(1e-8), width)
            matrix = w.mean(dim=0)[len(prompt) - 1: len(prompt) + n].cpu().double().numpy()
            starts = token_start_times(matrix)  # n + 1: each token's start, then the end
            timed = []
            for g in group_words(tokens[i], self.tokenizer.decode, no_space):
                timed.append((self.tokenizer.decode([tokens[i][k] for k in g]),
                              float(starts[g[0]]), float(starts[g[-1] + 1])))
            out[i] = cap_long_words(timed)
        return out

    def _cross_attention(self, encoded: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Pre-softmax cross-attention scores of the alignment heads for a teacher-forced
        pass of the decoder: queries and keys are caught at the projections, so the model
        keeps its fast attention kernels and nothing else is stored."""
        import torch

        layers = self.model.model.decoder.layers
        caught: dict[tuple[int, str], torch.Tensor] = {}
        hooks = []
        for layer in sorted({l for l, _ in self.heads}):
            attn = layers[layer].encoder_attn
            for name in ("q_proj", "k_proj"):
                hooks.append(getattr(attn, name).register_forward_hook(
                    lambda _m, _in, out, key=(layer, name): caught.__setitem__(key, out)))
        try:
            self.model.model.decoder(input_ids=ids, encoder_hidden_states=encoded, use_cache=False)
        finally:
            for h in hooks:
                h.remove()
        scores = []
        for layer, head in self.heads:
            attn = layers[layer].encoder_attn
            d = attn.head_dim
            q = caught[(layer, "q_proj")][..., head * d:(head + 1) * d].float()
            k = caught[(layer, "k_proj")][..., head * d:(head + 1) * d].float()
            scores.append(q @ k.transpose(-1, -2) * attn.scaling)
        return torch.stack(scores, dim=1)


# -------------------------------------------------------------------------- the worker pool

class AsrWorker:
    """Loads one WhisperTranscriber, then transcribes job after job; every error of a job
    becomes its result. Built once per actor of the pool (`transcribe_all`)."""

    def __init__(self, cfg: AsrConfig, device: str, threads: int | None,
                 resolve: Resolver | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.transcriber = WhisperTranscriber(cfg, device)
        self.resolve = resolve

    def __call__(self, job: AsrJob) -> AsrResult:
        meter = ByteMeter()
        try:
            return self.transcriber.transcribe(job, self.resolve, meter)
        except Exception as e:  # noqa: BLE001 - one bad video must not stop the run
            log.exception("asr of %s failed", job.video_id)
            if "out of memory" in str(e):
                import torch

                torch.cuda.empty_cache()
            failed = _failed(job, f"asr failed: {type(e).__name__}: {error_line(e)}", False)
            failed.fetched_bytes = meter.received  # the audio read before the model failed
            return failed


class PoolShape(NamedTuple):
    """The actor pool for a cluster: how many actors and what each reserves."""

    actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    threads: int | None


def pool_shape(cfg: AsrConfig, resources: dict[str, float]) -> PoolShape:
    """How many actors, with what resources, for a cluster with `resources`."""
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else gpus > 0
    if use_gpu:
        if gpus == 0:
            raise AsrModelError("use_gpu is set but the Ray cluster has no GPU")
        n = cfg.num_actors or gpus
        share = 1.0 if n <= gpus else 1.0 / -(-n // gpus)  # actors per GPU, rounded up
        return PoolShape(n, share, 1.0, None)
    n = cfg.num_actors or max(1, cpus // _CPU_THREADS_PER_ACTOR)
    per = max(1, min(_CPU_THREADS_PER_ACTOR, cpus // n))
    return PoolShape(n, 0.0, float(per), per)


def transcribe_all(jobs: Iterable[AsrJob], cfg: AsrConfig, resolve: Resolver | None = None,
                   on_result: Callable[[AsrResult], None] | None = None, *,
                   actors: ActorMap = local_actors, shape: PoolShape | None = None) -> Iterator[AsrResult]:
    """Transcribe every job with `AsrWorker`s run by `actors` (`executor.pool.RayActors`
    of `shape` on a cluster, see `executor.asr`; by default one worker in this process),
    yielding results as they finish.

    Jobs are pulled from `jobs` only as workers free up, so it may be a lazy stream of
    millions. A job that fails — unreadable media, a resolver error, an exception in the
    model, a crashed worker — is a result with a failure. Raises AsrModelError before any
    job runs if the model cannot be loaded."""
    device = "cuda" if shape is not None and shape.gpus_per_actor else "cpu"
    make = partial(AsrWorker, cfg, device, shape.threads if shape is not None else None, resolve)
    try:
        for done in actors(make, jobs):
            if done.error is None:
                result = done.value
            elif isinstance(done.error, WorkerCrashed):
                result = _failed(done.item, f"asr worker crashed: {error_line(done.error)}", False)
            else:  # a task error is the video's failure
                result = _failed(done.item, f"asr failed: {crash_line(done.error)}", False)
            if on_result is not None:
                on_result(result)
            yield result
    except WorkerCrashed as e:  # only raised while the workers load
        raise AsrModelError(f"cannot start a Whisper worker for {cfg.model!r}: {error_line(e)}") from e
