"""Resumable units: which settings decide what a unit of work produced, so a rerun knows
whether to reuse it or to clear it and start again.

Each field of a stage config is one of three kinds, declared on the dataclass itself:
- content (the default, so a new field errs on the side of redoing work): changes what
  is produced, e.g. `min_clips`, subtitle languages, the Whisper model;
- layout (`metadata=LAYOUT`): changes how the work is split, never what it contains,
  e.g. the planning join's bucket count;
- speed (`metadata=SPEED`): changes how fast it is done, e.g. concurrency, GPUs.

A unit (the plan, the text journal, the build journal, the shard set) keeps a marker
with the fingerprint of the content settings it was made with; only a different
fingerprint clears it."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from types import MappingProxyType
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from lfvila_data.output.write import OutputDir

_KEY = "resume"
LAYOUT = MappingProxyType({_KEY: "layout"})
SPEED = MappingProxyType({_KEY: "speed"})


def kind(f: dataclasses.Field) -> str:
    """content, layout or speed: what changing this field does to finished work."""
    return f.metadata.get(_KEY, "content")


def content(config: object) -> dict:
    """The content fields of a config dataclass as plain data, nested configs reduced to
    their own content fields, so layout and speed settings never reach a fingerprint."""
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)
            if kind(f) == "content"}


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return content(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def fingerprint(settings: object) -> str:
    """16 hex digits that are equal exactly when the (JSON) settings are."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reuse_or_clear(out: OutputDir, marker: str, value: str, clear: Callable[[], None]) -> bool:
    """Whether the work marked by `out/marker` was made with `value`; if not, `clear`
    removes it (before the new marker is written, so a crash in between clears again)."""
    if out.exists(marker) and out.fs.cat_file(out.path(marker)).decode() == value:
        return True
    clear()
    out.write_bytes(marker, value.encode())
    return False


def remove_dir(out: OutputDir, rel: str) -> Callable[[], None]:
    """A `clear` for `reuse_or_clear`: remove `out/rel` and everything under it."""
    def clear() -> None:
        if out.exists(rel):
            out.fs.rm(out.path(rel), recursive=True)
    return clear
