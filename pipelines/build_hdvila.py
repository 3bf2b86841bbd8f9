"""Ray job entry point for `lfvila-data build` (or `shard`, with `command: shard` in the
config) driven by a YAML config.

    ray job submit --address http://HEAD:8265 --working-dir . \\
        --runtime-env pipelines/runtime_env.yaml -- \\
        python pipelines/build_hdvila.py --config pipelines/configs/lfvila8m.yaml

Config keys are the CLI's option names (underscores or dashes); anything after the
config on the command line is passed through and wins (e.g. `--plan-only`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir on a cluster

from lfvila_data.cli import app  # noqa: E402

# boolean options whose off switch is --no-<name> (on by default, or tri-state)
NEGATABLE = {"sections", "language_check", "asr_gpu"}


def config_to_args(cfg: dict) -> list[str]:
    """Turn {option: value} into `build` (or `command`) arguments."""
    cfg = dict(cfg)
    args = [cfg.pop("command", "build")]
    for key, value in cfg.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            if value:
                args.append(flag)
            elif key.replace("-", "_") in NEGATABLE:
                args.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            for v in value:
                args += [flag, str(v)]
        else:
            args += [flag, str(value)]
    return args


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--print-args", action="store_true", help="show the build command and stop")
    known, rest = parser.parse_known_args(argv)
    cfg = yaml.safe_load(known.config.read_text()) or {}
    args = config_to_args(cfg) + rest
    if known.print_args:
        print("lfvila-data " + " ".join(args))
        return
    app(args, prog_name="lfvila-data")


if __name__ == "__main__":
    main()
