"""The resumable-unit helper: which settings clear finished work when they change."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from lfvila_data.output.fingerprint import LAYOUT, SPEED, content, fingerprint, remove_dir, reuse_or_clear
from lfvila_data.output.write import OutputDir
from lfvila_data.plan.join import PlanConfig
from lfvila_data.shards.write import ShardConfig
from lfvila_data.text.asr import AsrConfig
from lfvila_data.text.clips import ClipConfig
from lfvila_data.text.stage import TextOptions


@dataclass(frozen=True)
class _Inner:
    size: int = 1
    threads: int = field(default=2, metadata=SPEED)


@dataclass(frozen=True)
class _Outer:
    name: str = "a"           # undeclared: content
    parts: int = field(default=3, metadata=LAYOUT)
    inner: _Inner = _Inner()
    tags: tuple[str, ...] = ("x",)


def test_content_keeps_content_fields_of_nested_configs():
    assert content(_Outer()) == {"name": "a", "inner": {"size": 1}, "tags": ["x"]}


def test_plan_layout_fields_are_not_content():
    assert set(content(PlanConfig())) == {"min_clips", "max_clips", "max_gap", "allow_local_files",
                                         "max_text_bytes"}
    same = [PlanConfig(num_buckets=7), PlanConfig(chunk_bytes=10)]
    assert {fingerprint(content(c)) for c in same} == {fingerprint(content(PlanConfig()))}
    assert fingerprint(content(PlanConfig(min_clips=2))) != fingerprint(content(PlanConfig()))


def test_text_speed_settings_keep_the_fingerprint():
    asr = TextOptions(asr="auto", asr_config=AsrConfig(model="m"))
    faster = replace(asr, concurrency=3, asr_config=AsrConfig(model="m", batch_size=2, num_actors=4,
                                                             use_gpu=True))
    assert fingerprint(content(faster)) == fingerprint(content(asr))
    for other in (replace(asr, langs=("fr",)), replace(asr, clip=ClipConfig(min_duration=5.0)),
                  replace(asr, asr_config=AsrConfig(model="other")), replace(asr, asr="always")):
        assert fingerprint(content(other)) != fingerprint(content(asr))


def test_every_shard_setting_changes_the_shards():
    assert set(content(ShardConfig())) == {f for f in ShardConfig.__dataclass_fields__}


def test_reuse_or_clear(tmp_path):
    out = OutputDir(str(tmp_path))
    (tmp_path / "unit").mkdir()
    (tmp_path / "unit" / "done.txt").write_text("work")
    clear = remove_dir(out, "unit")
    assert not reuse_or_clear(out, "unit/MARK", "v1", clear)  # no marker: old work is unknown
    assert not (tmp_path / "unit" / "done.txt").exists()
    (tmp_path / "unit" / "done.txt").write_text("work")
    assert reuse_or_clear(out, "unit/MARK", "v1", clear)
    assert (tmp_path / "unit" / "done.txt").read_text() == "work"
    assert not reuse_or_clear(out, "unit/MARK", "v2", clear)
    assert not (tmp_path / "unit" / "done.txt").exists()
    assert (tmp_path / "unit" / "MARK").read_text() == "v2"
    remove_dir(out, "nothing-here")()  # clearing what is not there is fine
