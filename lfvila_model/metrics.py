"""Metric logging on rank 0: a stdout line every ``log.every_steps`` steps, ``metrics.csv``
(trimmed back to the checkpoint on resume, so a resumed run's log reads as one run),
TensorBoard and a tqdm bar when available."""
from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

from lfvila_model.config import LogConfig


class MetricLogger:
    """Rank-0 metrics: a stdout line every N steps, a CSV log, TensorBoard and tqdm when available.
    ``names``: the objective's values, "loss" first (stage 1: global, mtc; stage 2: mlm, vtm, ...)."""

    def __init__(self, log: LogConfig, total: int, start: int, names: tuple[str, ...], enabled: bool = True):
        self.log, self.enabled, self.total, self.names = log, enabled, total, tuple(names)
        self.COLUMNS = ("step", "epoch", "samples", *self.names, "lr", "grad_norm", "samples_per_s", "gpu_mem_gib")
        self.writer = self.bar = None
        if not enabled:
            return
        Path(log.dir).mkdir(parents=True, exist_ok=True)
        path = Path(log.dir) / "metrics.csv"
        if start == 0 or not path.exists():
            path.write_text(",".join(self.COLUMNS) + "\n")
        else:  # resumed: drop rows past the checkpoint (they will be redone)
            rows = path.read_text().splitlines()
            path.write_text("\n".join([rows[0]] + [r for r in rows[1:] if int(r.split(",")[0]) <= start]) + "\n")
        self.csv_file = path.open("a", newline="")
        self.csv = csv.writer(self.csv_file)
        if log.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(log.dir)
            except ImportError:
                pass
        if log.progress and sys.stderr.isatty():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
            except ImportError:
                pass

    def __call__(self, row: dict) -> None:
        if not self.enabled:
            return
        self.csv.writerow([row.get(c, "") for c in self.COLUMNS])
        self.csv_file.flush()
        if self.writer is not None:
            for k in (*self.names, "lr", "samples_per_s"):
                self.writer.add_scalar(f"train/{k}", row[k], row["step"])
        mem = f" | mem {row['gpu_mem_gib']:.1f} GiB" if row.get("gpu_mem_gib") != "" else ""
        parts = ", ".join(f"{k} {row[k]:.4f}" for k in self.names[1:])
        line = (f"step {row['step']}/{self.total} | loss {row['loss']:.4f} ({parts}) | lr {row['lr']:.3e} | "
                f"{row['samples_per_s']:.1f} samples/s{mem}")
        if self.bar is not None:
            self.bar.update(row["step"] - self.bar.n)
            self.bar.set_postfix(loss=f"{row['loss']:.4f}")
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.enabled:
            self.csv_file.close()
            for x in (self.writer, self.bar):
                if x is not None:
                    x.close()


def last_logged(log_dir: str | os.PathLike) -> dict:
    """The last row of ``log_dir/metrics.csv`` (what rank 0 logged last), numbers parsed."""
    path = Path(log_dir) / "metrics.csv"
    if not path.exists():
        return {}
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: (float(v) if k not in ("step", "epoch", "samples") else int(v)) for k, v in rows[-1].items() if v} \
        if rows else {}
