"""A source factory that records which samples the trainer consumed (tests of exact resume)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class RecordKeys:
    """Pass ``inner``'s batches through, appending "epoch key key ..." for each micro-batch the
    trainer takes to DIRECTORY/rank-R.txt (a file per rank: works in Ray Train workers too)."""

    inner: Any  # a source factory (rank, world) -> source
    directory: str

    def __call__(self, rank: int, world: int):
        source = self.inner(rank, world)
        path = Path(self.directory) / f"rank-{rank}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)

        def epoch_batches(epoch: int, skip: int, position: dict | None = None):
            batches = source(epoch, skip) if position is None else source(epoch, skip, position)
            for batch in batches:
                with open(path, "a") as f:
                    f.write(" ".join([str(epoch), *batch["key"]]) + "\n")
                yield batch
        return epoch_batches


def recorded(directory: str | Path, rank: int = 0) -> list[str]:
    """The lines RecordKeys wrote for ``rank``, in order."""
    path = Path(directory) / f"rank-{rank}.txt"
    return path.read_text().splitlines() if path.exists() else []
