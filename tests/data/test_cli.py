"""`lfvila-data build` options: grouped by stage in --help, and each mapped to its stage's
config (parsed by click, never run)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from lfvila_data.cli import BUILD_OPTIONS, _grouped_values, app, build_config
from lfvila_data.executor.runner import RunConfig
from lfvila_data.media.cut import CutConfig
from lfvila_data.media.fetch import FetchConfig
from lfvila_data.output.fingerprint import content, fingerprint
from lfvila_data.plan.join import PlanConfig
from lfvila_data.text.stage import TextOptions

GROUPS = {
    "Input and output": ["--source", "--metadata", "--text", "--groups", "--input", "--output"],
    "Benchmark datasets": ["--annotations", "--video-dir", "--split-file", "--video-base-url"],
    "Subtitles and clips": ["--lang", "--min-clip-seconds", "--max-clip-seconds", "--max-join-gap",
                            "--language-check", "--max-text-bytes", "--max-subtitle-bytes"],
    "Speech recognition": ["--asr", "--asr-model", "--asr-language", "--asr-timestamps",
                           "--asr-batch-size", "--asr-actors", "--asr-gpu", "--asr-silence-db"],
    "Planning": ["--min-clips", "--max-clips", "--max-gap", "--plan-buckets", "--plan-only"],
    "Download": ["--sections", "--margin", "--allow-local-files", "--cookies", "--proxy",
                 "--rate-limit", "--max-filesize", "--socket-timeout", "--retries",
                 "--allow-private-addresses", "--allow-network", "--max-page-bytes", "--fetch-deadline",
                 "--min-rate", "--slow-window"],
    "Cutting": ["--fps", "--height", "--copy", "--audio", "--cut-threads", "--x264-preset", "--crf",
                "--x264-params"],
    "Running": ["--download-concurrency", "--cut-concurrency", "--ray-address", "--executor", "--retry-failed",
                "--workdir", "--rebuild"],
}
REQUIRED = ["--metadata", "m.jsonl", "--text", "t.jsonl", "--output", "out"]


def test_help_lists_every_option_under_its_stage():
    r = subprocess.run([sys.executable, "-m", "lfvila_data.cli", "build", "--help"], capture_output=True,
                       text=True, timeout=120, env=os.environ | {"COLUMNS": "250", "TERM": "dumb"})
    assert r.returncode == 0, r.stderr
    panel, seen = None, {}
    for line in r.stdout.splitlines():
        if line.startswith("╭─ "):
            panel = line[3:].split(" ─")[0]
        elif line.startswith("│") and "--" in line:
            seen[line.strip("│ *").split()[0]] = panel
    assert seen == {opt: group for group, opts in GROUPS.items() for opt in opts} | {"--help": "Options"}
    assert sum(map(len, GROUPS.values())) == 60


def config(*args: str):
    ctx = get_command(app).commands["build"].make_context("build", [*REQUIRED, *args])
    return build_config(*_grouped_values(BUILD_OPTIONS, ctx.params))


def test_defaults_are_the_stage_defaults():
    cfg = config()
    assert (cfg.metadata, cfg.text, cfg.output, cfg.source) == (("m.jsonl",), ("t.jsonl",), "out", "hdvila")
    assert cfg.plan == PlanConfig() and cfg.run == RunConfig()
    assert cfg.text_opts == TextOptions(concurrency=8)
    assert cfg.task.fetch == FetchConfig() and cfg.task.cut == CutConfig() and cfg.task.workdir is None
    assert not (cfg.plan_only or cfg.retry_failed or cfg.rebuild) and cfg.ray_address is None


def test_options_reach_their_stage():
    cfg = config("--plan-buckets", "3", "--min-clips", "2", "--height", "360", "--audio",
                 "--download-concurrency", "5", "--cut-threads", "2", "--asr", "always",
                 "--asr-batch-size", "4", "--no-asr-gpu", "--lang", "fr", "--lang", "en",
                 "--workdir", "/scratch", "--plan-only", "--retries", "0", "--rebuild", "--executor", "local")
    assert (cfg.plan.num_buckets, cfg.plan.min_clips) == (3, 2)
    assert (cfg.task.fetch.height, cfg.task.cut.height, cfg.task.fetch.audio, cfg.task.cut.audio) == \
        (360, 360, True, True)
    assert cfg.run.fetch_concurrency == cfg.text_opts.concurrency == 5
    assert (cfg.task.cut.threads, cfg.run.cut_cpus) == (2, 2.0)
    assert cfg.text_opts.asr == "always" and cfg.text_opts.langs == ("fr", "en")
    assert (cfg.text_opts.asr_config.batch_size, cfg.text_opts.asr_config.use_gpu) == (4, False)
    assert cfg.task.workdir == "/scratch" and cfg.plan_only and cfg.task.fetch.retries == 0
    old = config("--crf", "23", "--x264-params", "").task.cut  # what builds used before
    assert (old.crf, old.x264_params, old.preset) == (23, "", "veryfast")
    r = CliRunner().invoke(app, ["build", *REQUIRED, "--x264-params", "bframes=0:me=bogus"])
    assert r.exit_code == 2 and "--x264-params 'bframes=0:me=bogus': Error parsing option 'me = bogus'" in r.output
    assert cfg.run.executor == "local"
    assert cfg.rebuild


def test_clip_settings_reach_the_text_stage_and_its_fingerprint():
    cfg = config("--max-join-gap", "3", "--fps", "6", "--max-clip-seconds", "12")
    assert (cfg.text_opts.clip.join_gap, cfg.text_opts.clip.fps, cfg.text_opts.clip.max_duration) == \
        (3.0, 6.0, 12.0)
    assert cfg.text_opts.clip.shortest == 0.5  # 3 frames at 6 fps
    # a different pause re-plans: it is a content setting of the text journal
    assert fingerprint(content(cfg.text_opts)) != fingerprint(content(config("--fps", "6", "--max-clip-seconds",
                                                                              "12").text_opts))
    for bad in (["--max-join-gap", "-1"], ["--fps", "0.1"]):
        r = CliRunner().invoke(app, ["build", *REQUIRED, *bad])
        assert r.exit_code == 2 and "error:" in r.output, r.output


def test_text_caps_reach_the_plan_and_the_text_stage():
    cfg = config("--max-text-bytes", "1000", "--max-subtitle-bytes", "2000")
    assert cfg.plan.max_text_bytes == cfg.text_opts.max_text_bytes == 1000
    assert cfg.text_opts.max_subtitle_bytes == 2000
    r = CliRunner().invoke(app, ["build", *REQUIRED, "--max-text-bytes", "0"])
    assert r.exit_code == 2 and "error:" in r.output, r.output


def test_local_sources_are_local_files():
    cfg = config("--source", "local", "--input", "videos/")
    assert cfg.inputs == ("videos/",) and cfg.task.source == "local"
    assert cfg.plan.allow_local_files and cfg.task.fetch.allow_local_files
    assert not config().task.fetch.allow_local_files


def test_benchmark_inputs_reach_the_build(tmp_path):
    cfg = config("--source", "activitynet", "--annotations", "val_1.json", "--video-dir", str(tmp_path),
                 "--split-file", "val_1_list.txt")
    assert (cfg.source, cfg.task.source, cfg.annotations, cfg.video_dir, cfg.split_files) == \
        ("activitynet", "activitynet", ("val_1.json",), str(tmp_path), ("val_1_list.txt",))
    assert cfg.task.fetch.allow_local_files  # --video-dir files are local
    assert not config("--source", "activitynet", "--annotations", "a.json").task.fetch.allow_local_files
    mirrored = config("--source", "how2qa", "--annotations", "a.jsonl", "--video-base-url", "http://127.0.0.1:9/v")
    assert mirrored.video_base_url == "http://127.0.0.1:9/v"
    for args, message in [(["--source", "activitynet"], "--annotations is required for --source activitynet"),
                          (["--annotations", "a.json"], "need a benchmark --source"),
                          (["--video-base-url", "http://h/v"], "need a benchmark --source"),
                          (["--source", "how2qa", "--annotations", "a.jsonl", "--video-base-url", "/v"],
                           "is not an http(s) URL")]:
        r = CliRunner().invoke(app, ["build", *REQUIRED, *args])
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("source", ["didemo", "queryd", "condensed-movies", "how2qa", "violin", "activitynet-qa"])
def test_every_benchmark_source_takes_annotations(source):
    cfg = config("--source", source, "--annotations", "a.json")
    assert (cfg.source, cfg.task.source, cfg.annotations) == (source, source, ("a.json",))
    r = CliRunner().invoke(app, ["build", *REQUIRED, "--source", source])
    assert r.exit_code == 2 and f"--annotations is required for --source {source}" in r.output


@pytest.mark.parametrize("args, message", [
    (["--height", "241"], "--height must be a positive even number, got 241"),
    (["--min-clips", "0"], "need 1 <= min_clips <= max_clips"),
    (["--min-clip-seconds", "30"], "--min-clip-seconds must be positive and at most --max-clip-seconds"),
    (["--asr-timestamps", "char"], "--asr-timestamps must be 'word' or 'segment'"),
    (["--proxy", "socks5://127.0.0.1:1080"], "--proxy must be an http:// proxy"),
    (["--allow-network", "intranet"], "--allow-network must be a network like 10.0.0.0/8"),
])
def test_bad_values_are_one_line_errors(args, message):
    r = CliRunner().invoke(app, ["build", *REQUIRED, *args])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def test_fetch_guard_options_reach_the_fetch_config(monkeypatch):
    cfg = config("--allow-network", "10.1.0.0/16", "--max-page-bytes", "1000", "--fetch-deadline", "90",
                 "--min-rate", "500", "--slow-window", "5", "--proxy", "127.0.0.1:3128")
    f = cfg.task.fetch
    assert (f.allowed_networks, f.max_page_bytes, f.deadline, f.min_rate, f.slow_window, f.proxy) == \
        (("10.1.0.0/16",), 1000, 90.0, 500, 5.0, "http://127.0.0.1:3128")
    # the test session allows private addresses through the environment (conftest.py)
    assert f.allow_private_addresses
    monkeypatch.delenv("LFVILA_ALLOW_PRIVATE_ADDRESSES")
    assert not config().task.fetch.allow_private_addresses and not FetchConfig().allow_private_addresses
    assert config("--allow-private-addresses").task.fetch.allow_private_addresses


def test_auto_executor_runs_small_local_builds_without_ray(tmp_path):
    """`auto`: threads in the driver on one machine when the driver plans anyway; Ray for a
    named cluster, speech recognition and HD-VILA inputs too large to plan in the driver;
    an explicit choice wins, but `local` cannot join a cluster."""
    from lfvila_data.build import IN_PROCESS_PLAN_BYTES, choose_executor
    from lfvila_data.inputs import InputError

    meta, text = tmp_path / "m.jsonl", tmp_path / "t.jsonl"
    meta.write_text("{}\n")
    text.write_text("{}\n")

    def chosen(*args: str) -> str:
        ctx = get_command(app).commands["build"].make_context(
            "build", ["--metadata", str(meta), "--text", str(text), "--output", "out", *args])
        return choose_executor(build_config(*_grouped_values(BUILD_OPTIONS, ctx.params)))

    assert chosen() == "local"
    assert chosen("--source", "youtube", "--input", str(meta)) == "local"
    assert chosen("--executor", "ray") == "ray"
    assert chosen("--ray-address", "auto") == chosen("--asr", "always") == "ray"
    with pytest.raises(InputError, match="--ray-address"):
        chosen("--ray-address", "auto", "--executor", "local")
    with meta.open("r+b") as f:  # sparse: past the size planned in the driver
        f.truncate(IN_PROCESS_PLAN_BYTES + 1)
    assert chosen() == "ray"
    assert chosen("--executor", "local") == "local"
