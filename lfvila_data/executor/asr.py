"""Speech recognition wired on Ray: the Whisper worker pool sized for the cluster."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from lfvila_data.executor.cluster import cluster_resources, init_ray
from lfvila_data.executor.pool import RayActors
from lfvila_data.text.asr import AsrConfig, AsrJob, AsrResult, Resolver, pool_shape, transcribe_all


def transcribe_on_ray(jobs: Iterable[AsrJob], cfg: AsrConfig, resolve: Resolver | None = None,
                      on_result: Callable[[AsrResult], None] | None = None) -> Iterator[AsrResult]:
    """`transcribe_all` on Ray actors: one per GPU, or one per 8 CPUs (see `pool_shape`),
    each with one job queued beyond the one it runs so it never waits for the driver."""
    init_ray(None)
    shape = pool_shape(cfg, cluster_resources())
    actors = RayActors(shape.actors, num_cpus=shape.cpus_per_actor, num_gpus=shape.gpus_per_actor,
                       queued_per_actor=1)
    yield from transcribe_all(jobs, cfg, resolve, on_result, actors=actors, shape=shape)
