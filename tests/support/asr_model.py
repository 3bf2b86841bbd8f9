"""A tiny randomly initialised Whisper saved like a hub checkpoint, so the tests run the real
loading code (`from_pretrained(directory)`) offline, in about a second.

Byte-level BPE over the 256 bytes plus a few merged words, then Whisper's special tokens in
Whisper's order (`<|endoftext|>` right after the text tokens, then start-of-transcript,
languages, tasks, `<|notimestamps|>`) and the 1501 timestamp tokens `<|0.00|>`…`<|30.00|>`.
Random weights say nothing, so weights and generation config are nudged for greedy decoding
to always emit text: the output rows of text tokens are scaled up (their logits dominate
the timestamp tokens'), the end-of-text output row is zeroed (it never wins, so every
window decodes up to `max_new_tokens`), and byte tokens other than letters and space are
suppressed so that the words are readable.
"""
from __future__ import annotations

import string
from functools import lru_cache
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

LANGUAGES = ("en", "zh", "de", "es", "ru", "fr", "ja")
WORDS = ("the", "and", "of", "to", "in", "is", "it", "you", "that", "hello", "world",
         "video", "speech", "long", "form", "data", "set")
# Model shapes. "tiny" is the test model; "large-v3" has whisper-large-v3's layers, widths
# and number of alignment heads (but this small vocabulary), for timing runs on machines
# that cannot download a checkpoint.
PRESETS = {
    "tiny": dict(num_mel_bins=80, d_model=64, encoder_layers=1, encoder_attention_heads=2,
                 encoder_ffn_dim=128, decoder_layers=2, decoder_attention_heads=2,
                 decoder_ffn_dim=128, max_target_positions=48, alignment_heads=[[1, 0], [1, 1]]),
    "large-v3": dict(num_mel_bins=128, d_model=1280, encoder_layers=32, encoder_attention_heads=20,
                     encoder_ffn_dim=5120, decoder_layers=32, decoder_attention_heads=20,
                     decoder_ffn_dim=5120, max_target_positions=448,
                     alignment_heads=[[7, 0], [10, 17], [12, 18], [13, 12], [16, 1], [17, 14],
                                      [19, 11], [21, 4], [24, 1], [25, 6]]),
}


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    byte_chars = _bytes_to_unicode()
    vocab = {ch: i for i, ch in enumerate(byte_chars[b] for b in range(256))}
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        pieces = [byte_chars[b] for b in (" " + word).encode()]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            if pair not in merges:
                merges.append(pair)
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            vocab.setdefault(pieces[0], len(vocab))
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def build_tiny_whisper(path: Path, *, seed: int = 0) -> Path:
    """Write a tiny Whisper (model, processor, generation config) to `path`; returns it."""
    return build_random_whisper(path, "tiny", seed=seed)


def build_random_whisper(path: Path, preset: str = "tiny", *, seed: int = 0) -> Path:
    """Write a randomly initialised Whisper of a `PRESETS` shape to `path`; returns it."""
    path = Path(path)
    shape = dict(PRESETS[preset])
    heads = shape.pop("alignment_heads")
    vocab, merges = _vocab_and_merges()
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges, pad_token="<|endoftext|>")
    specials = (["<|startoftranscript|>"] + [f"<|{c}|>" for c in LANGUAGES]
                + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>",
                   "<|nospeech|>", "<|notimestamps|>"])
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ["<|endoftext|>", *specials]}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    assert eot == len(vocab) - 1 and ids["<|notimestamps|>"] == eot + len(specials), ids
    assert len(tokenizer) == eot + 1 + len(specials) + 1501

    byte_chars = _bytes_to_unicode()
    keep = {byte_chars[b] for b in (string.ascii_lowercase + " ").encode()}
    suppress = [i for ch, i in vocab.items() if len(ch) == 1 and ch not in keep]

    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=len(tokenizer), max_source_positions=1500, **shape,
        decoder_start_token_id=sot, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
        begin_suppress_tokens=[vocab[byte_chars[32]], eot], suppress_tokens=suppress,
        tie_word_embeddings=False)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        out = model.proj_out.weight
        # text logits (std ~8) dominate the 1501 near-zero timestamp logits
        out[:eot] *= 8.0 / (config.init_std * config.d_model ** 0.5)
        out[eot] = 0.0       # end-of-text never wins: every window decodes to the token limit
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
        max_length=config.max_target_positions,
        is_multilingual=True,
        lang_to_id={f"<|{c}|>": ids[f"<|{c}|>"] for c in LANGUAGES},
        task_to_id={"translate": ids["<|translate|>"], "transcribe": ids["<|transcribe|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"],
        max_initial_timestamp_index=50,
        alignment_heads=heads,
        begin_suppress_tokens=[vocab[byte_chars[32]], eot], suppress_tokens=suppress)

    if config.d_model >= 512:  # big shapes: store half precision, as checkpoints are
        model = model.to(torch.float16)
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=config.num_mel_bins),
                                 tokenizer=tokenizer)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


if __name__ == "__main__":
    import sys

    print(build_random_whisper(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-whisper"),
                               sys.argv[2] if len(sys.argv) > 2 else "tiny"))
