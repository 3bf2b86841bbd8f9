"""`lfvila-data demo` (the README's first command), ours beside another checkout, rounds
interleaved, medians; CPU over the whole process tree (benchmarks/proctree.py).

    python benchmarks/bench_demo.py --baseline /tmp/base --repeat 2 --train-steps 0

`--train-steps 0` times the build and shard part (what the executor changes); the
default 100 steps adds the tiny model's training, the same code on both sides.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proctree import Measured, run_measured

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="a checkout of other code to run beside ours")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=0)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_demo_"))
    results: dict[str, list[Measured]] = defaultdict(list)
    for r in range(a.repeat):
        for tag, tree in (("ours", REPO), ("base", Path(a.baseline))):
            out = work / f"{tag}{r}"
            cmd = [sys.executable, "-m", "lfvila_data.cli", "demo", "--output", str(out),
                   "--train-steps", str(a.train_steps)]
            m = run_measured(cmd, env={**os.environ, "PYTHONPATH": str(tree)}, cwd=str(tree))
            if m.returncode != 0:
                sys.exit(f"{tag} demo failed ({m.returncode}):\n{m.stderr[-2000:]}")
            results[tag].append(m)
            shutil.rmtree(out, ignore_errors=True)
            print(f"round {r + 1}/{a.repeat}: {tag} {m.wall_s:.2f} s / {m.cpu_s:.2f} CPU-s", flush=True)
    med = {k: (statistics.median(m.wall_s for m in v), statistics.median(m.cpu_s for m in v))
           for k, v in results.items()}
    print(f"\ndemo --train-steps {a.train_steps}, median of {a.repeat}, CPU by {results['ours'][0].method}")
    for tag, (w, c) in med.items():
        print(f"{tag:6s} {w:8.2f} s wall {c:8.2f} CPU-s")
    print(f"ours / base: wall {med['ours'][0] / med['base'][0]:.2f}, CPU {med['ours'][1] / med['base'][1]:.2f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (1 min), {os.getloadavg()[2]:.1f} (15 min)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
