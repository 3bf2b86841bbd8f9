"""The same build on a two-node Ray cluster (ray.cluster_utils.Cluster): downloads spread
over both nodes and each video is cut on the node that downloaded it."""
from __future__ import annotations

import pandas as pd
import pytest

from lfvila_data.build import BuildConfig, run_build
from lfvila_data.localserver import MediaServer
from lfvila_data.media.fetch import FetchConfig
from lfvila_data.media.task import TaskContext
from lfvila_data.plan.join import PlanConfig
from tests.support.corpus import VideoSpec, even_spans, write_metadata
from tests.support.media import decode_times, make_timecoded_video


@pytest.fixture
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # leave any local Ray of other tests
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


def test_build_on_two_nodes(cluster, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    videos = []
    for i in range(6):
        make_timecoded_video(www / f"v{i}.mp4", 24, width=160, height=120)
        videos.append(VideoSpec(f"clusterv{i}", "", even_spans(5)))
    with MediaServer(www) as srv:
        for i, v in enumerate(videos):
            v.url = srv.url(f"v{i}.mp4")
        meta, text = write_metadata(tmp_path / "meta", videos)
        out = tmp_path / "out"
        task = TaskContext(output=str(out), fetch=FetchConfig(retries=1, backoff=0.05),
                           workdir=str(tmp_path / "scratch"))
        run_build(BuildConfig(metadata=(str(meta),), text=(str(text),), output=str(out),
                              plan=PlanConfig(num_buckets=3), task=task,
                              ray_address=cluster.address))
    m = pd.read_parquet(out / "manifest.parquet")
    assert list(m.key) == [f"clusterv{i}_00001_00005" for i in range(6)]
    for row in m.itertuples():
        times = decode_times(out / row.video)
        assert row.start - 0.25 <= times[0] <= row.start + 1 / 3
    nodes = pd.read_parquet(out / "downloads.parquet").node
    assert nodes.notna().all() and nodes.nunique() == 2  # work ran on both nodes
    assert pd.read_parquet(out / "failures.parquet").empty
